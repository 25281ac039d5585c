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

impl PgMcpServer {
    pub fn new(tools: Arc<Tools>, metrics: Arc<Metrics>) -> Self {
        Self {
            tools,
            metrics,
            tool_router: Arc::new(Self::tool_router()),
        }
    }

    async fn run<T, F>(
        &self,
        extensions: &Extensions,
        tool: &'static str,
        statement: Option<&str>,
        call: F,
    ) -> Result<CallToolResult, ErrorData>
    where
        T: Serialize + RowCount,
        F: Future<Output = Result<T, ToolError>>,
    {
        let started = Instant::now();
        let fingerprint = statement.map(sql_guard::fingerprint);
        let result = match self.tools.role_checked().await {
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
            Ok(value) => match serde_json::to_value(&value) {
                Ok(json) => Ok(CallToolResult::structured(json)),
                Err(err) => Err(ErrorData::internal_error(
                    format!("failed to encode the result: {err}"),
                    None,
                )),
            },
            Err(err) => Ok(CallToolResult::error(vec![ContentBlock::text(
                err.to_string(),
            )])),
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
        self.run(
            &extensions,
            "list_databases",
            None,
            catalog::list_databases(&self.tools, args),
        )
        .await
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
        self.run(
            &extensions,
            "list_schemas",
            None,
            catalog::list_schemas(&self.tools, args),
        )
        .await
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
        self.run(
            &extensions,
            "list_tables",
            None,
            catalog::list_tables(&self.tools, args),
        )
        .await
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
        self.run(
            &extensions,
            "describe_table",
            None,
            catalog::describe_table(&self.tools, args),
        )
        .await
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
        self.run(
            &extensions,
            "list_relationships",
            None,
            catalog::list_relationships(&self.tools, args),
        )
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
        self.run(
            &extensions,
            "search_objects",
            None,
            catalog::search_objects(&self.tools, args),
        )
        .await
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
        let statement = args.sql.clone();
        self.run(
            &extensions,
            "query",
            Some(&statement),
            sql::query(&self.tools, args),
        )
        .await
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
        let statement = args.sql.clone();
        self.run(
            &extensions,
            "explain",
            Some(&statement),
            sql::explain(&self.tools, args),
        )
        .await
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
        self.run(
            &extensions,
            "server_info",
            None,
            catalog::server_info(&self.tools, args),
        )
        .await
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
