//! End to end: what the operator renders runs. A real PostgreSQL with the sample shop data, the
//! operator against the real control plane, the password-mode example applied with kubectl; the
//! operator creates the role, its password Secret and the grants, the pod runner starts the MCP
//! server exactly as the rendered Deployment describes (ConfigMap config, Secret password file,
//! args), and an MCP client reads through it. The binding then reports Ready from the
//! Deployment's real availability.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use kube::api::Api;
use pgmcp_crds::v1alpha1::PostgresMcpBinding;
use pgmcp_tests::bindings::{create_admin_secret, kubectl_apply, password_example, wait_condition};
use pgmcp_tests::operator::Operator;
use pgmcp_tests::{Postgres, TestEnv, mcp, paths, podrunner};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(60);

#[tokio::test]
async fn the_deployment_the_operator_renders_serves_the_granted_tables() {
    let env = TestEnv::shared();
    let pg = Postgres::shared();
    let db = pg.create_database("e2e_shop").await.unwrap();
    let role = format!("{}_mcp", db.name);
    let shop = std::fs::read_to_string(paths::workspace_root().join("tests/fixtures/shop.sql"));
    db.connect()
        .await
        .unwrap()
        .batch_execute(&shop.unwrap())
        .await
        .unwrap();

    let ns = env.namespace("e2e").await.unwrap();
    create_admin_secret(&ns, pg);
    let example = password_example(pg.host(), pg.port(), &db.name, &role)
        .replace("  server:\n", "  server:\n    limits:\n      maxRows: 7\n");
    let _operator = Operator::start(env, &ns.name, "op-e2e", &[]).await.unwrap();
    kubectl_apply(&ns, &example);

    // The operator creates the role, its password Secret and the grants; then the pod can run.
    let bindings: Api<PostgresMcpBinding> = ns.api();
    wait_condition(&bindings, "shop", "DatabaseReady", "True", None, WAIT).await;
    let pod =
        podrunner::run_deployment_pod(&ns.client, &ns.name, "shop-mcp", &paths::server_bin(), WAIT)
            .await
            .unwrap();

    let mut session = mcp::Session::open(pod.port).await.unwrap();
    let tools = session.tool_names().await.unwrap();
    assert!(tools.contains(&"query".to_owned()), "{tools:?}");
    let result = session
        .request(
            "tools/call",
            json!({"name": "query", "arguments": {"sql": "SELECT count(*) AS n FROM customers"}}),
        )
        .await
        .unwrap();
    assert_eq!(result["isError"], json!(false), "{result}");
    let expected: i64 = db
        .connect()
        .await
        .unwrap()
        .query_one("SELECT count(*) FROM customers", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        result["structuredContent"]["rows"][0][0],
        json!(expected),
        "{result}"
    );
    // The binding's limits (maxRows: 7) reached the server through the ConfigMap.
    assert_eq!(
        result["structuredContent"]["limits"]["max_rows"],
        json!(7),
        "{result}"
    );

    let binding = wait_condition(&bindings, "shop", "Ready", "True", None, WAIT).await;
    let status = binding.status.unwrap();
    assert_eq!(status.principal.unwrap().name, role);
    drop(pod);
}
