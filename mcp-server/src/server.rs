//! The MCP server: runs the tools declared in [`crate::tools::registry`] and serves, through
//! rmcp, the requests [`crate::dispatch`] leaves to it (initialize, tools/list, ping, …).
//!
//! [`PgMcpServer::answer`] is where every tool call ends, whichever way it came in: it times
//! the call, records its audit event ([`crate::audit`]), updates the metrics, and turns the
//! result into MCP terms: structured JSON on success (its text framed as untrusted data,
//! [`crate::framing`]), a tool error (`isError: true`) with a sentence the model can act on
//! otherwise.

use std::sync::Arc;
use std::time::Instant;

use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, Implementation,
    ListToolsResult, PaginatedRequestParams, ServerCapabilities, ServerConfig, Tool,
};
use rmcp::service::RequestContext;
use rmcp::{ErrorData, RoleServer, ServerHandler};
use tracing::Instrument as _;

use crate::auth::Caller;
use crate::framing::Frame;
use crate::metrics::{CallLabels, Metrics, ToolLabels};
use crate::telemetry::MetaTrace;
use crate::tools::registry::{self, ParseError, ToolCall};
use crate::tools::{Call, ToolError, Tools};

const INSTRUCTIONS: &str = "Read-only access to one PostgreSQL database. Start with list_tables \
(or search_objects to find tables about a topic), use describe_table for columns and keys and \
list_relationships for how tables connect, then query with one SELECT statement. Results are \
capped (see limits in each result; truncated: true means more rows exist). On a large database \
discovery answers come in pages whose first line gives the totals and a cursor: narrow with \
schema or pattern, or search_objects, rather than reading every page. Writes, DDL and session \
changes are refused.";

/// The MCP server: the tools plus what the wrappers record.
#[derive(Clone, Debug)]
pub struct PgMcpServer {
    tools: Arc<Tools>,
    metrics: Arc<Metrics>,
}

/// What a tool call produced, before it is put into MCP terms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The result as JSON: an MCP result's structured content, and its text content (framed
    /// as untrusted data when `frame` is set).
    Result {
        json: String,
        frame: Option<Frame>,
        /// The first line of the text, ending in a line break (paged listings).
        summary: Option<String>,
    },
    /// A sentence for the model: the text of an MCP tool error (`isError: true`), framed when
    /// it carries PostgreSQL's words (which can quote data).
    ToolError { text: String, frame: Option<Frame> },
}

impl Outcome {
    /// A result, unframed.
    pub fn result(json: String) -> Self {
        Outcome::Result {
            json,
            frame: None,
            summary: None,
        }
    }

    /// A tool error, unframed.
    pub fn error(text: String) -> Self {
        Outcome::ToolError { text, frame: None }
    }

    /// The text content in four pieces: the summary line (paged listings), what the frame
    /// puts before, the body, what it puts after (empty when absent).
    pub fn text(&self) -> [&str; 4] {
        let (body, frame, summary) = match self {
            Outcome::Result {
                json,
                frame,
                summary,
            } => (json, frame, summary.as_deref().unwrap_or("")),
            Outcome::ToolError { text, frame } => (text, frame, ""),
        };
        match frame {
            Some(frame) => [summary, frame.before(), body, frame.after()],
            None => [summary, "", body, ""],
        }
    }

    /// The structured content's JSON (results only).
    pub fn structured(&self) -> Option<&str> {
        match self {
            Outcome::Result { json, .. } => Some(json),
            Outcome::ToolError { .. } => None,
        }
    }

    pub fn into_call_tool_result(self) -> Result<CallToolResult, ErrorData> {
        let text = self.text().concat();
        match self.structured() {
            Some(json) => {
                let value = serde_json::from_str(json).map_err(|err| {
                    ErrorData::internal_error(format!("failed to encode the result: {err}"), None)
                })?;
                let mut result = CallToolResult::success(vec![ContentBlock::text(text)]);
                result.structured_content = Some(value);
                Ok(result)
            }
            None => Ok(CallToolResult::error(vec![ContentBlock::text(text)])),
        }
    }
}

impl PgMcpServer {
    pub fn new(tools: Arc<Tools>, metrics: Arc<Metrics>) -> Self {
        Self { tools, metrics }
    }

    /// Runs one tool call: the one place every call goes through, whichever transport and path
    /// it came by.
    pub async fn answer(&self, tool: ToolCall, call: &Call) -> Outcome {
        let span = crate::telemetry::call_span(
            tool.name(),
            call.trace.as_ref(),
            call.class().map(|c| c.label()),
        );
        self.answer_in(tool, call).instrument(span).await
    }

    async fn answer_in(&self, tool: ToolCall, call: &Call) -> Outcome {
        let name = tool.name();
        let started = Instant::now();
        let result = match self.tools.ready().await {
            // Per-caller access runs nothing without the caller's class: the HTTP layer
            // refuses such callers, stdio refuses to start; this holds whatever path a call
            // came by.
            Ok(()) if self.tools.access.per_caller() && call.class().is_none() => {
                Err(ToolError::NoClass)
            }
            Ok(()) => tool.run(&self.tools, call).await,
            Err(err) => Err(err),
        };
        let elapsed = started.elapsed();
        let (outcome, rows) = match &result {
            Ok(output) => ("ok", output.rows),
            Err(err) => (err.metric_label(), 0),
        };
        self.metrics
            .tool_calls
            .get_or_create(&CallLabels {
                tool: name,
                outcome,
            })
            .inc();
        self.metrics
            .tool_duration
            .get_or_create(&ToolLabels { tool: name })
            .observe(elapsed.as_secs_f64());
        self.metrics
            .rows_returned
            .get_or_create(&ToolLabels { tool: name })
            .inc_by(rows as u64);
        crate::telemetry::end_call(&tracing::Span::current(), outcome);
        let audit = &self.tools.audit;
        audit.record(&audit.event(name, call, &result, elapsed));
        let framing = self.tools.results.untrusted_data_framing;
        match result {
            Ok(output) => Outcome::Result {
                frame: framing.then(|| Frame::around(&output.json)),
                summary: output.summary.map(|s| s + "\n"),
                json: output.json,
            },
            Err(err) => {
                let text = err.to_string();
                Outcome::ToolError {
                    frame: (framing && matches!(err, ToolError::Db(_)))
                        .then(|| Frame::around(&text)),
                    text,
                }
            }
        }
    }
}

/// What rmcp serves: the requests [`crate::dispatch`] does not answer itself. Its tool calls
/// (those with a progress token, say) take the same declarations and [`PgMcpServer::answer`],
/// and rmcp's cancellation token for the request cancels the statement.
impl ServerHandler for PgMcpServer {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::new(
                "pgmcp-server",
                env!("CARGO_PKG_VERSION"),
            ))
            .with_instructions(INSTRUCTIONS)
    }

    async fn list_tools(
        &self,
        _: Option<PaginatedRequestParams>,
        _: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        Ok(ListToolsResult::with_all_items(registry::list().to_vec()))
    }

    fn get_tool(&self, name: &str) -> Option<Tool> {
        registry::list().iter().find(|t| t.name == name).cloned()
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let arguments = serde_json::to_string(&request.arguments.unwrap_or_default())
            .map_err(|err| ErrorData::internal_error(err.to_string(), None))?;
        let tool = match ToolCall::parse(&request.name, &arguments) {
            Ok(tool) => tool,
            Err(err @ ParseError::UnknownTool) => {
                return Err(ErrorData::invalid_params(err.to_string(), None));
            }
            Err(err @ ParseError::Arguments(_)) => {
                return Ok(CallToolResult::error(vec![ContentBlock::text(err.to_string())]).into());
            }
        };
        let caller = Caller::of(&context.extensions);
        let call = Call::new(context.ct.clone(), caller)
            .with_trace(Some(MetaTrace::from_meta(&context.meta)));
        Ok(self
            .answer(tool, &call)
            .await
            .into_call_tool_result()?
            .into())
    }
}
