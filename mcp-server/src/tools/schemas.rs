//! Each tool's `outputSchema` (JSON Schema 2020-12): what its `structuredContent` is.
//!
//! Written out rather than derived, because the rows are written straight from PostgreSQL's
//! values (`JsonRows`) and several results flatten them in. The interop tests validate every
//! tool's real output against these with Python's `jsonschema` and the official MCP SDK
//! (`mcp-server/tests/interop.rs`), and the unit tests below with the same `serde_json`
//! values the tools serialize; objects allow no other properties, so a field added to a result
//! without its schema fails them.

use serde_json::{Map, Value, json};

const DIALECT: &str = "https://json-schema.org/draft/2020-12/schema";

/// The caps stated in results ([`super::Limits`]).
fn limits() -> Value {
    json!({
        "type": "object",
        "description": "The caps the result was produced under.",
        "properties": {
            "max_rows": {"type": "integer", "minimum": 0},
            "max_bytes": {"type": "integer", "minimum": 0},
            "statement_timeout_ms": {"type": "integer", "minimum": 0}
        },
        "required": ["max_rows", "max_bytes", "statement_timeout_ms"],
        "additionalProperties": false
    })
}

/// The properties of a statement's rows ([`crate::db::Rows`]), flattened into results.
fn rows_properties() -> Map<String, Value> {
    let properties = json!({
        "columns": {
            "type": "array",
            "description": "The result's columns, in the order of each row's values.",
            "items": {
                "type": "object",
                "properties": {
                    "name": {"type": "string"},
                    "type": {"type": "string", "description": "PostgreSQL type name."}
                },
                "required": ["name", "type"],
                "additionalProperties": false
            }
        },
        "rows": {
            "type": "array",
            "description": "One array of values per row, in the order of columns.",
            "items": {"type": "array"}
        },
        "row_count": {"type": "integer", "minimum": 0},
        "truncated": {
            "type": "boolean",
            "description": "True when more rows existed than were returned."
        },
        "truncated_by": {"enum": ["max_rows", "max_bytes"]},
        "elapsed_ms": {"type": "integer", "minimum": 0},
        "undecoded_columns": {
            "type": "array",
            "description": "Columns whose type could not be decoded (values as hex).",
            "items": {"type": "string"}
        }
    });
    match properties {
        Value::Object(map) => map,
        _ => unreachable!("a JSON object"),
    }
}

const ROWS_REQUIRED: [&str; 5] = ["columns", "rows", "row_count", "truncated", "elapsed_ms"];

fn object(properties: Map<String, Value>, required: &[&str]) -> Map<String, Value> {
    let schema = json!({
        "$schema": DIALECT,
        "type": "object",
        "properties": properties,
        "required": required,
        "additionalProperties": false
    });
    match schema {
        Value::Object(map) => map,
        _ => unreachable!("a JSON object"),
    }
}

/// Rows and the caps (`query` and the listing tools).
pub fn rows() -> Map<String, Value> {
    let mut properties = rows_properties();
    properties.insert("limits".into(), limits());
    let mut required = ROWS_REQUIRED.to_vec();
    required.push("limits");
    object(properties, &required)
}

/// A page of a listing ([`super::page::Page`]).
pub fn page() -> Map<String, Value> {
    let mut properties = rows_properties();
    properties.remove("truncated_by");
    properties.remove("elapsed_ms");
    properties.remove("undecoded_columns");
    properties.insert(
        "truncated".into(),
        json!({
            "type": "boolean",
            "description": "True when entries follow this page (see nextCursor)."
        }),
    );
    for (name, schema) in [
        (
            "summary",
            json!({"type": "string", "description": "What the listing holds and how to get the rest; also the first line of the text."}),
        ),
        (
            "total",
            json!({"type": "integer", "minimum": 0, "description": "Entries in the whole listing."}),
        ),
        (
            "first",
            json!({"type": "integer", "minimum": 0, "description": "Position of the page's first entry (1-based; 0 when empty)."}),
        ),
        (
            "nextCursor",
            json!({"type": ["string", "null"], "description": "Pass as cursor, with the same arguments, for the next page; null on the last page."}),
        ),
        (
            "not_readable",
            json!({
                "type": "object",
                "description": "Tables that exist but this server's role cannot read, and the GRANT an administrator runs.",
                "properties": {
                    "tables": {"type": "integer", "minimum": 1},
                    "schemas": {"type": "array", "items": {"type": "string"}},
                    "grant": {"type": "string"}
                },
                "required": ["tables", "schemas", "grant"],
                "additionalProperties": false
            }),
        ),
        (
            "catalog_changed",
            json!({"type": "string", "description": "Set when the catalog changed since the previous page."}),
        ),
        ("limits", limits()),
    ] {
        properties.insert(name.into(), schema);
    }
    object(
        properties,
        &[
            "summary",
            "columns",
            "rows",
            "row_count",
            "total",
            "first",
            "truncated",
            "nextCursor",
            "limits",
        ],
    )
}

/// `describe_table`: the table, its columns as rows, and its keys, indexes and constraints.
pub fn table_description() -> Map<String, Value> {
    let mut properties = rows_properties();
    let objects = json!({"type": "array", "items": {"type": "object"}});
    let nullable_text = json!({"type": ["string", "null"]});
    for (name, schema) in [
        ("schema", json!({"type": "string"})),
        ("table", json!({"type": "string"})),
        ("kind", json!({"type": "string"})),
        ("comment", nullable_text.clone()),
        ("row_estimate", json!({"type": ["integer", "null"]})),
        (
            "primary_key",
            json!({"type": "array", "items": {"type": "string"}}),
        ),
        ("foreign_keys", objects.clone()),
        ("referenced_by", objects.clone()),
        ("indexes", objects.clone()),
        ("check_constraints", objects),
        ("view_definition", json!({"type": "string"})),
        (
            "summary",
            json!({"type": "string", "description": "Present when the columns come in parts: how many, which, and the cursor for the rest."}),
        ),
        ("total_columns", json!({"type": "integer", "minimum": 0})),
        (
            "nextCursor",
            json!({"type": ["string", "null"], "description": "Pass as cursor, with the same table, for the next columns; null when all are shown."}),
        ),
        ("limits", limits()),
    ] {
        properties.insert(name.into(), schema);
    }
    let mut required = ROWS_REQUIRED.to_vec();
    required.extend([
        "schema",
        "table",
        "kind",
        "comment",
        "row_estimate",
        "primary_key",
        "foreign_keys",
        "referenced_by",
        "indexes",
        "check_constraints",
        "total_columns",
        "nextCursor",
        "limits",
    ]);
    object(properties, &required)
}

/// `server_info`.
pub fn server_info() -> Map<String, Value> {
    let objects = json!({"type": "array", "items": {"type": "object"}});
    let properties = json!({
        "version": {"type": "string"},
        "database": {"type": "string"},
        "user": {"type": "string"},
        "read_only": {"type": "boolean"},
        "tls": {"type": "boolean", "description": "Whether the connection to PostgreSQL is encrypted."},
        "extensions": objects,
        "settings": objects,
        "limits": limits()
    });
    let Value::Object(properties) = properties else {
        unreachable!("a JSON object")
    };
    object(
        properties,
        &[
            "version",
            "database",
            "user",
            "read_only",
            "tls",
            "extensions",
            "settings",
            "limits",
        ],
    )
}

/// `explain`.
pub fn plan() -> Map<String, Value> {
    let properties = json!({
        "plan": {"description": "PostgreSQL's EXPLAIN (FORMAT JSON) output."},
        "analyzed": {"type": "boolean"},
        "elapsed_ms": {"type": "integer", "minimum": 0},
        "statement_timeout_ms": {"type": "integer", "minimum": 0}
    });
    let Value::Object(properties) = properties else {
        unreachable!("a JSON object")
    };
    object(
        properties,
        &["plan", "analyzed", "elapsed_ms", "statement_timeout_ms"],
    )
}
