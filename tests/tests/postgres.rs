//! The PostgreSQL harness itself: a real PostgreSQL started by the test binary (the major
//! `PGMCP_POSTGRES_VERSION` names, 15 by default), and a database of its own for every test,
//! also when tests run in parallel.

use pgmcp_tests::Postgres;

/// Creates a database, writes a marker into it, and checks that only this test's marker is
/// there. Run by two tests at once (the default test harness runs them in parallel).
async fn database_is_private(test: &str) -> String {
    let db = Postgres::shared()
        .create_database(test)
        .await
        .expect("create database");
    let client = db.connect().await.expect("connect");
    client
        .batch_execute("CREATE TABLE marker (owner text NOT NULL)")
        .await
        .expect("create table");
    client
        .execute("INSERT INTO marker VALUES ($1)", &[&test])
        .await
        .expect("insert");
    // Give the other test time to do the same in its own database.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let owners: Vec<String> = client
        .query("SELECT owner FROM marker", &[])
        .await
        .expect("select")
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(
        owners,
        vec![test.to_owned()],
        "database {} is shared",
        db.name
    );
    let current: String = client
        .query_one("SELECT current_database()", &[])
        .await
        .expect("current_database")
        .get(0);
    assert_eq!(current, db.name);
    db.name
}

#[tokio::test]
async fn first_parallel_test_gets_its_own_database() {
    let name = database_is_private("first parallel test").await;
    assert!(name.starts_with("first_parallel_test_"), "{name}");
}

#[tokio::test]
async fn second_parallel_test_gets_its_own_database() {
    let name = database_is_private("second parallel test").await;
    assert!(name.starts_with("second_parallel_test_"), "{name}");
}

#[tokio::test]
async fn concurrent_requests_get_distinct_databases() {
    let pg = Postgres::shared();
    let (a, b) = tokio::join!(
        pg.create_database("same name"),
        pg.create_database("same name")
    );
    let (a, b) = (a.expect("first"), b.expect("second"));
    assert_ne!(a.name, b.name);
}

#[tokio::test]
async fn server_is_the_requested_major_with_password_authentication() {
    let requested = std::env::var("PGMCP_POSTGRES_VERSION")
        .ok()
        .filter(|v| !v.is_empty())
        .map_or(15, |v| {
            v.parse().expect("PGMCP_POSTGRES_VERSION is a number")
        });
    let pg = Postgres::shared();
    assert_eq!(pg.major(), requested);
    let client = pg
        .connect("postgres")
        .await
        .expect("superuser connects with its password");
    let version: i32 = client
        .query_one("SELECT current_setting('server_version_num')::int", &[])
        .await
        .expect("version")
        .get(0);
    assert_eq!(i64::from(version / 10_000), i64::from(requested));

    let db = pg.create_database("password auth").await.expect("database");
    let err = db
        .connect_as("postgres", "not-the-password")
        .await
        .expect_err("a wrong password is refused");
    assert!(
        format!("{err:#}").contains("password authentication failed"),
        "{err:#}"
    );
}
