//! The wire client against a real PostgreSQL (the harness's, with TLS and SCRAM): every result
//! type, errors in the middle of the rows, notices, the caps, each way to log in, cancellation,
//! and a server that goes away.
#![allow(clippy::unwrap_used)] // a failed step fails the test: panicking is the point

use std::sync::Arc;
use std::time::Duration;

use pgmcp_postgres_wire::{
    Caps, Config, ConnectError, Connection, Error, Identity, Rows, Statement, Tls, TypeCache,
    connect,
};
use pgmcp_tests::activity::{stops_within, wait_running};
use pgmcp_tests::postgres::SUPERUSER;
use pgmcp_tests::{Postgres, TestDatabase, wait_for};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

const CAPS: Caps = Caps {
    max_rows: 1000,
    max_bytes: 1 << 20,
};

/// How long a test waits for something that takes milliseconds when it works.
const PATIENCE: Duration = Duration::from_secs(10);

const SLEEP: &str = "SELECT pg_sleep(30)";

/// A database of the test's own on the shared server, `setup` run in it.
async fn database(test: &str, setup: &str) -> TestDatabase {
    let db = Postgres::shared().create_database(test).await.unwrap();
    if !setup.is_empty() {
        db.connect()
            .await
            .unwrap()
            .batch_execute(setup)
            .await
            .unwrap();
    }
    db
}

const MOOD: &str = "CREATE TYPE mood AS ENUM ('sad', 'happy')";

/// The superuser on `db`, TLS as `ssl_mode` says (the harness's CA trusted).
fn config(db: &TestDatabase, ssl_mode: &str) -> Config {
    let pg = db.server();
    Config {
        host: pg.host().to_owned(),
        port: pg.port(),
        user: SUPERUSER.to_owned(),
        password: Some(pg.password().to_owned()),
        dbname: db.name.clone(),
        options: None,
        application_name: Some("pgmcp-wire-tests".to_owned()),
        connect_timeout: PATIENCE,
        tls: Tls::new(ssl_mode, Some(pg.ca_cert())).unwrap(),
    }
}

async fn open(config: &Config) -> Connection {
    connect(config, Arc::default()).await.unwrap()
}

fn statement<'a>(sql: &'a str, params: &'a [Value], caps: Caps) -> Statement<'a> {
    Statement {
        sql,
        params,
        caps,
        timeout: None,
        identity: None,
    }
}

async fn run(conn: &mut Connection, sql: &str) -> Result<Rows, Error> {
    conn.run(statement(sql, &[], CAPS), &CancellationToken::new())
        .await
}

async fn rows(conn: &mut Connection, sql: &str) -> Value {
    serde_json::from_str(run(conn, sql).await.unwrap().rows.json()).unwrap()
}

/// A connection under test, its session's pid, and an administrator's connection that
/// watches the session in `pg_stat_activity`.
struct Watched {
    conn: Connection,
    pid: i32,
    admin: tokio_postgres::Client,
}

async fn watched(db: &TestDatabase, ssl_mode: &str) -> Watched {
    let mut conn = open(&config(db, ssl_mode)).await;
    let pid = rows(&mut conn, "SELECT pg_backend_pid()").await;
    Watched {
        conn,
        pid: i32::try_from(pid[0][0].as_i64().unwrap()).unwrap(),
        admin: db.connect().await.unwrap(),
    }
}

impl Watched {
    /// Runs `sql` with `cancel`, and `meanwhile` once the session shows it running; the
    /// statement's result, which must come within the test's patience.
    async fn run_while(
        &mut self,
        sql: &str,
        params: &[Value],
        cancel: &CancellationToken,
        meanwhile: impl AsyncFnOnce(&tokio_postgres::Client, i32),
    ) -> Result<Rows, Error> {
        let (result, ()) = tokio::join!(
            tokio::time::timeout(
                PATIENCE,
                self.conn.run(statement(sql, params, CAPS), cancel)
            ),
            async {
                wait_running(&self.admin, self.pid, sql).await;
                meanwhile(&self.admin, self.pid).await;
            }
        );
        result.unwrap_or_else(|_| panic!("{sql} did not stop"))
    }
}

#[tokio::test]
async fn every_result_type_comes_back_as_its_json() {
    let setup = format!("{MOOD}; CREATE DOMAIN positive AS int CHECK (VALUE > 0)");
    let db = database("wire result types", &setup).await;
    let mut conn = open(&config(&db, "disable")).await;
    let result = run(
        &mut conn,
        r#"SELECT true AS b, 7::int2 AS i2, -8::int4 AS i4, 9000000000::int8 AS i8,
                  1.5::float4 AS f4, 'NaN'::float8 AS nan, 12.340::numeric AS n,
                  99999999999999999999.12::numeric AS big, 'é "q"'::text AS t,
                  'v'::varchar(3) AS vc, 'c'::char(2) AS ch, 'pg_class'::name AS nm,
                  'x'::"char" AS c1, 16::oid AS o,
                  '{"a": [1, null]}'::json AS j, '{"b": true}'::jsonb AS jb,
                  '\x00ff'::bytea AS by, '00112233-4455-6677-8899-aabbccddeeff'::uuid AS u,
                  '2026-01-31'::date AS d, '2026-01-31 12:00:00.5'::timestamp AS ts,
                  '2026-01-31 12:00:00+00'::timestamptz AS tz, '13:14:15'::time AS tm,
                  '1 year 2 mons 3 days 04:05:06.5'::interval AS iv,
                  ARRAY[[1, 2], [3, NULL]]::int4[] AS arr, ARRAY['x', NULL]::text[] AS tarr,
                  'happy'::mood AS m, ARRAY['sad']::mood[] AS marr, 5::positive AS dom,
                  NULL::int AS nul, '10.0.0.1'::inet AS addr"#,
    )
    .await
    .unwrap();
    let types: Vec<&str> = result
        .columns
        .iter()
        .map(|c| c.type_name.as_str())
        .collect();
    assert_eq!(
        types,
        [
            "bool",
            "int2",
            "int4",
            "int8",
            "float4",
            "float8",
            "numeric",
            "numeric",
            "text",
            "varchar",
            "bpchar",
            "name",
            "char",
            "oid",
            "json",
            "jsonb",
            "bytea",
            "uuid",
            "date",
            "timestamp",
            "timestamptz",
            "time",
            "interval",
            "_int4",
            "_text",
            "mood",
            "_mood",
            // A domain's column is described as its base type.
            "int4",
            "int4",
            "inet"
        ]
    );
    let values: Value = serde_json::from_str(result.rows.json()).unwrap();
    assert_eq!(
        values,
        json!([[
            true,
            7,
            -8,
            9_000_000_000_i64,
            1.5,
            "NaN",
            12.34,
            "99999999999999999999.12",
            "é \"q\"",
            "v",
            "c ",
            "pg_class",
            "x",
            16,
            {"a": [1, null]},
            {"b": true},
            "\\x00ff",
            "00112233-4455-6677-8899-aabbccddeeff",
            "2026-01-31",
            "2026-01-31T12:00:00.5",
            "2026-01-31T12:00:00Z",
            "13:14:15",
            "P1Y2M3DT4H5M6.5S",
            [[1, 2], [3, null]],
            ["x", null],
            "happy",
            ["sad"],
            5,
            null,
            // No decoder for inet: hex of its binary form, and the column is named.
            "\\x022000040a000001"
        ]])
    );
    assert_eq!(result.undecoded_columns.len(), 1);
    assert!(
        result.undecoded_columns[0].contains("addr (inet)"),
        "{:?}",
        result.undecoded_columns
    );
}

#[tokio::test]
async fn parameters_are_bound_as_the_types_postgresql_inferred() {
    let db = database("wire parameters", MOOD).await;
    let mut conn = open(&config(&db, "disable")).await;
    let sql = "SELECT $1::int8, $2::text, $3::bool, $4::numeric, $5::jsonb, $6::date,
                      $7::timestamptz, $8::uuid, $9::text[], $10::float8, $11::mood, $12::int4";
    let params = [
        json!(42),
        json!("text"),
        json!(true),
        json!("12.5"),
        json!({"k": [1, 2]}),
        json!("2026-01-31"),
        json!("2026-01-31T12:00:00Z"),
        json!("00112233-4455-6677-8899-aabbccddeeff"),
        json!(["a", null]),
        json!(0.25),
        json!("happy"),
        Value::Null,
    ];
    let expected = json!([[
        42,
        "text",
        true,
        12.5,
        {"k": [1, 2]},
        "2026-01-31",
        "2026-01-31T12:00:00Z",
        "00112233-4455-6677-8899-aabbccddeeff",
        ["a", null],
        0.25,
        "happy",
        null
    ]]);
    // Prepared on first sight (parameters need their types), then bound from the cache.
    for _ in 0..2 {
        let result = conn
            .run(statement(sql, &params, CAPS), &CancellationToken::new())
            .await
            .unwrap();
        let values: Value = serde_json::from_str(result.rows.json()).unwrap();
        assert_eq!(values, expected);
    }
    let wrong = conn
        .run(
            statement("SELECT $1::int4", &[json!("five")], CAPS),
            &CancellationToken::new(),
        )
        .await
        .unwrap_err();
    assert!(matches!(wrong, Error::Param(_)), "{wrong}");
    let missing = run(&mut conn, "SELECT $1::int4").await.unwrap_err();
    assert!(
        matches!(
            missing,
            Error::ParamCount {
                expected: 1,
                got: 0
            }
        ),
        "{missing}"
    );
}

#[tokio::test]
async fn an_error_among_the_rows_fails_the_statement_and_the_connection_goes_on() {
    let db = database("wire errors mid-stream", "").await;
    let mut conn = open(&config(&db, "disable")).await;
    // Rows 1 and 2 are sent before row 3 divides by zero; a statement seen again is kept
    // prepared, so the second and third runs take the other paths.
    for _ in 0..3 {
        let err = run(
            &mut conn,
            "SELECT 10 / (3 - n) FROM generate_series(1, 5) n",
        )
        .await
        .unwrap_err();
        let Error::Sql(sql) = &err else {
            panic!("{err:?}");
        };
        assert_eq!(sql.code, "22012", "{err}");
        assert!(conn.is_settled());
        assert_eq!(rows(&mut conn, "SELECT 1").await, json!([[1]]));
    }
    let syntax = run(&mut conn, "SELECT FROM WHERE").await.unwrap_err();
    let Error::Sql(sql) = &syntax else {
        panic!("{syntax:?}");
    };
    assert_eq!((sql.code.as_str(), sql.position), ("42601", Some(13)));
    let write = run(&mut conn, "CREATE TABLE t (x int)").await.unwrap_err();
    let Error::Sql(sql) = &write else {
        panic!("{write:?}");
    };
    assert_eq!(sql.code, "25006", "read-only transaction: {write}");
    assert_eq!(rows(&mut conn, "SELECT 2").await, json!([[2]]));
}

#[tokio::test]
async fn notices_and_parameter_changes_between_the_answers_are_passed_over() {
    let db = database(
        "wire notices",
        "CREATE FUNCTION noisy() RETURNS int LANGUAGE plpgsql AS $$
         BEGIN RAISE NOTICE 'a notice'; RAISE WARNING 'a warning'; RETURN 1; END $$",
    )
    .await;
    let mut conn = open(&config(&db, "disable")).await;
    // set_config reports application_name (ParameterStatus) now and again at ROLLBACK.
    assert_eq!(
        rows(
            &mut conn,
            "SELECT noisy(), set_config('application_name', 'changed', true)"
        )
        .await,
        json!([[1, "changed"]])
    );
    assert_eq!(
        rows(&mut conn, "SELECT current_setting('application_name')").await,
        json!([["pgmcp-wire-tests"]]),
        "the pipeline rolled back"
    );
}

#[tokio::test]
async fn rows_stop_at_the_row_cap_and_at_the_byte_cap() {
    let db = database("wire caps", MOOD).await;
    let mut conn = open(&config(&db, "disable")).await;
    let capped = |max_rows, max_bytes| Caps {
        max_rows,
        max_bytes,
    };
    let cases = [
        // (sql, caps, rows, truncated_by)
        (
            "SELECT n FROM generate_series(1, 10) n",
            capped(3, 1 << 20),
            json!([[1], [2], [3]]),
            Some("max_rows"),
        ),
        (
            "SELECT n FROM generate_series(1, 3) n",
            capped(3, 1 << 20),
            json!([[1], [2], [3]]),
            None,
        ),
        // Each row is `["xxxxxxxxxx"]`, 14 bytes: two fit in 30.
        (
            "SELECT repeat('x', 10) FROM generate_series(1, 5)",
            capped(1000, 30),
            json!([["xxxxxxxxxx"], ["xxxxxxxxxx"]]),
            Some("max_bytes"),
        ),
        // A type looked up after the rows came: they were kept undecoded, within the caps.
        (
            "SELECT 'happy'::mood FROM generate_series(1, 5)",
            capped(2, 1 << 20),
            json!([["happy"], ["happy"]]),
            Some("max_rows"),
        ),
    ];
    for (sql, caps, expected, truncated_by) in cases {
        // First sight, seen again (kept prepared), prepared: the same answer each time.
        for _ in 0..3 {
            let result = conn
                .run(statement(sql, &[], caps), &CancellationToken::new())
                .await
                .unwrap();
            let values: Value = serde_json::from_str(result.rows.json()).unwrap();
            assert_eq!(values, expected, "{sql}");
            assert_eq!(result.truncated_by, truncated_by, "{sql}");
            assert_eq!(result.truncated, truncated_by.is_some(), "{sql}");
            assert_eq!(
                result.row_count,
                expected.as_array().unwrap().len(),
                "{sql}"
            );
        }
    }
}

/// Creates `role` (password `password`, stored as MD5 when `md5`) and lets it sign in with
/// `method` over TCP: lines of their own at the top of the shared server's pg_hba.conf, then
/// a reload (other roles keep SCRAM).
async fn role_with_method(db: &TestDatabase, roles: &[(&str, &str, &str)]) {
    let admin = db.connect().await.unwrap();
    let mut lines = String::new();
    for (role, password, method) in roles {
        let encryption = if *method == "md5" {
            "md5"
        } else {
            "scram-sha-256"
        };
        admin
            .batch_execute(&format!(
                "SET password_encryption = '{encryption}';
                 CREATE ROLE {role} LOGIN PASSWORD '{password}';
                 GRANT CONNECT ON DATABASE \"{db}\" TO {role};",
                db = db.name
            ))
            .await
            .unwrap();
        lines.push_str(&format!("host all {role} 127.0.0.1/32 {method}\n"));
    }
    let hba: String = admin
        .query_one("SELECT pg_read_file(current_setting('hba_file'))", &[])
        .await
        .unwrap()
        .get(0);
    // Written by the server itself (the file is its own), byte for byte, through a large
    // object (made in a statement of its own: a statement does not see what it creates).
    let object: u32 = admin
        .query_one(
            "SELECT lo_from_bytea(0, convert_to($1, 'UTF8'))",
            &[&format!("{lines}{hba}")],
        )
        .await
        .unwrap()
        .get(0);
    for step in [
        "SELECT lo_export($1, current_setting('hba_file'))",
        "SELECT lo_unlink($1)",
    ] {
        admin.execute(step, &[&object]).await.unwrap();
    }
    admin.execute("SELECT pg_reload_conf()", &[]).await.unwrap();
}

#[tokio::test]
async fn every_login_method_signs_in_and_a_wrong_password_is_named() {
    let db = database("wire login", "").await;
    let md5 = format!("{}_md5", db.name);
    let clear = format!("{}_clear", db.name);
    role_with_method(
        &db,
        &[
            (md5.as_str(), "md5-secret", "md5"),
            (clear.as_str(), "token-like", "password"),
        ],
    )
    .await;
    let as_role = |user: &str, password: &str, ssl_mode: &str| Config {
        user: user.to_owned(),
        password: Some(password.to_owned()),
        ..config(&db, ssl_mode)
    };
    // The reload is asynchronous: MD5 works once the new lines are in force.
    let mut conn = wait_for("pg_hba.conf reloaded", PATIENCE, || async {
        connect(&as_role(&md5, "md5-secret", "disable"), Arc::default())
            .await
            .ok()
    })
    .await;
    assert_eq!(rows(&mut conn, "SELECT current_user").await, json!([[md5]]));
    let tls = "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()";
    // SCRAM (channel-bound over TLS), and cleartext as Entra tokens are sent: in each TLS mode.
    for (user, password) in [
        (SUPERUSER, db.server().password()),
        (clear.as_str(), "token-like"),
    ] {
        for (ssl_mode, encrypted) in [
            ("disable", false),
            ("prefer", true),
            ("require", true),
            ("verify-full", true),
        ] {
            let mut conn = connect(&as_role(user, password, ssl_mode), Arc::default())
                .await
                .unwrap_or_else(|e| panic!("{user} with sslmode {ssl_mode}: {e}"));
            assert_eq!(rows(&mut conn, tls).await, json!([[encrypted]]));
        }
    }
    for (user, method) in [
        (SUPERUSER, "scram"),
        (md5.as_str(), "md5"),
        (clear.as_str(), "clear"),
    ] {
        let err = connect(&as_role(user, "wrong", "require"), Arc::default())
            .await
            .unwrap_err();
        assert!(
            matches!(&err, ConnectError::Refused(sql) if sql.code == "28P01"),
            "{method}: {err}"
        );
        assert!(err.to_string().contains("password authentication failed"));
    }
    // verify-full without the harness's CA: the certificate is not trusted, and says so.
    let untrusted = Config {
        tls: Tls::new("verify-full", None).unwrap(),
        ..config(&db, "disable")
    };
    let err = connect(&untrusted, Arc::default()).await.unwrap_err();
    assert!(
        matches!(err, ConnectError::Tls { .. }) && err.to_string().contains("certificate"),
        "{err}"
    );
}

#[tokio::test]
async fn a_cancelled_statement_stops_in_postgresql_and_the_connection_runs_the_next() {
    let db = database("wire cancel", "").await;
    for ssl_mode in ["disable", "require"] {
        let mut session = watched(&db, ssl_mode).await;
        // Without parameters (one pipeline), and with (prepared, then bound).
        for (sql, params) in [(SLEEP, vec![]), ("SELECT pg_sleep($1)", vec![json!(30)])] {
            let cancel = CancellationToken::new();
            let result = session
                .run_while(sql, &params, &cancel, async |_, _| cancel.cancel())
                .await;
            assert!(matches!(result, Err(Error::Cancelled)), "{result:?}");
            assert!(
                stops_within(&session.admin, session.pid, sql, Duration::from_secs(1)).await,
                "{sql} still runs in PostgreSQL"
            );
            assert!(session.conn.is_settled(), "{ssl_mode}: settled");
            assert_eq!(rows(&mut session.conn, "SELECT 1").await, json!([[1]]));
        }
    }
}

#[tokio::test]
async fn a_token_cancelled_before_the_call_sends_nothing() {
    let db = database("wire cancel before", "").await;
    let Watched {
        mut conn,
        pid,
        admin,
    } = watched(&db, "disable").await;
    let last_start = || async {
        admin
            .query_one(
                "SELECT query_start::text FROM pg_stat_activity WHERE pid = $1",
                &[&pid],
            )
            .await
            .unwrap()
            .get::<_, String>(0)
    };
    let before = last_start().await;
    let cancel = CancellationToken::new();
    cancel.cancel();
    let result = conn
        .run(statement("SELECT 'never sent'", &[], CAPS), &cancel)
        .await;
    assert!(matches!(result, Err(Error::Cancelled)), "{result:?}");
    assert_eq!(
        last_start().await,
        before,
        "no statement reached the session"
    );
    assert!(conn.is_settled());
    // Had the pipeline gone out, its answers would be read here instead.
    assert_eq!(
        rows(&mut conn, "SELECT 'the next'").await,
        json!([["the next"]])
    );
}

#[tokio::test]
async fn a_cancel_that_finds_the_session_idle_stops_nothing_later() {
    let db = database("wire cancel idle", "").await;
    let mut session = watched(&db, "require").await;
    let handle = session.conn.cancel_handle();
    for _ in 0..3 {
        handle.cancel().await.unwrap();
        // The request was passed on before cancel returned: it cannot reach this statement.
        assert_eq!(
            rows(&mut session.conn, "SELECT 1 FROM pg_sleep(0.05)").await,
            json!([[1]])
        );
    }
    // From another task while a statement runs, without the caller's token: PostgreSQL's own
    // error for a cancelled statement.
    let err = session
        .run_while(SLEEP, &[], &CancellationToken::new(), async |_, _| {
            let cancelled = tokio::spawn(async move { handle.cancel().await });
            cancelled.await.unwrap().unwrap();
        })
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::Sql(sql) if sql.code == "57014"),
        "{err}"
    );
    assert!(session.conn.is_settled());
}

#[tokio::test]
async fn a_terminated_session_fails_the_statement_and_the_connection_is_not_reused() {
    let db = database("wire terminate", "").await;
    let mut session = watched(&db, "disable").await;
    let err = session
        .run_while(SLEEP, &[], &CancellationToken::new(), async |admin, pid| {
            let terminate = "SELECT pg_terminate_backend($1)";
            admin.execute(terminate, &[&pid]).await.unwrap();
        })
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::ConnectionLost(reason) if reason.contains("57P01")),
        "the reason PostgreSQL gave: {err}"
    );
    assert!(!session.conn.is_settled(), "a pool must not keep it");
}

#[tokio::test]
async fn a_server_that_closes_the_connection_fails_the_login() {
    let db = database("wire closed", "").await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            drop(socket);
        }
    });
    for ssl_mode in ["disable", "require"] {
        let config = Config {
            port,
            ..config(&db, ssl_mode)
        };
        let err = connect(&config, Arc::new(TypeCache::default()))
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                ConnectError::Closed | ConnectError::Lost(_) | ConnectError::Tls { .. }
            ),
            "{ssl_mode}: {err}"
        );
    }
}

/// Roles as the operator makes them for caller classes: `<p>_login` (NOINHERIT) is a member of
/// `<p>__sales` and `<p>__support`, each of which alone reads its own table. Roles belong to
/// the whole server: each test has its own prefix `p`.
fn classes(p: &str) -> String {
    CLASSES.replace("mcp_", &format!("{p}_"))
}

const CLASSES: &str = "
    CREATE TABLE sales (id int, owner text);
    INSERT INTO sales VALUES (1, 'o1'), (2, 'o2');
    CREATE TABLE support (id int);
    INSERT INTO support VALUES (7);
    CREATE ROLE mcp__sales NOLOGIN;
    CREATE ROLE mcp__support NOLOGIN;
    GRANT SELECT ON sales TO mcp__sales;
    GRANT SELECT ON support TO mcp__support;
    ALTER TABLE sales ENABLE ROW LEVEL SECURITY;
    CREATE POLICY mine ON sales USING (owner = current_setting('pgmcp.caller', true)::jsonb ->> 'oid');
    CREATE FUNCTION forge(claims text) RETURNS text LANGUAGE sql
        AS $$ SELECT set_config('pgmcp.caller', claims, true) $$;
    CREATE FUNCTION become(role text) RETURNS text LANGUAGE plpgsql
        AS $$ BEGIN EXECUTE format('SET LOCAL ROLE %I', role); RETURN role; END $$;
";

/// `db` as the NOINHERIT login role `<p>_login`, a member of both class roles.
async fn class_login(db: &TestDatabase, login: &str) -> Config {
    db.connect()
        .await
        .unwrap()
        .batch_execute(&format!(
            "CREATE ROLE {login}_login LOGIN NOINHERIT PASSWORD 'class-login-pw';
             GRANT CONNECT ON DATABASE \"{db}\" TO {login}_login;
             GRANT {login}__sales, {login}__support TO {login}_login;",
            db = db.name
        ))
        .await
        .unwrap();
    Config {
        user: format!("{login}_login"),
        password: Some("class-login-pw".to_owned()),
        ..config(db, "disable")
    }
}

fn as_class<'a>(sql: &'a str, role: &'a str, claims: &'a str) -> Statement<'a> {
    Statement {
        identity: Some(Identity { role, claims }),
        ..statement(sql, &[], CAPS)
    }
}

async fn run_as(
    conn: &mut Connection,
    sql: &str,
    role: &str,
    claims: &str,
) -> Result<Value, Error> {
    let rows = conn
        .run(as_class(sql, role, claims), &CancellationToken::new())
        .await?;
    Ok(serde_json::from_str(rows.rows.json()).unwrap())
}

#[tokio::test]
async fn a_statement_runs_as_its_class_role_with_the_claims_and_nothing_outlives_it() {
    let db = database("wire identity", &classes("wid")).await;
    let mut conn = open(&class_login(&db, "wid").await).await;
    let claims = r#"{"oid": "o1", "class": "sales"}"#;
    let who = "SELECT current_user::text, current_setting('pgmcp.caller', true)";
    for _ in 0..3 {
        // First sight, seen again (kept prepared), prepared: each path of the pipeline.
        assert_eq!(
            run_as(&mut conn, who, "wid__sales", claims).await.unwrap(),
            json!([["wid__sales", claims]])
        );
        // Row-level security reads the claims.
        assert_eq!(
            run_as(&mut conn, "SELECT id FROM sales", "wid__sales", claims)
                .await
                .unwrap(),
            json!([[1]])
        );
        assert_eq!(
            run_as(
                &mut conn,
                "SELECT id FROM sales",
                "wid__sales",
                r#"{"oid": "o2"}"#
            )
            .await
            .unwrap(),
            json!([[2]])
        );
        // The next statement without an identity is the login role again, without claims.
        let after = rows(&mut conn, who).await;
        assert_eq!(after[0][0], json!("wid_login"));
        assert_ne!(after[0][1], json!(claims));
    }
    // With parameters (prepared first): the identity goes with the Bind.
    let rows = conn
        .run(
            Statement {
                identity: Some(Identity {
                    role: "wid__support",
                    claims: "{}",
                }),
                ..statement("SELECT id FROM support WHERE id = $1", &[json!(7)], CAPS)
            },
            &CancellationToken::new(),
        )
        .await
        .unwrap();
    assert_eq!(rows.rows.json(), "[[7]]");
}

#[tokio::test]
async fn without_switching_role_the_login_role_reads_nothing_of_a_class() {
    let db = database("wire identity noinherit", &classes("win")).await;
    let mut conn = open(&class_login(&db, "win").await).await;
    for table in ["sales", "support"] {
        let err = run(&mut conn, &format!("SELECT * FROM {table}"))
            .await
            .unwrap_err();
        let Error::Sql(sql) = &err else {
            panic!("{err:?}");
        };
        assert_eq!(sql.code, "42501", "{table}: {err}");
    }
    // A class reads only its own table.
    let err = run_as(&mut conn, "SELECT * FROM support", "win__sales", "{}")
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::Sql(sql) if sql.code == "42501"),
        "{err}"
    );
}

#[tokio::test]
async fn the_identity_costs_no_round_trip() {
    let db = database("wire identity round trips", &classes("wrt")).await;
    let mut conn = open(&class_login(&db, "wrt").await).await;
    let sql = "SELECT count(*) FROM support";
    // Prepared (seen twice), then measured: one round trip a statement, identity or not.
    for _ in 0..2 {
        run_as(&mut conn, sql, "wrt__support", "{}").await.unwrap();
    }
    let before = conn.round_trips();
    run_as(&mut conn, sql, "wrt__support", "{}").await.unwrap();
    assert_eq!(conn.round_trips() - before, 1, "with an identity");
    let mut plain = open(&config(&db, "disable")).await;
    for _ in 0..2 {
        run(&mut plain, sql).await.unwrap();
    }
    let before = plain.round_trips();
    run(&mut plain, sql).await.unwrap();
    assert_eq!(plain.round_trips() - before, 1, "without");
}

#[tokio::test]
async fn a_statement_that_changes_its_role_or_claims_is_withheld() {
    let db = database("wire identity forged", &classes("wfg")).await;
    let mut conn = open(&class_login(&db, "wfg").await).await;
    let claims = r#"{"oid": "o1"}"#;
    for sql in [
        r#"SELECT forge('{"oid": "o2"}'), id FROM sales"#,
        "SELECT become('wfg__support')",
    ] {
        let err = run_as(&mut conn, sql, "wfg__sales", claims)
            .await
            .unwrap_err();
        assert!(matches!(err, Error::IdentityChanged), "{sql}: {err:?}");
        assert!(conn.is_settled());
    }
    // The connection goes on, as itself.
    assert_eq!(
        rows(&mut conn, "SELECT current_user::text").await,
        json!([["wfg_login"]])
    );
    // A role the login role is not a member of: refused, naming the role.
    let err = run_as(&mut conn, "SELECT 1", "pg_read_all_data", claims)
        .await
        .unwrap_err();
    let Error::Identity { role, cause } = &err else {
        panic!("{err:?}");
    };
    assert_eq!(
        (role.as_str(), cause.code.as_str()),
        ("pg_read_all_data", "42501"),
        "{err}"
    );
    assert_eq!(rows(&mut conn, "SELECT 3").await, json!([[3]]));
}
