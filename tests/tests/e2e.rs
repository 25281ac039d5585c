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
    db.load_shop().await.unwrap();

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

/// The Done-when of per-caller access, through the operator: a password-mode binding with two
/// caller classes and Entra caller authentication (the Entra fake). The operator creates the
/// class roles and writes the classes into the server's config; the pod runner starts the
/// server as rendered; an agent (app-only token, app role) and a user (delegated token, group)
/// each read only their class's tables through the official MCP Python SDK, row-level security
/// (the worked example of docs/per-caller-access.md) filters tickets by the verified caller, and a caller in no
/// class is refused. Deleting the binding drops every class role.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caller_classes_through_the_operator_serve_each_caller_its_own_tables() {
    use pgmcp_tests::entra::{App, EntraFake, User};

    const TENANT: &str = "72f988bf-86f1-41af-91ab-2d7cd011db47";
    const SERVER_APP: &str = "44444444-4444-4444-8444-444444444444";
    const AGENT_APP: &str = "55555555-5555-4555-8555-555555555555";
    const OTHER_APP: &str = "77777777-7777-4777-8777-777777777777";
    const VSCODE_APP: &str = "aebc6443-996d-45c2-90f0-388ff96faa56";
    const GROUP: &str = "0c5e8a1b-2d3f-4a6b-9c7d-8e9f0a1b2c3d";
    const ALICE: &str = "a11ce000-0000-4000-8000-000000000001";
    const BOB: &str = "b0b00000-0000-4000-8000-000000000002";
    const SECRET: &str = "client-secret-value";

    let env = TestEnv::shared();
    let pg = Postgres::shared();
    let db = pg.create_database("e2e_callers").await.unwrap();
    let role = format!("{}_mcp", db.name);
    db.load_shop().await.unwrap();
    let admin = db.connect().await.unwrap();
    admin
        .batch_execute(&format!(
            "CREATE SCHEMA support;
             CREATE TABLE support.tickets (id int PRIMARY KEY, owner_oid uuid NOT NULL, subject text);
             INSERT INTO support.tickets VALUES (1, '{ALICE}', 'Keyboard arrived broken'),
                                                (2, '{BOB}', 'Refund for the monitor');"
        ))
        .await
        .unwrap();
    let rls = paths::workspace_root().join("manifests/examples/per-caller-access.sql");
    admin
        .batch_execute(&std::fs::read_to_string(rls).unwrap())
        .await
        .unwrap();

    let fake = EntraFake::start().await.unwrap();
    fake.add_tenant(TENANT).unwrap();
    let app = |client_id: &str, object_id: &str, secret: bool| App {
        client_id: client_id.into(),
        object_id: object_id.into(),
        display_name: client_id.into(),
        secret: secret.then(|| SECRET.into()),
        access_token_version: 2,
        ..App::default()
    };
    fake.register_app(
        TENANT,
        App {
            group_membership_claims: true,
            ..app(SERVER_APP, "88888888-8888-4888-8888-888888888888", false)
        },
    )
    .unwrap();
    fake.register_app(
        TENANT,
        app(AGENT_APP, "66666666-6666-4666-8666-666666666666", true),
    )
    .unwrap();
    fake.register_app(
        TENANT,
        app(OTHER_APP, "78787878-7878-4878-8878-787878787878", true),
    )
    .unwrap();
    fake.register_app(
        TENANT,
        app(VSCODE_APP, "99999999-9999-4999-8999-999999999999", false),
    )
    .unwrap();
    fake.add_user(
        TENANT,
        User {
            object_id: ALICE.into(),
            user_principal_name: "alice@contoso.com".into(),
            display_name: "Alice".into(),
            password: "alice-password".into(),
            groups: vec![GROUP.into()],
        },
    )
    .unwrap();
    for principal in [AGENT_APP, OTHER_APP, ALICE] {
        fake.assign_app_role(TENANT, SERVER_APP, principal, "MCP.Read");
    }
    fake.assign_app_role(TENANT, SERVER_APP, AGENT_APP, "Sales.Read");

    let ns = env.namespace("e2e-callers").await.unwrap();
    create_admin_secret(&ns, pg);
    let binding = password_example(pg.host(), pg.port(), &db.name, &role)
        .replace(
            "  access:\n    grants:\n      - schema: public\n        tables: [\"*\"]\n",
            &format!(
                "  access:
    callers:
      - name: sales
        match:
          appRoles: [Sales.Read]
        grants:
          - schema: public
            tables: [orders, customers]
      - name: support
        match:
          groups: [{GROUP}]
        grants:
          - schema: support
            tables: [tickets]
"
            ),
        )
        .replace(
            "    auth:\n      none:\n        acknowledgeInsecure: true\n",
            &format!(
                "    auth:
      entra:
        tenantId: {TENANT}
        audience: {SERVER_APP}
        requiredRoles: [MCP.Read]
        authorityHost: {}
",
                fake.url()
            ),
        );
    assert!(
        binding.contains("callers:") && binding.contains("entra:"),
        "{binding}"
    );
    let _operator = Operator::start(env, &ns.name, "op-e2e-callers", &[])
        .await
        .unwrap();
    kubectl_apply(&ns, &binding);
    let bindings: Api<PostgresMcpBinding> = ns.api();
    wait_condition(&bindings, "shop", "DatabaseReady", "True", None, WAIT).await;
    let node = podrunner::Webhook {
        authority_host: fake.url().to_owned(),
        env: vec![(
            "SSL_CERT_FILE".to_owned(),
            fake.ca_cert().display().to_string(),
        )],
    };
    let pod = podrunner::run_deployment_pod_with(
        &ns.client,
        &ns.name,
        "shop-mcp",
        &paths::server_bin(),
        WAIT,
        Some(&node),
    )
    .await
    .unwrap();

    let ca = std::fs::read(fake.ca_cert()).unwrap();
    let http = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(&ca).unwrap()])
        .build()
        .unwrap();
    let token = |form: Vec<(&'static str, String)>| {
        let http = http.clone();
        let url = format!("{}/{TENANT}/oauth2/v2.0/token", fake.url());
        async move {
            let body: serde_json::Value = http
                .post(url)
                .form(&form)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            body["access_token"].as_str().unwrap().to_owned()
        }
    };
    let app_token = |client: &str| {
        token(vec![
            ("grant_type", "client_credentials".into()),
            ("client_id", client.into()),
            ("client_secret", SECRET.into()),
            ("scope", format!("api://{SERVER_APP}/.default")),
        ])
    };
    let agent = app_token(AGENT_APP).await;
    let other = app_token(OTHER_APP).await;
    let alice = token(vec![
        ("grant_type", "password".into()),
        ("client_id", VSCODE_APP.into()),
        ("username", "alice@contoso.com".into()),
        ("password", "alice-password".into()),
        ("scope", format!("api://{SERVER_APP}/user_impersonation")),
    ])
    .await;
    let run = |token: &str, calls: serde_json::Value| {
        let args = [
            "--url".to_owned(),
            pod.url(),
            "--bearer".to_owned(),
            token.to_owned(),
        ];
        mcp::run_python_client(&args, &json!({ "calls": calls }), &[])
    };
    let doc = |out: std::process::Output| -> serde_json::Value {
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let sql = |sql: &str| json!({"tool": "query", "arguments": {"sql": sql}});
    let tables = json!({"tool": "list_tables", "arguments": {}});

    let agent_doc = doc(run(
        &agent,
        json!([
            tables,
            sql("SELECT count(*) FROM orders"),
            sql("SELECT id FROM tickets")
        ]),
    ));
    let listed = agent_doc["results"][0]["text"].as_str().unwrap();
    assert!(
        listed.contains("orders") && listed.contains("customers") && !listed.contains("tickets"),
        "{listed}"
    );
    assert_eq!(agent_doc["results"][1]["isError"], json!(false));
    assert_eq!(agent_doc["results"][2]["isError"], json!(true));

    let alice_doc = doc(run(
        &alice,
        json!([
            tables,
            sql("SELECT id FROM tickets ORDER BY id"),
            sql("SELECT count(*) FROM orders")
        ]),
    ));
    let listed = alice_doc["results"][0]["text"].as_str().unwrap();
    assert!(
        listed.contains("tickets") && !listed.contains("orders"),
        "{listed}"
    );
    assert_eq!(
        alice_doc["results"][1]["structuredContent"]["rows"],
        json!([[1]]),
        "row-level security shows Alice her ticket only"
    );
    assert_eq!(alice_doc["results"][2]["isError"], json!(true));

    let refused = run(&other, json!([tables]));
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("403"));

    // Deleting the binding drops the class roles with the principal.
    let mut pod = pod;
    bindings
        .delete("shop", &kube::api::DeleteParams::default())
        .await
        .unwrap();
    pod.stop_when_deleted(&ns.client, &ns.name, WAIT)
        .await
        .unwrap();
    let left: i64 = admin
        .query_one(
            "SELECT count(*) FROM pg_roles WHERE rolname = $1 OR rolname LIKE $1 || '\\_\\_%'",
            &[&role],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(left, 0, "the principal and its class roles are gone");
}
