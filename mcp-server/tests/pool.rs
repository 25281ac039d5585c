//! The pool around the wire client: a cancelled call stops its statement in PostgreSQL, ends a
//! wait for a connection, is not tried again, and leaves its connection in the pool.
#![allow(clippy::unwrap_used)] // a failed step fails the test: panicking is the point

mod common;

use std::time::Duration;

use common::{public_only, shop};
use pgmcp_server::db::{Caps, Database, DbError, Rows};
use pgmcp_tests::activity::{stops_within, wait_running};
use tokio_util::sync::CancellationToken;

const CAPS: Caps = Caps {
    max_rows: 10,
    max_bytes: 1 << 20,
};
const SLEEP: &str = "SELECT pg_sleep(30)";

async fn query(db: &Database, sql: &str, cancel: &CancellationToken) -> Result<Rows, DbError> {
    db.query(sql, &[], CAPS, None, None, cancel).await
}

async fn backend_pid(db: &Database) -> i32 {
    let rows = query(db, "SELECT pg_backend_pid()", &CancellationToken::new())
        .await
        .unwrap();
    i32::try_from(rows.rows.values()[0][0].as_i64().unwrap()).unwrap()
}

#[tokio::test]
async fn a_cancelled_query_stops_in_postgresql_and_its_connection_stays_in_the_pool() {
    let shop = shop("pool cancel").await;
    let mut options = shop.connect_options(&public_only(), Duration::from_secs(60));
    options.pool_size = 1;
    let db = Database::new(&options).unwrap();
    let pid = backend_pid(&db).await;
    let admin = shop.db.connect().await.unwrap();

    let cancel = CancellationToken::new();
    let (result, ()) = tokio::join!(query(&db, SLEEP, &cancel), async {
        wait_running(&admin, pid, SLEEP).await;
        cancel.cancel();
    });
    let err = result.unwrap_err();
    assert!(err.is_cancelled(), "{err}");
    assert_eq!(err.metric_label(), "cancelled");
    assert!(stops_within(&admin, pid, SLEEP, Duration::from_secs(1)).await);
    assert_eq!(
        backend_pid(&db).await,
        pid,
        "the same connection serves the next call: no new login"
    );

    // The only connection is busy: a second call waits for it, and its cancel ends the wait.
    let (holder, waiter) = (CancellationToken::new(), CancellationToken::new());
    let (held, waited) = tokio::join!(query(&db, SLEEP, &holder), async {
        wait_running(&admin, pid, SLEEP).await;
        // Ten seconds: far less than the holder's 30, far more than a cancel needs.
        let waiting =
            tokio::time::timeout(Duration::from_secs(10), query(&db, "SELECT 1", &waiter));
        let (waited, ()) = tokio::join!(waiting, async { waiter.cancel() });
        holder.cancel();
        waited
    });
    let waited = waited.expect("the wait for a connection ended with its cancel");
    assert!(waited.unwrap_err().is_cancelled());
    assert!(held.unwrap_err().is_cancelled());
    assert_eq!(backend_pid(&db).await, pid);
}
