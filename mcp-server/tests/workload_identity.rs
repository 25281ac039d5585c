//! The server reaching PostgreSQL with AKS workload identity, end to end without Azure: a real
//! ServiceAccount token from the test apiserver (TokenRequest, audience
//! `api://AzureADTokenExchange`) in a file, the four webhook variables, the Entra fake
//! exchanging it (signature checked against the apiserver's JWKS, federated credential matched
//! on issuer, subject and audience), and real PostgreSQL accepting the issued token as the role's
//! password until the token's expiry — which is how Azure Database for PostgreSQL treats Entra
//! tokens: checked at login, with open connections outliving them.
#![allow(clippy::unwrap_used)] // a failed step fails the test: panicking is the point

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use common::server::{BIN, ServerProcess, call_tool};
use common::{Shop, shop};
use pgmcp_tests::entra::{
    App, EntraFake, FederatedCredential, Issued, POSTGRES_RESOURCE, TOKEN_EXCHANGE_AUDIENCE,
};
use pgmcp_tests::{TestEnv, TestNamespace};
use serde_json::json;

const TENANT: &str = "22222222-2222-4222-8222-222222222222";
/// The user-assigned managed identity of the binding.
const IDENTITY_CLIENT_ID: &str = "11111111-1111-4111-8111-111111111111";
const IDENTITY_OBJECT_ID: &str = "33333333-3333-4333-8333-333333333333";

async fn service_account_token(ns: &TestNamespace, name: &str) -> String {
    pgmcp_tests::entra::service_account_token(ns, name)
        .await
        .unwrap()
}

/// The Entra fake with the managed identity, a federated credential for
/// `system:serviceaccount:<ns>:sales-mcp`, and the test apiserver as a trusted issuer.
async fn entra(env: &TestEnv, ns: &TestNamespace) -> EntraFake {
    let fake = entra_without_credential(env).await;
    add_sales_mcp_credential(&fake, env, ns);
    fake
}

/// The Entra fake with the managed identity and the test apiserver as a trusted issuer, and
/// no federated credential yet.
async fn entra_without_credential(env: &TestEnv) -> EntraFake {
    let fake = EntraFake::start().await.unwrap();
    fake.add_tenant(TENANT).unwrap();
    fake.register_app(
        TENANT,
        App {
            client_id: IDENTITY_CLIENT_ID.into(),
            object_id: IDENTITY_OBJECT_ID.into(),
            display_name: "sales-mcp".into(),
            access_token_version: 1,
            ..App::default()
        },
    )
    .unwrap();
    fake.trust_issuer(env.server(), env.client().await.unwrap());
    fake
}

/// The federated credential that trusts `system:serviceaccount:<ns>:sales-mcp`.
fn add_sales_mcp_credential(fake: &EntraFake, env: &TestEnv, ns: &TestNamespace) {
    fake.add_federated_credential(
        TENANT,
        IDENTITY_CLIENT_ID,
        FederatedCredential {
            issuer: env.server().to_owned(),
            subject: format!("system:serviceaccount:{}:sales-mcp", ns.name),
            audiences: vec![TOKEN_EXCHANGE_AUDIENCE.to_owned()],
        },
    )
    .unwrap();
}

async fn readyz(server: &ServerProcess) -> (u16, String) {
    let (status, _, body) = server.request("GET", "/readyz", &[], "").await.unwrap();
    (status, body)
}

async fn postgres_accepts_issued_tokens(fake: &EntraFake, shop: &Shop) {
    let admin = Arc::new(shop.db.connect().await.unwrap());
    fake.accept_postgres_tokens_as_password(admin, &[(IDENTITY_CLIENT_ID, &shop.role)]);
}

/// Flags and the four webhook variables (plus `SSL_CERT_FILE` trusting the fake).
fn server_command(
    shop: &Shop,
    fake: &EntraFake,
    token_file: &str,
) -> (Vec<String>, Vec<(String, String)>) {
    let pg = shop.db.server();
    let args = vec![
        "--database-url".to_owned(),
        format!(
            "postgres://{}@{}:{}/{}?sslmode=require",
            shop.role,
            pg.host(),
            pg.port(),
            shop.db.name
        ),
        "--workload-identity".to_owned(),
        "--grant".to_owned(),
        "public".to_owned(),
    ];
    let env = vec![
        ("AZURE_CLIENT_ID".to_owned(), IDENTITY_CLIENT_ID.to_owned()),
        ("AZURE_TENANT_ID".to_owned(), TENANT.to_owned()),
        (
            "AZURE_FEDERATED_TOKEN_FILE".to_owned(),
            token_file.to_owned(),
        ),
        ("AZURE_AUTHORITY_HOST".to_owned(), fake.url().to_owned()),
        (
            "SSL_CERT_FILE".to_owned(),
            fake.ca_cert().display().to_string(),
        ),
    ];
    (args, env)
}

fn postgres_tokens(fake: &EntraFake) -> Vec<Issued> {
    fake.issued()
        .into_iter()
        .filter(|i| i.resource == POSTGRES_RESOURCE && i.client_id == IDENTITY_CLIENT_ID)
        .collect()
}

async fn count_orders(server: &ServerProcess) -> serde_json::Value {
    call_tool(
        server.port,
        &[],
        "query",
        json!({"sql": "SELECT count(*) FROM orders"}),
    )
    .await
    .unwrap()
}

/// Backend pids of the server's connections.
async fn server_connections(shop: &Shop) -> Vec<i32> {
    let admin = shop.db.connect().await.unwrap();
    admin
        .query(
            "SELECT a.pid FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid)
             WHERE a.usename = $1 AND a.application_name = 'pgmcp-server' AND s.ssl ORDER BY 1",
            &[&shop.role],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_logs_in_with_a_workload_identity_token_and_refreshes_it() {
    let env = TestEnv::shared();
    let ns = env.namespace("workload identity").await.unwrap();
    let shop = shop("workload identity").await;
    let fake = entra(env, &ns).await;
    // Short-lived tokens, so expiry and refresh happen within the test.
    let lifetime = Duration::from_secs(10);
    fake.set_token_lifetime(lifetime);
    postgres_accepts_issued_tokens(&fake, &shop).await;

    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("azure-identity-token");
    let first_assertion = service_account_token(&ns, "sales-mcp").await;
    std::fs::write(&token_file, &first_assertion).unwrap();
    let (args, vars) = server_command(&shop, &fake, &token_file.display().to_string());
    let server = ServerProcess::start_args(dir, args, &vars).await;

    // One exchange of the projected token, and TLS connections logged in with the result.
    let issued = postgres_tokens(&fake);
    assert!(!issued.is_empty(), "{}", server.log());
    assert_eq!(
        issued[0].assertion.as_deref(),
        Some(first_assertion.as_str())
    );
    let result = count_orders(&server).await;
    assert_eq!(
        result["structuredContent"]["rows"],
        json!([[5]]),
        "{result}"
    );
    let before = server_connections(&shop).await;
    assert!(!before.is_empty(), "the server holds TLS connections");
    assert!(
        !server.log().contains(&issued[0].access_token[..40]),
        "the token is never logged"
    );

    // The kubelet rotates the projected token; the current Entra token expires.
    let rotated_assertion = service_account_token(&ns, "sales-mcp").await;
    assert_ne!(rotated_assertion, first_assertion);
    std::fs::write(&token_file, &rotated_assertion).unwrap();
    let expiry = issued.last().unwrap().expires_at;
    while SystemTime::now() <= expiry + Duration::from_secs(1) {
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    // Open connections outlive the token (PostgreSQL, like Azure, checks it at login only).
    let result = count_orders(&server).await;
    assert_eq!(result["isError"], json!(false), "{result}");
    let after = server_connections(&shop).await;
    assert!(
        before.iter().all(|pid| after.contains(pid)),
        "no reconnect was needed: {before:?} -> {after:?}"
    );

    // New connections log in with a refreshed token, exchanged from the rotated file.
    shop.db
        .connect()
        .await
        .unwrap()
        .execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = $1",
            &[&shop.role],
        )
        .await
        .unwrap();
    let result = count_orders(&server).await;
    assert_eq!(
        result["isError"],
        json!(false),
        "{result}\n{}",
        server.log()
    );
    let refreshed = postgres_tokens(&fake);
    let newest = refreshed.last().unwrap();
    assert!(refreshed.len() > issued.len(), "a new token was requested");
    assert_ne!(newest.access_token, issued[0].access_token);
    assert_eq!(
        newest.assertion.as_deref(),
        Some(rotated_assertion.as_str()),
        "the token file is read again for every exchange"
    );
    let reconnected = server_connections(&shop).await;
    assert!(
        !reconnected.is_empty() && reconnected.iter().all(|pid| !before.contains(pid)),
        "{before:?} -> {reconnected:?}"
    );

    // Entra unavailable while the token expires: new connections fail with a sentence naming
    // the identity, and the pool recovers on its own once Entra answers again.
    fake.set_outage(true);
    let expiry = newest.expires_at;
    while SystemTime::now() <= expiry + Duration::from_secs(1) {
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // The connections already open keep serving through the outage.
    let result = count_orders(&server).await;
    assert_eq!(result["isError"], json!(false), "{result}");
    shop.db
        .connect()
        .await
        .unwrap()
        .execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = $1",
            &[&shop.role],
        )
        .await
        .unwrap();
    let result = count_orders(&server).await;
    assert_eq!(result["isError"], json!(true), "{result}");
    let text = result["content"][0]["text"].as_str().unwrap();
    assert!(
        text.contains("database is unavailable")
            && text.contains(IDENTITY_CLIENT_ID)
            && text.contains("temporarily unavailable"),
        "{text}"
    );
    fake.set_outage(false);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let result = count_orders(&server).await;
        if result["isError"] == json!(false) {
            assert_eq!(result["structuredContent"]["rows"], json!([[5]]));
            break;
        }
        assert!(Instant::now() < deadline, "never recovered: {result}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Entra refuses a federated credential for minutes after it was created (AADSTS700213 until it
/// has propagated). The server neither exits nor needs a restart: it stays up and unready,
/// says why, answers tool calls with that reason, and serves once Entra issues the token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_credential_still_propagating_keeps_the_server_unready_until_entra_accepts_it() {
    let env = TestEnv::shared();
    let ns = env
        .namespace("workload identity propagating")
        .await
        .unwrap();
    let shop = shop("workload identity propagating").await;
    let fake = entra_without_credential(env).await;
    postgres_accepts_issued_tokens(&fake, &shop).await;
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("azure-identity-token");
    std::fs::write(&token_file, service_account_token(&ns, "sales-mcp").await).unwrap();
    let (args, vars) = server_command(&shop, &fake, &token_file.display().to_string());
    // The credential is created just before the pod starts, as the operator does.
    let propagation = Duration::from_secs(8);
    fake.set_propagation_delay(propagation);
    add_sales_mcp_credential(&fake, env, &ns);
    let mut server = ServerProcess::start_args_live(dir, args, &vars).await;

    // Unready, naming the identity and Entra's reason.
    let subject = format!("system:serviceaccount:{}:sales-mcp", ns.name);
    let body = pgmcp_tests::wait_for("/readyz naming Entra's refusal", propagation, || async {
        let (status, body) = readyz(&server).await;
        (status == 503 && body.contains("AADSTS")).then_some(body)
    })
    .await;
    for expected in [
        "not ready: Microsoft Entra ID refused the exchange for the database token",
        &format!("workload identity client id {IDENTITY_CLIENT_ID} in tenant {TENANT}"),
        &format!(
            "AADSTS700213: No matching federated identity record found for presented assertion subject '{subject}'"
        ),
        "may not be accepted yet",
        "The server retries by itself",
    ] {
        assert!(body.contains(expected), "missing {expected:?} in:\n{body}");
    }
    assert_eq!(
        server.request("GET", "/healthz", &[], "").await.unwrap().0,
        200
    );
    // A tool call meanwhile is a tool error a model can act on, not an HTTP error.
    let result = count_orders(&server).await;
    assert_eq!(result["isError"], json!(true), "{result}");
    let text = result["content"][0]["text"].as_str().unwrap();
    assert!(
        text.starts_with("the server is not ready yet: Microsoft Entra ID refused")
            && text.contains(IDENTITY_CLIENT_ID)
            && text.contains("AADSTS700213")
            && text.ends_with("Try again in a minute"),
        "{text}"
    );
    assert!(postgres_tokens(&fake).is_empty());

    // Ready by itself once Entra accepts the credential: same process, no restart.
    pgmcp_tests::eventually("/readyz 200", Duration::from_secs(60), || async {
        readyz(&server).await.0 == 200
    })
    .await;
    assert!(!server.exited(), "{}", server.log());
    let result = count_orders(&server).await;
    assert_eq!(
        result["structuredContent"]["rows"],
        json!([[5]]),
        "{result}"
    );
    let log = server.log();
    let token = &postgres_tokens(&fake)[0].access_token;
    assert!(!log.contains(&token[..40]), "the token is never logged");
    // One warning per refused attempt, the attempts spaced 0.5 s, 1 s, 2 s, …
    let retries = log.matches("not ready yet; retrying").count();
    assert!((1..=6).contains(&retries), "{retries} retries:\n{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_account_without_a_federated_credential_keeps_the_server_unready_with_the_reason()
{
    let env = TestEnv::shared();
    let ns = env.namespace("workload identity refused").await.unwrap();
    let shop = shop("workload identity refused").await;
    let fake = entra(env, &ns).await;
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("azure-identity-token");
    // A token of another ServiceAccount: the federated credential names sales-mcp only.
    std::fs::write(&token_file, service_account_token(&ns, "other").await).unwrap();
    let (mut args, vars) = server_command(&shop, &fake, &token_file.display().to_string());
    let server =
        ServerProcess::start_args_live(tempfile::tempdir().unwrap(), args.clone(), &vars).await;
    let subject = format!("system:serviceaccount:{}:other", ns.name);
    let body = pgmcp_tests::wait_for(
        "/readyz naming Entra's refusal",
        Duration::from_secs(30),
        || async {
            let (status, body) = readyz(&server).await;
            (status == 503 && body.contains("AADSTS")).then_some(body)
        },
    )
    .await;
    for expected in [
        "failed to get a token for https://ossrdbms-aad.database.windows.net/.default",
        &format!("workload identity client id {IDENTITY_CLIENT_ID} in tenant {TENANT}"),
        "Entra ID answered HTTP 401: AADSTS700213: No matching federated identity record found",
        &format!("presented assertion subject '{subject}'"),
    ] {
        assert!(body.contains(expected), "missing {expected:?} in:\n{body}");
    }
    assert!(postgres_tokens(&fake).is_empty());
    drop(server);

    // An authority whose certificate is not trusted (no SSL_CERT_FILE here) is a configuration
    // error that no retry fixes (the CA bundle is read once): named at once, and the start
    // stops.
    args.extend(["--listen".to_owned(), "127.0.0.1:0".to_owned()]);
    let started = Instant::now();
    let out = tokio::process::Command::new("env")
        .args(
            vars.iter()
                .filter(|(k, _)| k != "SSL_CERT_FILE")
                .map(|(k, v)| format!("{k}={v}")),
        )
        .arg(BIN)
        .args(&args)
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "{:?}: {stderr}",
        started.elapsed()
    );
    assert!(
        stderr.contains("refusing to start") && stderr.contains("certificate"),
        "{stderr}"
    );
}

/// A `--stdio` server started while its credential propagates: it answers `initialize`, gives
/// tool errors naming Entra's reason, and runs the same calls once Entra accepts the
/// credential, in the same process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_stdio_a_credential_still_propagating_gives_tool_errors_until_entra_accepts_it() {
    use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _};

    let env = TestEnv::shared();
    let ns = env.namespace("workload identity stdio").await.unwrap();
    let shop = shop("workload identity stdio").await;
    let fake = entra_without_credential(env).await;
    postgres_accepts_issued_tokens(&fake, &shop).await;
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("azure-identity-token");
    std::fs::write(&token_file, service_account_token(&ns, "sales-mcp").await).unwrap();
    let (args, vars) = server_command(&shop, &fake, &token_file.display().to_string());
    fake.set_propagation_delay(Duration::from_secs(4));
    add_sales_mcp_credential(&fake, env, &ns);
    let mut child = tokio::process::Command::new(BIN)
        .arg("--stdio")
        .args(&args)
        .envs(vars.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut answers = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let mut send = async |message: serde_json::Value| {
        let mut line = message.to_string();
        line.push('\n');
        stdin.write_all(line.as_bytes()).await.unwrap();
    };
    send(
        json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25", "capabilities": {},
        "clientInfo": {"name": "raw-stdio", "version": "1"}}}),
    )
    .await;
    send(json!({"jsonrpc": "2.0", "method": "notifications/initialized"})).await;
    let mut next_id = 1;
    let mut results = Vec::new();
    // Calls until one returns rows (they are answered in order: one in flight at a time).
    let rows = loop {
        send(
            json!({"jsonrpc": "2.0", "id": next_id, "method": "tools/call",
            "params": {"name": "query", "arguments": {"sql": "SELECT count(*) FROM orders"}}}),
        )
        .await;
        let answer = loop {
            let text = tokio::time::timeout(Duration::from_secs(30), answers.next_line())
                .await
                .expect("an answer within 30 s")
                .unwrap()
                .expect("the server is still running");
            let answer: serde_json::Value = serde_json::from_str(&text).unwrap();
            if answer["id"] == json!(next_id) {
                break answer;
            }
        };
        let result = answer["result"].clone();
        if result["isError"] == json!(false) {
            break result["structuredContent"]["rows"].clone();
        }
        results.push(result);
        assert!(next_id < 200, "never ready: {results:?}");
        next_id += 1;
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert_eq!(rows, json!([[5]]));
    let first = results.first().expect("a call was made while not ready");
    let text = first["content"][0]["text"].as_str().unwrap();
    assert!(
        text.starts_with("the server is not ready yet: Microsoft Entra ID refused")
            && text.contains(IDENTITY_CLIENT_ID)
            && text.contains("AADSTS700213"),
        "{text}"
    );
    // Closing stdin ends the session and the process.
    drop(stdin);
    let status = tokio::time::timeout(Duration::from_secs(20), child.wait())
        .await
        .expect("the process ends after stdin closes")
        .unwrap();
    assert!(status.success(), "{status}");
}
