//! Cancelling a call stops its statement in PostgreSQL: `notifications/cancelled` in an HTTP
//! session and on stdio, and an HTTP client that goes away. Each test starts a statement that
//! runs until stopped (it waits for a lock the test holds), waits until PostgreSQL shows it
//! running, cancels it, and checks `pg_stat_activity` the way an operator would: the statement is gone within a second, the
//! server's connection is still there (back in the pool, not discarded), and the next call
//! works.
#![allow(clippy::unwrap_used)] // a failed step fails the test: panicking is the point

mod common;

use std::process::Stdio;
use std::time::{Duration, Instant};

use common::server::{BIN, ServerProcess, open_session, refs, shop_args};
use common::{Shop, shop};
use pgmcp_tests::wait_for_opt;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};

/// The statement each test cancels. It waits for the lock [`lock_orders`] holds, for as long
/// as that is held: a statement that runs until stopped without using CPU, so the tests time
/// the cancellation and not a busy machine (the SQL guard refuses `pg_sleep`).
const LONG: &str = "SELECT count(*) AS blocked FROM orders";
/// What `pg_stat_activity.query` shows of it.
const NEEDLE: &str = "AS blocked FROM orders";

/// An administrator's open transaction holding an exclusive lock on `orders`; `ROLLBACK` on it
/// lets readers in again.
async fn lock_orders(shop: &Shop) -> tokio_postgres::Client {
    let admin = shop.db.connect().await.unwrap();
    admin
        .batch_execute("BEGIN; LOCK TABLE orders IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    admin
}

/// The backend running `needle` as the shop's reader role, once PostgreSQL shows it.
async fn running(shop: &Shop, needle: &str) -> i32 {
    let admin = shop.db.connect().await.unwrap();
    let pid = wait_for_opt(Duration::from_secs(10), || {
        let admin = &admin;
        async move {
            let rows = admin
                .query(
                    "SELECT pid FROM pg_stat_activity
                      WHERE usename = $1 AND state = 'active' AND query LIKE '%' || $2 || '%'",
                    &[&shop.role, &needle],
                )
                .await
                .unwrap();
            rows.first().map(|row| row.get::<_, i32>(0))
        }
    })
    .await;
    pid.unwrap_or_else(|| panic!("{needle} never showed in pg_stat_activity"))
}

/// Waits up to a second for backend `pid` to stop running a statement; then checks it is
/// still connected (idle: the server kept the connection).
async fn stopped_and_kept(shop: &Shop, pid: i32, cancelled_at: Instant) {
    let admin = shop.db.connect().await.unwrap();
    let state = wait_for_opt(Duration::from_secs(1), || {
        let admin = &admin;
        async move {
            let row = admin
                .query_opt("SELECT state FROM pg_stat_activity WHERE pid = $1", &[&pid])
                .await
                .unwrap();
            match row.map(|r| r.get::<_, Option<String>>(0)) {
                Some(Some(state)) if state == "active" => None,
                other => Some(other),
            }
        }
    })
    .await
    .unwrap_or_else(|| panic!("the statement was still running 1 s after the cancellation"));
    let took = cancelled_at.elapsed();
    assert_eq!(
        state,
        Some(Some("idle".to_owned())),
        "the connection stays open, idle, for the next call"
    );
    eprintln!(
        "statement stopped {} ms after the cancellation",
        took.as_millis()
    );
}

async fn post(
    server: &ServerProcess,
    headers: &[(String, String)],
    message: &Value,
) -> (u16, String, String) {
    let refs = refs(headers);
    server
        .request("POST", "/mcp", &refs, &message.to_string())
        .await
        .unwrap()
}

fn call(id: i64, tool: &str, arguments: Value) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
        "params": {"name": tool, "arguments": arguments}})
}

fn cancelled(id: i64) -> Value {
    json!({"jsonrpc": "2.0", "method": "notifications/cancelled",
        "params": {"requestId": id, "reason": "the user changed their mind"}})
}

/// Cancels `tool` running `LONG` in an HTTP session, by notification.
async fn cancel_in_a_session(test: &str, tool: &str, arguments: Value, needle: &str) {
    let shop = shop(test).await;
    let server = ServerProcess::start(&shop, &[]).await;
    let headers = open_session(&server).await;
    let lock = lock_orders(&shop).await;
    let request = tokio::spawn({
        let headers = headers.clone();
        let port = server.port;
        let message = call(7, tool, arguments);
        async move {
            let refs = refs(&headers);
            pgmcp_tests::http::request(port, "POST", "/mcp", &refs, &message.to_string())
                .await
                .unwrap()
        }
    });
    let pid = running(&shop, needle).await;

    let (status, _, _) = post(&server, &headers, &cancelled(7)).await;
    let cancelled_at = Instant::now();
    assert_eq!(status, 202);
    stopped_and_kept(&shop, pid, cancelled_at).await;
    lock.batch_execute("ROLLBACK").await.unwrap();
    let (status, _, body) = request.await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(
        pgmcp_tests::http::jsonrpc_message(&body),
        None,
        "no answer for a cancelled request: {body}"
    );

    next_call_works(&shop, &server, &headers, pid).await;
}

/// The next call is answered, and the cancelled call's connection is still open: it went back
/// to the pool rather than being discarded.
async fn next_call_works(
    shop: &Shop,
    server: &ServerProcess,
    headers: &[(String, String)],
    pid: i32,
) {
    let next = call(
        8,
        "query",
        json!({"sql": "SELECT count(*) AS n FROM orders"}),
    );
    let (status, _, body) = post(server, headers, &next).await;
    assert_eq!(status, 200, "{body}");
    let answer = pgmcp_tests::http::jsonrpc_message(&body).unwrap();
    assert_eq!(
        answer["result"]["structuredContent"]["rows"],
        json!([[5]]),
        "{answer}"
    );
    assert!(
        connected(shop, pid).await,
        "the cancelled call's connection was kept"
    );
}

async fn connected(shop: &Shop, pid: i32) -> bool {
    let admin = shop.db.connect().await.unwrap();
    admin
        .query_opt("SELECT 1 FROM pg_stat_activity WHERE pid = $1", &[&pid])
        .await
        .unwrap()
        .is_some()
}

#[tokio::test]
async fn a_cancelled_query_stops_in_postgres_and_its_connection_serves_the_next_call() {
    cancel_in_a_session("cancel http query", "query", json!({"sql": LONG}), NEEDLE).await;
}

#[tokio::test]
async fn a_cancelled_explain_analyze_stops_in_postgres() {
    cancel_in_a_session(
        "cancel http explain",
        "explain",
        json!({"sql": LONG, "analyze": true}),
        "EXPLAIN (ANALYZE",
    )
    .await;
}

#[tokio::test]
async fn an_http_client_that_goes_away_stops_its_statement() {
    let shop = shop("cancel http gone").await;
    let server = ServerProcess::start(&shop, &[]).await;
    let headers = open_session(&server).await;
    let lock = lock_orders(&shop).await;
    let message = call(7, "query", json!({"sql": LONG})).to_string();
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", server.port))
        .await
        .unwrap();
    let mut head = format!(
        "POST /mcp HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Length: {}\r\n",
        server.port,
        message.len()
    );
    for (k, v) in &headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(message.as_bytes()).await.unwrap();
    let pid = running(&shop, NEEDLE).await;

    drop(stream);
    let cancelled_at = Instant::now();
    stopped_and_kept(&shop, pid, cancelled_at).await;
    lock.batch_execute("ROLLBACK").await.unwrap();
    next_call_works(&shop, &server, &headers, pid).await;
}

#[tokio::test]
async fn a_cancelled_call_on_stdio_stops_in_postgres_and_gets_no_answer() {
    let shop = shop("cancel stdio").await;
    let dir = tempfile::tempdir().unwrap();
    let mut child = tokio::process::Command::new(BIN)
        .arg("--stdio")
        .args(shop_args(&shop, dir.path()))
        .env("RUST_LOG", "warn")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut send = async |message: Value| {
        let mut line = serde_json::to_vec(&message).unwrap();
        line.push(b'\n');
        stdin.write_all(&line).await.unwrap();
    };
    send(
        json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25", "capabilities": {},
        "clientInfo": {"name": "cancel-test", "version": "1"}}}),
    )
    .await;
    let initialized: Value =
        serde_json::from_str(&stdout.next_line().await.unwrap().unwrap()).unwrap();
    assert_eq!(initialized["id"], json!(0));
    send(json!({"jsonrpc": "2.0", "method": "notifications/initialized"})).await;

    let lock = lock_orders(&shop).await;
    send(call(7, "query", json!({"sql": LONG}))).await;
    let pid = running(&shop, NEEDLE).await;
    send(cancelled(7)).await;
    let cancelled_at = Instant::now();
    stopped_and_kept(&shop, pid, cancelled_at).await;
    lock.batch_execute("ROLLBACK").await.unwrap();

    // The next line is the answer to the next request: none came for the cancelled one.
    send(call(
        8,
        "query",
        json!({"sql": "SELECT count(*) AS n FROM orders"}),
    ))
    .await;
    let next: Value = serde_json::from_str(&stdout.next_line().await.unwrap().unwrap()).unwrap();
    assert_eq!(
        next["id"],
        json!(8),
        "no answer for the cancelled request: {next}"
    );
    assert_eq!(next["result"]["structuredContent"]["rows"], json!([[5]]));
    assert!(
        connected(&shop, pid).await,
        "the cancelled call's connection was kept"
    );
    drop(stdin);
    assert!(child.wait().await.unwrap().success());
}
