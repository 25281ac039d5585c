//! What a PostgreSQL session is doing, from `pg_stat_activity`: for tests that wait until a
//! statement runs (to cancel or terminate it) and then check that it stopped.

use std::time::Duration;

/// Whether session `pid` is running `sql` right now.
pub async fn running(admin: &tokio_postgres::Client, pid: i32, sql: &str) -> bool {
    let row = admin
        .query_one(
            "SELECT count(*) FROM pg_stat_activity
             WHERE pid = $1 AND state = 'active' AND query = $2",
            &[&pid, &sql],
        )
        .await
        .unwrap_or_else(|e| panic!("failed to read pg_stat_activity: {e}"));
    row.get::<_, i64>(0) > 0
}

/// Waits (up to 10 s) until session `pid` runs `sql`.
pub async fn wait_running(admin: &tokio_postgres::Client, pid: i32, sql: &str) {
    crate::wait_for(
        &format!("session {pid} to run {sql}"),
        Duration::from_secs(10),
        || async { running(admin, pid, sql).await.then_some(()) },
    )
    .await;
}

/// Whether session `pid` stops running `sql` within `within`.
pub async fn stops_within(
    admin: &tokio_postgres::Client,
    pid: i32,
    sql: &str,
    within: Duration,
) -> bool {
    crate::wait_for_opt(within, || async {
        (!running(admin, pid, sql).await).then_some(())
    })
    .await
    .is_some()
}
