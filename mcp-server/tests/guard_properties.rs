//! The SQL guard against a real PostgreSQL 15: SQL generated from a grammar of benign and hostile
//! fragments (writes hidden in CTEs, functions with side effects, second statements behind
//! comments, dollar quotes and E-strings, locking clauses, utility statements, …). Whatever the
//! guard accepts is run as the superuser in `BEGIN READ ONLY` on a scratch database, through the
//! simple protocol (which, unlike the server's extended protocol, runs every statement of a
//! multi-statement text), and must
//! - change nothing: a fingerprint of the database and session (row counts and sums, the
//!   sequence, advisory locks, large objects, settings, prepared statements, cursors, listened
//!   channels, temporary tables) is the same before and after the transaction commits, and
//! - never fail with SQLSTATE 25006 (read_only_sql_transaction): that would mean the guard let a
//!   write through and only the transaction stopped it.
//!
//! Bounded: [`CASES`] cases (`PROPTEST_CASES` overrides), a few seconds. Inputs that found bugs are in [`REGRESSIONS`].
#![allow(clippy::unwrap_used)] // a failed step fails the test: panicking is the point

use std::cell::Cell;

use pgmcp_server::sql_guard;
use pgmcp_tests::Postgres;
use proptest::prelude::*;
use proptest::test_runner::{Config, FileFailurePersistence, TestCaseError, TestRunner};
use tokio_postgres::{Client, SimpleQueryMessage};

const CASES: u32 = 512;

/// Inputs that once got through a check; each is run first, on every run.
const REGRESSIONS: &[&str] = &[
    // Functional notation: PostgreSQL calls pg_advisory_lock(42) (found on the first run).
    "SELECT 1 WHERE 1 IN (SELECT ((42::bigint).pg_advisory_lock IS NULL)::int)",
    "SELECT (42::bigint).pg_advisory_lock",
    "SELECT x.pg_advisory_lock FROM (SELECT 42::bigint AS x) s",
];

const FIXTURE: &str = "
    CREATE TABLE t (id serial PRIMARY KEY, v int NOT NULL);
    INSERT INTO t (v) SELECT g FROM generate_series(1, 20) g;
    CREATE TABLE u (k text PRIMARY KEY, n numeric);
    INSERT INTO u VALUES ('a', 1.5), ('b', 2.5);
    CREATE SEQUENCE s;
    SELECT nextval('s');
    CREATE VIEW w AS SELECT id, v FROM t WHERE v > 10;
    CREATE TABLE q (id int);
";

/// The state a write, a lock or a session change would alter.
const FINGERPRINT: &str = "SELECT concat_ws(' | ',
    (SELECT count(*) || ':' || coalesce(sum(v), 0) FROM t),
    (SELECT count(*) || ':' || coalesce(sum(n), 0) FROM u),
    (SELECT count(*) FROM q),
    (SELECT last_value || ':' || is_called FROM s),
    (SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'),
    (SELECT count(*) FROM pg_largeobject_metadata),
    (SELECT string_agg(name || '=' || setting, ',' ORDER BY name) FROM pg_settings
        WHERE source IN ('session', 'client') OR name IN ('search_path', 'work_mem',
        'statement_timeout', 'default_transaction_read_only', 'transaction_read_only',
        'application_name', 'role', 'session_authorization', 'standard_conforming_strings')),
    (SELECT count(*) FROM pg_prepared_statements),
    (SELECT count(*) FROM pg_cursors),
    (SELECT count(*) FROM pg_listening_channels()),
    (SELECT count(*) FROM pg_class WHERE relpersistence = 't'),
    (SELECT count(*) FROM pg_class WHERE relnamespace = 'public'::regnamespace),
    (SELECT count(*) FROM pg_proc WHERE pronamespace = 'public'::regnamespace),
    (SELECT count(*) FROM pg_roles),
    (SELECT count(*) FROM pg_largeobject))";

async fn fingerprint(client: &Client) -> String {
    let rows = client.simple_query(FINGERPRINT).await.unwrap();
    rows.iter()
        .find_map(|m| match m {
            SimpleQueryMessage::Row(row) => row.get(0).map(str::to_owned),
            _ => None,
        })
        .unwrap()
}

/// Runs `sql` in a read-only transaction and commits it; the fingerprints before and after, and
/// the SQLSTATE it failed with, if it did.
async fn run_read_only(client: &Client, sql: &str) -> (String, String, Option<String>) {
    let before = fingerprint(client).await;
    client.batch_execute("BEGIN READ ONLY").await.unwrap();
    let failed = client.simple_query(sql).await.err().map(|e| {
        e.code()
            .map_or_else(|| e.to_string(), |c| c.code().to_owned())
    });
    // COMMIT, so that what a rollback would undo shows too; after an error it rolls back.
    // Outside a transaction (the text ended it) it only warns.
    client.batch_execute("COMMIT").await.unwrap();
    let after = fingerprint(client).await;
    (before, after, failed)
}

// ------------------------------------------------------------------------------------------------
// The grammar
// ------------------------------------------------------------------------------------------------

fn pick(options: &'static [&'static str]) -> BoxedStrategy<String> {
    proptest::sample::select(options)
        .prop_map(str::to_owned)
        .boxed()
}

/// Expressions: plain ones and quoting tricks, or calls with side effects in many spellings.
fn expr() -> BoxedStrategy<String> {
    prop_oneof![3 => benign_expr(), 1 => hostile_expr()].boxed()
}

fn benign_expr() -> BoxedStrategy<String> {
    pick(&[
        "1",
        "v",
        "id",
        "count(*) OVER ()",
        "'a;b'",
        "$$;$$",
        "$q$ ; DELETE FROM t; $q$",
        "E'\\'; DELETE FROM t; --'",
        "U&'\\0041'",
        "'it''s'",
        "now()",
        "current_setting('work_mem')",
        "(SELECT max(v) FROM t)",
        "currval('s')",
        "pg_backend_pid()",
        "txid_current_if_assigned()",
        "pg_try_advisory_lock",
        "lower('SET_CONFIG(1)')",
        "v::text || ';'",
        "/* ; DELETE FROM t */ 2",
        "(SELECT count(*) FROM t WHERE v > 3)",
        "(SELECT string_agg(k, ',') FROM u)",
        "ARRAY[1, 2]",
        "row_number() OVER (ORDER BY 1)",
    ])
}

fn hostile_expr() -> BoxedStrategy<String> {
    pick(&[
        "set_config('work_mem', '1MB', false)",
        "pg_catalog.set_config('search_path', 'pg_temp', false)",
        "\"set_config\"('application_name', 'x', false)",
        "SET_CONFIG('default_transaction_read_only', 'off', false)",
        "pg_advisory_lock(1)",
        "pg_try_advisory_lock(2)",
        "pg_advisory_xact_lock(3)",
        "pg_catalog.pg_advisory_lock_shared(4)",
        "lo_import('/etc/hostname')",
        "lo_create(0)",
        "lo_from_bytea(0, 'x')",
        "nextval('s')",
        "setval('s', 100)",
        "pg_catalog.nextval('s'::regclass)",
        "dblink('dbname=postgres', 'DELETE FROM t')",
        "dblink_exec('DELETE FROM t')",
        "pg_notify('c', 'x')",
        "pg_sleep(0)",
        "txid_current()",
        "pg_current_xact_id()",
        "pg_stat_reset()",
        "query_to_xml('DELETE FROM t RETURNING 1', true, true, '')",
        "pg_read_file('PG_VERSION')",
        "pg_ls_dir('.')",
        "(WITH d AS (DELETE FROM t RETURNING 1) SELECT count(*) FROM d)",
        "(SELECT v FROM t FOR UPDATE LIMIT 1)",
        "U&\"\\0073et_config\"('work_mem', '2MB', false)",
    ])
}

/// A read-only-looking query with optional clauses that make it write or lock.
fn query() -> BoxedStrategy<String> {
    (
        pick(&["", "/* c */ ", "-- c\n", "/* /* nested */ ; */ ", "\n\t"]),
        prop::collection::vec(expr(), 1..3),
        pick(&[
            "",
            " FROM t",
            " FROM w",
            " FROM t JOIN u ON true",
            " FROM generate_series(1, 3) g",
            " FROM t, LATERAL (SELECT pg_advisory_lock(t.id)) l",
        ]),
        pick(&[
            "",
            "",
            "",
            " LIMIT 1",
            " LIMIT 1",
            " ORDER BY 1",
            " ORDER BY 1",
            " FOR UPDATE",
            " FOR SHARE",
            " FOR NO KEY UPDATE",
            " FOR KEY SHARE",
            " FOR UPDATE SKIP LOCKED",
            " FOR UPDATE OF t",
            " FOR /* c */ UPDATE",
            " FOR SHARE NOWAIT",
        ]),
    )
        .prop_map(|(lead, exprs, from, tail)| {
            format!("{lead}SELECT {}{from}{tail}", exprs.join(", "))
        })
        .boxed()
}

/// Statements that change something.
fn write() -> BoxedStrategy<String> {
    pick(&[
        "INSERT INTO t (v) VALUES (1)",
        "UPDATE t SET v = v + 1",
        "DELETE FROM t",
        "MERGE INTO t USING u ON false WHEN NOT MATCHED THEN INSERT (v) VALUES (1)",
        "TRUNCATE q",
        "COPY t FROM STDIN",
        "COPY (SELECT 1) TO '/tmp/pgmcp-guard-property'",
        "DO $$ BEGIN DELETE FROM t; END $$",
        "CALL p()",
        "LOCK TABLE t",
        "PREPARE p AS SELECT 1",
        "EXECUTE p",
        "DEALLOCATE ALL",
        "LISTEN c",
        "NOTIFY c",
        "SET work_mem = '2MB'",
        "SET SESSION CHARACTERISTICS AS TRANSACTION READ WRITE",
        "SET TRANSACTION READ WRITE",
        "RESET ALL",
        "DISCARD ALL",
        "COMMIT",
        "ROLLBACK",
        "BEGIN",
        "SAVEPOINT a",
        "DECLARE c CURSOR WITH HOLD FOR SELECT 1",
        "SELECT v INTO t2 FROM t",
        "SELECT * INTO TEMP t3 FROM t",
        "CREATE TEMP TABLE t4 (x int)",
        "CREATE TABLE t5 AS SELECT 1",
        "CREATE FUNCTION f() RETURNS int LANGUAGE sql AS 'SELECT 1'",
        "ALTER TABLE q ADD COLUMN y int",
        "DROP TABLE q",
        "VACUUM q",
        "ANALYZE q",
        "REINDEX TABLE q",
        "CLUSTER q",
        "CHECKPOINT",
        "GRANT SELECT ON t TO PUBLIC",
        "COMMENT ON TABLE q IS 'x'",
        "REFRESH MATERIALIZED VIEW w",
        "SELECT pg_advisory_lock(9)",
        "SELECT set_config('work_mem', '3MB', false)",
        "SELECT nextval('s')",
        "SELECT lo_create(0)",
        "WITH i AS (INSERT INTO q VALUES (1) RETURNING 1) SELECT * FROM i",
        "WITH u2 AS (UPDATE t SET v = 0 RETURNING 1) SELECT 1",
        "WITH x AS (SELECT 1) DELETE FROM t",
        "EXPLAIN ANALYZE DELETE FROM t",
        "EXPLAIN ANALYZE WITH d AS (DELETE FROM t RETURNING 1) SELECT 1",
        "TABLE t FOR UPDATE",
        "VALUES (set_config('work_mem', '4MB', false))",
        "SHOW work_mem",
    ])
}

/// A call with a side effect that READ ONLY does not stop (or 25006 does), placed in every
/// position of a query where an expression may stand: the walk must reach each one.
fn hidden_call() -> BoxedStrategy<String> {
    (
        pick(&[
            "SELECT {f}",
            "SELECT * FROM {f}",
            "SELECT * FROM ROWS FROM ({f}) r",
            "SELECT * FROM t, LATERAL {f} l",
            "SELECT * FROM t WHERE {f} IS NOT NULL",
            "SELECT * FROM t JOIN u ON {f} IS NOT NULL",
            "SELECT v FROM t GROUP BY v HAVING {f} IS NOT NULL",
            "SELECT v FROM t GROUP BY ROLLUP (v, {f})",
            "SELECT v FROM t ORDER BY {f}",
            "SELECT DISTINCT ON ({f}) v FROM t",
            "SELECT count(*) FILTER (WHERE {f} IS NOT NULL) FROM t",
            "SELECT sum(v) OVER (PARTITION BY {f}) FROM t",
            "SELECT sum(v) OVER w FROM t WINDOW w AS (ORDER BY {f})",
            "SELECT * FROM t LIMIT ({f} IS NOT NULL)::int",
            "SELECT * FROM t OFFSET ({f} IS NULL)::int",
            "SELECT * FROM t FETCH FIRST ({f} IS NOT NULL)::int ROWS ONLY",
            "SELECT CASE WHEN true THEN {f} END",
            "SELECT coalesce(NULL, {f})",
            "SELECT greatest({f}, NULL)",
            "SELECT ARRAY(SELECT {f})",
            "SELECT (ARRAY[1, 2])[({f} IS NULL)::int + 1]",
            "SELECT EXISTS (SELECT {f})",
            "SELECT 1 WHERE 1 IN (SELECT ({f} IS NULL)::int)",
            "SELECT 1 = ANY (SELECT ({f} IS NULL)::int)",
            "SELECT ({f})::text",
            "SELECT CAST({f} AS text)",
            "SELECT {f} IS DISTINCT FROM NULL",
            "SELECT row({f})",
            "SELECT json_build_object('a', {f})",
            "SELECT xmlelement(name x, {f})",
            "SELECT substring('abc' FROM ({f} IS NULL)::int)",
            "SELECT trim(both ({f})::text from 'x')",
            "SELECT position('a' IN ({f})::text)",
            "SELECT 'a' LIKE ({f})::text",
            "SELECT ({f})::text COLLATE \"C\"",
            "SELECT now() AT TIME ZONE ({f})::text",
            "SELECT extract(year FROM now()) + ({f} IS NULL)::int",
            "SELECT * FROM (VALUES ({f})) v",
            "VALUES ({f})",
            "WITH a AS (SELECT {f}) SELECT * FROM a",
            "WITH a AS MATERIALIZED (SELECT {f}) SELECT * FROM a",
            "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r WHERE {f} IS NULL) SELECT * FROM r",
            "SELECT 1 UNION SELECT ({f} IS NULL)::int",
            "(SELECT 1) INTERSECT (SELECT ({f} IS NULL)::int)",
            "SELECT * FROM t TABLESAMPLE BERNOULLI ((({f}) IS NULL)::int * 100)",
            "SELECT * FROM json_to_record(json_build_object('a', {f})) AS x(a text)",
            "SELECT * FROM generate_series(1, ({f} IS NULL)::int + 1)",
            "EXPLAIN ANALYZE SELECT {f}",
            "EXPLAIN (ANALYZE) SELECT * FROM t WHERE {f} IS NOT NULL",
            "SELECT (SELECT {f})",
            "SELECT v FROM t WHERE v = (SELECT max(v) FROM t WHERE {f} IS NOT NULL)",
            "SELECT array_agg(v ORDER BY {f}) FROM t",
            "SELECT string_agg(v::text, ({f})::text) FROM t",
            "SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY {f}) FROM t",
            "SELECT ROW(1, 2) = ROW(1, ({f} IS NULL)::int)",
            "SELECT INTERVAL '1 second' * ({f} IS NULL)::int",
            "SELECT jsonb_path_query('{}', '$') FROM t WHERE {f} IS NULL",
        ]),
        pick(&[
            "pg_advisory_lock(11)",
            "pg_try_advisory_lock(12)",
            "set_config('work_mem', '7MB', false)",
            "nextval('s')",
            "lo_create(0)",
            "pg_notify('c', 'x')",
            "(42::bigint).pg_advisory_lock",
            "('s'::regclass).nextval",
            "(0::oid).lo_create",
            "('/etc/hostname'::text).lo_import",
        ]),
    )
        .prop_map(|(template, call)| template.replace("{f}", &call))
        .boxed()
}

/// Ways to glue a second statement on, or to pretend to.
fn glue() -> BoxedStrategy<String> {
    pick(&[
        "; ",
        ";\n",
        " /* ; */ ",
        " -- ;\n",
        ";/* x */",
        " $$;$$ ",
        " E'\\'' ; ",
        "\u{037e} ",
        "\u{ff1b} ",
        " ;; ",
        "\\;",
    ])
}

/// The statements the guard is meant to accept, with variations.
fn read() -> BoxedStrategy<String> {
    prop_oneof![
        4 => query(),
        1 => (query(), query()).prop_map(|(a, b)| format!("{a} UNION ALL ({b})")),
        1 => query().prop_map(|q| format!("WITH x AS ({q}) SELECT * FROM x")),
        1 => (query(), write()).prop_map(|(q, w)| format!("WITH x AS ({w}) {q}")),
        1 => query().prop_map(|q| format!("EXPLAIN {q}")),
        1 => query().prop_map(|q| format!("EXPLAIN ANALYZE {q}")),
        1 => query().prop_map(|q| format!("EXPLAIN (ANALYZE, BUFFERS) {q}")),
        1 => query().prop_map(|q| format!("SELECT * FROM ({q}) sub")),
        1 => expr().prop_map(|e| format!("VALUES ({e})")),
        1 => pick(&["TABLE t", "TABLE w", "TABLE t UNION TABLE t", "SHOW work_mem",
                     "SHOW ALL", "SHOW search_path", "SHOW transaction_read_only"]),
    ]
    .boxed()
}

fn sql() -> BoxedStrategy<String> {
    prop_oneof![
        8 => read(),
        3 => hidden_call(),
        2 => (read(), glue(), write()).prop_map(|(r, g, w)| format!("{r}{g}{w}")),
        1 => (write(), glue(), read()).prop_map(|(w, g, r)| format!("{w}{g}{r}")),
        1 => write(),
        1 => (read(), pick(&["", " --", " /*", " '", " $$", " \"", " )", " ("]))
            .prop_map(|(r, t)| format!("{r}{t}")),
        1 => prop::collection::vec(
                pick(&["SELECT", " ", "1", "'", "\"", "$$", "--", "/*", "*/", ";", "(", ")",
                       "E'", "\\", "\n", "DELETE FROM t", "FROM t", "set_config", "nextval('s')",
                       "INTO", "FOR UPDATE", "WITH", "AS", ","]),
                1..14,
            )
            .prop_map(|parts| parts.concat()),
    ]
    .boxed()
}

// ------------------------------------------------------------------------------------------------
// The property
// ------------------------------------------------------------------------------------------------

/// The guard's answer, on a tokio worker's stack size.
fn guard(sql: &str) -> Result<sql_guard::StatementKind, sql_guard::GuardError> {
    let sql = sql.to_owned();
    std::thread::Builder::new()
        .stack_size(2 * 1024 * 1024)
        .spawn(move || sql_guard::check(&sql))
        .unwrap()
        .join()
        .unwrap()
}

fn check_one(
    runtime: &tokio::runtime::Runtime,
    client: &Client,
    accepted: &Cell<usize>,
    sql: &str,
) -> Result<(), TestCaseError> {
    if guard(sql).is_err() {
        return Ok(());
    }
    accepted.set(accepted.get() + 1);
    let (before, after, failed) = runtime.block_on(run_read_only(client, sql));
    prop_assert_ne!(
        failed.as_deref(),
        Some("25006"),
        "the guard accepted {:?}, which PostgreSQL ran as a write (stopped only by READ ONLY)",
        sql
    );
    prop_assert_eq!(
        &before,
        &after,
        "the guard accepted {:?}, which changed the database or session",
        sql
    );
    Ok(())
}

#[test]
fn statements_the_guard_accepts_change_nothing_in_a_real_read_only_transaction() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let client = runtime.block_on(async {
        let db = Postgres::shared()
            .create_database("guard_properties")
            .await
            .unwrap();
        let admin = db.connect().await.unwrap();
        admin.batch_execute(FIXTURE).await.unwrap();
        admin
            .batch_execute("SET statement_timeout = '2s'")
            .await
            .unwrap();
        admin
    });

    let accepted = Cell::new(0);
    for sql in REGRESSIONS {
        check_one(&runtime, &client, &accepted, sql).unwrap();
    }

    let mut runner = TestRunner::new(Config {
        // `make fuzz` raises it.
        cases: std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|n| n.parse().ok())
            .unwrap_or(CASES),
        failure_persistence: Some(Box::new(FileFailurePersistence::WithSource(
            "proptest-regressions",
        ))),
        source_file: Some(file!()),
        ..Config::default()
    });
    let generated = Cell::new(0);
    runner
        .run(&sql(), |sql| {
            generated.set(generated.get() + 1);
            check_one(&runtime, &client, &accepted, &sql)
        })
        .unwrap();
    // The grammar must reach the database, not only the guard's refusals.
    let (accepted, generated) = (accepted.get(), generated.get());
    assert!(
        accepted * 10 > generated,
        "only {accepted} of {generated} generated statements were accepted"
    );
    eprintln!("{accepted} of {generated} generated statements were accepted and ran");
}
