//! Read-only, proven end to end: write attempts through the `query` tool are all refused and
//! the data is unchanged (checksums before and after); valid analytics SQL all runs; each
//! lower layer holds on its own when the SQL guard is bypassed; and SECURITY DEFINER functions,
//! which read with their owner's rights, are refused unless the binding lists them.
#![allow(clippy::unwrap_used)] // a failed step fails the test: panicking is the point

mod common;

use std::time::Duration;

use common::server::{ServerProcess, call_tool};
use common::{READER_PASSWORD, explain_args, public_only, q, shop};
use pgmcp_crds::config::{LimitsConfig, ScopeFunction};
use pgmcp_server::db::{Caps, Database};
use pgmcp_server::scope::Scope;
use pgmcp_server::tools::Call;
use pgmcp_server::tools::{Tools, sql};
use serde_json::json;

/// Attempts to change data, settings or the server, or to read files: every one must fail.
const ATTACKS: &[&str] = &[
    "INSERT INTO products (sku, name, price) VALUES ('X', 'x', 1)",
    "UPDATE products SET price = 0",
    "DELETE FROM orders",
    "TRUNCATE order_items",
    "MERGE INTO products p USING products q ON p.id = q.id WHEN MATCHED THEN UPDATE SET price = 0",
    "DROP TABLE order_items",
    "ALTER TABLE products ADD COLUMN hacked int",
    "CREATE TABLE stolen AS SELECT * FROM customers",
    "CREATE TEMP TABLE t (x int)",
    "SELECT * INTO stolen FROM customers",
    "COMMIT; DELETE FROM orders",
    "SELECT 1; DELETE FROM orders",
    "ROLLBACK; SET TRANSACTION READ WRITE; DELETE FROM orders",
    "SELECT 1 /* ; */ ; DELETE FROM orders",
    "SELECT 1; -- \n DELETE FROM orders",
    "SELECT $$;$$; DROP TABLE orders",
    "WITH gone AS (DELETE FROM orders RETURNING *) SELECT count(*) FROM gone",
    "WITH up AS (UPDATE products SET price = 0 RETURNING id) SELECT * FROM up",
    "SET TRANSACTION READ WRITE",
    "SET default_transaction_read_only = off",
    "SET SESSION CHARACTERISTICS AS TRANSACTION READ WRITE",
    "RESET ALL",
    "SELECT set_config('default_transaction_read_only', 'off', false)",
    "SELECT pg_read_file('/etc/passwd')",
    "SELECT pg_catalog.pg_read_file('postgresql.conf')",
    "SELECT \"pg_read_file\"('/etc/passwd')",
    "SELECT PG_LS_DIR('.')",
    "SELECT lo_import('/etc/passwd')",
    "COPY orders TO '/tmp/orders.csv'",
    "COPY (SELECT 1) TO PROGRAM 'id'",
    "COPY products FROM STDIN",
    "CALL some_procedure()",
    "DO $$ BEGIN DELETE FROM orders; END $$",
    "SELECT nextval('orders_id_seq')",
    "SELECT setval('orders_id_seq', 1)",
    "SELECT pg_terminate_backend(pg_backend_pid())",
    "SELECT pg_cancel_backend(1)",
    "SELECT pg_advisory_lock(42)",
    "NOTIFY orders_changed",
    "SELECT pg_notify('orders_changed', 'x')",
    "LISTEN orders_changed",
    "SELECT * FROM orders FOR UPDATE",
    "LOCK TABLE orders",
    "PREPARE p AS DELETE FROM orders",
    "EXECUTE p",
    "VACUUM orders",
    "GRANT SELECT ON internal.api_keys TO PUBLIC",
    "ALTER ROLE CURRENT_USER SUPERUSER",
    "EXPLAIN ANALYZE DELETE FROM orders",
    "SELECT query_to_xml('DELETE FROM orders', true, true, '')",
    "SELECT * FROM orders WHERE id IN (SELECT id FROM (WITH d AS (DELETE FROM orders RETURNING id) SELECT id FROM d) x)",
    "SELECT pg_sleep(60)",
    "SELECT * FROM internal.api_keys",
    "SELECT dblink_exec('dbname=postgres', 'DROP TABLE orders')",
    "REFRESH MATERIALIZED VIEW product_sales",
    "COMMENT ON TABLE orders IS 'hacked'",
    "DISCARD ALL",
    "SELECT 1\u{0}; DELETE FROM orders",
];

/// Analytics an agent writes: all must run.
const ANALYTICS: &[&str] = &[
    "SELECT * FROM customers ORDER BY id",
    "SELECT count(*) FROM products",
    "SELECT p.name, sum(i.quantity) AS qty FROM order_items i JOIN products p ON p.id = i.product_id GROUP BY p.name ORDER BY qty DESC LIMIT 5",
    "SELECT date_trunc('month', ordered_at) AS month, count(*) FROM orders GROUP BY 1 ORDER BY 1",
    "SELECT c.country, avg(p.price * i.quantity) FROM orders o JOIN customers c ON c.id = o.customer_id JOIN order_items i ON i.order_id = o.id JOIN products p ON p.id = i.product_id GROUP BY c.country",
    "SELECT * FROM customers c WHERE EXISTS (SELECT 1 FROM orders o WHERE o.customer_id = c.id AND o.ordered_at > now() - interval '30 days')",
    "SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY price) AS median_price FROM products",
    "SELECT mode() WITHIN GROUP (ORDER BY status) FROM orders",
    "SELECT id, price, sum(price) OVER (ORDER BY id ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS running FROM products",
    "SELECT customer_id, rank() OVER (PARTITION BY customer_id ORDER BY ordered_at DESC) FROM orders",
    "SELECT c.name, last.ordered_at FROM customers c LEFT JOIN LATERAL (SELECT ordered_at FROM orders o WHERE o.customer_id = c.id ORDER BY ordered_at DESC LIMIT 1) last ON true",
    "SELECT count(*) FILTER (WHERE status = 'paid') AS paid, count(*) FILTER (WHERE status = 'open') AS open FROM orders",
    "SELECT country, status, count(*) FROM orders o JOIN customers c ON c.id = o.customer_id GROUP BY GROUPING SETS ((country), (status), ())",
    "SELECT country, count(*) FROM customers GROUP BY ROLLUP (country)",
    "WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n WHERE x < 10) SELECT sum(x) FROM n",
    "SELECT DISTINCT ON (customer_id) customer_id, ordered_at FROM orders ORDER BY customer_id, ordered_at DESC",
    "SELECT d::date FROM generate_series('2026-06-01'::date, '2026-06-07'::date, interval '1 day') d",
    "SELECT string_agg(name, ', ' ORDER BY name) FROM customers",
    "SELECT array_agg(sku ORDER BY sku) FROM products",
    "SELECT jsonb_build_object('n', count(*)) ->> 'n' FROM orders",
    "SELECT * FROM products WHERE name ILIKE '%cable%' OR sku = ANY(ARRAY['KB-001', 'MS-002'])",
    "SELECT CASE WHEN price > 100 THEN 'premium' ELSE 'standard' END AS tier, count(*) FROM products GROUP BY 1",
    "SELECT coalesce(NULL, 'x'), nullif(1, 1), greatest(1, 2)",
    "SELECT * FROM product_sales ORDER BY quantity DESC",
    "VALUES (1, 'a'), (2, 'b')",
    "SELECT id FROM orders UNION ALL SELECT id FROM customers",
    "SELECT current_setting('statement_timeout'), current_user, version()",
    "SHOW search_path",
    "EXPLAIN SELECT * FROM orders WHERE customer_id = 1",
    "EXPLAIN (ANALYZE, FORMAT JSON) SELECT count(*) FROM order_items",
    "SELECT o.id, o.ordered_at::date, (SELECT sum(quantity) FROM order_items i WHERE i.order_id = o.id) FROM orders o -- comment\n ORDER BY 1",
];

#[tokio::test]
async fn every_write_attempt_is_refused_and_nothing_changes() {
    assert!(
        ATTACKS.len() >= 40,
        "the corpus has {} attempts",
        ATTACKS.len()
    );
    let shop = shop("read only attacks").await;
    let tools = shop.tools();
    let before = shop.checksum().await;
    for attack in ATTACKS {
        let result = sql::query(&tools, &Call::default(), q(attack)).await;
        assert!(result.is_err(), "not refused: {attack:?} -> {result:?}");
    }
    assert_eq!(shop.checksum().await, before, "the data changed");
    // The server still answers.
    assert_eq!(
        sql::query(&tools, &Call::default(), q("SELECT count(*) FROM orders"))
            .await
            .unwrap()
            .rows
            .rows
            .values(),
        [[json!(5)]]
    );
}

#[tokio::test]
async fn valid_analytics_sql_all_runs() {
    assert!(ANALYTICS.len() >= 20);
    let shop = shop("read only analytics").await;
    let tools = shop.tools();
    for statement in ANALYTICS {
        if let Err(err) = sql::query(&tools, &Call::default(), q(statement)).await {
            panic!("refused valid analytics: {statement:?}: {err}");
        }
    }
}

#[tokio::test]
async fn read_only_transactions_hold_without_the_sql_guard() {
    // Layer two alone: the pool's sessions and transactions are read-only, whatever the SQL.
    let shop = shop("layer two").await;
    let tools = shop.tools();
    let caps = Caps {
        max_rows: 10,
        max_bytes: 1 << 20,
    };
    let never = tokio_util::sync::CancellationToken::new();
    let before = shop.checksum().await;
    for write in [
        "DELETE FROM orders",
        "UPDATE products SET price = 0",
        "CREATE TABLE t (x int)",
    ] {
        let err = tools
            .db
            .query(write, &[], caps, None, None, &never)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("25006"), "{write}: {err}");
        assert!(err.to_string().contains("read-only"), "{err}");
    }
    let err = tools
        .db
        .query(
            "SELECT 1; DELETE FROM orders",
            &[],
            caps,
            None,
            None,
            &never,
        )
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("42601"),
        "one statement per call: {err}"
    );
    assert_eq!(shop.checksum().await, before);
}

#[tokio::test]
async fn the_binding_role_cannot_write_even_in_a_read_write_transaction() {
    // Layer one alone: the role itself has SELECT only.
    let shop = shop("layer one").await;
    let reader = shop
        .db
        .connect_as(&shop.role, READER_PASSWORD)
        .await
        .unwrap();
    let before = shop.checksum().await;
    for write in [
        "DELETE FROM orders",
        "INSERT INTO products (sku, name, price) VALUES ('x', 'x', 1)",
        "CREATE TABLE public.t (x int)",
    ] {
        let err = reader
            .batch_execute(&format!("BEGIN READ WRITE; {write}; COMMIT"))
            .await
            .unwrap_err();
        let message = err
            .as_db_error()
            .map(|e| e.message().to_owned())
            .unwrap_or_default();
        assert!(message.contains("permission denied"), "{write}: {err:?}");
        reader.batch_execute("ROLLBACK").await.unwrap();
    }
    assert_eq!(shop.checksum().await, before);
}

/// The server's own check of its role (layer one) on what differs between versions: MAINTAIN
/// (VACUUM, REFRESH MATERIALIZED VIEW, LOCK TABLE) is a table privilege since PostgreSQL 17, and
/// PUBLIC may create in schema public by default up to 14, which the harness revokes as 15 does.
#[tokio::test]
async fn the_role_check_names_maintain_and_publics_create_with_the_fix() {
    let shop = shop("role check versions").await;
    let tools = shop.tools();
    assert_eq!(
        pgmcp_server::startup::role_problems(&tools).await.unwrap(),
        Vec::<String>::new()
    );
    let admin = shop.db.connect().await.unwrap();
    admin
        .batch_execute("GRANT CREATE ON SCHEMA public TO PUBLIC")
        .await
        .unwrap();
    assert_eq!(
        pgmcp_server::startup::role_problems(&tools).await.unwrap(),
        [
            "the role can create objects in schema public, as every role can: PUBLIC holds CREATE \
          there (PostgreSQL 14 and earlier grant it in schema public by default; REVOKE CREATE \
          ON SCHEMA public FROM PUBLIC)"
        ]
    );
    admin
        .batch_execute("REVOKE CREATE ON SCHEMA public FROM PUBLIC")
        .await
        .unwrap();
    if shop.db.server().major() >= 17 {
        admin
            .batch_execute(&format!("GRANT MAINTAIN ON orders TO \"{}\"", shop.role))
            .await
            .unwrap();
        assert_eq!(
            pgmcp_server::startup::role_problems(&tools).await.unwrap(),
            ["the role can write to or owns public.orders"]
        );
    }
}

/// A SECURITY DEFINER function in the granted schema reading a table the role may not read:
/// PUBLIC may execute it, as every new function, and it reads with its owner's rights.
const KEY_COUNT: &str = "CREATE FUNCTION public.key_count() RETURNS bigint LANGUAGE sql
    SECURITY DEFINER AS 'SELECT count(*) FROM internal.api_keys'";

#[tokio::test]
async fn security_definer_functions_are_refused_unless_the_binding_lists_them() {
    let shop = shop("security definer").await;
    let admin = shop.db.connect().await.unwrap();
    admin.batch_execute(KEY_COUNT).await.unwrap();
    // What one call would give away: a count of a table the role cannot read.
    let reader = shop
        .db
        .connect_as(&shop.role, READER_PASSWORD)
        .await
        .unwrap();
    let keys: i64 = reader
        .query_one("SELECT public.key_count()", &[])
        .await
        .unwrap()
        .get(0);
    assert!(
        reader
            .query("SELECT * FROM internal.api_keys", &[])
            .await
            .is_err()
    );

    let tools = shop.tools();
    for call in [
        "SELECT public.key_count()",
        "SELECT key_count()",
        "SELECT \"key_count\"()",
        "SELECT * FROM orders WHERE id < (SELECT key_count())",
        "WITH k AS (SELECT key_count() AS n) SELECT n FROM k",
        "SELECT * FROM key_count()",
        "SELECT o.id, k FROM orders o, LATERAL key_count() k",
    ] {
        let err = sql::query(&tools, &Call::default(), q(call))
            .await
            .unwrap_err();
        assert_eq!(err.metric_label(), "refused_definer", "{call}: {err}");
        let text = err.to_string();
        assert!(
            text.starts_with("refused: ")
                && text.contains("is a SECURITY DEFINER function")
                && text.contains(
                    "spec.access.functions (pgmcp-server --allow-function public.key_count)"
                ),
            "{call}: {text}"
        );
    }
    let err = sql::explain(
        &tools,
        &Call::default(),
        explain_args("SELECT key_count()", false),
    )
    .await
    .unwrap_err();
    assert_eq!(err.metric_label(), "refused_definer", "{err}");
    // Ordinary queries, built-in functions included, still run.
    let rows = sql::query(
        &tools,
        &Call::default(),
        q("SELECT count(*), max(lower(status)) FROM orders"),
    )
    .await
    .unwrap();
    assert_eq!(rows.rows.rows.values()[0][0], json!(5));

    // One created later is refused once the catalog is read again (every 30 s in the server).
    admin
        .batch_execute(&KEY_COUNT.replace("key_count", "key_count_again"))
        .await
        .unwrap();
    tools.refresh_definers().await.unwrap();
    let err = sql::query(&tools, &Call::default(), q("SELECT key_count_again()"))
        .await
        .unwrap_err();
    assert_eq!(err.metric_label(), "refused_definer", "{err}");

    // Listed, it can be called: the binding decided agents may.
    let limits = LimitsConfig::default();
    let options = shop.connect_options(
        &public_only(),
        Duration::from_millis(limits.statement_timeout_ms),
    );
    let listed = Tools::new(
        Database::new(&options).unwrap(),
        Scope::new(public_only()).with_functions(vec![ScopeFunction {
            schema: "public".into(),
            name: "key_count".into(),
        }]),
        limits,
    );
    let rows = sql::query(&listed, &Call::default(), q("SELECT key_count()"))
        .await
        .unwrap();
    assert_eq!(rows.rows.rows.values(), [[json!(keys)]]);
    assert!(
        sql::query(&listed, &Call::default(), q("SELECT key_count_again()"))
            .await
            .is_err()
    );
}

#[tokio::test]
async fn the_server_refuses_security_definer_calls_until_allowed_with_allow_function() {
    let shop = shop("security definer server").await;
    let admin = shop.db.connect().await.unwrap();
    admin.batch_execute(KEY_COUNT).await.unwrap();
    let call = |port| async move {
        call_tool(
            port,
            &[],
            "query",
            json!({"sql": "SELECT key_count() AS n"}),
        )
        .await
        .unwrap()
    };

    let server = ServerProcess::start(&shop, &[]).await;
    let refused = call(server.port).await;
    assert_eq!(refused["isError"], json!(true), "{refused}");
    let text = refused["content"][0]["text"].as_str().unwrap();
    assert!(text.contains("--allow-function public.key_count"), "{text}");
    // The start-up log names what it refuses.
    assert!(
        server.log().contains("public.key_count"),
        "{}",
        server.log()
    );
    drop(server);

    let server = ServerProcess::start(&shop, &["--allow-function", "public.key_count"]).await;
    let allowed = call(server.port).await;
    assert_ne!(allowed["isError"], json!(true), "{allowed}");
}
