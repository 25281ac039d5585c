//! Caller authentication with Microsoft Entra ID, against the `pgmcp-server` binary and the
//! Entra fake (tests/src/entra.rs, over HTTPS with a test CA the server trusts through
//! `SSL_CERT_FILE`): a corpus of tokens with the exact status and `WWW-Authenticate` answer,
//! key rotation, the allow-list, RFC 9728 metadata, the audit log, and the official MCP Python
//! SDK calling tools with a token from the fake's token endpoint.
#![allow(clippy::unwrap_used)] // a failed step fails the test: panicking is the point

mod common;

use std::time::{Duration, Instant};

use base64::Engine as _;
use common::server::{ServerProcess, call_tool, http, shop_args};
use common::shop;
use pgmcp_tests::entra::{App, EntraFake};
use pgmcp_tests::mcp::run_python_client;
use serde_json::{Value, json};

const TENANT: &str = "72f988bf-86f1-41af-91ab-2d7cd011db47";
const OTHER_TENANT: &str = "0d1c6b5e-3f57-4c44-9b8e-6a0b1d1f2e3a";
/// Client id of the MCP server's app registration (the audience).
const SERVER_APP: &str = "44444444-4444-4444-8444-444444444444";
/// The calling agent: its app's client id, and its service principal's object id.
const AGENT_APP: &str = "55555555-5555-4555-8555-555555555555";
const AGENT_OID: &str = "66666666-6666-4666-8666-666666666666";
const AGENT_SECRET: &str = "agent-secret-value";
const ROLE: &str = "MCP.Read";

async fn fake() -> EntraFake {
    let fake = EntraFake::start().await.unwrap();
    fake.add_tenant(TENANT).unwrap();
    fake.add_tenant(OTHER_TENANT).unwrap();
    fake
}

/// The server over the shop database, requiring Entra tokens for [`SERVER_APP`] with [`ROLE`].
async fn server(test: &str, fake: &EntraFake, extra: &[&str]) -> (common::Shop, ServerProcess) {
    let shop = shop(test).await;
    let dir = tempfile::tempdir().unwrap();
    let mut args = shop_args(&shop, dir.path());
    for flag in [
        "--entra-tenant-id",
        TENANT,
        "--entra-audience",
        SERVER_APP,
        "--entra-required-role",
        ROLE,
        "--entra-authority-host",
        fake.url(),
    ]
    .iter()
    .chain(extra)
    {
        args.push((*flag).to_owned());
    }
    let env = [(
        "SSL_CERT_FILE".to_owned(),
        fake.ca_cert().display().to_string(),
    )];
    let server = ServerProcess::start_args(dir, args, &env).await;
    (shop, server)
}

fn b64(value: &Value) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(value.to_string())
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// What a caller gets back: the status and `WWW-Authenticate`, or 200 and the tool result.
#[derive(Debug)]
struct Answer {
    status: u16,
    challenge: Option<String>,
    retry_after: Option<String>,
    result: Option<Value>,
}

async fn list_tables(server: &ServerProcess, headers: &[(&str, &str)]) -> Answer {
    match call_tool(server.port, headers, "list_tables", json!({})).await {
        Ok(result) => Answer {
            status: 200,
            challenge: None,
            retry_after: None,
            result: Some(result),
        },
        Err((status, head)) => Answer {
            status,
            challenge: pgmcp_tests::http::header(&head, "www-authenticate"),
            retry_after: pgmcp_tests::http::header(&head, "retry-after"),
            result: None,
        },
    }
}

async fn with_token(server: &ServerProcess, token: &str) -> Answer {
    let bearer = format!("Bearer {token}");
    list_tables(server, &[("Authorization", &bearer)]).await
}

fn assert_ok(answer: &Answer, case: &str) {
    assert_eq!(answer.status, 200, "{case}: {answer:?}");
    let result = answer.result.as_ref().unwrap();
    assert_eq!(result["isError"], json!(false), "{case}: {result}");
    assert_eq!(result["structuredContent"]["row_count"], json!(5), "{case}");
}

/// 401 with `error="invalid_token"` and a description containing `why`.
fn assert_invalid(answer: &Answer, metadata: &str, why: &str, case: &str) {
    assert_eq!(answer.status, 401, "{case}: {answer:?}");
    let challenge = answer.challenge.as_deref().unwrap_or_default();
    assert!(
        challenge.starts_with("Bearer error=\"invalid_token\", error_description=\""),
        "{case}: {challenge}"
    );
    assert!(challenge.contains(why), "{case}: {challenge}");
    assert!(
        challenge.ends_with(&format!("resource_metadata=\"{metadata}\"")),
        "{case}: {challenge}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_checked_as_entra_issues_them() {
    let fake = fake().await;
    let (_shop, server) = server("auth corpus", &fake, &[]).await;
    let metadata = format!(
        "http://127.0.0.1:{}/.well-known/oauth-protected-resource/mcp",
        server.port
    );
    let claims = |version: u8, audience: &str, roles: &[&str]| {
        fake.app_token_claims(TENANT, version, audience, roles, AGENT_OID, AGENT_APP)
    };
    let good = claims(2, SERVER_APP, &[ROLE]);
    let sign = |claims: &Value| fake.sign(TENANT, claims).unwrap();

    // No token: the challenge alone, pointing at the metadata (RFC 9728 §5.1).
    let answer = list_tables(&server, &[]).await;
    assert_eq!(answer.status, 401);
    assert_eq!(
        answer.challenge.as_deref(),
        Some(format!("Bearer resource_metadata=\"{metadata}\"").as_str())
    );
    let answer = list_tables(&server, &[("Authorization", "Basic dXNlcjpwYXNz")]).await;
    assert_eq!(answer.status, 401, "another scheme is no bearer token");

    // A token in the query string is not looked at.
    let (status, head, _) = http(
        server.port,
        "POST",
        &format!("/mcp?access_token={}", sign(&good)),
        &common::server::MCP_HEADERS,
        r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"q","version":"1"}}}"#,
    )
    .await
    .unwrap();
    assert_eq!(status, 401, "query string token: {head}");
    assert_eq!(
        pgmcp_tests::http::header(&head, "www-authenticate"),
        Some(format!("Bearer resource_metadata=\"{metadata}\""))
    );

    assert_invalid(
        &with_token(&server, "not-a-jwt").await,
        &metadata,
        "not a signed JWT",
        "malformed",
    );
    let unsigned = format!(
        "{}.{}.",
        b64(&json!({"alg": "none", "typ": "JWT"})),
        b64(&good)
    );
    assert_invalid(
        &with_token(&server, &unsigned).await,
        &metadata,
        "not a signed JWT",
        "alg none",
    );
    let mut hs_header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    hs_header.kid = jsonwebtoken::decode_header(sign(&good)).unwrap().kid;
    let confused = jsonwebtoken::encode(
        &hs_header,
        &good,
        &jsonwebtoken::EncodingKey::from_secret(fake.public_key_pem(TENANT).unwrap().as_bytes()),
    )
    .unwrap();
    assert_invalid(
        &with_token(&server, &confused).await,
        &metadata,
        "HS256 are not accepted",
        "HS256 with the public key as secret",
    );
    // Same header and signature, different payload (another caller).
    let signed = sign(&good);
    let parts: Vec<&str> = signed.split('.').collect();
    let mut forged_claims = good.clone();
    forged_claims["oid"] = json!("00000000-0000-0000-0000-000000000bad");
    let forged = format!("{}.{}.{}", parts[0], b64(&forged_claims), parts[2]);
    assert_invalid(
        &with_token(&server, &forged).await,
        &metadata,
        "signature does not verify",
        "wrong signature",
    );

    let now = unix_now();
    let mut expired = good.clone();
    expired["nbf"] = json!(now - 7200);
    expired["exp"] = json!(now - 600);
    assert_invalid(
        &with_token(&server, &sign(&expired)).await,
        &metadata,
        "has expired",
        "expired",
    );
    let mut early = good.clone();
    early["nbf"] = json!(now + 600);
    early["exp"] = json!(now + 4200);
    assert_invalid(
        &with_token(&server, &sign(&early)).await,
        &metadata,
        "not valid yet",
        "not yet valid",
    );
    let mut foreign_issuer = good.clone();
    foreign_issuer["iss"] = json!(format!("https://login.microsoftonline.com/{TENANT}/v2.0"));
    assert_invalid(
        &with_token(&server, &sign(&foreign_issuer)).await,
        &metadata,
        &format!("not issued by tenant {TENANT}"),
        "wrong issuer",
    );
    let other = fake.app_token_claims(OTHER_TENANT, 2, SERVER_APP, &[ROLE], AGENT_OID, AGENT_APP);
    assert_invalid(
        &with_token(&server, &fake.sign(OTHER_TENANT, &other).unwrap()).await,
        &metadata,
        &format!("which tenant {TENANT} does not publish"),
        "wrong tenant",
    );
    assert_invalid(
        &with_token(&server, &sign(&claims(2, "api://another-app", &[ROLE]))).await,
        &metadata,
        "not for this server",
        "wrong audience",
    );

    // Valid tokens, v2 (audience = client id) and v1 (audience = api:// URI, sts.windows.net).
    assert_ok(&with_token(&server, &sign(&good)).await, "v2 token");
    assert_ok(
        &with_token(
            &server,
            &sign(&claims(1, &format!("api://{SERVER_APP}"), &[ROLE])),
        )
        .await,
        "v1 token for the api:// URI",
    );
    assert_ok(
        &with_token(&server, &sign(&claims(2, SERVER_APP, &["Other", ROLE]))).await,
        "one of several roles",
    );

    // Valid, but without the app role: 403 insufficient_scope.
    for roles in [&[][..], &["MCP.Write"][..]] {
        let answer = with_token(&server, &sign(&claims(2, SERVER_APP, roles))).await;
        assert_eq!(answer.status, 403, "roles {roles:?}: {answer:?}");
        assert_eq!(
            answer.challenge.as_deref(),
            Some(
                format!(
                    "Bearer error=\"insufficient_scope\", error_description=\"the token carries none of the app roles this server requires ({ROLE}); assign one to the calling identity\", resource_metadata=\"{metadata}\""
                )
                .as_str()
            )
        );
    }

    // A valid token does not bypass the Origin check (DNS rebinding).
    let bearer = format!("Bearer {}", sign(&good));
    let answer = list_tables(
        &server,
        &[
            ("Authorization", &bearer),
            ("Origin", "http://evil.example"),
        ],
    )
    .await;
    assert_eq!(answer.status, 403, "{answer:?}");

    // The audit log names the caller; metrics count outcomes without naming anyone.
    let audit = server.audit_events();
    assert!(
        audit
            .iter()
            .any(|event| event["caller"]["oid"] == json!(AGENT_OID)
                && event["caller"]["app_id"] == json!(AGENT_APP)),
        "audit events name the caller: {audit:#?}"
    );
    let (_, _, metrics) = server.request("GET", "/metrics", &[], "").await.unwrap();
    for outcome in ["ok", "missing_token", "invalid_token", "missing_role"] {
        assert!(
            metrics.contains(&format!(
                "pgmcp_auth_requests_total{{outcome=\"{outcome}\"}}"
            )),
            "{outcome}:\n{metrics}"
        );
    }
    assert!(!metrics.contains(AGENT_OID), "no caller ids in metrics");
    assert!(
        !server.log().contains(&sign(&good)[..40]),
        "tokens never reach the log"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_entra_is_down_known_keys_keep_working_and_a_new_replica_asks_callers_to_retry() {
    let fake = fake().await;
    let (_shop, running) = server("entra down", &fake, &[]).await;
    let claims = fake.app_token_claims(TENANT, 2, SERVER_APP, &[ROLE], AGENT_OID, AGENT_APP);
    assert_ok(
        &with_token(&running, &fake.sign(TENANT, &claims).unwrap()).await,
        "before the outage",
    );

    fake.set_outage(true);
    // A running server validates with the keys it has.
    let token = fake.sign(TENANT, &claims).unwrap();
    assert_ok(&with_token(&running, &token).await, "during the outage");
    // A replica started during the outage has no keys: 503 with Retry-After, not a 401 that
    // would make the caller give up or fetch a new token.
    let (_shop2, fresh) = server("entra down fresh", &fake, &[]).await;
    let answer = with_token(&fresh, &token).await;
    assert_eq!(answer.status, 503, "{answer:?}");
    assert!(answer.retry_after.is_some(), "{answer:?}");

    // Entra returns: the new replica recovers by itself.
    fake.set_outage(false);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let answer = with_token(&fresh, &token).await;
        if answer.status == 200 {
            assert_ok(&answer, "after the outage");
            break;
        }
        assert!(Instant::now() < deadline, "never recovered: {answer:?}");
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_signing_key_is_refused_until_the_tenant_publishes_it() {
    let fake = fake().await;
    let (_shop, server) = server("auth rotation", &fake, &[]).await;
    let metadata = format!(
        "http://127.0.0.1:{}/.well-known/oauth-protected-resource/mcp",
        server.port
    );
    let claims = fake.app_token_claims(TENANT, 2, SERVER_APP, &[ROLE], AGENT_OID, AGENT_APP);
    assert_ok(
        &with_token(&server, &fake.sign(TENANT, &claims).unwrap()).await,
        "current key",
    );

    // Entra signs with a key it has not published yet (or a forger invents a kid).
    let next = fake.new_unpublished_key(TENANT).unwrap();
    let rotated = fake.sign_with(TENANT, &next, &claims).unwrap();
    assert_invalid(
        &with_token(&server, &rotated).await,
        &metadata,
        "does not publish",
        "unknown kid",
    );
    // Unknown kids do not make the server hammer the tenant: one refresh per interval.
    let fetches = fake.key_fetches(TENANT);
    for _ in 0..5 {
        let invented = fake.new_unpublished_key(TENANT).unwrap();
        let answer = with_token(
            &server,
            &fake.sign_with(TENANT, &invented, &claims).unwrap(),
        )
        .await;
        assert_eq!(answer.status, 401);
    }
    assert!(
        fake.key_fetches(TENANT) <= fetches + 2,
        "five unknown kids in a row cause at most one refresh ({} fetches before, {} after)",
        fetches,
        fake.key_fetches(TENANT)
    );

    // The tenant rotates: the new key is published, and tokens signed with it pass once the
    // refresh interval has passed.
    fake.rotate_to(TENANT, &next).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let answer = with_token(&server, &rotated).await;
        if answer.status == 200 {
            assert_ok(&answer, "rotated key");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the rotated key was never accepted: {answer:?}"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    assert_ok(
        &with_token(&server, &fake.sign(TENANT, &claims).unwrap()).await,
        "tokens of the new current key",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_allow_listed_callers_pass_and_metadata_names_the_public_url() {
    let fake = fake().await;
    let public = "https://mcp.contoso.example/agents/sales/mcp";
    let (_shop, server) = server(
        "auth allow list",
        &fake,
        &["--entra-allowed-caller", AGENT_OID, "--public-url", public],
    )
    .await;
    let metadata_url =
        "https://mcp.contoso.example/.well-known/oauth-protected-resource/agents/sales/mcp";
    let listed = fake.app_token_claims(TENANT, 1, SERVER_APP, &[ROLE], AGENT_OID, AGENT_APP);
    assert_ok(
        &with_token(&server, &fake.sign(TENANT, &listed).unwrap()).await,
        "allow-listed oid",
    );
    let stranger_oid = "77777777-7777-4777-8777-777777777777";
    let stranger = fake.app_token_claims(TENANT, 1, SERVER_APP, &[ROLE], stranger_oid, AGENT_APP);
    let answer = with_token(&server, &fake.sign(TENANT, &stranger).unwrap()).await;
    assert_eq!(answer.status, 403, "{answer:?}");
    assert_eq!(
        answer.challenge.as_deref(),
        Some(
            format!(
                "Bearer error=\"insufficient_scope\", error_description=\"caller {stranger_oid} is not among the allowed callers of this server\", resource_metadata=\"{metadata_url}\""
            )
            .as_str()
        )
    );

    // RFC 9728 metadata, at the root and path-suffixed forms.
    for path in [
        "/.well-known/oauth-protected-resource",
        "/.well-known/oauth-protected-resource/mcp",
        "/.well-known/oauth-protected-resource/agents/sales/mcp",
    ] {
        let (status, _, body) = server.request("GET", path, &[], "").await.unwrap();
        assert_eq!(status, 200, "{path}: {body}");
        let doc: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(
            doc,
            json!({
                "resource": public,
                "authorization_servers": [format!("{}/{TENANT}/v2.0", fake.url())],
                "bearer_methods_supported": ["header"],
                "scopes_supported": [format!("{SERVER_APP}/.default")],
                "resource_name": "pgmcp read-only PostgreSQL MCP server",
            }),
            "{path}"
        );
    }
}

/// Percent-encodes a form value.
fn form_value(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A token from the fake's token endpoint (client credentials with a secret), as an agent
/// with its own app registration gets one.
async fn agent_token(fake: &EntraFake, scope: &str) -> Value {
    let ca = std::fs::read(fake.ca_cert()).unwrap();
    let client = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(&ca).unwrap()])
        .build()
        .unwrap();
    let body = format!(
        "grant_type=client_credentials&client_id={AGENT_APP}&client_secret={}&scope={}",
        form_value(AGENT_SECRET),
        form_value(scope)
    );
    let response = client
        .post(format!("{}/{TENANT}/oauth2/v2.0/token", fake.url()))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body)
        .send()
        .await
        .unwrap();
    serde_json::from_slice(&response.bytes().await.unwrap()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_sdk_calls_tools_with_a_token_from_entra() {
    let fake = fake().await;
    fake.register_app(
        TENANT,
        App {
            client_id: SERVER_APP.into(),
            object_id: "88888888-8888-4888-8888-888888888888".into(),
            display_name: "pgmcp sales".into(),
            access_token_version: 1,
            ..App::default()
        },
    )
    .unwrap();
    fake.register_app(
        TENANT,
        App {
            client_id: AGENT_APP.into(),
            object_id: AGENT_OID.into(),
            display_name: "sales agent".into(),
            secret: Some(AGENT_SECRET.into()),
            access_token_version: 1,
            ..App::default()
        },
    )
    .unwrap();
    let (_shop, server) = server("auth python", &fake, &[]).await;

    // Without the app role assignment, Entra issues a token the server refuses (403).
    let unassigned = agent_token(&fake, &format!("api://{SERVER_APP}/.default")).await;
    let token = unassigned["access_token"].as_str().unwrap();
    assert_eq!(with_token(&server, token).await.status, 403);

    fake.assign_app_role(TENANT, SERVER_APP, AGENT_APP, ROLE);
    let issued = agent_token(&fake, &format!("api://{SERVER_APP}/.default")).await;
    assert_eq!(issued["token_type"], json!("Bearer"), "{issued}");
    let token = issued["access_token"].as_str().unwrap().to_owned();
    let script = json!({"calls": [
        {"tool": "list_tables", "arguments": {}},
        {"tool": "query", "arguments": {"sql": "SELECT count(*) AS n FROM orders"}},
    ]});
    let args = |bearer: Option<&str>| {
        let mut args = vec!["--url".to_owned(), server.url()];
        if let Some(token) = bearer {
            args.extend(["--bearer".to_owned(), token.to_owned()]);
        }
        args
    };
    let out = run_python_client(&args(Some(&token)), &script, &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["results"][0]["isError"], json!(false), "{doc}");
    assert_eq!(doc["results"][1]["structuredContent"]["rows"], json!([[5]]));

    // The same client without a token is turned away with 401.
    let out = run_python_client(&args(None), &script, &[]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("401"), "{stderr}");
}

#[tokio::test]
async fn without_entra_the_server_says_so_on_readyz_and_serves_no_metadata() {
    let shop = shop("auth none").await;
    let server = ServerProcess::start(&shop, &[]).await;
    let (status, _, body) = server.request("GET", "/readyz", &[], "").await.unwrap();
    assert_eq!(status, 200);
    assert!(
        body.contains("WARNING: caller authentication is disabled"),
        "{body}"
    );
    let (status, _, _) = server
        .request("GET", "/.well-known/oauth-protected-resource", &[], "")
        .await
        .unwrap();
    assert_eq!(status, 404);
    assert!(
        server
            .log()
            .contains("serving WITHOUT caller authentication"),
        "the start-up log warns"
    );
}
