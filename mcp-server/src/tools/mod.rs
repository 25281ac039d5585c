//! The MCP tools as plain async functions over [`Tools`]: no MCP types here, so tests call
//! them directly. `server.rs` wraps each one as an MCP tool.

pub mod catalog;
pub mod sql;

use std::time::Duration;

use pgmcp_crds::config::LimitsConfig;
use serde::Serialize;
use serde_json::Value;

use crate::db::{Caps, Database, DbError, Rows};
use crate::scope::{OutOfScope, Scope};
use crate::sql_guard::GuardError;

/// What every tool works with.
#[derive(Debug, Clone)]
pub struct Tools {
    pub db: Database,
    pub scope: Scope,
    pub limits: LimitsConfig,
}

/// Why a tool call failed, phrased for the model (it becomes the text of an MCP tool error).
#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    #[error("refused: {0}")]
    Guard(#[from] GuardError),
    #[error("refused: {0}")]
    Scope(#[from] OutOfScope),
    #[error(transparent)]
    Db(#[from] DbError),
    #[error("{0}")]
    NotFound(String),
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
}

impl ToolError {
    /// Bounded label for metrics and the audit log.
    pub fn metric_label(&self) -> &'static str {
        match self {
            ToolError::Guard(_) => "refused_sql",
            ToolError::Scope(_) => "refused_scope",
            ToolError::Db(e) => e.metric_label(),
            ToolError::NotFound(_) => "not_found",
            ToolError::InvalidArgument(_) => "invalid_argument",
        }
    }
}

/// The caps stated in every result, so the model knows what it was given.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Limits {
    pub max_rows: usize,
    pub max_bytes: usize,
    pub statement_timeout_ms: u64,
}

/// A tool result: rows plus the caps they were produced under.
#[derive(Debug, Clone, Serialize)]
pub struct RowsResult {
    #[serde(flatten)]
    pub rows: Rows,
    pub limits: Limits,
}

impl Tools {
    pub fn new(db: Database, scope: Scope, limits: LimitsConfig) -> Self {
        Self { db, scope, limits }
    }

    /// The configured caps, with `max_rows` lowered to what the caller asked for.
    pub(crate) fn caps(&self, max_rows: Option<u32>) -> Caps {
        let configured = self.limits.max_rows as usize;
        Caps {
            max_rows: max_rows.map_or(configured, |n| (n as usize).clamp(1, configured)),
            max_bytes: usize::try_from(self.limits.max_bytes).unwrap_or(usize::MAX),
        }
    }

    pub(crate) fn limits_for(&self, caps: Caps) -> Limits {
        Limits {
            max_rows: caps.max_rows,
            max_bytes: caps.max_bytes,
            statement_timeout_ms: self.limits.statement_timeout_ms,
        }
    }

    pub(crate) fn statement_timeout(&self) -> Duration {
        Duration::from_millis(self.limits.statement_timeout_ms)
    }

    /// Runs the server's own catalog SQL with the scope parameters `$1..$3` followed by `extra`
    /// (`$4…`).
    pub(crate) async fn catalog(
        &self,
        sql: &str,
        extra: &[Value],
    ) -> Result<RowsResult, ToolError> {
        let mut params = self.scope_params();
        params.extend_from_slice(extra);
        self.catalog_plain(sql, &params).await
    }

    /// Runs the server's own catalog SQL that needs no scope parameters.
    pub(crate) async fn catalog_plain(
        &self,
        sql: &str,
        params: &[Value],
    ) -> Result<RowsResult, ToolError> {
        let caps = self.caps(None);
        let rows = self.db.query(sql, params, caps, None).await?;
        Ok(RowsResult {
            rows,
            limits: self.limits_for(caps),
        })
    }

    /// `$1` unrestricted, `$2` schemas granted with "*", `$3` explicitly granted tables as
    /// `schema.table`.
    fn scope_params(&self) -> Vec<Value> {
        let grants = self.scope.grants();
        let star: Vec<&str> = grants
            .iter()
            .filter(|g| g.tables.iter().any(|t| t == "*"))
            .map(|g| g.schema.as_str())
            .collect();
        let explicit: Vec<String> = grants
            .iter()
            .flat_map(|g| {
                g.tables
                    .iter()
                    .filter(|t| *t != "*")
                    .map(move |t| format!("{}.{t}", g.schema))
            })
            .collect();
        vec![
            Value::Bool(self.scope.is_unrestricted()),
            serde_json::json!(star),
            serde_json::json!(explicit),
        ]
    }
}
