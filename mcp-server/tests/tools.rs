//! Every tool, called directly on the seeded shop database as the binding's read-only role,
//! against a real PostgreSQL (14 to 18, see the harness). Includes the questions an agent must be
//! able to answer.
#![allow(clippy::unwrap_used)] // a failed step fails the test: panicking is the point

mod common;

use common::{explain_args, public_only, q, shop};
use pgmcp_crds::config::{LimitsConfig, ScopeGrant};
use pgmcp_server::tools::Call;
use pgmcp_server::tools::ToolError;
use pgmcp_server::tools::catalog::{self, *};
use pgmcp_server::tools::page::Page;
use pgmcp_server::tools::sql::{self, ExplainArgs, QueryArgs};
use serde_json::{Value, json};

async fn describe(
    tools: &pgmcp_server::tools::Tools,
    table: &str,
    schema: Option<&str>,
) -> Result<TableDescription, ToolError> {
    let args = DescribeTableArgs {
        table: table.to_owned(),
        schema: schema.map(str::to_owned),
        cursor: None,
    };
    catalog::describe_table(tools, &Call::default(), args).await
}

async fn search(tools: &pgmcp_server::tools::Tools, pattern: &str) -> Result<Page, ToolError> {
    let args = SearchObjectsArgs {
        pattern: pattern.to_owned(),
        cursor: None,
    };
    catalog::search_objects(tools, &Call::default(), args).await
}

/// Rows as objects keyed by column name.
fn objects(result: &impl serde::Serialize) -> Vec<Value> {
    let value = serde_json::to_value(result).unwrap();
    let columns: Vec<String> = value["columns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap().to_owned())
        .collect();
    value["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| {
            Value::Object(
                columns
                    .iter()
                    .cloned()
                    .zip(row.as_array().unwrap().iter().cloned())
                    .collect(),
            )
        })
        .collect()
}

fn column(result: &impl serde::Serialize, name: &str) -> Vec<Value> {
    objects(result)
        .into_iter()
        .map(|o| o[name].clone())
        .collect()
}

#[tokio::test]
async fn list_tables_shows_only_the_granted_schema_with_kinds_estimates_and_comments() {
    let shop = shop("list tables").await;
    let tools = shop.tools();
    let detail = ListTablesArgs {
        detail: true,
        ..ListTablesArgs::default()
    };
    let result = catalog::list_tables(&tools, &Call::default(), detail)
        .await
        .unwrap();
    let tables = objects(&result);
    let names: Vec<&str> = tables.iter().map(|t| t["name"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        [
            "customers",
            "order_items",
            "orders",
            "product_sales",
            "products"
        ]
    );
    let customers = &tables[0];
    assert_eq!(customers["schema"], json!("public"));
    assert_eq!(customers["kind"], json!("table"));
    assert_eq!(customers["row_estimate"], json!(5));
    assert!(customers["size_bytes"].as_i64().unwrap() > 0);
    assert!(
        customers["comment"]
            .as_str()
            .unwrap()
            .contains("customer contact information")
    );
    assert_eq!(tables[3]["kind"], json!("view"));
    assert_eq!(tables[3]["row_estimate"], Value::Null);
    assert!(!result.truncated);
    assert_eq!(result.limits.max_rows, 1000);
    assert_eq!(result.summary, "5 tables in 1 schema, all shown.");
    assert_eq!(result.next_cursor, None);

    let compact = catalog::list_tables(&tools, &Call::default(), ListTablesArgs::default())
        .await
        .unwrap();
    let customers = &objects(&compact)[0];
    assert_eq!(customers.get("size_bytes"), None, "compact by default");
    assert_eq!(customers["row_estimate"], json!(5));

    let schemas = catalog::list_schemas(&tools, &Call::default(), ListSchemasArgs::default())
        .await
        .unwrap();
    assert_eq!(
        column(&schemas, "name"),
        [json!("public")],
        "internal is invisible"
    );
    assert_eq!(column(&schemas, "tables"), [json!(5)]);
    let databases = catalog::list_databases(&tools, &Call::default(), ListDatabasesArgs::default())
        .await
        .unwrap();
    assert_eq!(
        column(&databases, "name"),
        [json!(shop.db.name)],
        "only the bound database"
    );
}

#[tokio::test]
async fn describe_table_gives_columns_keys_indexes_and_checks() {
    let shop = shop("describe table").await;
    let tools = shop.tools();
    let customers = describe(&tools, "customers", None).await.unwrap();
    let value = serde_json::to_value(&customers).unwrap();
    assert_eq!(value["schema"], json!("public"));
    assert_eq!(value["primary_key"], json!(["id"]));
    let email = &value["rows"][2];
    assert_eq!(
        email,
        &json!([
            "email",
            "text",
            false,
            null,
            "Contact e-mail address of the customer"
        ])
    );
    assert_eq!(value["rows"][4][3], json!("now()"), "default of created_at");
    assert_eq!(value["rows"][4][1], json!("timestamp with time zone"));
    let referenced_by = &value["referenced_by"][0];
    assert_eq!(referenced_by["from_table"], json!("orders"));
    assert_eq!(referenced_by["from_columns"], json!(["customer_id"]));
    let indexes: Vec<&str> = value["indexes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["name"].as_str().unwrap())
        .collect();
    assert_eq!(indexes, ["customers_email_key", "customers_pkey"]);

    let items = describe(&tools, "order_items", Some("public"))
        .await
        .unwrap();
    let value = serde_json::to_value(&items).unwrap();
    assert_eq!(value["primary_key"], json!(["order_id", "product_id"]));
    let fks: Vec<(&str, &Value)> = value["foreign_keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| (f["to_table"].as_str().unwrap(), &f["to_columns"]))
        .collect();
    assert_eq!(
        fks,
        [("orders", &json!(["id"])), ("products", &json!(["id"]))]
    );
    assert!(
        value["check_constraints"][0]["definition"]
            .as_str()
            .unwrap()
            .contains("quantity > 0")
    );

    let view = describe(&tools, "product_sales", None).await.unwrap();
    assert!(view.view_definition.unwrap().contains("sum(i.quantity)"));

    let hidden = describe(&tools, "api_keys", Some("internal"))
        .await
        .unwrap_err();
    assert!(matches!(hidden, ToolError::NotFound(_)), "{hidden}");
    assert!(hidden.to_string().contains("list_tables"), "{hidden}");
}

#[tokio::test]
async fn relationships_and_search_answer_how_tables_connect_and_where_customers_are() {
    let shop = shop("relationships").await;
    let tools = shop.tools();
    let all =
        catalog::list_relationships(&tools, &Call::default(), ListRelationshipsArgs::default())
            .await
            .unwrap();
    let pairs: Vec<(String, String)> = objects(&all)
        .iter()
        .map(|r| {
            (
                r["from_table"].as_str().unwrap().into(),
                r["to_table"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert_eq!(
        pairs,
        [
            ("order_items".into(), "orders".into()),
            ("order_items".into(), "products".into()),
            ("orders".into(), "customers".into())
        ]
    );
    let orders = catalog::list_relationships(
        &tools,
        &Call::default(),
        ListRelationshipsArgs {
            schema: None,
            table: Some("orders".into()),
            cursor: None,
        },
    )
    .await
    .unwrap();
    assert_eq!(
        orders.row_count, 2,
        "both directions: order_items -> orders -> customers"
    );
    assert_eq!(objects(&orders)[1]["on_delete"], json!("NO ACTION"));

    let found = search(&tools, "customer").await.unwrap();
    let hits: Vec<(String, Value)> = objects(&found)
        .iter()
        .map(|h| (h["table"].as_str().unwrap().into(), h["column"].clone()))
        .collect();
    assert!(
        hits.contains(&("customers".into(), Value::Null)),
        "{hits:?}"
    );
    assert!(
        hits.contains(&("orders".into(), json!("customer_id"))),
        "{hits:?}"
    );
    let none = search(&tools, "api_keys").await.unwrap();
    assert_eq!(none.row_count, 0, "out-of-scope objects are not found");
    let wildcard = search(&tools, "%").await.unwrap();
    assert_eq!(wildcard.row_count, 0, "% is matched literally");
}

#[tokio::test]
async fn every_output_type_keeps_its_meaning() {
    let shop = shop("output types").await;
    let tools = shop.tools();
    let result = sql::query(
        &tools,
        &Call::default(),
        q("SELECT 1::int2 AS i2, 2::int4 AS i4, 3::int8 AS i8, 1.5::float4 AS f4, 2.25::float8 AS f8,
                  12.34::numeric AS num, true AS yes, NULL::text AS nothing, 'x'::text AS txt,
                  'ab'::varchar AS vc, 'a'::\"char\" AS ch,
                  '2026-06-01T12:00:00Z'::timestamptz AS tstz, '2026-06-01 12:00'::timestamp AS ts,
                  '2026-06-01'::date AS d, '12:30'::time AS t, interval '1 day 2 hours' AS iv,
                  '\\xdeadbeef'::bytea AS bin, '{\"a\": 1}'::jsonb AS jb, '[1, \"b\"]'::json AS js,
                  ARRAY[1, 2, 3] AS ints, ARRAY['a', NULL] AS texts, ARRAY[[1, 2], [3, 4]] AS grid,
                  'a8098c1a-f86e-11da-bd1a-00112444be1e'::uuid AS id, 'NaN'::float8 AS nan,
                  '192.168.0.1'::inet AS addr"),
    )
    .await
    .unwrap();
    let row = &objects(&result)[0];
    let expected = json!({
        "i2": 1, "i4": 2, "i8": 3, "f4": 1.5, "f8": 2.25, "num": 12.34, "yes": true, "nothing": null,
        "txt": "x", "vc": "ab", "ch": "a",
        "tstz": "2026-06-01T12:00:00Z", "ts": "2026-06-01T12:00:00", "d": "2026-06-01", "t": "12:30:00",
        "iv": "P1DT2H", "bin": "\\xdeadbeef", "jb": {"a": 1}, "js": [1, "b"],
        "ints": [1, 2, 3], "texts": ["a", null], "grid": [[1, 2], [3, 4]],
        "id": "a8098c1a-f86e-11da-bd1a-00112444be1e", "nan": "NaN", "addr": row["addr"].clone(),
    });
    assert_eq!(row, &expected);
    let types: Vec<&str> = result
        .rows
        .columns
        .iter()
        .map(|c| c.type_name.as_str())
        .collect();
    assert_eq!(&types[..3], ["int2", "int4", "int8"]);
    assert_eq!(
        result.rows.undecoded_columns.len(),
        1,
        "inet is named as undecoded"
    );
    assert!(result.rows.undecoded_columns[0].contains("addr (inet)"));
    assert!(result.rows.undecoded_columns[0].contains("addr::text"));
}

#[tokio::test]
async fn agent_questions_are_answered_through_the_tools() {
    let shop = shop("agent questions").await;
    let tools = shop.tools();
    let first_orders = sql::query(
        &tools,
        &Call::default(),
        q("SELECT * FROM orders ORDER BY id LIMIT 10"),
    )
    .await
    .unwrap();
    assert_eq!(first_orders.rows.row_count, 5);
    assert_eq!(
        objects(&first_orders)[0]["ordered_at"],
        json!("2026-06-01T12:00:00Z")
    );

    let count = sql::query(
        &tools,
        &Call::default(),
        q("SELECT count(*) AS products FROM products"),
    )
    .await
    .unwrap();
    assert_eq!(
        objects(&count)[0]["products"],
        json!(5),
        "a count is a number"
    );

    let top = sql::query(
        &tools,
        &Call::default(),
        q("SELECT p.name, sum(i.quantity) AS quantity FROM order_items i JOIN products p ON p.id = i.product_id
           GROUP BY p.name ORDER BY quantity DESC, p.name LIMIT 5"),
    )
    .await
    .unwrap();
    assert_eq!(
        objects(&top)[0],
        json!({"name": "Braided cable", "quantity": 13})
    );

    let recent = sql::query(
        &tools,
        &Call::default(),
        QueryArgs {
            sql: "SELECT DISTINCT c.name FROM customers c JOIN orders o ON o.customer_id = c.id
                  WHERE o.ordered_at >= $1::timestamptz - interval '30 days' ORDER BY c.name"
                .into(),
            params: vec![json!("2026-06-12T12:00:00Z")],
            max_rows: None,
        },
    )
    .await
    .unwrap();
    assert_eq!(column(&recent, "name").len(), 4);

    let by_segment = sql::query(
        &tools,
        &Call::default(),
        q("SELECT c.country, round(avg(t.total), 2) AS avg_order_value FROM (
             SELECT o.id, o.customer_id, sum(i.quantity * p.price) AS total
             FROM orders o JOIN order_items i ON i.order_id = o.id JOIN products p ON p.id = i.product_id
             GROUP BY o.id, o.customer_id) t JOIN customers c ON c.id = t.customer_id
           GROUP BY c.country ORDER BY c.country"),
    )
    .await
    .unwrap();
    assert_eq!(
        objects(&by_segment)[0],
        json!({"country": "AT", "avg_order_value": 129.0})
    );

    let trend = sql::query(
        &tools,
        &Call::default(),
        q("SELECT date_trunc('month', o.ordered_at) AS month, count(*) AS orders FROM orders o GROUP BY 1 ORDER BY 1"),
    )
    .await
    .unwrap();
    assert_eq!(
        objects(&trend),
        [json!({"month": "2026-06-01T00:00:00Z", "orders": 5})]
    );
}

#[tokio::test]
async fn parameters_are_bound_by_type_and_mismatches_are_explained() {
    let shop = shop("parameters").await;
    let tools = shop.tools();
    let paid = sql::query(
        &tools,
        &Call::default(),
        QueryArgs {
            sql: "SELECT id FROM orders WHERE customer_id = $1 AND status = ANY($2) AND $3::numeric < 1 ORDER BY id".into(),
            params: vec![json!(1), json!(["paid", "shipped"]), json!("0.5")],
            max_rows: None,
        },
    )
    .await
    .unwrap();
    assert_eq!(column(&paid, "id"), [json!(1), json!(4)]);

    let wrong = sql::query(
        &tools,
        &Call::default(),
        QueryArgs {
            sql: "SELECT * FROM orders WHERE id = $1".into(),
            params: vec![json!("one")],
            max_rows: None,
        },
    )
    .await
    .unwrap_err();
    assert!(
        wrong.to_string().contains("$1 must be an integer"),
        "{wrong}"
    );
    let missing = sql::query(
        &tools,
        &Call::default(),
        q("SELECT * FROM orders WHERE id = $1"),
    )
    .await
    .unwrap_err();
    assert!(missing.to_string().contains("1 parameter(s)"), "{missing}");
}

#[tokio::test]
async fn caps_truncate_and_say_so() {
    let shop = shop("caps").await;
    let tools = shop.tools_with(
        public_only(),
        LimitsConfig {
            discovery_max_bytes: pgmcp_crds::config::DEFAULT_DISCOVERY_MAX_BYTES,
            max_rows: 3,
            max_bytes: 200,
            statement_timeout_ms: 300,
        },
    );
    let rows = sql::query(
        &tools,
        &Call::default(),
        q("SELECT g FROM generate_series(1, 1000000) g"),
    )
    .await
    .unwrap();
    assert_eq!(
        (
            rows.rows.row_count,
            rows.rows.truncated,
            rows.rows.truncated_by
        ),
        (3, true, Some("max_rows"))
    );
    assert_eq!(rows.limits.max_rows, 3);
    let fewer = sql::query(
        &tools,
        &Call::default(),
        QueryArgs {
            max_rows: Some(2),
            ..q("SELECT * FROM customers")
        },
    )
    .await
    .unwrap();
    assert_eq!(fewer.rows.row_count, 2);
    let more = sql::query(
        &tools,
        &Call::default(),
        QueryArgs {
            max_rows: Some(50),
            ..q("SELECT id FROM customers")
        },
    )
    .await
    .unwrap();
    assert_eq!(
        more.rows.row_count, 3,
        "a caller cannot raise the server's cap"
    );
    let wide = sql::query(
        &tools,
        &Call::default(),
        q("SELECT repeat('x', 150) AS a UNION ALL SELECT repeat('y', 150)"),
    )
    .await
    .unwrap();
    assert_eq!(
        (wide.rows.row_count, wide.rows.truncated_by),
        (1, Some("max_bytes"))
    );
    let slow = sql::query(
        &tools,
        &Call::default(),
        q("SELECT count(*) FROM generate_series(1, 100000000)"),
    )
    .await
    .unwrap_err();
    assert_eq!(slow.metric_label(), "timeout", "{slow}");
    assert!(slow.to_string().contains("statement timeout"), "{slow}");
    // The server keeps serving after a timeout.
    assert_eq!(
        sql::query(&tools, &Call::default(), q("SELECT 1"))
            .await
            .unwrap()
            .rows
            .row_count,
        1
    );
}

#[tokio::test]
async fn scope_hides_and_refuses_what_is_not_granted() {
    let shop = shop("scope").await;
    let only_customers = vec![ScopeGrant {
        schema: "public".into(),
        tables: vec!["customers".into()],
    }];
    let tools = shop.tools_with(only_customers, LimitsConfig::default());
    let tables = catalog::list_tables(&tools, &Call::default(), ListTablesArgs::default())
        .await
        .unwrap();
    assert_eq!(column(&tables, "name"), [json!("customers")]);
    let relations =
        catalog::list_relationships(&tools, &Call::default(), ListRelationshipsArgs::default())
            .await
            .unwrap();
    assert_eq!(
        relations.row_count, 0,
        "the other side of every FK is hidden"
    );
    for sql in [
        "SELECT count(*) FROM customers",
        "SELECT count(*) FROM Public.CUSTOMERS",
    ] {
        assert_eq!(
            sql::query(&tools, &Call::default(), q(sql))
                .await
                .unwrap()
                .rows
                .row_count,
            1,
            "{sql}"
        );
    }
    for sql in [
        "SELECT * FROM orders",
        "SELECT * FROM ORDERS",
        "SELECT * FROM public.products",
        "SELECT * FROM Public.Products",
        "SELECT 1 UNION TABLE Orders",
        "SELECT * FROM customers c WHERE EXISTS (SELECT 1 FROM orders o WHERE o.customer_id = c.id)",
        "SELECT * FROM internal.api_keys",
        "SELECT * FROM pg_authid",
        "SELECT * FROM PG_AUTHID",
        "SELECT * FROM information_schema.tables",
    ] {
        let err = sql::query(&tools, &Call::default(), q(sql))
            .await
            .unwrap_err();
        assert_eq!(err.metric_label(), "refused_scope", "{sql}: {err}");
        assert!(
            err.to_string().contains("customers in schema public"),
            "{err}"
        );
    }
    let table = sql::query(&tools, &Call::default(), q("TABLE products"))
        .await
        .unwrap_err();
    assert!(
        table.metric_label().starts_with("refused") || table.metric_label() == "invalid_argument",
        "{table}"
    );
    let explain = sql::explain(
        &tools,
        &Call::default(),
        explain_args("SELECT * FROM orders", false),
    )
    .await
    .unwrap_err();
    assert_eq!(explain.metric_label(), "refused_scope");
}

#[tokio::test]
async fn whole_schema_grants_resolve_names_without_a_catalog_query_and_still_refuse_pg_catalog() {
    let shop = shop("scope whole").await;
    let public = vec![ScopeGrant {
        schema: "public".into(),
        tables: vec!["*".into()],
    }];
    let tools = shop.tools_with(public, LimitsConfig::default());
    for sql in [
        "SELECT count(*) FROM orders",
        "SELECT count(*) FROM ORDERS o JOIN customers c ON c.id = o.customer_id",
        "WITH recent AS (SELECT * FROM orders) SELECT count(*) FROM recent",
    ] {
        assert_eq!(
            sql::query(&tools, &Call::default(), q(sql))
                .await
                .unwrap()
                .rows
                .row_count,
            1,
            "{sql}"
        );
    }
    for sql in [
        "SELECT * FROM pg_authid",
        "SELECT * FROM PG_Class",
        "SELECT * FROM orders WHERE EXISTS (SELECT 1 FROM pg_roles)",
        "SELECT * FROM internal.api_keys",
    ] {
        let err = sql::query(&tools, &Call::default(), q(sql))
            .await
            .unwrap_err();
        assert_eq!(err.metric_label(), "refused_scope", "{sql}: {err}");
    }
    let missing = sql::query(&tools, &Call::default(), q("SELECT * FROM no_such_table"))
        .await
        .unwrap_err();
    assert!(missing.to_string().contains("42P01"), "{missing}");
}

#[tokio::test]
async fn explain_returns_a_json_plan_and_analyze_only_when_asked() {
    let shop = shop("explain").await;
    let tools = shop.tools();
    let plan = sql::explain(
        &tools,
        &Call::default(),
        ExplainArgs {
            sql: "SELECT * FROM orders WHERE customer_id = $1".into(),
            params: vec![json!(1)],
            analyze: false,
        },
    )
    .await
    .unwrap();
    assert!(
        plan.plan[0]["Plan"]["Node Type"].is_string(),
        "{}",
        plan.plan
    );
    assert!(plan.plan[0]["Plan"].get("Actual Rows").is_none());
    let analyzed = sql::explain(
        &tools,
        &Call::default(),
        explain_args("SELECT count(*) FROM order_items", true),
    )
    .await
    .unwrap();
    // PostgreSQL 18 reports actual rows as an average per loop, with two decimals (1.00).
    assert_eq!(
        analyzed.plan[0]["Plan"]["Actual Rows"].as_f64(),
        Some(1.0),
        "{}",
        analyzed.plan
    );
    assert!(analyzed.analyzed);
    let write = sql::explain(
        &tools,
        &Call::default(),
        explain_args("DELETE FROM orders", true),
    )
    .await
    .unwrap_err();
    assert_eq!(write.metric_label(), "refused_sql");
}

#[tokio::test]
async fn server_info_reports_version_read_only_mode_and_caps() {
    let shop = shop("server info").await;
    let info = catalog::server_info(&shop.tools(), &Call::default(), ServerInfoArgs::default())
        .await
        .unwrap();
    let major = shop.db.server().major();
    assert!(
        info.version.starts_with(&format!("PostgreSQL {major}.")),
        "{}",
        info.version
    );
    assert_eq!(info.user, shop.role);
    assert!(info.read_only);
    let settings: Vec<&str> = info
        .settings
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert!(settings.contains(&"statement_timeout"));
    assert!(!settings.contains(&"data_directory"), "no paths are shown");
    // The database's locale on every version (the harness's initdb --no-locale: C, libc),
    // though PostgreSQL 16 dropped the lc_collate and lc_ctype settings.
    assert_eq!(
        locale(&info),
        [
            ("lc_collate", "C"),
            ("lc_ctype", "C"),
            ("locale_provider", "libc")
        ],
        "{:?}",
        info.settings
    );
    assert_eq!(info.extensions[0]["name"], json!("plpgsql"));
    assert_eq!(info.limits.statement_timeout_ms, 15_000);
}

/// The locale rows of `server_info`'s settings, in order.
fn locale(info: &ServerInfo) -> Vec<(&str, &str)> {
    info.settings
        .iter()
        .map(|s| {
            (
                s["name"].as_str().unwrap(),
                s["setting"].as_str().unwrap_or(""),
            )
        })
        .filter(|(name, _)| name.starts_with("lc_") || name.starts_with("locale"))
        .collect()
}

/// A database with another locale provider: ICU since PostgreSQL 15 (its locale in
/// `pg_database.daticulocale`, renamed `datlocale` in 17), PostgreSQL's own since 17.
#[tokio::test]
async fn server_info_names_the_locale_provider_the_database_uses() {
    let shop = shop("server info locale").await;
    let pg = shop.db.server();
    let mut providers = Vec::new();
    if pg.major() >= 15 {
        providers.push(("icu", "LOCALE_PROVIDER icu ICU_LOCALE 'und'", "und"));
    }
    if pg.major() >= 17 {
        providers.push((
            "builtin",
            "LOCALE_PROVIDER builtin BUILTIN_LOCALE 'C.UTF-8'",
            "C.UTF-8",
        ));
    }
    let admin = pg.connect("postgres").await.unwrap();
    for (provider, clause, locale_name) in providers {
        let database = format!("{}_{provider}", shop.db.name);
        admin
            .batch_execute(&format!(
                "CREATE DATABASE \"{database}\" TEMPLATE template0 LOCALE 'C' {clause}"
            ))
            .await
            .unwrap();
        let mut options = shop.connect_options(&public_only(), std::time::Duration::from_secs(15));
        options.dbname = database;
        options.user = pgmcp_tests::postgres::SUPERUSER.to_owned();
        options.password = Some(pg.password().to_owned());
        let tools = pgmcp_server::tools::Tools::new(
            pgmcp_server::db::Database::new(&options).unwrap(),
            pgmcp_server::scope::Scope::new(public_only()),
            LimitsConfig::default(),
        );
        let info = catalog::server_info(&tools, &Call::default(), ServerInfoArgs::default())
            .await
            .unwrap();
        assert_eq!(
            locale(&info),
            [
                ("lc_collate", "C"),
                ("lc_ctype", "C"),
                ("locale", locale_name),
                ("locale_provider", provider)
            ],
            "{:?}",
            info.settings
        );
    }
}

#[tokio::test]
async fn sql_errors_carry_sqlstate_and_the_server_recovers_from_lost_connections() {
    let shop = shop("errors").await;
    let tools = shop.tools();
    let syntax = sql::query(&tools, &Call::default(), q("SELECT FROM WHERE"))
        .await
        .unwrap_err();
    assert_eq!(
        syntax.metric_label(),
        "refused_sql",
        "the guard reports syntax errors: {syntax}"
    );
    let missing = sql::query(&tools, &Call::default(), q("SELECT nope FROM customers"))
        .await
        .unwrap_err();
    assert!(
        missing.to_string().contains("PostgreSQL error 42703"),
        "{missing}"
    );
    assert!(
        missing
            .to_string()
            .contains("column \"nope\" does not exist"),
        "{missing}"
    );
    assert!(!missing.to_string().contains(common::READER_PASSWORD));

    // Kill every connection of the reader, five times: the next call still succeeds, because
    // a dead pooled connection is replaced and the read-only statement retried once.
    let admin = shop.db.connect().await.unwrap();
    for round in 0..5 {
        assert_eq!(
            sql::query(&tools, &Call::default(), q("SELECT 1"))
                .await
                .unwrap()
                .rows
                .row_count,
            1
        );
        let killed = admin
            .execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = $1",
                &[&shop.role],
            )
            .await
            .unwrap();
        assert!(killed >= 1, "round {round}: a connection was terminated");
        let after = sql::query(&tools, &Call::default(), q("SELECT count(*) FROM orders")).await;
        assert!(after.is_ok(), "round {round}: {after:?}");
    }
}

#[tokio::test]
async fn an_unreachable_database_is_reported_after_the_outage_wait_without_secrets() {
    let shop = shop("unreachable").await;
    let mut options = shop.connect_options(&public_only(), std::time::Duration::from_secs(5));
    options.port = pgmcp_tests::paths::free_port().unwrap(); // nothing listens there
    let db = pgmcp_server::db::Database::new(&options).unwrap();
    let tools = pgmcp_server::tools::Tools::new(
        db,
        pgmcp_server::scope::Scope::new(public_only()),
        LimitsConfig::default(),
    );
    // The call waits out what could be a restart, then says so; it does not hang.
    let started = std::time::Instant::now();
    let err = sql::query(&tools, &Call::default(), q("SELECT 1"))
        .await
        .unwrap_err();
    let waited = started.elapsed();
    assert!(
        waited >= pgmcp_server::db::OUTAGE_WAIT
            && waited < pgmcp_server::db::OUTAGE_WAIT + std::time::Duration::from_secs(2),
        "waited {waited:?}"
    );
    assert_eq!(err.metric_label(), "unavailable", "{err}");
    assert!(err.to_string().contains("try again"), "{err}");
    assert!(!err.to_string().contains(common::READER_PASSWORD), "{err}");
    assert!(tools.db.ping().await.is_err(), "readiness fails too");
}

#[tokio::test]
async fn types_the_database_defines_keep_their_meaning_on_every_path() {
    let shop = shop("defined types").await;
    let admin = shop.db.connect().await.unwrap();
    admin
        .batch_execute(&format!(
            "CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
             CREATE DOMAIN positive AS int CHECK (VALUE > 0);
             CREATE DOMAIN moods AS mood[];
             CREATE TYPE pair AS (a int, b text);
             CREATE TABLE feelings (id positive PRIMARY KEY, now mood, history mood[], also moods, p pair);
             INSERT INTO feelings VALUES (1, 'ok', '{{sad,happy}}', '{{ok}}', ROW(1, 'x')), (2, NULL, '{{}}', NULL, NULL);
             GRANT SELECT ON feelings TO \"{}\";",
            shop.role
        ))
        .await
        .unwrap();
    let tools = shop.tools();
    let sql = "SELECT id, now, history, also, p FROM feelings ORDER BY id";
    // First sight (unnamed statement, types looked up), second (kept prepared), third (cached).
    let mut answers = Vec::new();
    for _ in 0..3 {
        let result = sql::query(&tools, &Call::default(), q(sql)).await.unwrap();
        let types: Vec<String> = result
            .rows
            .columns
            .iter()
            .map(|c| c.type_name.clone())
            .collect();
        // PostgreSQL describes a domain-typed column by its base type.
        assert_eq!(types, ["int4", "mood", "_mood", "_mood", "pair"]);
        answers.push((result.rows.rows.values(), result.rows.undecoded_columns));
    }
    let (rows, undecoded) = &answers[0];
    assert_eq!(
        rows[0][..4],
        [
            json!(1),
            json!("ok"),
            json!(["sad", "happy"]),
            json!(["ok"])
        ]
    );
    assert_eq!(
        rows[1][..4],
        [json!(2), Value::Null, json!([]), Value::Null]
    );
    assert_eq!(
        undecoded.len(),
        1,
        "a composite is shown as hex: {undecoded:?}"
    );
    assert!(undecoded[0].starts_with("p (pair)"), "{undecoded:?}");
    assert_eq!(answers[1], answers[0]);
    assert_eq!(answers[2], answers[0]);

    // Parameters of those types are bound by type, and checked.
    let mut args = q("SELECT count(*) AS n FROM feelings WHERE now = $1 AND id > $2");
    args.params = vec![json!("ok"), json!(0)];
    let counted = sql::query(&tools, &Call::default(), args).await.unwrap();
    assert_eq!(counted.rows.rows.values(), [[json!(1)]]);
    let mut args = q("SELECT count(*) AS n FROM feelings WHERE now = $1");
    args.params = vec![json!("furious")];
    let err = sql::query(&tools, &Call::default(), args)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("22P02") && err.contains("furious"), "{err}");
    // A placeholder without a value is named, at once (not retried as a lost connection).
    let started = std::time::Instant::now();
    let err = sql::query(
        &tools,
        &Call::default(),
        q("SELECT count(*) FROM feelings WHERE id > $1"),
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("1 parameter(s)") && err.contains("0 value(s) were given in params"),
        "{err}"
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(1));
}
