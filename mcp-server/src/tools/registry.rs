//! Every tool the server offers, declared once.
//!
//! One entry per tool gives its `tools/list` entry (name, title, description, input schema from
//! its argument type, annotations), the parsing of its arguments, and its call. Both ways a
//! `tools/call` is answered ([`crate::dispatch`]'s own path, and rmcp's for the requests it
//! serves) go through [`ToolCall::parse`] and [`ToolCall::run`], so a tool cannot be listed but
//! not callable, or the reverse. Adding a tool is adding an entry here.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, LazyLock};

use rmcp::handler::server::common::schema_for_type;
use rmcp::model::{JsonObject, Tool, ToolAnnotations};
use serde::Serialize;

use super::catalog::{
    self, DescribeTableArgs, ListDatabasesArgs, ListRelationshipsArgs, ListSchemasArgs,
    ListTablesArgs, SearchObjectsArgs, ServerInfoArgs,
};
use super::schemas;
use super::sql::{self, ExplainArgs, QueryArgs};
use super::{Call, RowsResult, ToolError, Tools};

/// What a finished call hands the audit log and the metrics: its result as JSON, how many
/// rows it holds, and whether more existed.
#[derive(Debug)]
pub struct Output {
    pub json: String,
    pub rows: usize,
    pub truncated: bool,
    /// The line the answer's text starts with: what a paged listing holds and how to get the
    /// rest ([`super::page`]). Counts and the server's cursor only, no database text, so it
    /// stands before the untrusted-data frame.
    pub summary: Option<String>,
}

/// A running call, whatever its tool: boxed, because inline every call would carry (and move,
/// at every layer above) the largest of the tools' futures.
pub type Running<'a> = Pin<Box<dyn Future<Output = Result<Output, ToolError>> + Send + 'a>>;

/// Why a `tools/call` names no call.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// A JSON-RPC error (invalid params), as rmcp words it.
    #[error("tool not found")]
    UnknownTool,
    /// A tool error (`isError: true`) the model can act on, as rmcp words it.
    #[error("failed to deserialize parameters: {0}")]
    Arguments(String),
}

/// Rows in a result and whether it was cut, for metrics and the audit log.
trait RowCount {
    fn row_count(&self) -> usize;
    fn truncated(&self) -> bool {
        false
    }
    fn summary(&self) -> Option<String> {
        None
    }
}

impl RowCount for super::page::Page {
    fn row_count(&self) -> usize {
        self.row_count
    }
    fn truncated(&self) -> bool {
        self.truncated
    }
    fn summary(&self) -> Option<String> {
        Some(self.summary.clone())
    }
}

impl RowCount for RowsResult {
    fn row_count(&self) -> usize {
        self.rows.row_count
    }
    fn truncated(&self) -> bool {
        self.rows.truncated
    }
}

impl RowCount for catalog::TableDescription {
    fn row_count(&self) -> usize {
        self.row_count
    }
    fn truncated(&self) -> bool {
        self.truncated
    }
    fn summary(&self) -> Option<String> {
        self.summary.clone()
    }
}

impl RowCount for catalog::ServerInfo {
    fn row_count(&self) -> usize {
        1
    }
}

impl RowCount for sql::Plan {
    fn row_count(&self) -> usize {
        1
    }
}

/// A tool's result as [`Output`].
async fn output<T: Serialize + RowCount>(
    result: impl Future<Output = Result<T, ToolError>>,
) -> Result<Output, ToolError> {
    let value = result.await?;
    let json = serde_json::to_string(&value)
        .map_err(|err| ToolError::Internal(format!("failed to encode the result: {err}")))?;
    Ok(Output {
        json,
        rows: value.row_count(),
        truncated: value.truncated(),
        summary: value.summary(),
    })
}

/// The JSON schema of a tool's arguments, without the root's title and description: they
/// name the Rust type, which tells a model nothing.
fn input_schema<T: schemars::JsonSchema + 'static>() -> Arc<JsonObject> {
    let mut schema = (*schema_for_type::<T>()).clone();
    schema.remove("title");
    schema.remove("description");
    Arc::new(schema)
}

/// Arguments of a tool from the text of a JSON object; errors name the field.
fn arguments<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, ParseError> {
    // An object only: serde would also read a struct from a JSON array.
    if !text.trim_start().starts_with('{') {
        return Err(ParseError::Arguments(
            "the arguments must be a JSON object".to_owned(),
        ));
    }
    serde_json::from_str(text).map_err(|err| {
        // rmcp reads the arguments from a parsed object, so its messages have no position.
        let message = err.to_string();
        let position = format!(" at line {} column {}", err.line(), err.column());
        ParseError::Arguments(
            message
                .strip_suffix(&position)
                .unwrap_or(&message)
                .to_owned(),
        )
    })
}

macro_rules! tools {
    ($(
        $variant:ident {
            name: $name:literal,
            title: $title:literal,
            description: $description:literal,
            arguments: $args:ty,
            output: $output:path,
            call: $call:path $(,)?
        }
    ),+ $(,)?) => {
        /// One call of one of the tools, its arguments parsed.
        #[derive(Debug)]
        pub enum ToolCall {
            $($variant($args),)+
        }

        impl ToolCall {
            /// The call of tool `name` with `arguments` (the text of a JSON object).
            pub fn parse(name: &str, arguments: &str) -> Result<ToolCall, ParseError> {
                match name {
                    $($name => Ok(ToolCall::$variant(self::arguments(arguments)?)),)+
                    _ => Err(ParseError::UnknownTool),
                }
            }

            /// The tool's name.
            pub fn name(&self) -> &'static str {
                match self {
                    $(ToolCall::$variant(_) => $name,)+
                }
            }

            /// Runs the call.
            pub fn run<'a>(self, tools: &'a Tools, call: &'a Call) -> Running<'a> {
                match self {
                    $(ToolCall::$variant(args) => Box::pin(output($call(tools, call, args))),)+
                }
            }
        }

        /// Every tool's `tools/list` entry, sorted by name.
        fn declared() -> Vec<Tool> {
            let mut list = vec![$(
                Tool::new($name, $description, input_schema::<$args>())
                    .with_raw_output_schema(Arc::new($output()))
                    .with_annotations(
                        ToolAnnotations::with_title($title)
                            .read_only(true)
                            .open_world(false),
                    ),
            )+];
            list.sort_by(|a, b| a.name.cmp(&b.name));
            list
        }
    };
}

tools! {
    ListDatabases {
        name: "list_databases",
        title: "List databases",
        description: "List the database this server reads (name, encoding, size in bytes, comment).",
        arguments: ListDatabasesArgs,
        output: schemas::rows,
        call: catalog::list_databases,
    },
    ListSchemas {
        name: "list_schemas",
        title: "List schemas",
        description: "List the schemas you can read, with their comment and number of tables. Long lists come in pages: the answer's first line gives the total and the cursor for the next page.",
        arguments: ListSchemasArgs,
        output: schemas::page,
        call: catalog::list_schemas,
    },
    ListTables {
        name: "list_tables",
        title: "List tables",
        description: "List the tables, views and materialized views you can read: schema, name, kind, estimated row count (null if never analyzed) and the first sentence of the comment (detail: true adds size in bytes and the whole comment). Start here to see what data exists. On a large database the answer is one page: its first line says how many tables exist in how many schemas and gives the cursor for the next page. Rather than walking every page, narrow with schema, or pattern (a word in the name or comment), or use search_objects. If tables exist that you cannot read, not_readable says how many and the GRANT an administrator runs.",
        arguments: ListTablesArgs,
        output: schemas::page,
        call: catalog::list_tables,
    },
    DescribeTable {
        name: "describe_table",
        title: "Describe a table",
        description: "Describe one table or view: its columns (name, type, nullable, default, comment), primary key, foreign keys (with the referenced table and columns), tables that reference it, indexes, check constraints, and a view's SQL. Use it before writing a query. A table with hundreds of columns comes in parts: the summary gives the cursor for the next columns.",
        arguments: DescribeTableArgs,
        output: schemas::table_description,
        call: catalog::describe_table,
    },
    ListRelationships {
        name: "list_relationships",
        title: "List relationships",
        description: "List foreign keys (how tables are related): from table and columns to table and columns, with update/delete actions. Filter by schema and/or table; a table filter matches both directions. Long lists come in pages: the answer's first line gives the total and the cursor for the next page.",
        arguments: ListRelationshipsArgs,
        output: schemas::page,
        call: catalog::list_relationships,
    },
    SearchObjects {
        name: "search_objects",
        title: "Search tables and columns",
        description: "Find tables, views and columns whose name or comment contains a word (case-insensitive), e.g. 'customer' to find where customer information is kept. The quickest way around a large database. Tables come first, then columns; long results come in pages (the first line gives the total and the cursor).",
        arguments: SearchObjectsArgs,
        output: schemas::page,
        call: catalog::search_objects,
    },
    Query {
        name: "query",
        title: "Run a read-only query",
        description: "Run one read-only SQL statement (SELECT, WITH … SELECT, VALUES, TABLE, EXPLAIN, SHOW) and get columns (name, type) and rows as JSON. Pass values as params ($1, $2, …) instead of writing them into the SQL. Results are capped at max_rows and a byte limit; truncated: true means more rows exist, so aggregate or add LIMIT. Writes, DDL, session changes and unsafe functions are refused.",
        arguments: QueryArgs,
        output: schemas::rows,
        call: sql::query,
    },
    Explain {
        name: "explain",
        title: "Explain a query",
        description: "Show PostgreSQL's plan for a read-only statement (EXPLAIN FORMAT JSON). Set analyze: true to also run it and get actual rows and timings; it stays read-only and time-limited.",
        arguments: ExplainArgs,
        output: schemas::plan,
        call: sql::explain,
    },
    ServerInfo {
        name: "server_info",
        title: "Server information",
        description: "Facts about the database server: version, database, user, installed extensions, selected settings, and this server's limits (max rows, max bytes, statement timeout).",
        arguments: ServerInfoArgs,
        output: schemas::server_info,
        call: catalog::server_info,
    },
}

/// Every tool's `tools/list` entry, sorted by name (built once).
pub fn list() -> Arc<[Tool]> {
    static LIST: LazyLock<Arc<[Tool]>> = LazyLock::new(|| declared().into());
    LIST.clone()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use serde_json::{Map, Value, json};

    use super::*;

    /// Arguments that satisfy `tool`'s input schema: each required property given a value of
    /// its type.
    fn minimal_arguments(tool: &Tool) -> String {
        let schema = &tool.input_schema;
        let required = schema
            .get("required")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let mut arguments = Map::new();
        for name in required {
            let name = name.as_str().unwrap();
            let property = &schema["properties"][name];
            let value = match property["type"].as_str() {
                Some("string") => json!("x"),
                Some("boolean") => json!(false),
                Some("integer") => json!(1),
                Some("array") => json!([]),
                other => panic!("{}: property {name} of type {other:?}", tool.name),
            };
            arguments.insert(name.to_owned(), value);
        }
        Value::Object(arguments).to_string()
    }

    #[test]
    fn every_listed_tool_is_callable_with_what_its_schema_requires() {
        let list = list();
        assert_eq!(list.len(), 9);
        for tool in list.iter() {
            let call = ToolCall::parse(&tool.name, &minimal_arguments(tool))
                .unwrap_or_else(|err| panic!("{} is listed but not callable: {err}", tool.name));
            assert_eq!(call.name(), tool.name);
            assert!(tool.annotations.as_ref().unwrap().title.is_some());
            assert!(tool.description.as_deref().is_some_and(|d| !d.is_empty()));
        }
    }

    #[test]
    fn every_callable_tool_is_listed() {
        // Each variant of ToolCall, through its own parse: the `match` in `name` is exhaustive,
        // so a new variant fails to compile until it is declared, and a declared one must be
        // listed under the same name.
        let list = list();
        let listed: Vec<&str> = list.iter().map(|t| &*t.name).collect();
        for tool in list.iter() {
            let call = ToolCall::parse(&tool.name, &minimal_arguments(tool)).unwrap();
            assert!(listed.contains(&call.name()));
        }
        let mut names: Vec<&str> = listed.clone();
        names.dedup();
        assert_eq!(names.len(), listed.len(), "no tool listed twice");
        assert_eq!(
            ToolCall::parse("drop_table", "{}").unwrap_err(),
            ParseError::UnknownTool
        );
    }

    #[test]
    fn the_tools_the_operator_announces_are_the_tools_listed() {
        // A binding's status.connect.tools comes from this constant (the operator does not link
        // the server); an agent's allowed_tools built from it must name every tool and no other.
        let list = list();
        let listed: Vec<&str> = list.iter().map(|t| &*t.name).collect();
        assert_eq!(listed, pgmcp_crds::config::TOOLS);
    }

    #[test]
    fn argument_errors_name_the_field_as_rmcp_words_them() {
        assert_eq!(
            ToolCall::parse("query", r#"{"sql":1}"#)
                .unwrap_err()
                .to_string(),
            "failed to deserialize parameters: sql: invalid type: integer `1`, expected a string"
        );
        assert_eq!(
            ToolCall::parse("query", r#"["SELECT 1"]"#)
                .unwrap_err()
                .to_string(),
            "failed to deserialize parameters: the arguments must be a JSON object"
        );
    }
}
