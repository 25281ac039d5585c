//! The server binary under a PostgreSQL outage while clients keep calling: calls in flight and
//! during the outage get a tool error a model can act on (never an HTTP error or a crash),
//! `/readyz` turns false and back, and service resumes within seconds of the database's return.

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::server::{ServerProcess, call_tool};
use pgmcp_tests::Postgres;
use serde_json::{Value, json};
use tokio::task::JoinHandle;

const PASSWORD: &str = "reader-password";

/// One call's outcome, as the load loop saw it.
#[derive(Debug)]
struct Outcome {
    at: Instant,
    /// `None` when the call answered rows; the tool error text otherwise.
    error: Option<String>,
}

fn outcome(result: &Result<Value, (u16, String)>) -> Option<String> {
    match result {
        Ok(result) if result["isError"] == json!(false) => None,
        Ok(result) => Some(
            result["content"][0]["text"]
                .as_str()
                .unwrap_or("")
                .to_owned(),
        ),
        Err((status, head)) => Some(format!("HTTP {status}: {head}")),
    }
}

async fn readyz(server: &ServerProcess) -> u16 {
    server
        .request("GET", "/readyz", &[], "")
        .await
        .map_or(0, |(status, _, _)| status)
}

/// A restartable PostgreSQL with the shop tables, and the server reading them over HTTP.
async fn shop_server() -> (Postgres, ServerProcess) {
    let pg = Postgres::start_restartable().await.unwrap();
    pg.database_with(
        "shop",
        &format!(
            "CREATE TABLE orders (id int PRIMARY KEY, total numeric);
             INSERT INTO orders SELECT g, g * 1.5 FROM generate_series(1, 100) g;
             CREATE TABLE audit (id int);
             INSERT INTO audit VALUES (1);
             CREATE ROLE reader LOGIN PASSWORD '{PASSWORD}';
             GRANT SELECT ON orders, audit TO reader;"
        ),
    )
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let password_file = dir.path().join("password");
    std::fs::write(&password_file, PASSWORD).unwrap();
    let args = vec![
        "--database-url".to_owned(),
        format!(
            "postgres://reader@{}:{}/shop?sslmode=disable",
            pg.host(),
            pg.port()
        ),
        "--password-file".to_owned(),
        password_file.display().to_string(),
        "--grant".to_owned(),
        "public".to_owned(),
    ];
    let server = ServerProcess::start_args(dir, args, &[]).await;
    (pg, server)
}

/// `clients` sessions calling `query` until `running` turns false, 20 ms apart.
fn load(port: u16, clients: usize, running: &Arc<AtomicBool>) -> Vec<JoinHandle<Vec<Outcome>>> {
    (0..clients)
        .map(|client| {
            let running = running.clone();
            tokio::spawn(async move {
                let mut outcomes = Vec::new();
                while running.load(Ordering::Relaxed) {
                    let sql = format!("SELECT total FROM orders WHERE id = {}", client + 1);
                    let result = call_tool(port, &[], "query", json!({"sql": sql})).await;
                    outcomes.push(Outcome {
                        at: Instant::now(),
                        error: outcome(&result),
                    });
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                outcomes
            })
        })
        .collect()
}

async fn outcomes(load: Vec<JoinHandle<Vec<Outcome>>>) -> Vec<Outcome> {
    let mut outcomes = Vec::new();
    for task in load {
        outcomes.extend(task.await.unwrap());
    }
    outcomes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_restart_under_load_costs_only_the_calls_made_while_it_is_down() {
    let (pg, mut server) = shop_server().await;
    let port = server.port;
    let admin = pg.connect("postgres").await.unwrap();

    // A call in flight when the database goes: it waits on a lock the admin holds, and once it
    // has the lock it still has seconds of work. PostgreSQL's shutdown signals its backends one
    // by one: the locker's may go first and release the lock, and a statement with nothing left
    // to do could then finish before its own signal arrived.
    let locker = pg.connect("shop").await.unwrap();
    locker
        .batch_execute("BEGIN; LOCK TABLE audit IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    let in_flight = tokio::spawn(async move {
        call_tool(
            port,
            &[],
            "query",
            json!({"sql": "SELECT count(*) FROM audit, generate_series(1, 100000000)"}),
        )
        .await
    });

    pgmcp_tests::eventually("the call waiting on the lock", Duration::from_secs(20), || async {
        let waiting: i64 = admin
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE usename = 'reader' AND wait_event_type = 'Lock'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        waiting >= 1
    })
    .await;

    // Eight clients calling all along.
    let running = Arc::new(AtomicBool::new(true));
    let load = load(port, 8, &running);
    tokio::time::sleep(Duration::from_secs(1)).await;
    if in_flight.is_finished() {
        panic!("the call did not wait for the lock: {:?}", in_flight.await);
    }

    let stopped = Instant::now();
    pg.stop();
    let in_flight = outcome(&in_flight.await.unwrap()).expect("the in-flight call failed");
    assert!(
        in_flight.contains("try again in a moment"),
        "in-flight call: {in_flight}"
    );
    pgmcp_tests::eventually("/readyz false", Duration::from_secs(5), || async {
        readyz(&server).await == 503
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(!server.exited(), "the server is still running");

    pg.restart().await.unwrap();
    let restarted = Instant::now();
    pgmcp_tests::eventually("/readyz true", Duration::from_secs(5), || async {
        readyz(&server).await == 200
    })
    .await;
    tokio::time::sleep(Duration::from_secs(6)).await;
    running.store(false, Ordering::Relaxed);
    let outcomes = outcomes(load).await;

    let before: Vec<&Outcome> = outcomes.iter().filter(|o| o.at < stopped).collect();
    let down: Vec<&Outcome> = outcomes
        .iter()
        .filter(|o| o.at >= stopped && o.at < restarted)
        .collect();
    let recovered = restarted + Duration::from_secs(5);
    let after: Vec<&Outcome> = outcomes.iter().filter(|o| o.at >= recovered).collect();
    eprintln!(
        "{} calls: {} before the stop, {} while down ({} errors), {} after recovery",
        outcomes.len(),
        before.len(),
        down.len(),
        down.iter().filter(|o| o.error.is_some()).count(),
        after.len()
    );
    assert!(
        before.iter().all(|o| o.error.is_none()),
        "errors before the outage"
    );
    assert!(!down.is_empty() && !after.is_empty());
    // Every failure is a tool error telling the model to try again, never an HTTP error.
    for error in outcomes.iter().filter_map(|o| o.error.as_deref()) {
        assert!(
            error.contains("try again in a moment") && !error.starts_with("HTTP"),
            "{error}"
        );
    }
    // Calls succeed again within 5 s of the database's return, and every later call works.
    let first_success = outcomes
        .iter()
        .filter(|o| o.at >= restarted && o.error.is_none())
        .map(|o| o.at)
        .min()
        .expect("calls succeed again");
    eprintln!(
        "service resumed {:?} after the database accepted connections again",
        first_success - restarted
    );
    assert!(
        first_success - restarted <= Duration::from_secs(5),
        "service resumed {:?} after the restart",
        first_success - restarted
    );
    assert!(
        after.iter().all(|o| o.error.is_none()),
        "errors after recovery"
    );
    assert!(!server.log().contains("panicked"), "{}", server.log());
    drop(locker);
}

/// A restart shorter than the server's outage wait (3 s) costs no call at all: calls in flight
/// lose their connection and run again, calls made meanwhile wait for the database.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_brief_postgres_restart_costs_no_call() {
    let (pg, server) = shop_server().await;
    let running = Arc::new(AtomicBool::new(true));
    let load = load(server.port, 8, &running);
    tokio::time::sleep(Duration::from_secs(1)).await;

    let stopped = Instant::now();
    pg.stop();
    pg.restart().await.unwrap();
    let outage = stopped.elapsed();
    tokio::time::sleep(Duration::from_secs(1)).await;
    running.store(false, Ordering::Relaxed);
    let outcomes = outcomes(load).await;

    let during = outcomes
        .iter()
        .filter(|o| o.at >= stopped && o.at < stopped + outage)
        .count();
    eprintln!(
        "{} calls, {during} answered during the {outage:?} restart",
        outcomes.len()
    );
    assert!(
        outage < Duration::from_millis(2500),
        "the restart took {outage:?}: too long to show the outage wait"
    );
    let errors: Vec<&String> = outcomes.iter().filter_map(|o| o.error.as_ref()).collect();
    assert!(
        errors.is_empty(),
        "{} calls failed: {errors:?}",
        errors.len()
    );
    assert!(
        outcomes.iter().any(|o| o.at > stopped + outage),
        "calls continue after the restart"
    );
}
