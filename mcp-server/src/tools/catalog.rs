//! Discovery tools: databases, schemas, tables, columns, keys, relationships, search, server
//! facts. Every query filters by the scope parameters `$1..$3`, so objects outside the
//! binding's grants are invisible, including as the other side of a foreign key.

use std::sync::Arc;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::page::{self, After, NotReadable, Page, PageColumn, Pager, Words};
use super::snapshot::{Column, Details, ForeignKey, Listing, Relation, Schema, Snapshot};
use super::{Call, Limits, RowsResult, ToolError, Tools};
use crate::scope::Scope;

/// Arguments of `list_databases`.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(remote = "Self")]
#[schemars(rename = "ListDatabasesArgs")]
pub struct ListDatabasesArgs {}

/// Arguments of `list_schemas`.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(remote = "Self")]
#[schemars(rename = "ListSchemasArgs")]
pub struct ListSchemasArgs {
    #[schemars(description = "The nextCursor of the previous page, to get the next one")]
    #[serde(default)]
    pub cursor: Option<String>,
}

/// Arguments of `list_tables`.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(remote = "Self")]
#[schemars(rename = "ListTablesArgs")]
pub struct ListTablesArgs {
    #[schemars(description = "Only tables of this schema; omit for every schema you can read")]
    #[serde(default)]
    pub schema: Option<String>,
    #[schemars(
        description = "Only tables whose name or comment contains this word (case-insensitive), e.g. order"
    )]
    #[serde(default)]
    pub pattern: Option<String>,
    #[schemars(
        description = "Also give each table's size in bytes and its whole comment (default: the comment's first sentence)"
    )]
    #[serde(default)]
    pub detail: bool,
    #[schemars(description = "The nextCursor of the previous page, to get the next one")]
    #[serde(default)]
    pub cursor: Option<String>,
}

/// Arguments of `describe_table`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(remote = "Self")]
#[schemars(rename = "DescribeTableArgs")]
pub struct DescribeTableArgs {
    #[schemars(description = "Table or view name, without schema (e.g. customers)")]
    pub table: String,
    #[schemars(description = "Schema of the table; omit to use the first schema that has it")]
    #[serde(default)]
    pub schema: Option<String>,
    #[schemars(
        description = "The nextCursor of the previous answer, for the next columns of a very wide table"
    )]
    #[serde(default)]
    pub cursor: Option<String>,
}

/// Arguments of `list_relationships`.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(remote = "Self")]
#[schemars(rename = "ListRelationshipsArgs")]
pub struct ListRelationshipsArgs {
    #[schemars(description = "Only foreign keys from or to tables of this schema")]
    #[serde(default)]
    pub schema: Option<String>,
    #[schemars(description = "Only foreign keys from or to this table (both directions)")]
    #[serde(default)]
    pub table: Option<String>,
    #[schemars(description = "The nextCursor of the previous page, to get the next one")]
    #[serde(default)]
    pub cursor: Option<String>,
}

/// Arguments of `search_objects`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(remote = "Self")]
#[schemars(rename = "SearchObjectsArgs")]
pub struct SearchObjectsArgs {
    #[schemars(
        description = "Word to look for in table, view and column names and comments (case-insensitive substring, e.g. customer)"
    )]
    pub pattern: String,
    #[schemars(description = "The nextCursor of the previous page, to get the next one")]
    #[serde(default)]
    pub cursor: Option<String>,
}

/// Arguments of `server_info`.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(remote = "Self")]
#[schemars(rename = "ServerInfoArgs")]
pub struct ServerInfoArgs {}

super::deserialize_naming_the_field!(
    ListDatabasesArgs,
    ListSchemasArgs,
    ListTablesArgs,
    DescribeTableArgs,
    ListRelationshipsArgs,
    SearchObjectsArgs,
    ServerInfoArgs
);

pub async fn list_databases(
    tools: &Tools,
    call: &Call,
    _: ListDatabasesArgs,
) -> Result<RowsResult, ToolError> {
    tools
        .catalog_plain(
            call,
            "SELECT d.datname AS name, pg_encoding_to_char(d.encoding) AS encoding,
                    CASE WHEN has_database_privilege(d.datname, 'CONNECT')
                         THEN pg_database_size(d.datname) END AS size_bytes,
                    shobj_description(d.oid, 'pg_database') AS comment,
                    d.datname = current_database() AS current
             FROM pg_database d
             WHERE NOT d.datistemplate AND ($1::bool OR d.datname = current_database())
             ORDER BY d.datname",
            &[Value::Bool(tools.scope_of(call).is_unrestricted())],
        )
        .await
}

/// What every listing page is built with: the cursor's position, the budget, the frame.
fn pager<'a>(
    tools: &Tools,
    words: Words,
    arguments: Vec<Option<String>>,
    after: &'a After,
    snapshot: &Snapshot,
    columns: &[(&'static str, &'static str)],
) -> Pager<'a> {
    Pager {
        words,
        arguments,
        after,
        digest: snapshot.digest(),
        budget: tools.discovery_budget(),
        frame: tools.frame_overhead(),
        columns: columns
            .iter()
            .map(|&(name, type_name)| PageColumn { name, type_name })
            .collect(),
        limits: tools.limits_for(tools.caps(None)),
    }
}

/// Whether the parts of an entry's key sort after the cursor's key.
fn after_key(parts: &[&str], after: &After) -> bool {
    after.key.as_ref().is_none_or(|key| {
        parts.iter().copied().cmp(key.iter().map(String::as_str)) == std::cmp::Ordering::Greater
    })
}

/// A search word: trimmed, lower case, 1 to 200 characters.
fn word(field: &str, pattern: Option<&str>) -> Result<Option<String>, ToolError> {
    let Some(pattern) = pattern.map(str::trim) else {
        return Ok(None);
    };
    if pattern.is_empty() || pattern.len() > 200 {
        return Err(ToolError::InvalidArgument(format!(
            "{field} must be 1 to 200 characters, e.g. customer"
        )));
    }
    Ok(Some(pattern.to_lowercase()))
}

/// `name` as an SQL identifier.
fn ident(name: &str) -> String {
    let plain = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '$');
    if plain {
        name.to_owned()
    } else {
        format!("\"{}\"", name.replace('"', "\"\""))
    }
}

/// The relations `matches` picks that the server's role cannot read, and the GRANT an
/// administrator runs. Only without `--grant`: with grants, what the binding grants is what
/// exists for the model.
pub(crate) fn not_readable<'s>(
    scope: &Scope,
    snapshot: &'s Snapshot,
    matches: impl Fn(&'s Relation) -> bool,
) -> Option<NotReadable> {
    if !scope.is_unrestricted() {
        return None;
    }
    let mut tables = 0;
    let mut schemas: Vec<usize> = Vec::new();
    for relation in snapshot.relations.iter().filter(|r| !r.readable) {
        if !matches(relation) {
            continue;
        }
        tables += 1;
        if schemas.last() != Some(&relation.schema_index) && schemas.len() < 10 {
            schemas.push(relation.schema_index);
        }
    }
    if tables == 0 {
        return None;
    }
    schemas.dedup();
    let idents: Vec<&str> = schemas
        .iter()
        .map(|&i| snapshot.schemas[i].ident.as_str())
        .collect();
    let role = ident(&snapshot.role);
    let list = idents.join(", ");
    Some(NotReadable {
        tables,
        schemas: schemas
            .iter()
            .map(|&i| snapshot.schemas[i].name.to_string())
            .collect(),
        grant: format!(
            "GRANT USAGE ON SCHEMA {list} TO {role}; GRANT SELECT ON ALL TABLES IN SCHEMA {list} TO {role};"
        ),
    })
}

pub async fn list_schemas(
    tools: &Tools,
    call: &Call,
    args: ListSchemasArgs,
) -> Result<Page, ToolError> {
    let after = page::after("list_schemas", &[], args.cursor.as_deref())?;
    let scope = tools.scope_of(call);
    let (snapshot, _) = tools.snapshot(call, |_| Vec::new()).await?;
    let mut tables = vec![0usize; snapshot.schemas.len()];
    for relation in &snapshot.relations {
        if snapshot.shows(scope, relation) {
            tables[relation.schema_index] += 1;
        }
    }
    let shown: Vec<(usize, &Schema)> = snapshot
        .schemas
        .iter()
        .enumerate()
        .filter(|(i, schema)| {
            if scope.is_unrestricted() {
                schema.usage || tables[*i] > 0
            } else {
                scope.allows_schema(&schema.name) || tables[*i] > 0
            }
        })
        .collect();
    let words = Words {
        tool: "list_schemas",
        plural: "schemas",
        extent: String::new(),
        narrow: "or use list_tables with a schema.",
    };
    let columns = [("name", "name"), ("comment", "text"), ("tables", "int8")];
    let pager = pager(tools, words, Vec::new(), &after, &snapshot, &columns);
    let hidden = not_readable(scope, &snapshot, |_| true);
    let start = shown.partition_point(|(_, s)| !after_key(&[&s.name], &after));
    Ok(pager.page(
        shown[start..].iter(),
        start,
        shown.len(),
        |(_, schema)| vec![schema.name.to_string()],
        |&&(i, schema)| {
            json!([
                &*schema.name,
                schema.comment.as_deref().map(page::first_sentence),
                tables[i]
            ])
        },
        hidden,
    ))
}

/// A row of `list_tables`: compact (the comment's first sentence), or with size and the whole
/// comment. Serialized as a JSON array, straight from the snapshot's strings.
#[derive(Serialize)]
#[serde(untagged)]
enum TableRow<'s> {
    Compact(&'s str, &'s str, &'s str, Option<i64>, Option<&'s str>),
    Detail(
        &'s str,
        &'s str,
        &'s str,
        Option<i64>,
        Option<i64>,
        Option<String>,
    ),
}

fn table_row(r: &Relation, (rows, size): (Option<i64>, Option<i64>), detail: bool) -> TableRow<'_> {
    if detail {
        TableRow::Detail(
            &r.schema,
            &r.name,
            r.kind,
            rows,
            size,
            r.comment.as_deref().map(|c| page::cut(c, 2000)),
        )
    } else {
        TableRow::Compact(&r.schema, &r.name, r.kind, rows, r.short_comment.as_deref())
    }
}

/// No more than the JSON of `r`'s row takes, whatever its numbers: every string at its
/// unescaped length, every number one digit.
fn table_row_at_least(r: &Relation, detail: bool) -> usize {
    // The whole comment is cut (and its trailing blanks trimmed) to fit: counted as empty.
    let comment = if detail {
        r.comment.as_deref().map(|_| 0)
    } else {
        r.short_comment.as_deref().map(str::len)
    };
    // ["schema","name","kind",0,(0,)"comment"] or null
    r.schema.len()
        + r.name.len()
        + r.kind.len()
        + 6
        + 1
        + 4
        + 2
        + usize::from(detail) * 2
        + comment.map_or(4, |c| c + 2)
}

pub async fn list_tables(
    tools: &Tools,
    call: &Call,
    args: ListTablesArgs,
) -> Result<Page, ToolError> {
    let arguments = vec![
        args.schema.clone(),
        args.pattern.clone(),
        args.detail.then(|| "detail".to_owned()),
    ];
    let after = page::after("list_tables", &arguments, args.cursor.as_deref())?;
    let pattern = word("pattern", args.pattern.as_deref())?;
    let scope = tools.scope_of(call);
    let schema = args.schema.as_deref();
    // The listing: the relations the scope shows (in the schema asked for), kept with the
    // snapshot; with a pattern, those of them that match.
    let select = |snapshot: &Snapshot| -> (Arc<Listing>, Option<Vec<usize>>) {
        let listing = snapshot.listing(scope, schema);
        let matching = pattern.as_deref().map(|p| {
            listing
                .relations
                .iter()
                .copied()
                .filter(|&i| snapshot.relations[i].haystack.contains(p))
                .collect()
        });
        (listing, matching)
    };
    let start = |snapshot: &Snapshot, entries: &[usize]| {
        entries.partition_point(|&i| {
            let r = &snapshot.relations[i];
            !after_key(&[&r.schema, &r.name], &after)
        })
    };
    // The statistics of every entry the page can hold: rows are no shorter than
    // table_row_at_least, so the page shows no entry past these.
    let budget = tools.discovery_budget();
    let (snapshot, stats) = tools
        .snapshot_with(call, args.detail, |snapshot| {
            let (listing, matching) = select(snapshot);
            let entries = matching.as_deref().unwrap_or(&listing.relations);
            let mut bytes = 0;
            entries[start(snapshot, entries)..]
                .iter()
                .map(|&i| &snapshot.relations[i])
                .take_while(|r| {
                    bytes += table_row_at_least(r, args.detail) + 1;
                    bytes <= budget
                })
                .map(|r| r.oid)
                .collect()
        })
        .await?;
    let (listing, matching) = select(&snapshot);
    let entries = matching.as_deref().unwrap_or(&listing.relations);
    let schemas = match &matching {
        None => listing.schemas,
        Some(matching) => {
            let mut schemas: Vec<usize> = matching
                .iter()
                .map(|&i| snapshot.relations[i].schema_index)
                .collect();
            schemas.dedup();
            schemas.len()
        }
    };
    let words = Words {
        tool: "list_tables",
        plural: "tables",
        extent: format!(
            " in {} schema{}",
            page::count(schemas),
            if schemas == 1 { "" } else { "s" }
        ),
        narrow: "or narrow the list with schema or pattern, or use search_objects.",
    };
    let compact = [
        ("schema", "name"),
        ("name", "name"),
        ("kind", "text"),
        ("row_estimate", "int8"),
        ("comment", "text"),
    ];
    let detailed = [
        ("schema", "name"),
        ("name", "name"),
        ("kind", "text"),
        ("row_estimate", "int8"),
        ("size_bytes", "int8"),
        ("comment", "text"),
    ];
    let columns: &[(&str, &str)] = if args.detail { &detailed } else { &compact };
    let pager = pager(tools, words, arguments, &after, &snapshot, columns);
    let hidden = match &pattern {
        None => listing.not_readable.clone(),
        Some(p) => not_readable(scope, &snapshot, |r| {
            schema.is_none_or(|s| *r.schema == *s) && r.haystack.contains(p.as_str())
        }),
    };
    let first = start(&snapshot, entries);
    Ok(pager.page(
        entries[first..].iter().map(|&i| &snapshot.relations[i]),
        first,
        entries.len(),
        |r| vec![r.schema.to_string(), r.name.clone()],
        |r| {
            let stats = stats
                .get(&r.oid)
                .copied()
                .unwrap_or((r.row_estimate, r.size_bytes));
            table_row(r, stats, args.detail)
        },
        hidden,
    ))
}

/// Everything about one table.
#[derive(Debug, Clone, Serialize)]
pub struct TableDescription {
    /// Present when the table has more columns than one answer holds: how many, which are
    /// shown, and the cursor for the rest.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub summary: Option<String>,
    pub schema: String,
    pub table: String,
    pub kind: String,
    pub comment: Option<String>,
    pub row_estimate: Option<i64>,
    /// One row per column: name, type, nullable, default, comment.
    pub columns: Vec<crate::db::Column>,
    pub rows: Box<serde_json::value::RawValue>,
    pub row_count: usize,
    /// True when more columns follow (see `nextCursor`).
    pub truncated: bool,
    pub elapsed_ms: u64,
    /// The table's number of columns.
    pub total_columns: usize,
    /// The cursor for the next columns, or null.
    #[serde(rename = "nextCursor")]
    pub next_cursor: Option<String>,
    pub primary_key: Vec<String>,
    pub foreign_keys: Vec<Value>,
    pub referenced_by: Vec<Value>,
    pub indexes: Vec<Value>,
    pub check_constraints: Vec<Value>,
    /// SQL of a view.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub view_definition: Option<String>,
    pub limits: Limits,
}

/// Rows of `result` as JSON objects keyed by column name.
fn objects(result: &RowsResult) -> Vec<Value> {
    result
        .rows
        .rows
        .values()
        .into_iter()
        .map(|row| {
            let map = result
                .rows
                .columns
                .iter()
                .zip(row)
                .map(|(c, v)| (c.name.clone(), v))
                .collect();
            Value::Object(map)
        })
        .collect()
}

pub async fn describe_table(
    tools: &Tools,
    call: &Call,
    args: DescribeTableArgs,
) -> Result<TableDescription, ToolError> {
    let scope = tools.scope_of(call);
    let find = |snapshot: &Snapshot| {
        snapshot.find(&args.table, args.schema.as_deref(), |r| {
            snapshot.shows(scope, r)
        })
    };
    let (snapshot, stats) = tools
        .snapshot(call, |snapshot| {
            find(snapshot)
                .map(|i| vec![snapshot.relations[i].oid])
                .unwrap_or_default()
        })
        .await?;
    let Some(index) = find(&snapshot) else {
        let place = args
            .schema
            .map(|s| format!(" in schema {s}"))
            .unwrap_or_default();
        return Err(ToolError::NotFound(format!(
            "no table or view named {}{place} is available to this server; use list_tables to see the available tables (without --grant it also says how many exist that this server's role cannot read, and the GRANT that lets it)",
            args.table
        )));
    };
    let relation = &snapshot.relations[index];
    let position: usize = match page::after(
        "describe_table",
        &[
            Some(relation.schema.to_string()),
            Some(relation.name.clone()),
        ],
        args.cursor.as_deref(),
    )? {
        After { key: Some(key), .. } => key.first().and_then(|k| k.parse().ok()).unwrap_or(0),
        _ => 0,
    };
    let details = match snapshot.details(relation.oid) {
        Some(details) => details,
        None => {
            let details = Arc::new(read_details(tools, call, relation).await?);
            snapshot.keep_details(relation.oid, details.clone());
            details
        }
    };
    let (mut foreign_keys, mut referenced_by) = (Vec::new(), Vec::new());
    let relations = &snapshot.relations;
    for fk in &snapshot.foreign_keys {
        if fk.from != index && fk.to != index {
            continue;
        }
        let (from, to) = (&relations[fk.from], &relations[fk.to]);
        if !(snapshot.shows(scope, from) && snapshot.shows(scope, to)) {
            continue;
        }
        let object = json!({
            "name": fk.name,
            "from_schema": &*from.schema, "from_table": from.name, "from_columns": fk.from_columns,
            "to_schema": &*to.schema, "to_table": to.name, "to_columns": fk.to_columns,
            "on_update": fk.on_update, "on_delete": fk.on_delete,
        });
        if fk.from == index {
            foreign_keys.push(object.clone());
        }
        if fk.to == index {
            referenced_by.push(object);
        }
    }
    let budget = tools.discovery_budget();
    let row_estimate = stats
        .get(&relation.oid)
        .map_or(relation.row_estimate, |(rows, _)| *rows);
    let mut description = TableDescription {
        summary: None,
        schema: relation.schema.to_string(),
        table: relation.name.clone(),
        kind: relation.kind.to_owned(),
        comment: relation
            .comment
            .as_deref()
            .map(|c| page::cut(c, budget / 8)),
        row_estimate,
        columns: details.columns.clone(),
        rows: raw("[]"),
        row_count: 0,
        truncated: false,
        elapsed_ms: details.elapsed_ms,
        total_columns: 0,
        next_cursor: None,
        primary_key: details.primary_key.clone(),
        foreign_keys,
        referenced_by,
        indexes: details.indexes.clone(),
        check_constraints: details.check_constraints.clone(),
        view_definition: details
            .view_definition
            .as_deref()
            .map(|v| page::cut(v, budget / 4)),
        limits: tools.limits_for(tools.caps(None)),
    };
    fit_columns(tools, &mut description, &details.rows, position);
    Ok(description)
}

/// What `describe_table` reads of one relation beyond the snapshot, kept with the snapshot
/// ([`Snapshot::keep_details`]): a catalog change replaces the snapshot and drops them.
async fn read_details(
    tools: &Tools,
    call: &Call,
    relation: &Relation,
) -> Result<Details, ToolError> {
    let oid = [json!(relation.oid)];
    // Independent queries: run them at once, each on its own pooled connection.
    let columns = tools.catalog_plain(
        call,
        "SELECT a.attname AS name, format_type(a.atttypid, a.atttypmod) AS type,
                NOT a.attnotnull AS nullable, pg_get_expr(d.adbin, d.adrelid) AS default,
                col_description(a.attrelid, a.attnum) AS comment
         FROM pg_attribute a LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
         WHERE a.attrelid = $1::oid AND a.attnum > 0 AND NOT a.attisdropped
         ORDER BY a.attnum",
        &oid,
    );
    let primary_key = tools.catalog_plain(
        call,
        "SELECT a.attname AS name
         FROM pg_constraint con CROSS JOIN unnest(con.conkey) WITH ORDINALITY k(num, ord)
         JOIN pg_attribute a ON a.attrelid = con.conrelid AND a.attnum = k.num
         WHERE con.conrelid = $1::oid AND con.contype = 'p'
         ORDER BY k.ord",
        &oid,
    );
    let indexes = tools.catalog_plain(
        call,
        "SELECT i.relname AS name, pg_get_indexdef(ix.indexrelid) AS definition,
                ix.indisunique AS unique, ix.indisprimary AS primary
         FROM pg_index ix JOIN pg_class i ON i.oid = ix.indexrelid
         WHERE ix.indrelid = $1::oid
         ORDER BY i.relname",
        &oid,
    );
    let checks = tools.catalog_plain(
        call,
        "SELECT conname AS name, pg_get_constraintdef(oid) AS definition,
                CASE WHEN (SELECT relkind FROM pg_class WHERE oid = $1::oid) IN ('v', 'm')
                     THEN pg_get_viewdef($1::oid, true) END AS view_definition
         FROM (SELECT conname, oid FROM pg_constraint WHERE conrelid = $1::oid AND contype = 'c'
               UNION ALL SELECT NULL, NULL) c
         ORDER BY conname NULLS LAST",
        &oid,
    );
    let (columns, primary_key, indexes, checks) =
        futures::try_join!(columns, primary_key, indexes, checks)?;
    let mut checks = objects(&checks);
    // The last row carries the view's SQL (and no constraint).
    let view_definition = checks
        .pop()
        .and_then(|row| row["view_definition"].as_str().map(str::to_owned));
    for check in &mut checks {
        if let Value::Object(map) = check {
            map.remove("view_definition");
        }
    }
    Ok(Details {
        rows: columns.rows.rows.values(),
        columns: columns.rows.columns.clone(),
        elapsed_ms: columns.rows.elapsed_ms,
        primary_key: primary_key
            .rows
            .rows
            .values()
            .iter()
            .filter_map(|r| r[0].as_str().map(str::to_owned))
            .collect(),
        indexes: objects(&indexes),
        check_constraints: checks,
        view_definition,
    })
}

fn raw(json: &str) -> Box<serde_json::value::RawValue> {
    serde_json::value::RawValue::from_string(json.to_owned()).unwrap_or_else(|_| {
        serde_json::value::RawValue::from_string("[]".to_owned()).unwrap_or_default()
    })
}

/// Puts the columns from `position` on into `description`, as many as fit the budget (at
/// least one), with a summary and cursor when some do not.
fn fit_columns(
    tools: &Tools,
    description: &mut TableDescription,
    all: &[Vec<Value>],
    position: usize,
) {
    let budget = tools.discovery_budget();
    let frame = tools.frame_overhead();
    let rows: Vec<String> = all
        .iter()
        .skip(position)
        .map(|row| {
            let row: Vec<Value> = row
                .iter()
                .map(|v| match v {
                    Value::String(s) => Value::String(page::cut(s, 1000)),
                    other => other.clone(),
                })
                .collect();
            serde_json::to_string(&row).unwrap_or_default()
        })
        .collect();
    description.total_columns = all.len();
    let mut shown = rows.len();
    loop {
        let more = position + shown < all.len();
        description.rows = raw(&format!("[{}]", rows[..shown].join(",")));
        description.row_count = shown;
        description.truncated = more;
        description.next_cursor = more.then(|| {
            page::cursor(
                "describe_table",
                &[
                    Some(description.schema.clone()),
                    Some(description.table.clone()),
                ],
                vec![(position + shown).to_string()],
                "",
            )
        });
        description.summary = (more || position > 0).then(|| {
            let mut summary = format!(
                "{}.{} has {} columns; showing {}–{}",
                description.schema,
                description.table,
                page::count(all.len()),
                page::count(position + 1),
                page::count(position + shown)
            );
            match &description.next_cursor {
                Some(c) => summary.push_str(&format!(
                    ". For the next columns call describe_table again with cursor \"{c}\" and the same table."
                )),
                None => summary.push_str(" (the last columns)."),
            }
            summary
        });
        let json = serde_json::to_string(&*description).unwrap_or_default();
        let summary = description.summary.as_ref().map_or(0, |s| s.len() + 1);
        if summary + frame + json.len() <= budget || shown <= 1 {
            return;
        }
        // Drop about as many columns as the excess needs, at least one.
        let excess = summary + frame + json.len() - budget;
        let average = rows[..shown].iter().map(|r| r.len() + 1).sum::<usize>() / shown;
        shown = shown
            .saturating_sub(excess.div_ceil(average.max(1)).max(1))
            .max(1);
    }
}

pub async fn list_relationships(
    tools: &Tools,
    call: &Call,
    args: ListRelationshipsArgs,
) -> Result<Page, ToolError> {
    let arguments = vec![args.schema.clone(), args.table.clone()];
    let after = page::after("list_relationships", &arguments, args.cursor.as_deref())?;
    let scope = tools.scope_of(call);
    let (snapshot, _) = tools.snapshot(call, |_| Vec::new()).await?;
    let relations = &snapshot.relations;
    let listing: Vec<&ForeignKey> = snapshot
        .foreign_keys
        .iter()
        .filter(|fk| {
            let (from, to) = (&relations[fk.from], &relations[fk.to]);
            snapshot.shows(scope, from)
                && snapshot.shows(scope, to)
                && args
                    .schema
                    .as_deref()
                    .is_none_or(|s| *from.schema == *s || *to.schema == *s)
                && args
                    .table
                    .as_deref()
                    .is_none_or(|t| from.name == t || to.name == t)
        })
        .collect();
    let words = Words {
        tool: "list_relationships",
        plural: "foreign keys",
        extent: String::new(),
        narrow: "or narrow the list with schema or table.",
    };
    let columns = [
        ("name", "name"),
        ("from_schema", "name"),
        ("from_table", "name"),
        ("from_columns", "text[]"),
        ("to_schema", "name"),
        ("to_table", "name"),
        ("to_columns", "text[]"),
        ("on_update", "text"),
        ("on_delete", "text"),
    ];
    let pager = pager(tools, words, arguments, &after, &snapshot, &columns);
    let start = listing.partition_point(|fk| {
        let from = &relations[fk.from];
        !after_key(&[&from.schema, &from.name, &fk.name], &after)
    });
    Ok(pager.page(
        listing[start..].iter(),
        start,
        listing.len(),
        |fk| {
            let from = &relations[fk.from];
            vec![from.schema.to_string(), from.name.clone(), fk.name.clone()]
        },
        |fk| {
            let (from, to) = (&relations[fk.from], &relations[fk.to]);
            json!([
                fk.name,
                &*from.schema,
                from.name,
                fk.from_columns,
                &*to.schema,
                to.name,
                fk.to_columns,
                fk.on_update,
                fk.on_delete
            ])
        },
        None,
    ))
}

/// A `search_objects` match: a relation, or a column of one.
#[derive(Clone, Copy)]
enum Found<'s> {
    Relation(&'s Relation),
    Column(&'s Relation, &'s Column),
}

pub async fn search_objects(
    tools: &Tools,
    call: &Call,
    args: SearchObjectsArgs,
) -> Result<Page, ToolError> {
    let arguments = vec![Some(args.pattern.clone())];
    let after = page::after("search_objects", &arguments, args.cursor.as_deref())?;
    let pattern = word("pattern", Some(&args.pattern))?.unwrap_or_default();
    let scope = tools.scope_of(call);
    let (snapshot, _) = tools.snapshot(call, |_| Vec::new()).await?;
    let relations = snapshot
        .relations
        .iter()
        .filter(|r| snapshot.shows(scope, r));
    let mut listing: Vec<Found> = relations
        .clone()
        .filter(|r| r.haystack.contains(&pattern))
        .map(Found::Relation)
        .collect();
    let mut columns: Vec<Found> = relations
        .flat_map(|r| {
            snapshot.columns[r.columns.clone()]
                .iter()
                .filter(|c| c.haystack.contains(&pattern))
                .map(move |c| Found::Column(r, c))
        })
        .collect();
    // Within a table, columns by name (the snapshot has them in column order).
    columns.sort_by(|a, b| match (a, b) {
        (Found::Column(ra, ca), Found::Column(rb, cb)) => {
            (&*ra.schema, &ra.name, &ca.name).cmp(&(&*rb.schema, &rb.name, &cb.name))
        }
        _ => std::cmp::Ordering::Equal,
    });
    listing.extend(columns);
    let key = |found: &Found<'_>| -> [String; 4] {
        match found {
            Found::Relation(r) => [
                "0".into(),
                r.schema.to_string(),
                r.name.clone(),
                String::new(),
            ],
            Found::Column(r, c) => [
                "1".into(),
                r.schema.to_string(),
                r.name.clone(),
                c.name.clone(),
            ],
        }
    };
    let words = Words {
        tool: "search_objects",
        plural: "matches",
        extent: String::new(),
        narrow: "or search for a longer word.",
    };
    let page_columns = [
        ("kind", "text"),
        ("schema", "name"),
        ("table", "name"),
        ("column", "name"),
        ("type", "text"),
        ("comment", "text"),
    ];
    let pager = pager(tools, words, arguments, &after, &snapshot, &page_columns);
    let hidden = not_readable(scope, &snapshot, |r| r.haystack.contains(&pattern));
    let start = listing.partition_point(|found| {
        let key = key(found);
        !after_key(&[&key[0], &key[1], &key[2], &key[3]], &after)
    });
    Ok(pager.page(
        listing[start..].iter(),
        start,
        listing.len(),
        |found| key(found).to_vec(),
        |found| match found {
            Found::Relation(r) => json!([r.kind, &*r.schema, r.name, null, null, r.short_comment]),
            Found::Column(r, c) => json!([
                "column",
                &*r.schema,
                r.name,
                c.name,
                c.type_name,
                c.comment.as_deref().map(page::first_sentence)
            ]),
        },
        hidden,
    ))
}

/// Facts about the server, and the caps of this MCP server.
#[derive(Debug, Clone, Serialize)]
pub struct ServerInfo {
    pub version: String,
    pub database: String,
    pub user: String,
    pub read_only: bool,
    /// Whether this server's connection to PostgreSQL is encrypted.
    pub tls: bool,
    pub extensions: Vec<Value>,
    pub settings: Vec<Value>,
    pub limits: Limits,
}

/// Settings a model may see: none reveals paths, hosts or credentials. The database's locale
/// comes from `pg_database` instead ([`server_info`]).
const SAFE_SETTINGS: &[&str] = &[
    "server_version",
    "server_encoding",
    "client_encoding",
    "TimeZone",
    "DateStyle",
    "IntervalStyle",
    "default_transaction_read_only",
    "transaction_read_only",
    "statement_timeout",
    "search_path",
    "max_connections",
    "work_mem",
    "standard_conforming_strings",
];

pub async fn server_info(
    tools: &Tools,
    call: &Call,
    _: ServerInfoArgs,
) -> Result<ServerInfo, ToolError> {
    let facts = tools
        .catalog_plain(
            call,
            "SELECT version() AS version, current_database() AS database, current_user AS user,
                    current_setting('transaction_read_only') = 'on' AS read_only,
                    coalesce((SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()), false) AS tls",
            &[],
        )
        .await?;
    let facts = objects(&facts).into_iter().next().unwrap_or_default();
    let extensions = tools
        .catalog_plain(
            call,
            "SELECT extname AS name, extversion AS version FROM pg_extension
             ORDER BY extname",
            &[],
        )
        .await?;
    // The current database's locale, as settings: PostgreSQL 16 dropped the lc_collate and
    // lc_ctype settings, and the provider (15+) and its locale (daticulocale in 15 and 16,
    // datlocale since 17) are columns only some versions have, hence to_jsonb of the row.
    let settings = tools
        .catalog_plain(
            call,
            "SELECT name, setting, unit FROM pg_settings WHERE name = ANY($1::text[])
             UNION ALL
             SELECT x.name, x.setting, NULL
             FROM pg_database d, to_jsonb(d) j,
                  LATERAL (VALUES ('lc_collate', d.datcollate::text), ('lc_ctype', d.datctype::text),
                                  ('locale_provider', CASE j ->> 'datlocprovider' WHEN 'i' THEN 'icu'
                                                      WHEN 'b' THEN 'builtin' ELSE 'libc' END),
                                  ('locale', coalesce(j ->> 'datlocale', j ->> 'daticulocale'))) x(name, setting)
             WHERE d.datname = current_database() AND x.setting IS NOT NULL
             ORDER BY name",
            &[json!(SAFE_SETTINGS)],
        )
        .await?;
    let text = |key: &str| facts[key].as_str().unwrap_or_default().to_owned();
    Ok(ServerInfo {
        version: text("version"),
        database: text("database"),
        user: text("user"),
        read_only: facts["read_only"].as_bool().unwrap_or(false),
        tls: facts["tls"].as_bool().unwrap_or(false),
        extensions: objects(&extensions),
        settings: objects(&settings),
        limits: settings.limits.clone(),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn relation(schema: &str, name: &str, comment: Option<&str>) -> Relation {
        Relation {
            oid: 1,
            schema: schema.into(),
            schema_index: 0,
            name: name.to_owned(),
            kind: "materialized_view",
            comment: comment.map(str::to_owned),
            short_comment: comment.map(page::first_sentence),
            readable: true,
            row_estimate: None,
            size_bytes: None,
            columns: 0..0,
            haystack: String::new(),
        }
    }

    #[test]
    fn a_row_is_never_shorter_than_its_lower_bound() {
        let long = "x".repeat(3000);
        for r in [
            relation("public", "t", None),
            relation("s\"q", "naïve \\ name", Some("One. Two.")),
            relation("a", "b", Some(&long)),
            relation("a", "b", Some(&format!("x{}", " ".repeat(2999)))),
            relation("", "", Some("")),
        ] {
            for detail in [false, true] {
                for stats in [(None, None), (Some(0), Some(0)), (Some(123_456), Some(9))] {
                    let json = serde_json::to_string(&table_row(&r, stats, detail)).unwrap();
                    assert!(
                        table_row_at_least(&r, detail) <= json.len(),
                        "{json} ({} bytes) is shorter than {}",
                        json.len(),
                        table_row_at_least(&r, detail)
                    );
                }
            }
        }
    }
}
