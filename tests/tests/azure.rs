//! The whole Azure flow through the operator, without Azure: a binding in Entra mode with a
//! federated credential and a Foundry connection. The operator (with its own workload identity,
//! exchanged at the Entra fake) creates the principal through `pgaadauth_create_principal_with_oid`,
//! the federated identity credential and the Foundry connection through the ARM fake; the pod
//! runner starts the server as the workload-identity webhook would, and the server signs in to
//! PostgreSQL with a token Entra issues only because the operator's credential exists. Deleting
//! the binding removes the connection, the credential and the principal.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use kube::api::{Api, DeleteParams};
use pgmcp_crds::v1alpha1::PostgresMcpBinding;
use pgmcp_tests::bindings::{condition, kubectl_apply, wait_condition};
use pgmcp_tests::entra::TOKEN_EXCHANGE_AUDIENCE;
use pgmcp_tests::foundry::{Foundry, MI_CLIENT_ID, PUBLIC_URL, SERVER_APP_ID, Target};
use pgmcp_tests::podrunner::{Webhook, run_deployment_pod_with};
use pgmcp_tests::{Postgres, TestEnv, eventually, paths};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_foundry_binding_gets_its_credential_connection_and_principal_and_loses_them_on_delete() {
    let env = TestEnv::shared();
    let pg = Postgres::shared();
    let ns = env.namespace("azure").await.unwrap();
    let db = pg.create_database("azure").await.unwrap();
    let target = Target {
        host: pg.host().to_owned(),
        port: pg.port(),
        database: db.name.clone(),
    };
    let azure = Foundry::start(target, db.connect().await.unwrap())
        .await
        .unwrap();
    let (fake, arm, admin) = (&azure.entra, &azure.arm, &azure.admin);
    let principal = azure.principal.clone();
    let operator = azure
        .start_operator(env, &ns, "op-azure", &[])
        .await
        .unwrap();
    let ssl = (
        "SSL_CERT_FILE".to_owned(),
        operator.trust_file().unwrap().display().to_string(),
    );
    kubectl_apply(&ns, &azure.binding("sales", env.server()).to_string());
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

    // What ARM now holds, in the shapes operator/src/azure/fic.rs and foundry.rs write.
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
        ("target", json!(PUBLIC_URL)),
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

    // A steady state makes no ARM writes: a whole reconcile (it read the connection) and no
    // PUT.
    let puts = arm.count_matching("PUT", "/");
    let reads = arm.count_matching("GET", "/connections/");
    let reconciles = operator.reconciles().await;
    bindings
        .patch(
            "sales",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(json!({"metadata": {"annotations": {"touch": "1"}}})),
        )
        .await
        .unwrap();
    operator.wait_reconciles(reconciles + 1.0, WAIT).await;
    assert!(
        arm.count_matching("GET", "/connections/") > reads,
        "the connection was read"
    );
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
