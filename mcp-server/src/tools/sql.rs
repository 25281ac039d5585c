//! `query` and `explain`: the model's own SQL, after the SQL guard (layer three) and the scope
//! check, run by [`crate::db`] in a read-only transaction (layer two) as the binding's role
//! (layer one).

use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlparser::ast::Statement;

use super::{RowsResult, ToolError, Tools};
use crate::scope::referenced_relations;
use crate::sql_guard;

/// Largest SQL text accepted, in bytes (the SQL guard's limit).
pub const MAX_SQL_BYTES: usize = sql_guard::MAX_SQL_BYTES;
/// Largest number of `$n` parameters.
pub const MAX_PARAMS: usize = 100;

/// Arguments of `query`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(remote = "Self")]
#[schemars(rename = "QueryArgs")]
pub struct QueryArgs {
    #[schemars(
        description = "One read-only SQL statement (SELECT, WITH … SELECT, VALUES, TABLE, EXPLAIN or SHOW) in PostgreSQL syntax. Use $1, $2, … for values passed in params."
    )]
    pub sql: String,
    #[schemars(
        description = "Values of $1, $2, … in order (strings, numbers, booleans, null, arrays of strings)"
    )]
    #[serde(default)]
    pub params: Vec<Value>,
    #[schemars(description = "Return at most this many rows (capped by the server's limit)")]
    #[serde(default)]
    pub max_rows: Option<u32>,
}

/// Arguments of `explain`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(remote = "Self")]
#[schemars(rename = "ExplainArgs")]
pub struct ExplainArgs {
    #[schemars(
        description = "The read-only statement to explain (SELECT, WITH … SELECT, VALUES or TABLE)"
    )]
    pub sql: String,
    #[schemars(description = "Values of $1, $2, … in order")]
    #[serde(default)]
    pub params: Vec<Value>,
    #[schemars(
        description = "Also run the statement to report actual row counts and timings (EXPLAIN ANALYZE); still read-only and time-limited"
    )]
    #[serde(default)]
    pub analyze: bool,
}

super::deserialize_naming_the_field!(QueryArgs, ExplainArgs);

fn check_size(sql: &str, params: &[Value]) -> Result<(), ToolError> {
    if sql.len() > MAX_SQL_BYTES {
        return Err(ToolError::InvalidArgument(format!(
            "sql is {} bytes; the limit is {MAX_SQL_BYTES}",
            sql.len()
        )));
    }
    if params.len() > MAX_PARAMS {
        return Err(ToolError::InvalidArgument(format!(
            "{} params given; the limit is {MAX_PARAMS}",
            params.len()
        )));
    }
    Ok(())
}

/// Refuses any relation outside the scope. Unqualified names are resolved the way PostgreSQL
/// will resolve them, through the session's `search_path` (with `pg_catalog` first).
async fn check_scope(tools: &Tools, statement: &Statement) -> Result<(), ToolError> {
    if tools.scope.is_unrestricted() {
        return Ok(());
    }
    let relations = referenced_relations(statement);
    // Every unqualified name, resolved in one round trip.
    let unqualified: Vec<String> = relations
        .iter()
        .filter(|r| r.schema.is_none())
        .map(|r| format!("\"{}\"", r.name.replace('"', "\"\"")))
        .collect();
    let mut resolved = if unqualified.is_empty() {
        Vec::new()
    } else {
        tools.db.resolve_relations(&unqualified).await?
    }
    .into_iter();
    for relation in relations {
        let schema = match relation.schema {
            Some(schema) => schema,
            None => match resolved.next().flatten() {
                Some(schema) => schema,
                // No such relation (or the name of one of the statement's CTEs): nothing
                // to hide, PostgreSQL resolves or reports it.
                None => continue,
            },
        };
        tools.scope.check(&schema, &relation.name)?;
    }
    Ok(())
}

pub async fn query(tools: &Tools, args: QueryArgs) -> Result<RowsResult, ToolError> {
    check_size(&args.sql, &args.params)?;
    let (_, statement) = sql_guard::parse_checked(&args.sql)?;
    check_scope(tools, &statement).await?;
    let caps = tools.caps(args.max_rows);
    let rows = tools.db.query(&args.sql, &args.params, caps, None).await?;
    Ok(RowsResult {
        rows,
        limits: tools.limits_for(caps),
    })
}

/// A query plan.
#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    /// PostgreSQL's EXPLAIN (FORMAT JSON) output.
    pub plan: Value,
    pub analyzed: bool,
    pub elapsed_ms: u64,
    pub statement_timeout_ms: u64,
}

pub async fn explain(tools: &Tools, args: ExplainArgs) -> Result<Plan, ToolError> {
    check_size(&args.sql, &args.params)?;
    sql_guard::check_explainable(&args.sql)?;
    let (_, statement) = sql_guard::parse_checked(&args.sql)?;
    check_scope(tools, &statement).await?;
    let options = if args.analyze {
        "ANALYZE, BUFFERS, FORMAT JSON"
    } else {
        "FORMAT JSON"
    };
    let sql = format!(
        "EXPLAIN ({options}) {}",
        args.sql.trim().trim_end_matches(';')
    );
    let timeout: Duration = tools.statement_timeout();
    let result = tools
        .db
        .query(&sql, &args.params, tools.caps(None), Some(timeout))
        .await?;
    let plan = result
        .rows
        .first()
        .and_then(|r| r.first())
        .cloned()
        .unwrap_or(Value::Null);
    Ok(Plan {
        plan,
        analyzed: args.analyze,
        elapsed_ms: result.elapsed_ms,
        statement_timeout_ms: tools.limits.statement_timeout_ms,
    })
}
