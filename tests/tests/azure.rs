//! The whole Azure flow through the operator, without Azure: a binding in Entra mode with a
//! federated credential and a Foundry connection. The operator (with its own workload identity,
//! exchanged at the Entra fake) creates the principal through `pgaadauth_create_principal_with_oid`,
//! the federated identity credential and the Foundry connection through the ARM fake; the pod
//! runner starts the server as the workload-identity webhook would, and the server signs in to
//! PostgreSQL with a token Entra issues only because the operator's credential exists. Deleting
//! the binding removes the connection, the credential and the principal.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use kube::api::{Api, DeleteParams};
use pgmcp_crds::v1alpha1::PostgresMcpBinding;
use pgmcp_tests::arm::{ArmFake, Role};
use pgmcp_tests::bindings::{condition, kubectl_apply, wait_condition};
use pgmcp_tests::entra::{EntraFake, TOKEN_EXCHANGE_AUDIENCE};
use pgmcp_tests::operator::{Operator, WorkloadIdentity};
use pgmcp_tests::podrunner::{Webhook, run_deployment_pod_with};
use pgmcp_tests::postgres::PGAADAUTH_FIXTURE;
use pgmcp_tests::{Postgres, TestEnv, eventually, paths};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(60);
const TENANT: &str = "22222222-2222-4222-8222-222222222222";
const SUBSCRIPTION: &str = "/subscriptions/55555555-5555-4555-8555-555555555555";
const OPERATOR_CLIENT_ID: &str = "66666666-6666-4666-8666-666666666666";
const OPERATOR_OBJECT_ID: &str = "77777777-7777-4777-8777-777777777777";
const MI_CLIENT_ID: &str = "11111111-1111-4111-8111-111111111111";
const MI_OBJECT_ID: &str = "33333333-3333-4333-8333-333333333333";
/// The MCP server's app registration, the audience of callers' tokens and of Foundry's.
const SERVER_APP_ID: &str = "44444444-4444-4444-8444-444444444444";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_foundry_binding_gets_its_credential_connection_and_principal_and_loses_them_on_delete() {
    let env = TestEnv::shared();
    let pg = Postgres::shared();
    let ns = env.namespace("azure").await.unwrap();
    let db = pg.create_database("azure").await.unwrap();
    let entra_admin = format!("{}_aad_admin", db.name);
    let principal = format!("{}_mi", db.name);
    let admin = Arc::new(db.connect().await.unwrap());
    admin.batch_execute(PGAADAUTH_FIXTURE).await.unwrap();
    admin
        .batch_execute(&format!(
            "CREATE ROLE \"{entra_admin}\" LOGIN CREATEROLE;
             GRANT CREATE ON SCHEMA public TO \"{entra_admin}\";
             SET ROLE \"{entra_admin}\";
             CREATE TABLE public.sales (id int, amount numeric);
             INSERT INTO public.sales VALUES (1, 9.5), (2, 12);
             RESET ROLE;"
        ))
        .await
        .unwrap();

    // Entra: the operator's identity federated with its ServiceAccount; the binding's managed
    // identity has no credential yet: the operator creates it through ARM.
    let fake = Arc::new(EntraFake::start().await.unwrap());
    fake.add_tenant(TENANT).unwrap();
    fake.accept_postgres_tokens_as_password(
        admin.clone(),
        &[
            (OPERATOR_CLIENT_ID, &entra_admin),
            (MI_CLIENT_ID, &principal),
        ],
    );
    let arm = ArmFake::start(fake.clone(), TENANT).await.unwrap();
    let identity_id = format!(
        "{SUBSCRIPTION}/resourceGroups/rg-agents/providers/Microsoft.ManagedIdentity/userAssignedIdentities/sales-mcp"
    );
    let project_id = format!(
        "{SUBSCRIPTION}/resourceGroups/rg-agents/providers/Microsoft.CognitiveServices/accounts/contoso-ai/projects/sales-agents"
    );
    arm.add_identity(&identity_id, MI_CLIENT_ID, MI_OBJECT_ID)
        .unwrap();
    arm.add_project(&project_id).unwrap();
    arm.assign_role(OPERATOR_OBJECT_ID, SUBSCRIPTION, Role::Contributor);

    // One trust file for both fakes, as a node's CA bundle would hold.
    let arm_flag = format!("--arm-endpoint={}", arm.url());
    let identity = WorkloadIdentity {
        entra: &fake,
        tenant: TENANT,
        client_id: OPERATOR_CLIENT_ID,
        object_id: OPERATOR_OBJECT_ID,
        trust: &[fake.ca_cert(), arm.ca_cert()],
    };
    let operator =
        Operator::start_with_workload_identity(env, &ns, "op-azure", &identity, &[&arm_flag])
            .await
            .unwrap();
    let ssl = (
        "SSL_CERT_FILE".to_owned(),
        operator.trust_file().unwrap().display().to_string(),
    );

    let public_url = "https://mcp.contoso.test/agents/sales/mcp";
    let binding = json!({
        "apiVersion": "pgmcp.dev/v1alpha1",
        "kind": "PostgresMcpBinding",
        "metadata": {"name": "sales"},
        "spec": {
            "postgres": {
                "host": pg.host(), "port": pg.port(), "database": db.name, "sslMode": "require",
                "admin": {"entra": {"user": entra_admin}, "database": db.name}
            },
            "identity": {"entra": {
                "clientId": MI_CLIENT_ID, "tenantId": TENANT, "principalName": principal,
                "objectId": MI_OBJECT_ID,
                "federatedCredential": {"identityResourceId": identity_id, "issuer": env.server()}
            }},
            "access": {"grants": [{"schema": "public", "tables": ["*"]}]},
            "server": {
                "auth": {"entra": {
                    "tenantId": TENANT, "audience": SERVER_APP_ID, "requiredRoles": ["MCP.Read"],
                    "authorityHost": fake.url()
                }},
                "publicUrl": public_url
            },
            "foundry": {"projectResourceId": project_id, "connectionName": "sales-postgres"}
        }
    });
    kubectl_apply(&ns, &binding.to_string());
    let bindings: Api<PostgresMcpBinding> = ns.api();
    let binding = wait_condition(
        &bindings,
        "sales",
        "FoundryConnectionReady",
        "True",
        None,
        WAIT,
    )
    .await;
    assert_eq!(
        condition(&binding, "DatabaseReady").unwrap().reason,
        "GrantsMatch"
    );
    assert_eq!(
        condition(&binding, "IdentityReady").unwrap().reason,
        "FederatedCredentialPropagating"
    );

    // What ARM now holds, in the shapes of DESIGN §6.
    let subject = format!("system:serviceaccount:{}:sales-mcp", ns.name);
    let status = binding.status.clone().unwrap();
    let fic_id = status.federated_credential.as_ref().unwrap().id.clone();
    assert_eq!(status.federated_credential.unwrap().subject, subject);
    let fic = arm.resource(&fic_id).unwrap();
    assert_eq!(fic["properties"]["subject"], json!(subject));
    assert_eq!(fic["properties"]["issuer"], json!(env.server()));
    assert_eq!(
        fic["properties"]["audiences"],
        json!([TOKEN_EXCHANGE_AUDIENCE])
    );
    let connection_id = status.foundry.unwrap().connection_id;
    let connection = arm.resource(&connection_id).unwrap();
    for (field, value) in [
        ("category", json!("RemoteTool")),
        ("authType", json!("ProjectManagedIdentity")),
        ("audience", json!(SERVER_APP_ID)),
        ("target", json!(public_url)),
    ] {
        assert_eq!(
            connection["properties"][field], value,
            "{field}: {connection}"
        );
    }
    assert_eq!(
        connection["properties"]["metadata"]["type"],
        json!("custom_MCP")
    );

    // The server runs as the webhook would start it; its token exchange works only because of
    // the credential the operator created.
    let webhook = Webhook {
        authority_host: fake.url().to_owned(),
        env: vec![ssl],
    };
    let pod = run_deployment_pod_with(
        &ns.client,
        &ns.name,
        "sales-mcp",
        &paths::server_bin(),
        WAIT,
        Some(&webhook),
    )
    .await
    .unwrap();
    let binding = wait_condition(&bindings, "sales", "Ready", "True", None, WAIT).await;
    assert_eq!(
        condition(&binding, "IdentityReady").unwrap().reason,
        "FederatedCredentialReady"
    );
    assert!(
        fake.issued().iter().any(|i| i.client_id == MI_CLIENT_ID),
        "the server exchanged its ServiceAccount token for the managed identity"
    );

    // A steady state makes no ARM writes.
    let puts = arm.count_matching("PUT", "/");
    tokio::time::sleep(Duration::from_secs(2)).await;
    bindings
        .patch(
            "sales",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(json!({"metadata": {"annotations": {"touch": "1"}}})),
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        arm.count_matching("PUT", "/"),
        puts,
        "unchanged state issued a PUT"
    );

    drop(pod);
    bindings
        .delete("sales", &DeleteParams::default())
        .await
        .unwrap();
    eventually("the binding gone", WAIT, || async {
        bindings.get_opt("sales").await.is_ok_and(|b| b.is_none())
    })
    .await;
    assert!(arm.resource(&connection_id).is_none(), "connection deleted");
    assert!(arm.resource(&fic_id).is_none(), "credential deleted");
    let roles: i64 = admin
        .query_one(
            "SELECT count(*) FROM pg_roles WHERE rolname = $1",
            &[&principal],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(roles, 0, "principal dropped");
    assert!(
        operator.log().contains("FoundryConnection"),
        "{}",
        operator.log()
    );
}
