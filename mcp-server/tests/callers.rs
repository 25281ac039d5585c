//! Per-caller access against the `pgmcp-server` binary, real PostgreSQL and the Entra fake,
//! through the official MCP Python SDK: an app-only agent (client credentials, an app role) and
//! a signed-in user (a delegated token with groups) reach the same server, each sees and reads
//! only what its caller class grants, row-level security filters rows by the verified caller,
//! no SQL widens them, and a caller in no class is refused with 403.
#![allow(clippy::unwrap_used)] // a failed step fails the test: panicking is the point

mod common;

use common::server::{ServerProcess, call_tool};
use common::{READER_PASSWORD, Shop, shop};
use pgmcp_tests::entra::{App, EntraFake, User};
use pgmcp_tests::mcp::run_python_client;
use serde_json::{Value, json};

const TENANT: &str = "72f988bf-86f1-41af-91ab-2d7cd011db47";
/// The MCP server's app registration (the audience); its tokens carry security groups.
const SERVER_APP: &str = "44444444-4444-4444-8444-444444444444";
/// App role every caller needs (server.auth.entra.requiredRoles), and the one of the sales
/// class.
const ROLE: &str = "MCP.Read";
const SALES_ROLE: &str = "Sales.Read";
/// A Foundry agent: its app's client id and its service principal's object id.
const AGENT_APP: &str = "55555555-5555-4555-8555-555555555555";
const AGENT_OID: &str = "66666666-6666-4666-8666-666666666666";
/// Another application, with the server's app role but in no class.
const OTHER_APP: &str = "77777777-7777-4777-8777-777777777777";
const OTHER_OID: &str = "78787878-7878-4878-8878-787878787878";
const SECRET: &str = "client-secret-value";
/// VS Code (a public client) and two users in the support group.
const VSCODE_APP: &str = "aebc6443-996d-45c2-90f0-388ff96faa56";
const SUPPORT_GROUP: &str = "0c5e8a1b-2d3f-4a6b-9c7d-8e9f0a1b2c3d";
const ALICE_OID: &str = "a11ce000-0000-4000-8000-000000000001";
const BOB_OID: &str = "b0b00000-0000-4000-8000-000000000002";
/// A team lead in the support group: the example's second policy shows her every ticket.
const CAROL_OID: &str = "ca401000-0000-4000-8000-000000000003";
const LEAD_ROLE: &str = "Support.Lead";
const PASSWORD: &str = "user-password-1";

/// The shop plus what the operator makes for two caller classes: a NOINHERIT login role with
/// CONNECT only, member of `<login>__sales` (orders and customers) and `<login>__support`
/// (products, and `support.tickets` under the row-level security of
/// `manifests/examples/per-caller-access.sql`, loaded as docs/per-caller-access.md tells users to). The login
/// role is made like the operator makes it on PostgreSQL 15 (ALTER ROLE … NOINHERIT); also a
/// function anyone may call that writes the claims setting.
async fn classes_shop(test: &str) -> (Shop, String) {
    let shop = shop(test).await;
    let admin = shop.db.connect().await.unwrap();
    let login = format!("{}_cl", shop.db.name);
    admin
        .batch_execute(&format!(
            "CREATE ROLE \"{login}\" LOGIN NOINHERIT PASSWORD '{READER_PASSWORD}';
             GRANT CONNECT ON DATABASE \"{db}\" TO \"{login}\";
             CREATE ROLE \"{login}__sales\" NOLOGIN;
             CREATE ROLE \"{login}__support\" NOLOGIN;
             GRANT \"{login}__sales\", \"{login}__support\" TO \"{login}\";
             GRANT USAGE ON SCHEMA public TO \"{login}__sales\", \"{login}__support\";
             GRANT SELECT ON orders, customers TO \"{login}__sales\";
             GRANT SELECT ON products TO \"{login}__support\";
             CREATE SCHEMA support;
             CREATE TABLE support.tickets (id int PRIMARY KEY, owner_oid uuid NOT NULL, subject text);
             INSERT INTO support.tickets VALUES (1, '{ALICE_OID}', 'Keyboard arrived broken'),
                                                (2, '{ALICE_OID}', 'Invoice address'),
                                                (3, '{BOB_OID}', 'Refund for the monitor');
             GRANT USAGE ON SCHEMA support TO \"{login}__support\";
             GRANT SELECT ON support.tickets TO \"{login}__support\";
             CREATE FUNCTION claim(claims text) RETURNS text LANGUAGE sql
                 AS $$ SELECT set_config('pgmcp.caller', claims, true) $$;",
            db = shop.db.name
        ))
        .await
        .unwrap();
    admin
        .batch_execute(include_str!(
            "../../manifests/examples/per-caller-access.sql"
        ))
        .await
        .unwrap();
    (shop, login)
}

fn tables(names: &[&str]) -> Value {
    json!([{"schema": "public", "tables": names}])
}

/// The configuration the operator writes for the two classes (no default grants).
fn config(login: &str) -> Value {
    json!({
        "scope": {
            "grants": [],
            "callers": [
                {"name": "sales", "role": format!("{login}__sales"),
                 "match": {"appRoles": [SALES_ROLE]},
                 "grants": tables(&["orders", "customers"])},
                {"name": "support", "role": format!("{login}__support"),
                 "match": {"groups": [SUPPORT_GROUP]},
                 "grants": [{"schema": "public", "tables": ["products"]},
                            {"schema": "support", "tables": ["tickets"]}]},
            ]
        }
    })
}

async fn start(shop: &Shop, login: &str, fake: &EntraFake, config: &Value) -> ServerProcess {
    let (dir, args, env) = server_args(shop, login, fake, config);
    ServerProcess::start_args(dir, args, &env).await
}

/// The directory, arguments and environment of the server for `config`, logging in as `login`.
fn server_args(
    shop: &Shop,
    login: &str,
    fake: &EntraFake,
    config: &Value,
) -> (tempfile::TempDir, Vec<String>, Vec<(String, String)>) {
    let dir = tempfile::tempdir().unwrap();
    let password_file = dir.path().join("password");
    std::fs::write(&password_file, READER_PASSWORD).unwrap();
    let config_file = dir.path().join("config.json");
    std::fs::write(&config_file, config.to_string()).unwrap();
    let pg = shop.db.server();
    let args = vec![
        "--config".to_owned(),
        config_file.display().to_string(),
        "--database-url".to_owned(),
        format!(
            "postgres://{login}@{}:{}/{}?sslmode=disable",
            pg.host(),
            pg.port(),
            shop.db.name
        ),
        "--password-file".to_owned(),
        password_file.display().to_string(),
        "--entra-tenant-id".to_owned(),
        TENANT.to_owned(),
        "--entra-audience".to_owned(),
        SERVER_APP.to_owned(),
        "--entra-required-role".to_owned(),
        ROLE.to_owned(),
        "--entra-authority-host".to_owned(),
        fake.url().to_owned(),
    ];
    let env = vec![(
        "SSL_CERT_FILE".to_owned(),
        fake.ca_cert().display().to_string(),
    )];
    (dir, args, env)
}

/// The tenant: the server's app (emitting groups), the agent and another app (client
/// credentials), VS Code, and Alice and Bob in the support group; everyone holds MCP.Read,
/// the agent also Sales.Read.
async fn tenant() -> EntraFake {
    let fake = EntraFake::start().await.unwrap();
    fake.add_tenant(TENANT).unwrap();
    let app = |client_id: &str, object_id: &str, name: &str, secret: bool| App {
        client_id: client_id.into(),
        object_id: object_id.into(),
        display_name: name.into(),
        secret: secret.then(|| SECRET.into()),
        access_token_version: 2,
        ..App::default()
    };
    fake.register_app(
        TENANT,
        App {
            group_membership_claims: true,
            ..app(
                SERVER_APP,
                "88888888-8888-4888-8888-888888888888",
                "pgmcp shop",
                false,
            )
        },
    )
    .unwrap();
    fake.register_app(TENANT, app(AGENT_APP, AGENT_OID, "sales agent", true))
        .unwrap();
    fake.register_app(TENANT, app(OTHER_APP, OTHER_OID, "reporting job", true))
        .unwrap();
    fake.register_app(
        TENANT,
        app(
            VSCODE_APP,
            "99999999-9999-4999-8999-999999999999",
            "Visual Studio Code",
            false,
        ),
    )
    .unwrap();
    for (oid, upn, name) in [
        (ALICE_OID, "alice@contoso.com", "Alice"),
        (BOB_OID, "bob@contoso.com", "Bob"),
        (CAROL_OID, "carol@contoso.com", "Carol"),
    ] {
        fake.add_user(
            TENANT,
            User {
                object_id: oid.into(),
                user_principal_name: upn.into(),
                display_name: name.into(),
                password: PASSWORD.into(),
                groups: vec![SUPPORT_GROUP.into()],
            },
        )
        .unwrap();
        fake.assign_app_role(TENANT, SERVER_APP, oid, ROLE);
    }
    for client in [AGENT_APP, OTHER_APP] {
        fake.assign_app_role(TENANT, SERVER_APP, client, ROLE);
    }
    fake.assign_app_role(TENANT, SERVER_APP, AGENT_APP, SALES_ROLE);
    fake.assign_app_role(TENANT, SERVER_APP, CAROL_OID, LEAD_ROLE);
    fake
}

/// A token from the fake's token endpoint for `form` (client credentials or a user's password).
async fn token(fake: &EntraFake, form: &[(&str, &str)]) -> String {
    let ca = std::fs::read(fake.ca_cert()).unwrap();
    let client = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(&ca).unwrap()])
        .build()
        .unwrap();
    let response = client
        .post(format!("{}/{TENANT}/oauth2/v2.0/token", fake.url()))
        .form(form)
        .send()
        .await
        .unwrap();
    let body: Value = serde_json::from_slice(&response.bytes().await.unwrap()).unwrap();
    body["access_token"]
        .as_str()
        .unwrap_or_else(|| panic!("no token: {body}"))
        .to_owned()
}

async fn app_token(fake: &EntraFake, client_id: &str) -> String {
    let scope = format!("api://{SERVER_APP}/.default");
    token(
        fake,
        &[
            ("grant_type", "client_credentials"),
            ("client_id", client_id),
            ("client_secret", SECRET),
            ("scope", &scope),
        ],
    )
    .await
}

/// What VS Code gets for a signed-in user: a delegated token for the server.
async fn user_token(fake: &EntraFake, upn: &str) -> String {
    let scope = format!("api://{SERVER_APP}/user_impersonation");
    token(
        fake,
        &[
            ("grant_type", "password"),
            ("client_id", VSCODE_APP),
            ("username", upn),
            ("password", PASSWORD),
            ("scope", &scope),
        ],
    )
    .await
}

/// Runs the Python SDK against `server` with `token`, calling `calls`; its JSON document.
fn python(server: &ServerProcess, token: &str, calls: &[(&str, Value)]) -> Value {
    let script = json!({"calls": calls.iter().map(|(tool, arguments)| json!({"tool": tool, "arguments": arguments})).collect::<Vec<_>>()});
    let args = [
        "--url".to_owned(),
        server.url(),
        "--bearer".to_owned(),
        token.to_owned(),
    ];
    let out = run_python_client(&args, &script, &[]);
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        server.log()
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The rows `sql` returns to the caller of `token`, through the Python SDK.
fn rows_as(server: &ServerProcess, token: &str, sql: &str) -> Value {
    let doc = python(server, token, &[("query", json!({ "sql": sql }))]);
    doc["results"][0]["structuredContent"]["rows"].clone()
}

/// `list_tables` over raw HTTP as the caller of `token`: the tool result, or the status and
/// head of a refusal.
async fn list_tables_as(server: &ServerProcess, token: &str) -> Result<Value, (u16, String)> {
    let bearer = format!("Bearer {token}");
    call_tool(
        server.port,
        &[("Authorization", &bearer)],
        "list_tables",
        json!({}),
    )
    .await
}

fn listed(result: &Value) -> Vec<String> {
    let content = &result["structuredContent"];
    let name = content["columns"]
        .as_array()
        .unwrap()
        .iter()
        .position(|c| c["name"] == "name")
        .unwrap();
    let mut names: Vec<String> = content["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| row[name].as_str().unwrap().to_owned())
        .collect();
    names.sort();
    names
}

fn refused(result: &Value, why: &str) {
    assert_eq!(result["isError"], json!(true), "{result}");
    let text = result["text"].as_str().unwrap();
    assert!(text.contains(why), "{why:?} not in {text:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_and_a_user_each_read_only_what_their_class_grants() {
    let fake = tenant().await;
    let (shop, login) = classes_shop("callers classes").await;
    let server = start(&shop, &login, &fake, &config(&login)).await;

    // The Foundry agent: app-only, app role Sales.Read.
    let agent = app_token(&fake, AGENT_APP).await;
    let doc = python(
        &server,
        &agent,
        &[
            ("list_tables", json!({})),
            ("query", json!({"sql": "SELECT count(*) FROM orders"})),
            ("query", json!({"sql": "SELECT count(*) FROM products"})),
            ("query", json!({"sql": "SELECT current_user::text"})),
            ("describe_table", json!({"table": "tickets"})),
        ],
    );
    let results = &doc["results"];
    assert_eq!(listed(&results[0]), ["customers", "orders"]);
    assert_eq!(results[1]["structuredContent"]["rows"], json!([[5]]));
    refused(
        &results[2],
        "public.products is not available to this server",
    );
    assert_eq!(
        results[3]["structuredContent"]["rows"],
        json!([[format!("{login}__sales")]])
    );
    assert_eq!(results[4]["isError"], json!(true), "{}", results[4]);

    // VS Code for Alice: a delegated token whose groups put her in support.
    let alice = user_token(&fake, "alice@contoso.com").await;
    let doc = python(
        &server,
        &alice,
        &[
            ("list_tables", json!({})),
            (
                "query",
                json!({"sql": "SELECT id, subject FROM tickets ORDER BY id"}),
            ),
            ("query", json!({"sql": "SELECT count(*) FROM orders"})),
            (
                "query",
                json!({"sql": "SELECT current_setting('pgmcp.caller', true)::jsonb AS me"}),
            ),
        ],
    );
    let results = &doc["results"];
    assert_eq!(listed(&results[0]), ["products", "tickets"]);
    assert_eq!(
        results[1]["structuredContent"]["rows"],
        json!([[1, "Keyboard arrived broken"], [2, "Invoice address"]])
    );
    refused(&results[2], "public.orders is not available to this server");
    let me = &results[3]["structuredContent"]["rows"][0][0];
    assert_eq!(me["oid"], json!(ALICE_OID), "{me}");
    assert_eq!(me["tid"], json!(TENANT));
    assert_eq!(me["appid"], json!(VSCODE_APP));
    assert_eq!(me["groups"], json!([SUPPORT_GROUP]));
    assert_eq!(me["roles"], json!([ROLE]));
    assert_eq!(me["name"], json!("Alice"));
    assert_eq!(me["preferred_username"], json!("alice@contoso.com"));
    assert_eq!(me["class"], json!("support"));

    // Bob, same class: the same query returns his rows only.
    let bob = user_token(&fake, "bob@contoso.com").await;
    assert_eq!(
        rows_as(&server, &bob, "SELECT id, subject FROM tickets ORDER BY id"),
        json!([[3, "Refund for the monitor"]])
    );
    // Carol leads the team (app role Support.Lead): every ticket.
    let carol = user_token(&fake, "carol@contoso.com").await;
    assert_eq!(
        rows_as(&server, &carol, "SELECT id FROM tickets ORDER BY id"),
        json!([[1], [2], [3]])
    );

    // The audit events name the caller and its class.
    let audit = server.audit_events();
    assert!(
        audit
            .iter()
            .any(|event| event["caller"]["class"] == json!("support")
                && event["caller"]["oid"] == json!(BOB_OID)),
        "{audit:#?}"
    );
    assert!(
        audit
            .iter()
            .any(|event| event["caller"]["class"] == json!("sales")),
        "{audit:#?}"
    );

    // A third caller, with the server's app role but in no class: 403 naming the mapping.
    let other = app_token(&fake, OTHER_APP).await;
    let (status, head) = list_tables_as(&server, &other).await.unwrap_err();
    assert_eq!(status, 403, "{head}");
    let challenge = pgmcp_tests::http::header(&head, "www-authenticate").unwrap();
    assert!(
        challenge.contains("insufficient_scope")
            && challenge.contains("none of this server's caller classes (sales, support)")
            && challenge.contains(OTHER_OID),
        "{challenge}"
    );
    let script = json!({"calls": [{"tool": "list_tables", "arguments": {}}]});
    let out = run_python_client(
        &[
            "--url".to_owned(),
            server.url(),
            "--bearer".to_owned(),
            other,
        ],
        &script,
        &[],
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("403"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_sql_widens_what_row_level_security_shows_a_caller() {
    let fake = tenant().await;
    let (shop, login) = classes_shop("callers forged").await;
    let server = start(&shop, &login, &fake, &config(&login)).await;
    let alice = user_token(&fake, "alice@contoso.com").await;
    let bob_claims = json!({"oid": BOB_OID}).to_string();
    let attempts = [
        // Writing the claims or switching role directly: the SQL guard.
        (
            format!("SELECT set_config('pgmcp.caller', '{bob_claims}', true)"),
            "refused",
        ),
        (
            format!(
                "SELECT pg_catalog.set_config('pgmcp.caller', '{bob_claims}', false), * FROM tickets"
            ),
            "refused",
        ),
        ("SET ROLE NONE".to_owned(), "refused"),
        (format!("SET ROLE \"{login}__sales\""), "refused"),
        ("RESET ROLE".to_owned(), "refused"),
        (format!("SET SESSION AUTHORIZATION \"{login}\""), "refused"),
        // Through a function that writes the setting: the rows are withheld.
        (
            format!("SELECT claim('{bob_claims}'), * FROM tickets"),
            "changed the role or the caller claims",
        ),
        (
            format!("SELECT * FROM tickets WHERE claim('{bob_claims}') IS NOT NULL"),
            "changed the role or the caller claims",
        ),
    ];
    let calls: Vec<(&str, Value)> = attempts
        .iter()
        .map(|(sql, _)| ("query", json!({ "sql": sql })))
        .chain([(
            "query",
            json!({"sql": "SELECT id FROM tickets ORDER BY id"}),
        )])
        .collect();
    let doc = python(&server, &alice, &calls);
    let results = doc["results"].as_array().unwrap();
    for ((sql, why), result) in attempts.iter().zip(results) {
        assert_eq!(result["isError"], json!(true), "{sql}: {result}");
        let text = result["text"].as_str().unwrap();
        assert!(text.contains(why), "{sql}: {why:?} not in {text:?}");
        assert!(
            !text.contains("Refund"),
            "{sql}: Bob's ticket leaked: {text}"
        );
    }
    // Still Alice's rows only, afterwards.
    assert_eq!(
        results.last().unwrap()["structuredContent"]["rows"],
        json!([[1], [2]])
    );
}

#[tokio::test]
async fn caller_classes_without_entra_refuse_to_start_naming_why() {
    let (shop, login) = classes_shop("callers no entra").await;
    let dir = tempfile::tempdir().unwrap();
    let config_file = dir.path().join("config.json");
    std::fs::write(&config_file, config(&login).to_string()).unwrap();
    let password_file = dir.path().join("password");
    std::fs::write(&password_file, READER_PASSWORD).unwrap();
    let pg = shop.db.server();
    let url = format!(
        "postgres://{login}@{}:{}/{}?sslmode=disable",
        pg.host(),
        pg.port(),
        shop.db.name
    );
    for extra in [&["--listen", "127.0.0.1:0"][..], &["--stdio"][..]] {
        let out = std::process::Command::new(common::server::BIN)
            .args(["--config", config_file.to_str().unwrap()])
            .args(["--database-url", &url])
            .args(["--password-file", password_file.to_str().unwrap()])
            .args(extra)
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        assert!(!out.status.success(), "{extra:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("refusing to serve caller classes (sales, support)")
                && stderr.contains("verified Microsoft Entra token"),
            "{extra:?}: {stderr}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_class_role_that_can_write_stops_the_server_naming_its_class() {
    let fake = tenant().await;
    let (shop, login) = classes_shop("callers unsafe class").await;
    shop.db
        .connect()
        .await
        .unwrap()
        .batch_execute(&format!("GRANT INSERT ON orders TO \"{login}__sales\""))
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config_file = dir.path().join("config.json");
    std::fs::write(&config_file, config(&login).to_string()).unwrap();
    let password_file = dir.path().join("password");
    std::fs::write(&password_file, READER_PASSWORD).unwrap();
    let pg = shop.db.server();
    let out = tokio::time::timeout(
        std::time::Duration::from_secs(60),
        tokio::process::Command::new(common::server::BIN)
            .args(["--config", config_file.to_str().unwrap()])
            .arg("--database-url")
            .arg(format!(
                "postgres://{login}@{}:{}/{}?sslmode=disable",
                pg.host(),
                pg.port(),
                shop.db.name
            ))
            .args(["--password-file", password_file.to_str().unwrap()])
            .args(["--entra-tenant-id", TENANT, "--entra-audience", SERVER_APP])
            .args(["--entra-required-role", ROLE])
            .args(["--entra-authority-host", fake.url()])
            .args(["--listen", "127.0.0.1:0"])
            .env("SSL_CERT_FILE", fake.ca_cert())
            .stdin(std::process::Stdio::null())
            .output(),
    )
    .await
    .expect("the server stops by itself")
    .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("caller class sales: the role can write to or owns public.orders"),
        "{stderr}"
    );
    assert!(!stderr.contains("caller class support"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_class_role_the_server_cannot_switch_to_keeps_it_waiting_with_the_reason() {
    let fake = tenant().await;
    let (shop, login) = classes_shop("callers not a member").await;
    let admin = shop.db.connect().await.unwrap();
    // As if the operator had not made the membership yet.
    admin
        .batch_execute(&format!("REVOKE \"{login}__support\" FROM \"{login}\""))
        .await
        .unwrap();
    let (dir, args, env) = server_args(&shop, &login, &fake, &config(&login));
    let server = ServerProcess::start_args_live(dir, args, &env).await;
    let reason = pgmcp_tests::wait_for(
        "/readyz to say why the server is not ready",
        std::time::Duration::from_secs(30),
        || async {
            let (status, _, body) = server.request("GET", "/readyz", &[], "").await.ok()?;
            (status == 503 && body.contains("failed to act as role")).then_some(body)
        },
    )
    .await;
    assert!(
        reason.contains(&format!("{login}__support")) && reason.contains("42501"),
        "{reason}"
    );
    // A tool call meanwhile says the same.
    let alice = user_token(&fake, "alice@contoso.com").await;
    let waiting = list_tables_as(&server, &alice).await.unwrap();
    assert_eq!(waiting["isError"], json!(true), "{waiting}");
    let text = waiting["content"][0]["text"].as_str().unwrap();
    assert!(
        text.contains("not ready yet") && text.contains(&format!("{login}__support")),
        "{text}"
    );
    // Once the membership exists, the server is ready by itself.
    admin
        .batch_execute(&format!("GRANT \"{login}__support\" TO \"{login}\""))
        .await
        .unwrap();
    pgmcp_tests::wait_for(
        "the server ready",
        std::time::Duration::from_secs(60),
        || async {
            let (status, _, _) = server.request("GET", "/readyz", &[], "").await.ok()?;
            (status == 200).then_some(())
        },
    )
    .await;
    let ready = list_tables_as(&server, &alice).await.unwrap();
    assert_eq!(ready["isError"], json!(false), "{ready}");
}
