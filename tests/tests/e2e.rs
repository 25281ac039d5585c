//! End to end: what the operator renders runs. A real PostgreSQL with the sample shop data, the
//! operator against the real control plane, the password-mode example applied with kubectl; the
//! operator creates the role, its password Secret and the grants, the pod runner starts the MCP
//! server exactly as the rendered Deployment describes (ConfigMap config, Secret password file,
//! args), and the official MCP Python SDK reads through it. The binding then reports Ready
//! from the Deployment's real availability; deleting it removes the role, its grants and the
//! server.

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

    // The official MCP Python SDK, through the endpoint the pod serves.
    let script = json!({"calls": [
        {"tool": "list_tables", "arguments": {}},
        {"tool": "query", "arguments": {"sql": "SELECT count(*) AS n FROM customers"}},
        {"tool": "query", "arguments": {"sql": "DELETE FROM customers"}},
    ]});
    let out = mcp::run_python_client(&["--url".to_owned(), pod.url()], &script, &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let results = doc["results"].as_array().unwrap();
    let tables = results[0]["text"].as_str().unwrap();
    assert!(
        tables.contains("customers") && tables.contains("orders"),
        "{tables}"
    );
    let expected: i64 = db
        .connect()
        .await
        .unwrap()
        .query_one("SELECT count(*) FROM customers", &[])
        .await
        .unwrap()
        .get(0);
    let count = &results[1]["structuredContent"];
    assert_eq!(count["rows"][0][0], json!(expected), "{count}");
    // The binding's limits (maxRows: 7) reached the server through the ConfigMap.
    assert_eq!(count["limits"]["max_rows"], json!(7), "{count}");
    assert_eq!(
        results[2]["isError"],
        json!(true),
        "writes are refused: {}",
        results[2]
    );

    let binding = wait_condition(&bindings, "shop", "Ready", "True", None, WAIT).await;
    let status = binding.status.unwrap();
    assert_eq!(status.principal.unwrap().name, role);

    // Deleting the binding removes the role and its grants, and the server's pod.
    let mut pod = pod;
    bindings
        .delete("shop", &kube::api::DeleteParams::default())
        .await
        .unwrap();
    pod.stop_when_deleted(&ns.client, &ns.name, WAIT)
        .await
        .unwrap();
    assert!(!pod.running(), "the server stopped with its pod");
    let admin = db.connect().await.unwrap();
    let remaining: i64 = admin
        .query_one("SELECT count(*) FROM pg_roles WHERE rolname = $1", &[&role])
        .await
        .unwrap()
        .get(0);
    assert_eq!(remaining, 0, "the role is gone");
    let acl: i64 = admin
        .query_one(
            "SELECT count(*) FROM pg_class c, aclexplode(c.relacl) a
             WHERE a.grantee NOT IN (SELECT oid FROM pg_roles) AND a.grantee <> 0",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(acl, 0, "no grants left to a dropped role");
}
