//! End to end: what the operator renders runs. A real PostgreSQL with the sample shop data, the
//! operator against the real control plane, the password-mode example applied with kubectl,
//! the pod runner starting the MCP server exactly as the rendered Deployment describes
//! (ConfigMap config, Secret password file, args), and an MCP client reading through it. The
//! binding then reports Ready from the Deployment's real availability.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use kube::api::Api;
use pgmcp_crds::v1alpha1::PostgresMcpBinding;
use pgmcp_tests::operator::Operator;
use pgmcp_tests::{Postgres, TestEnv, mcp, paths, podrunner, wait_for};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(60);

fn kubectl_ok(mut command: std::process::Command) {
    let out = command.output().unwrap();
    assert!(
        out.status.success(),
        "kubectl failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn the_deployment_the_operator_renders_serves_the_granted_tables() {
    let env = TestEnv::shared();
    let pg = Postgres::shared();
    let db = pg.create_database("e2e_shop").await.unwrap();
    let role = format!("{}_mcp", db.name);
    let role_password = pgmcp_tests::postgres::random_password().unwrap();
    {
        let admin = db.connect().await.unwrap();
        admin
            .batch_execute(
                &std::fs::read_to_string(paths::workspace_root().join("tests/fixtures/shop.sql"))
                    .unwrap(),
            )
            .await
            .unwrap();
        // The principal and grants the database step will create (stand-in until it exists).
        admin
            .batch_execute(&format!(
                "CREATE ROLE \"{role}\" LOGIN PASSWORD '{role_password}';
                 GRANT CONNECT ON DATABASE \"{db}\" TO \"{role}\";
                 GRANT USAGE ON SCHEMA public TO \"{role}\";
                 GRANT SELECT ON ALL TABLES IN SCHEMA public TO \"{role}\";",
                db = db.name
            ))
            .await
            .unwrap();
    }

    let ns = env.namespace("e2e").await.unwrap();
    for (secret, pairs) in [
        (
            "pg-admin",
            vec![
                ("username", "postgres".to_owned()),
                ("password", pg.password().to_owned()),
            ],
        ),
        ("shop-postgres", vec![("password", role_password.clone())]),
    ] {
        let mut create = ns.kubectl();
        create.args(["create", "secret", "generic", secret]);
        for (k, v) in pairs {
            create.arg(format!("--from-literal={k}={v}"));
        }
        kubectl_ok(create);
    }
    let example = std::fs::read_to_string(paths::examples_dir().join("password.yaml"))
        .unwrap()
        .replace(
            "host: postgres.databases.svc.cluster.local",
            &format!("host: {}\n    port: {}", pg.host(), pg.port()),
        )
        .replace("database: shop", &format!("database: {}", db.name))
        .replace("roleName: shop_mcp", &format!("roleName: {role}"))
        .replace("  server:\n", "  server:\n    limits:\n      maxRows: 7\n");
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), example).unwrap();
    let _operator = Operator::start(env, &ns.name, "op-e2e", &[]).await.unwrap();
    let mut apply = ns.kubectl();
    apply.arg("apply").arg("-f").arg(file.path());
    kubectl_ok(apply);

    let deployments: Api<Deployment> = ns.api();
    wait_for("the Deployment shop-mcp", WAIT, || async {
        deployments.get_opt("shop-mcp").await.ok().flatten()
    })
    .await;
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

    let bindings: Api<PostgresMcpBinding> = ns.api();
    wait_for("the binding Ready", WAIT, || async {
        let b = bindings.get("shop").await.ok()?;
        let ready = b
            .status
            .as_ref()?
            .conditions
            .iter()
            .find(|c| c.type_ == "Ready")?
            .clone();
        (ready.status == "True").then_some(())
    })
    .await;
    drop(pod);
}
