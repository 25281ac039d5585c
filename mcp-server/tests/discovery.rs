//! Discovery at scale, against a real PostgreSQL: answers within the byte budget, paging that
//! walks every entry once while the schema changes underneath, a catalog snapshot that sees
//! every change on the next call (with and without the catalog tracker, on two replicas), and
//! listings that show what the role can read and the GRANT for the rest.
#![allow(clippy::unwrap_used)] // a failed step fails the test: panicking is the point

mod common;

use std::collections::BTreeSet;

use common::shop;
use pgmcp_crds::config::LimitsConfig;
use pgmcp_server::tools::catalog::{self, *};
use pgmcp_server::tools::page::Page;
use pgmcp_server::tools::snapshot::TRACKER_SQL;
use pgmcp_server::tools::{Call, ToolError, Tools};
use serde_json::{Value, json};

/// Installs the catalog tracker as the operator does, and lets the shop's role read it.
async fn install_tracker(shop: &common::Shop) {
    let admin = shop.db.connect().await.unwrap();
    admin.batch_execute(TRACKER_SQL).await.unwrap();
    admin
        .batch_execute(&format!(
            "GRANT USAGE ON SCHEMA pgmcp TO \"{r}\"; GRANT SELECT ON pgmcp.catalog_changes TO \"{r}\";",
            r = shop.role
        ))
        .await
        .unwrap();
}

/// The smallest budget, so that a few hundred tables take many pages.
fn small_budget() -> LimitsConfig {
    LimitsConfig {
        discovery_max_bytes: 4096,
        ..LimitsConfig::default()
    }
}

fn rows(page: &Page) -> Vec<Vec<Value>> {
    serde_json::from_str(page.rows.get()).unwrap()
}

/// The text a model reads for `page`: summary line, frame, JSON.
fn text_len(page: &Page) -> usize {
    page.summary.len()
        + 1
        + pgmcp_server::framing::OVERHEAD
        + serde_json::to_string(page).unwrap().len()
}

async fn tables(tools: &Tools, schema: Option<&str>, cursor: Option<String>) -> Page {
    let args = ListTablesArgs {
        schema: schema.map(str::to_owned),
        cursor,
        ..ListTablesArgs::default()
    };
    catalog::list_tables(tools, &Call::default(), args)
        .await
        .unwrap()
}

async fn search(tools: &Tools, pattern: &str, cursor: Option<String>) -> Page {
    let args = SearchObjectsArgs {
        pattern: pattern.to_owned(),
        cursor,
    };
    catalog::search_objects(tools, &Call::default(), args)
        .await
        .unwrap()
}

async fn relationships(tools: &Tools, schema: Option<&str>, cursor: Option<String>) -> Page {
    let args = ListRelationshipsArgs {
        schema: schema.map(str::to_owned),
        table: None,
        cursor,
    };
    catalog::list_relationships(tools, &Call::default(), args)
        .await
        .unwrap()
}

fn names(page: &Page, at: usize) -> Vec<String> {
    rows(page)
        .iter()
        .map(|r| r[at].as_str().unwrap_or_default().to_owned())
        .collect()
}

#[tokio::test]
async fn paging_walks_every_entry_once_while_the_schema_changes_between_pages() {
    let shop = shop("discovery paging").await;
    let admin = shop.db.connect().await.unwrap();
    let mut ddl = String::from("CREATE SCHEMA bulk;");
    for i in 0..300 {
        ddl.push_str(&format!(
            "CREATE TABLE bulk.t_{i:03} (id int PRIMARY KEY, parent int{fk});
             COMMENT ON TABLE bulk.t_{i:03} IS 'Bulk table {i} of 300. Kept for paging.';",
            fk = if i > 0 {
                format!(" REFERENCES bulk.t_{:03}", i - 1)
            } else {
                String::new()
            }
        ));
    }
    ddl.push_str(&format!(
        "GRANT USAGE ON SCHEMA bulk TO \"{r}\"; GRANT SELECT ON ALL TABLES IN SCHEMA bulk TO \"{r}\";",
        r = shop.role
    ));
    admin.batch_execute(&ddl).await.unwrap();
    let tools = shop.tools_with(Vec::new(), small_budget());

    // list_tables: drop one not yet shown, create one after the cursor and one before it.
    let mut seen = Vec::new();
    let mut cursor = None;
    let mut pages = 0;
    let mut changed_reported = false;
    loop {
        let page = tables(&tools, Some("bulk"), cursor.take()).await;
        assert!(text_len(&page) <= 4096, "{} bytes", text_len(&page));
        assert!(
            page.summary.contains("tables in 1 schema"),
            "{}",
            page.summary
        );
        changed_reported |= page.catalog_changed.is_some();
        seen.extend(names(&page, 1));
        pages += 1;
        if pages == 2 {
            admin
                .batch_execute(&format!(
                    "DROP TABLE bulk.t_250 CASCADE; CREATE TABLE bulk.t_299x (id int);
                     CREATE TABLE bulk.t_000x (id int);
                     GRANT SELECT ON bulk.t_299x, bulk.t_000x TO \"{}\";",
                    shop.role
                ))
                .await
                .unwrap();
        }
        match page.next_cursor {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    assert!(pages > 5, "{pages} pages");
    let unique: BTreeSet<&String> = seen.iter().collect();
    assert_eq!(unique.len(), seen.len(), "no table twice");
    assert!(
        !seen.contains(&"t_250".to_owned()),
        "dropped before its page"
    );
    assert!(
        seen.contains(&"t_299x".to_owned()),
        "created after the cursor"
    );
    assert!(
        !seen.contains(&"t_000x".to_owned()),
        "sorts before the cursor"
    );
    assert!(changed_reported, "the change is reported");
    assert_eq!(seen.len(), 300, "299 of the first tables and t_299x");

    // search_objects: tables first, then columns, each once.
    let mut found = Vec::new();
    let mut cursor = None;
    loop {
        let page = search(&tools, "t_1", cursor.take()).await;
        assert!(text_len(&page) <= 4096);
        found.extend(
            rows(&page)
                .iter()
                .map(|r| format!("{}.{}", r[2].as_str().unwrap(), r[3])),
        );
        match page.next_cursor {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    let unique: BTreeSet<&String> = found.iter().collect();
    assert_eq!(unique.len(), found.len());
    assert_eq!(found.len(), 100, "t_100 … t_199: {found:?}");

    // list_relationships: one foreign key per table but the first; drop one between pages.
    let mut keys = Vec::new();
    let mut cursor = None;
    let mut pages = 0;
    loop {
        let page = relationships(&tools, Some("bulk"), cursor.take()).await;
        assert!(text_len(&page) <= 4096);
        keys.extend(names(&page, 2));
        pages += 1;
        if pages == 1 {
            admin
                .batch_execute("ALTER TABLE bulk.t_290 DROP CONSTRAINT t_290_parent_fkey")
                .await
                .unwrap();
        }
        match page.next_cursor {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    assert!(pages > 2);
    let unique: BTreeSet<&String> = keys.iter().collect();
    assert_eq!(unique.len(), keys.len());
    assert!(!keys.contains(&"t_290".to_owned()));
    // 299 keys, less the one dropped with t_250 (and t_251's to it), less t_290's.
    assert_eq!(keys.len(), 299 - 2 - 1, "{keys:?}");

    // list_schemas: 150 more schemas.
    let mut ddl = String::new();
    for i in 0..150 {
        ddl.push_str(&format!(
            "CREATE SCHEMA s_{i:03}; GRANT USAGE ON SCHEMA s_{i:03} TO \"{}\";",
            shop.role
        ));
    }
    admin.batch_execute(&ddl).await.unwrap();
    let mut schemas = Vec::new();
    let mut cursor = None;
    loop {
        let args = ListSchemasArgs {
            cursor: cursor.take(),
        };
        let page = catalog::list_schemas(&tools, &Call::default(), args)
            .await
            .unwrap();
        assert!(text_len(&page) <= 4096);
        schemas.extend(names(&page, 0));
        match page.next_cursor {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    let unique: BTreeSet<&String> = schemas.iter().collect();
    assert_eq!(unique.len(), schemas.len());
    assert_eq!(schemas.len(), 152, "public, bulk and 150 more");
}

#[tokio::test]
async fn a_very_wide_table_is_described_in_parts() {
    let shop = shop("discovery wide").await;
    let admin = shop.db.connect().await.unwrap();
    let columns: Vec<String> = (0..400)
        .map(|i| format!("column_number_{i:03} numeric(12,2) DEFAULT 0"))
        .collect();
    admin
        .batch_execute(&format!(
            "CREATE TABLE public.very_wide ({}); GRANT SELECT ON public.very_wide TO \"{}\";",
            columns.join(", "),
            shop.role
        ))
        .await
        .unwrap();
    let tools = shop.tools();
    let mut seen = Vec::new();
    let mut cursor = None;
    loop {
        let args = DescribeTableArgs {
            table: "very_wide".into(),
            schema: None,
            cursor: cursor.take(),
        };
        let description = catalog::describe_table(&tools, &Call::default(), args)
            .await
            .unwrap();
        let json = serde_json::to_string(&description).unwrap();
        let summary = description.summary.clone().unwrap();
        assert!(
            summary.len() + 1 + pgmcp_server::framing::OVERHEAD + json.len() <= 16 * 1024,
            "{} bytes",
            json.len()
        );
        assert!(summary.starts_with("public.very_wide has 400 columns; showing "));
        assert_eq!(description.total_columns, 400);
        let rows: Vec<Vec<Value>> = serde_json::from_str(description.rows.get()).unwrap();
        seen.extend(rows.iter().map(|r| r[0].as_str().unwrap().to_owned()));
        match description.next_cursor {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    let expected: Vec<String> = (0..400).map(|i| format!("column_number_{i:03}")).collect();
    assert_eq!(seen, expected, "every column once, in order");
}

#[tokio::test]
async fn without_grants_listings_show_what_the_role_can_read_and_the_grant_for_the_rest() {
    let shop = shop("discovery readable").await;
    let tools = shop.tools_with(Vec::new(), LimitsConfig::default());
    let page = tables(&tools, None, None).await;
    assert!(!names(&page, 1).contains(&"api_keys".to_owned()));
    let hidden = page.not_readable.clone().expect("not_readable");
    assert_eq!(hidden.tables, 1);
    assert_eq!(hidden.schemas, ["internal"]);
    let grant = format!(
        "GRANT USAGE ON SCHEMA internal TO {r}; GRANT SELECT ON ALL TABLES IN SCHEMA internal TO {r};",
        r = shop.role
    );
    assert_eq!(hidden.grant, grant);
    assert!(
        page.summary
            .ends_with("1 more exist that this server's role cannot read (see not_readable)."),
        "{}",
        page.summary
    );
    let missing = catalog::describe_table(
        &tools,
        &Call::default(),
        DescribeTableArgs {
            table: "api_keys".into(),
            schema: Some("internal".into()),
            cursor: None,
        },
    )
    .await;
    assert!(matches!(missing, Err(ToolError::NotFound(_))));

    // The administrator runs the GRANT the answer gave: the next answer shows the table.
    let admin = shop.db.connect().await.unwrap();
    admin.batch_execute(&grant).await.unwrap();
    let page = tables(&tools, None, None).await;
    assert!(names(&page, 1).contains(&"api_keys".to_owned()));
    assert!(page.not_readable.is_none());
}

/// One step of the snapshot matrix: SQL the administrator runs, and what every replica's next
/// answer must show.
struct Step {
    sql: &'static str,
    tool: &'static str,
    argument: &'static str,
    expect: Expect,
}

enum Expect {
    /// The rows hold a row with these values at these positions.
    Row(&'static [(usize, &'static str)]),
    /// No row has this value at this position.
    NoRow(usize, &'static str),
    /// list_tables' row estimate of this table.
    Estimate(&'static str, i64),
}

async fn answer(tools: &Tools, tool: &str, argument: &str) -> Page {
    match tool {
        "list_tables" => tables(tools, None, None).await,
        "search_objects" => search(tools, argument, None).await,
        "list_relationships" => relationships(tools, None, None).await,
        other => unreachable!("{other}"),
    }
}

fn steps() -> Vec<Step> {
    use Expect::*;
    vec![
        Step {
            sql: "CREATE TABLE fresh (id int PRIMARY KEY); GRANT SELECT ON fresh TO {role}",
            tool: "list_tables",
            argument: "",
            expect: Row(&[(1, "fresh")]),
        },
        Step {
            sql: "COMMENT ON TABLE fresh IS 'Fresh stock. Restocked daily.'",
            tool: "list_tables",
            argument: "",
            expect: Row(&[(1, "fresh"), (4, "Fresh stock.")]),
        },
        Step {
            sql: "ALTER TABLE fresh ADD COLUMN memo text",
            tool: "search_objects",
            argument: "memo",
            expect: Row(&[(2, "fresh"), (3, "memo")]),
        },
        Step {
            sql: "ALTER TABLE fresh RENAME COLUMN memo TO remark",
            tool: "search_objects",
            argument: "memo",
            expect: NoRow(3, "memo"),
        },
        Step {
            sql: "ALTER TABLE fresh ALTER COLUMN remark TYPE varchar(80)",
            tool: "search_objects",
            argument: "remark",
            expect: Row(&[(3, "remark"), (4, "character varying(80)")]),
        },
        Step {
            sql: "COMMENT ON COLUMN fresh.remark IS 'zebra crossing'",
            tool: "search_objects",
            argument: "zebra",
            expect: Row(&[(3, "remark"), (5, "zebra crossing")]),
        },
        Step {
            sql: "ALTER TABLE fresh ADD COLUMN customer_id int REFERENCES customers(id)",
            tool: "list_relationships",
            argument: "",
            expect: Row(&[(2, "fresh"), (5, "customers")]),
        },
        Step {
            sql: "ALTER TABLE fresh RENAME TO fresher",
            tool: "list_tables",
            argument: "",
            expect: NoRow(1, "fresh"),
        },
        Step {
            sql: "REVOKE SELECT ON fresher FROM {role}",
            tool: "list_tables",
            argument: "",
            expect: NoRow(1, "fresher"),
        },
        Step {
            sql: "CREATE ROLE {group}; GRANT SELECT ON fresher TO {group}",
            tool: "list_tables",
            argument: "",
            expect: NoRow(1, "fresher"),
        },
        // Role membership is not DDL an event trigger sees: the version covers it.
        Step {
            sql: "GRANT {group} TO {role}",
            tool: "list_tables",
            argument: "",
            expect: Row(&[(1, "fresher")]),
        },
        Step {
            sql: "INSERT INTO fresher (id) SELECT generate_series(1, 500); ANALYZE fresher",
            tool: "list_tables",
            argument: "",
            expect: Estimate("fresher", 500),
        },
        Step {
            sql: "DROP TABLE fresher",
            tool: "list_relationships",
            argument: "",
            expect: NoRow(2, "fresher"),
        },
        Step {
            sql: "CREATE VIEW recent AS SELECT 1 AS one; GRANT SELECT ON recent TO {role}",
            tool: "list_tables",
            argument: "",
            expect: Row(&[(1, "recent"), (2, "view")]),
        },
    ]
}

fn holds(page: &Page, expect: &Expect) -> bool {
    let rows = rows(page);
    let text = |v: &Value| match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    match expect {
        Expect::Row(cells) => rows
            .iter()
            .any(|r| cells.iter().all(|(i, v)| text(&r[*i]) == *v)),
        Expect::NoRow(i, v) => !rows.iter().any(|r| text(&r[*i]) == *v),
        Expect::Estimate(table, n) => rows
            .iter()
            .any(|r| r[1] == json!(table) && r[3] == json!(n)),
    }
}

/// Every change is in the next answer of both replicas, each with its own snapshot.
async fn every_change_is_seen_on_the_next_call(tracked: bool) {
    let shop = shop(if tracked {
        "snapshot tracked"
    } else {
        "snapshot fingerprint"
    })
    .await;
    let admin = shop.db.connect().await.unwrap();
    if tracked {
        install_tracker(&shop).await;
    }
    let replicas = [
        shop.tools_with(Vec::new(), LimitsConfig::default()),
        shop.tools_with(Vec::new(), LimitsConfig::default()),
    ];
    let group = format!("{}_g", shop.db.name);
    for tools in &replicas {
        tables(tools, None, None).await;
        assert_eq!(tools.catalog_tracked(), Some(tracked));
    }
    for step in steps() {
        // Each replica has a snapshot from before the change.
        for tools in &replicas {
            answer(tools, step.tool, step.argument).await;
        }
        let sql = step
            .sql
            .replace("{role}", &format!("\"{}\"", shop.role))
            .replace("{group}", &format!("\"{group}\""));
        admin.batch_execute(&sql).await.unwrap();
        for (replica, tools) in replicas.iter().enumerate() {
            let page = answer(tools, step.tool, step.argument).await;
            assert!(
                holds(&page, &step.expect),
                "replica {replica}, tracked {tracked}, after {sql:?}: {}",
                page.rows.get()
            );
        }
    }
    // describe_table keeps what it read with the snapshot: a change drops it.
    admin
        .batch_execute(&format!(
            "CREATE TABLE described (id int PRIMARY KEY, qty int); GRANT SELECT ON described TO \"{}\"",
            shop.role
        ))
        .await
        .unwrap();
    let changes: [(&str, &str); 4] = [
        (
            "ALTER TABLE described ALTER COLUMN qty SET DEFAULT 42",
            "\"42\"",
        ),
        (
            "CREATE INDEX described_qty_idx ON described (qty)",
            "described_qty_idx",
        ),
        (
            "ALTER TABLE described ADD CONSTRAINT qty_positive CHECK (qty > 0)",
            "qty_positive",
        ),
        (
            "COMMENT ON COLUMN described.qty IS 'units on hand'",
            "units on hand",
        ),
    ];
    for (sql, shown) in changes {
        for tools in &replicas {
            describe(tools, "described").await;
        }
        admin.batch_execute(sql).await.unwrap();
        for (replica, tools) in replicas.iter().enumerate() {
            let description = serde_json::to_string(&describe(tools, "described").await).unwrap();
            assert!(
                description.contains(shown),
                "replica {replica}, tracked {tracked}, after {sql:?}: {description}"
            );
        }
    }
    admin
        .batch_execute(&format!("DROP OWNED BY \"{group}\"; DROP ROLE \"{group}\""))
        .await
        .unwrap();
}

async fn describe(tools: &Tools, table: &str) -> catalog::TableDescription {
    let args = DescribeTableArgs {
        table: table.to_owned(),
        schema: None,
        cursor: None,
    };
    catalog::describe_table(tools, &Call::default(), args)
        .await
        .unwrap()
}

#[tokio::test]
async fn the_snapshot_sees_every_change_on_the_next_call_with_the_catalog_tracker() {
    every_change_is_seen_on_the_next_call(true).await;
}

#[tokio::test]
async fn the_snapshot_sees_every_change_on_the_next_call_without_the_tracker() {
    every_change_is_seen_on_the_next_call(false).await;
}

#[tokio::test]
async fn dropping_the_tracker_falls_back_to_the_fingerprint_and_sees_changes_still() {
    let shop = shop("snapshot tracker dropped").await;
    let admin = shop.db.connect().await.unwrap();
    install_tracker(&shop).await;
    let tools = shop.tools_with(Vec::new(), LimitsConfig::default());
    tables(&tools, None, None).await;
    assert_eq!(tools.catalog_tracked(), Some(true));
    // Disabling a trigger is not DDL the trigger sees; the version names the triggers' state.
    admin
        .batch_execute(&format!(
            "ALTER EVENT TRIGGER pgmcp_catalog_ddl DISABLE;
             CREATE TABLE after_disable (id int); GRANT SELECT ON after_disable TO \"{}\";",
            shop.role
        ))
        .await
        .unwrap();
    let page = tables(&tools, None, None).await;
    assert!(names(&page, 1).contains(&"after_disable".to_owned()));
    admin
        .batch_execute(&format!(
            "DROP EVENT TRIGGER pgmcp_catalog_ddl; DROP EVENT TRIGGER pgmcp_catalog_drop;
             DROP SCHEMA pgmcp CASCADE;
             CREATE TABLE after_drop (id int); GRANT SELECT ON after_drop TO \"{}\";",
            shop.role
        ))
        .await
        .unwrap();
    let page = tables(&tools, None, None).await;
    assert!(names(&page, 1).contains(&"after_drop".to_owned()));
    assert_eq!(tools.catalog_tracked(), Some(false));
    admin.batch_execute("DROP TABLE after_drop").await.unwrap();
    let page = tables(&tools, None, None).await;
    assert!(!names(&page, 1).contains(&"after_drop".to_owned()));
}

#[tokio::test]
async fn an_unchanged_catalog_is_read_once_whatever_the_tool() {
    for tracked in [true, false] {
        let shop = shop(if tracked {
            "read once tracked"
        } else {
            "read once"
        })
        .await;
        if tracked {
            install_tracker(&shop).await;
        }
        let tools = shop.tools();
        for _ in 0..3 {
            tables(&tools, None, None).await;
            describe(&tools, "customers").await;
            let args = DescribeTableArgs {
                table: "orders".into(),
                schema: Some("public".into()),
                cursor: None,
            };
            catalog::describe_table(&tools, &Call::default(), args)
                .await
                .unwrap();
            search(&tools, "customer", None).await;
            relationships(&tools, None, None).await;
            let args = ListSchemasArgs { cursor: None };
            catalog::list_schemas(&tools, &Call::default(), args)
                .await
                .unwrap();
        }
        assert_eq!(tools.catalog_reads(), 1, "tracked {tracked}");
        assert_eq!(tools.catalog_tracked(), Some(tracked));
    }
}
