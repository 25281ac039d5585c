//! The MCP tool router: every tool the server offers, as thin wrappers over `tools/`.
//!
//! Each wrapper times the call, writes one audit line (with the caller's Entra identity when the
//! request was authenticated), updates the metrics, and turns the result into MCP: structured JSON on success, a tool error (`isError: true`) with a sentence
//! the model can act on otherwise. Unknown tools and malformed arguments are protocol errors,
//! answered by rmcp itself.

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{
    CallToolResult, ContentBlock, Extensions, Implementation, ServerCapabilities, ServerConfig,
};
use rmcp::{ErrorData, ServerHandler, tool, tool_handler, tool_router};
use serde::Serialize;

use crate::auth::Caller;
use crate::metrics::{CallLabels, Metrics, ToolLabels};
use crate::sql_guard;
use crate::tools::catalog::{
    self, DescribeTableArgs, ListDatabasesArgs, ListRelationshipsArgs, ListSchemasArgs,
    ListTablesArgs, SearchObjectsArgs, ServerInfoArgs,
};
use crate::tools::sql::{self, ExplainArgs, QueryArgs};
use crate::tools::{ToolError, Tools};

const INSTRUCTIONS: &str = "Read-only access to one PostgreSQL database. Start with list_tables \
(or search_objects to find tables about a topic), use describe_table for columns and keys and \
list_relationships for how tables connect, then query with one SELECT statement. Results are \
capped (see limits in each result; truncated: true means more rows exist). Writes, DDL and \
session changes are refused.";

/// The MCP server: the tools plus what the wrappers record.
#[derive(Clone, Debug)]
pub struct PgMcpServer {
    tools: Arc<Tools>,
    metrics: Arc<Metrics>,
    /// Built once: the HTTP transport clones the server for every request.
    tool_router: Arc<ToolRouter<Self>>,
}

/// What a tool call produced, before it is put into MCP terms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The result as JSON text: an MCP result's structured content, and its text content.
    Result(String),
    /// A sentence for the model: the text of an MCP tool error (`isError: true`).
    ToolError(String),
}

impl Outcome {
    pub fn into_call_tool_result(self) -> Result<CallToolResult, ErrorData> {
        match self {
            Outcome::Result(json) => {
                let value = serde_json::from_str(&json).map_err(|err| {
                    ErrorData::internal_error(format!("failed to encode the result: {err}"), None)
                })?;
                let mut result = CallToolResult::success(vec![ContentBlock::text(json)]);
                result.structured_content = Some(value);
                Ok(result)
            }
            Outcome::ToolError(text) => Ok(CallToolResult::error(vec![ContentBlock::text(text)])),
        }
    }
}

/// Rows in a result, for metrics and the audit log.
trait RowCount {
    fn row_count(&self) -> usize;
}

impl RowCount for crate::tools::RowsResult {
    fn row_count(&self) -> usize {
        self.rows.row_count
    }
}

impl RowCount for catalog::TableDescription {
    fn row_count(&self) -> usize {
        self.columns.row_count
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

/// One call of one of the tools, its arguments parsed: what both the rmcp tool router and the
/// direct HTTP path ([`crate::direct`]) hand to [`PgMcpServer::call`].
#[derive(Debug)]
pub enum ToolCall {
    ListDatabases(ListDatabasesArgs),
    ListSchemas(ListSchemasArgs),
    ListTables(ListTablesArgs),
    DescribeTable(DescribeTableArgs),
    ListRelationships(ListRelationshipsArgs),
    SearchObjects(SearchObjectsArgs),
    Query(QueryArgs),
    Explain(ExplainArgs),
    ServerInfo(ServerInfoArgs),
}

impl ToolCall {
    /// The call of tool `name` with `arguments` (the text of a JSON object); `None` when there is
    /// no such tool or the arguments do not fit it, which rmcp then reports in its own words.
    pub fn parse(name: &str, arguments: &str) -> Option<ToolCall> {
        fn args<T: serde::de::DeserializeOwned>(arguments: &str) -> Option<T> {
            // An object only: serde would also read a struct from a JSON array.
            if !arguments.trim_start().starts_with('{') {
                return None;
            }
            serde_json::from_str(arguments).ok()
        }
        Some(match name {
            "list_databases" => ToolCall::ListDatabases(args(arguments)?),
            "list_schemas" => ToolCall::ListSchemas(args(arguments)?),
            "list_tables" => ToolCall::ListTables(args(arguments)?),
            "describe_table" => ToolCall::DescribeTable(args(arguments)?),
            "list_relationships" => ToolCall::ListRelationships(args(arguments)?),
            "search_objects" => ToolCall::SearchObjects(args(arguments)?),
            "query" => ToolCall::Query(args(arguments)?),
            "explain" => ToolCall::Explain(args(arguments)?),
            "server_info" => ToolCall::ServerInfo(args(arguments)?),
            _ => return None,
        })
    }
}

impl PgMcpServer {
    pub fn new(tools: Arc<Tools>, metrics: Arc<Metrics>) -> Self {
        Self {
            tools,
            metrics,
            tool_router: Arc::new(Self::tool_router()),
        }
    }

    /// Runs one tool call as an MCP result: structured content, with the same JSON as text.
    pub async fn call(
        &self,
        call: ToolCall,
        extensions: &Extensions,
    ) -> Result<CallToolResult, ErrorData> {
        self.answer(call, extensions).await?.into_call_tool_result()
    }

    /// Runs one tool call (see [`PgMcpServer::run`]). Each tool's future is boxed: inline, every
    /// call would carry (and move, at every layer above) the largest of them.
    pub async fn answer(
        &self,
        call: ToolCall,
        extensions: &Extensions,
    ) -> Result<Outcome, ErrorData> {
        let tools = &*self.tools;
        match call {
            ToolCall::ListDatabases(args) => {
                let call = Box::pin(catalog::list_databases(tools, args));
                self.run(extensions, "list_databases", None, call).await
            }
            ToolCall::ListSchemas(args) => {
                let call = Box::pin(catalog::list_schemas(tools, args));
                self.run(extensions, "list_schemas", None, call).await
            }
            ToolCall::ListTables(args) => {
                let call = Box::pin(catalog::list_tables(tools, args));
                self.run(extensions, "list_tables", None, call).await
            }
            ToolCall::DescribeTable(args) => {
                let call = Box::pin(catalog::describe_table(tools, args));
                self.run(extensions, "describe_table", None, call).await
            }
            ToolCall::ListRelationships(args) => {
                let call = Box::pin(catalog::list_relationships(tools, args));
                self.run(extensions, "list_relationships", None, call).await
            }
            ToolCall::SearchObjects(args) => {
                let call = Box::pin(catalog::search_objects(tools, args));
                self.run(extensions, "search_objects", None, call).await
            }
            ToolCall::Query(args) => {
                // One tokenization for the guard and the audit log's fingerprint.
                let inspection = sql_guard::inspect(&args.sql);
                let call = Box::pin(sql::query_checked(tools, args, inspection.verdict));
                self.run(extensions, "query", Some(inspection.fingerprint), call)
                    .await
            }
            ToolCall::Explain(args) => {
                let fingerprint = sql_guard::fingerprint(&args.sql);
                let call = Box::pin(sql::explain(tools, args));
                self.run(extensions, "explain", Some(fingerprint), call)
                    .await
            }
            ToolCall::ServerInfo(args) => {
                let call = Box::pin(catalog::server_info(tools, args));
                self.run(extensions, "server_info", None, call).await
            }
        }
    }

    /// Times the call, writes the audit line, updates the metrics and shapes the MCP result.
    async fn run<T, F>(
        &self,
        extensions: &Extensions,
        tool: &'static str,
        fingerprint: Option<String>,
        call: F,
    ) -> Result<Outcome, ErrorData>
    where
        T: Serialize + RowCount,
        F: Future<Output = Result<T, ToolError>>,
    {
        let started = Instant::now();
        let result = match self.tools.ready().await {
            Ok(()) => call.await,
            Err(err) => Err(err),
        };
        let elapsed = started.elapsed();
        let (outcome, rows) = match &result {
            Ok(value) => ("ok", value.row_count()),
            Err(err) => (err.metric_label(), 0),
        };
        self.metrics
            .tool_calls
            .get_or_create(&CallLabels { tool, outcome })
            .inc();
        self.metrics
            .tool_duration
            .get_or_create(&ToolLabels { tool })
            .observe(elapsed.as_secs_f64());
        self.metrics
            .rows_returned
            .get_or_create(&ToolLabels { tool })
            .inc_by(rows as u64);
        let caller = Caller::of(extensions);
        let field = |f: fn(&Caller) -> Option<&String>| {
            caller.as_ref().and_then(f).cloned().unwrap_or_default()
        };
        tracing::info!(
            target: "audit",
            caller = crate::auth::audit_caller(caller.as_ref()),
            caller_app_id = field(|c| c.app_id.as_ref()),
            caller_name = field(|c| c.name.as_ref()),
            tool,
            statement = fingerprint.as_deref().unwrap_or(""),
            rows,
            ms = elapsed.as_millis() as u64,
            outcome,
            "tool call"
        );
        match result {
            Ok(value) => match serde_json::to_string(&value) {
                Ok(json) => Ok(Outcome::Result(json)),
                Err(err) => Err(ErrorData::internal_error(
                    format!("failed to encode the result: {err}"),
                    None,
                )),
            },
            Err(err) => Ok(Outcome::ToolError(err.to_string())),
        }
    }
}

#[tool_router]
impl PgMcpServer {
    #[tool(
        description = "List the database this server reads (name, encoding, size in bytes, comment).",
        annotations(
            title = "List databases",
            read_only_hint = true,
            open_world_hint = false
        )
    )]
    async fn list_databases(
        &self,
        Parameters(args): Parameters<ListDatabasesArgs>,
        extensions: Extensions,
    ) -> Result<CallToolResult, ErrorData> {
        self.call(ToolCall::ListDatabases(args), &extensions).await
    }

    #[tool(
        description = "List the schemas you can read, with their comment and number of tables.",
        annotations(title = "List schemas", read_only_hint = true, open_world_hint = false)
    )]
    async fn list_schemas(
        &self,
        Parameters(args): Parameters<ListSchemasArgs>,
        extensions: Extensions,
    ) -> Result<CallToolResult, ErrorData> {
        self.call(ToolCall::ListSchemas(args), &extensions).await
    }

    #[tool(
        description = "List the tables, views and materialized views you can read: schema, name, kind, estimated row count (null if never analyzed), size in bytes and comment. Start here to see what data exists.",
        annotations(title = "List tables", read_only_hint = true, open_world_hint = false)
    )]
    async fn list_tables(
        &self,
        Parameters(args): Parameters<ListTablesArgs>,
        extensions: Extensions,
    ) -> Result<CallToolResult, ErrorData> {
        self.call(ToolCall::ListTables(args), &extensions).await
    }

    #[tool(
        description = "Describe one table or view: its columns (name, type, nullable, default, comment), primary key, foreign keys (with the referenced table and columns), tables that reference it, indexes, check constraints, and a view's SQL. Use it before writing a query.",
        annotations(
            title = "Describe a table",
            read_only_hint = true,
            open_world_hint = false
        )
    )]
    async fn describe_table(
        &self,
        Parameters(args): Parameters<DescribeTableArgs>,
        extensions: Extensions,
    ) -> Result<CallToolResult, ErrorData> {
        self.call(ToolCall::DescribeTable(args), &extensions).await
    }

    #[tool(
        description = "List foreign keys (how tables are related): from table and columns to table and columns, with update/delete actions. Filter by schema and/or table; a table filter matches both directions.",
        annotations(
            title = "List relationships",
            read_only_hint = true,
            open_world_hint = false
        )
    )]
    async fn list_relationships(
        &self,
        Parameters(args): Parameters<ListRelationshipsArgs>,
        extensions: Extensions,
    ) -> Result<CallToolResult, ErrorData> {
        self.call(ToolCall::ListRelationships(args), &extensions)
            .await
    }

    #[tool(
        description = "Find tables, views and columns whose name or comment contains a word (case-insensitive), e.g. 'customer' to find where customer information is kept.",
        annotations(
            title = "Search tables and columns",
            read_only_hint = true,
            open_world_hint = false
        )
    )]
    async fn search_objects(
        &self,
        Parameters(args): Parameters<SearchObjectsArgs>,
        extensions: Extensions,
    ) -> Result<CallToolResult, ErrorData> {
        self.call(ToolCall::SearchObjects(args), &extensions).await
    }

    #[tool(
        description = "Run one read-only SQL statement (SELECT, WITH … SELECT, VALUES, TABLE, EXPLAIN, SHOW) and get columns (name, type) and rows as JSON. Pass values as params ($1, $2, …) instead of writing them into the SQL. Results are capped at max_rows and a byte limit; truncated: true means more rows exist, so aggregate or add LIMIT. Writes, DDL, session changes and unsafe functions are refused.",
        annotations(
            title = "Run a read-only query",
            read_only_hint = true,
            open_world_hint = false
        )
    )]
    async fn query(
        &self,
        Parameters(args): Parameters<QueryArgs>,
        extensions: Extensions,
    ) -> Result<CallToolResult, ErrorData> {
        self.call(ToolCall::Query(args), &extensions).await
    }

    #[tool(
        description = "Show PostgreSQL's plan for a read-only statement (EXPLAIN FORMAT JSON). Set analyze: true to also run it and get actual rows and timings; it stays read-only and time-limited.",
        annotations(
            title = "Explain a query",
            read_only_hint = true,
            open_world_hint = false
        )
    )]
    async fn explain(
        &self,
        Parameters(args): Parameters<ExplainArgs>,
        extensions: Extensions,
    ) -> Result<CallToolResult, ErrorData> {
        self.call(ToolCall::Explain(args), &extensions).await
    }

    #[tool(
        description = "Facts about the database server: version, database, user, installed extensions, selected settings, and this server's limits (max rows, max bytes, statement timeout).",
        annotations(
            title = "Server information",
            read_only_hint = true,
            open_world_hint = false
        )
    )]
    async fn server_info(
        &self,
        Parameters(args): Parameters<ServerInfoArgs>,
        extensions: Extensions,
    ) -> Result<CallToolResult, ErrorData> {
        self.call(ToolCall::ServerInfo(args), &extensions).await
    }
}

#[tool_handler(router = self.tool_router)]
impl ServerHandler for PgMcpServer {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::new(
                "pgmcp-server",
                env!("CARGO_PKG_VERSION"),
            ))
            .with_instructions(INSTRUCTIONS)
    }
}
