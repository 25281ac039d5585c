//! The whole Azure flow through the operator, without Azure: a binding in Entra mode with a
//! federated credential and a Foundry connection. The operator (with its own workload identity,
//! exchanged at the Entra fake) creates the principal through `pgaadauth_create_principal_with_oid`,
//! the federated identity credential and the Foundry connection through the ARM fake; the pod
//! runner starts the server as the workload-identity webhook would, and the server signs in to
//! PostgreSQL with a token Entra issues only because the operator's credential exists. Deleting
//! the binding removes the connection, the credential and the principal.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use kube::api::Api;
use pgmcp_crds::v1alpha1::PostgresMcpBinding;
use pgmcp_tests::bindings::{
    condition, delete_and_wait, kubectl_apply, kubectl_ok, wait_condition,
};
use pgmcp_tests::entra::TOKEN_EXCHANGE_AUDIENCE;
use pgmcp_tests::foundry::{Foundry, MI_CLIENT_ID, PUBLIC_URL, SERVER_APP_ID, run_foundry_sample};
use pgmcp_tests::mcp::{listed_tool_names, run_python_client};
use pgmcp_tests::podrunner::{Webhook, run_deployment_pod_with};
use pgmcp_tests::{Postgres, TestEnv, paths};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(60);
/// A Foundry project's endpoint, for the sample's dry run (nothing is sent to it).
const PROJECT_ENDPOINT: &str = "https://contoso-ai.services.ai.azure.com/api/projects/sales-agents";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_foundry_binding_gets_its_credential_connection_and_principal_and_loses_them_on_delete() {
    let env = TestEnv::shared();
    let pg = Postgres::shared();
    let ns = env.namespace("azure").await.unwrap();
    let db = pg.create_database("azure").await.unwrap();
    let azure = Foundry::start_in(&db, pg.host()).await.unwrap();
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

    // Not Ready yet (the server has not started): nothing to use, and the Foundry sample says
    // why instead of building a tool.
    assert_eq!(binding.status.as_ref().unwrap().connect, None);
    let dry_run = || {
        run_foundry_sample(
            env.kubeconfig(),
            &[
                "--binding",
                "sales",
                "-n",
                &ns.name,
                "--project-endpoint",
                PROJECT_ENDPOINT,
                "--dry-run",
            ],
        )
    };
    let early = dry_run();
    assert_eq!(early.status.code(), Some(2), "{early:?}");
    let said = String::from_utf8_lossy(&early.stderr);
    assert!(
        said.contains(&format!("binding {}/sales is not Ready (", ns.name)),
        "{said}"
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

    // Ready: status says how to use it (docs/agents.md), and what it says works.
    let connect = binding.status.as_ref().unwrap().connect.clone().unwrap();
    assert_eq!(connect.url, PUBLIC_URL);
    assert_eq!(connect.audience.as_deref(), Some(SERVER_APP_ID));
    assert_eq!(
        connect.token_scope,
        Some(format!("{SERVER_APP_ID}/.default"))
    );
    assert_eq!(connect.app_roles, ["MCP.Read"]);
    assert_eq!(
        connect.foundry_connection.as_deref(),
        Some("sales-postgres")
    );
    assert_eq!(
        connect.foundry_connection_id.as_deref(),
        Some(connection_id.as_str())
    );
    assert_eq!(connect.tools, pgmcp_crds::config::TOOLS);
    let mut wide = ns.kubectl();
    wide.args(["get", "pgmcp", "sales", "-o", "wide"]);
    let wide = kubectl_ok(wide);
    assert!(
        wide.lines().next().unwrap().contains("URL") && wide.contains(PUBLIC_URL),
        "{wide}"
    );
    let mut describe = ns.kubectl();
    describe.args(["describe", "pgmcp", "sales"]);
    let describe = kubectl_ok(describe);
    for words in [
        format!("the MCP server answers at {PUBLIC_URL}"),
        format!(
            "callers send a Microsoft Entra token for {SERVER_APP_ID}/.default carrying the app role MCP.Read"
        ),
        "Foundry agents use the project connection sales-postgres".to_owned(),
    ] {
        assert!(describe.contains(&words), "{words} in\n{describe}");
    }
    assert!(
        describe
            .lines()
            .any(|l| l.contains("Foundry Connection Id:") && l.contains(&connection_id)),
        "{describe}"
    );

    // A caller that requests a token for status.connect.tokenScope and holds one of
    // status.connect.appRoles is served, as a client configured from status is (the header of
    // examples/vscode/mcp-token.json): the official Python SDK lists exactly the tools status
    // names.
    let token = azure
        .agent_token(connect.token_scope.as_deref().unwrap())
        .await
        .unwrap();
    let listed = run_python_client(
        &["--url".to_owned(), pod.url(), "--bearer".to_owned(), token],
        &json!({"calls": []}),
        &[],
    );
    assert!(listed.status.success(), "{listed:?}\n{}", pod.log());
    let listed: serde_json::Value = serde_json::from_slice(&listed.stdout).unwrap();
    assert_eq!(listed_tool_names(&listed), connect.tools);

    // The Foundry sample builds its agent from this binding: the request the pinned SDK would
    // send (its own models and serialization, nothing sent) carries the status's values.
    let sample = dry_run();
    assert!(sample.status.success(), "{sample:?}");
    let request: serde_json::Value = serde_json::from_slice(&sample.stdout).unwrap();
    assert_eq!(request["method"], "POST");
    assert_eq!(
        request["url"],
        format!("{PROJECT_ENDPOINT}/agents/sales-postgres/versions?api-version=v1")
    );
    let definition = &request["body"]["definition"];
    assert_eq!(definition["kind"], "prompt");
    assert_eq!(
        definition["tools"],
        json!([{
            "type": "mcp",
            "server_label": "sales",
            "server_url": PUBLIC_URL,
            "project_connection_id": connection_id,
            "allowed_tools": connect.tools,
            "require_approval": "never",
        }])
    );
    assert!(
        definition["instructions"]
            .as_str()
            .unwrap()
            .contains("read-only MCP server\n\"sales\""),
        "{definition}"
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
    delete_and_wait(&bindings, "sales", WAIT).await;
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
