//! `query` and `explain`: the model's own SQL, after the SQL guard (layer three), the check for
//! SECURITY DEFINER functions ([`crate::definer`]) and the scope check, run by [`crate::db`] in
//! a read-only transaction (layer two) as the binding's role (layer one).

use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlparser::ast::Statement;
use tracing::Instrument as _;

use super::{Call, RowsResult, ToolError, Tools};
use crate::db::SystemRelations;
use crate::scope::{Scope, referenced_relations};
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

/// Where an unqualified relation name resolves, when that is certain without asking
/// PostgreSQL: `Some(Some(schema))` a schema to check, `Some(None)` nothing to check (a granted
/// schema or no relation at all), `None` ask PostgreSQL.
///
/// The server's `search_path` is the granted schemas, so `pg_catalog` is searched first (unless
/// it is granted itself, then the path's order decides), after `pg_temp`, which stays empty:
/// a read-only transaction cannot create a temporary table. A name that is no `pg_catalog`
/// relation therefore resolves in one of the granted schemas or nowhere; when every one of them
/// is granted whole (`*`), there is nothing left to check.
fn resolve_locally(scope: &Scope, system: &SystemRelations, name: &str) -> Option<Option<String>> {
    if scope.allows_schema("pg_catalog") {
        None
    } else if system.contains(name) {
        Some(Some("pg_catalog".to_owned()))
    } else if scope.grants_whole_schemas() {
        Some(None)
    } else {
        None
    }
}

/// Refuses any relation outside the scope. Unqualified names are resolved the way PostgreSQL
/// will resolve them, through the session's `search_path` (with `pg_catalog` first): locally
/// where that is certain ([`resolve_locally`]), else by PostgreSQL in one round trip.
async fn check_scope(tools: &Tools, call: &Call, statement: &Statement) -> Result<(), ToolError> {
    let scope = tools.scope_of(call);
    if scope.is_unrestricted() {
        return Ok(());
    }
    let system = tools.db.system_relations();
    let mut checks = Vec::new();
    let mut unresolved = Vec::new();
    for relation in referenced_relations(statement) {
        let local = match (&relation.schema, &system) {
            (Some(schema), _) => Some(Some(schema.clone())),
            (None, Some(system)) => resolve_locally(scope, system, &relation.name),
            (None, None) => None,
        };
        match local {
            Some(Some(schema)) => checks.push((schema, relation.name)),
            Some(None) => {}
            None => unresolved.push(relation.name),
        }
    }
    if !unresolved.is_empty() {
        let quoted: Vec<String> = unresolved
            .iter()
            .map(|name| format!("\"{}\"", name.replace('"', "\"\"")))
            .collect();
        let resolved = tools.db.resolve_relations(&quoted, &call.cancel).await?;
        // No such relation (or the name of one of the statement's CTEs): nothing to hide,
        // PostgreSQL resolves or reports it.
        checks.extend(
            resolved
                .into_iter()
                .zip(unresolved)
                .filter_map(|(schema, name)| Some((schema?, name))),
        );
    }
    for (schema, name) in checks {
        scope.check(&schema, &name)?;
    }
    Ok(())
}

/// Runs the caller's statement, once the SQL guard (whose one tokenization also redacts it for
/// the audit event), the SECURITY DEFINER check and the scope allow it.
pub async fn query(tools: &Tools, call: &Call, args: QueryArgs) -> Result<RowsResult, ToolError> {
    async {
        let inspection = sql_guard::inspect(&args.sql);
        call.note_statement(&args.sql, inspection.redacted, args.params.len());
        check_size(&args.sql, &args.params)?;
        let (_, statement) = inspection.verdict?;
        tools.check_definers(call, &args.sql, &statement).await?;
        check_scope(tools, call, &statement).await
    }
    .instrument(crate::telemetry::guard_span())
    .await?;
    let caps = tools.caps(args.max_rows);
    let rows = tools
        .run(call, &args.sql, &args.params, caps, None, tools.shown(call))
        .await?;
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

pub async fn explain(tools: &Tools, call: &Call, args: ExplainArgs) -> Result<Plan, ToolError> {
    call.note_statement(&args.sql, sql_guard::redact(&args.sql), args.params.len());
    async {
        check_size(&args.sql, &args.params)?;
        sql_guard::check_explainable(&args.sql)?;
        let (_, statement) = sql_guard::parse_checked(&args.sql)?;
        // Planning alone can run a function (constant folding of an immutable one).
        tools.check_definers(call, &args.sql, &statement).await?;
        check_scope(tools, call, &statement).await
    }
    .instrument(crate::telemetry::guard_span())
    .await?;
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
    let shown = tools
        .shown(call)
        .map(|text| format!("EXPLAIN ({options}) {text}"));
    let result = tools
        .run(
            call,
            &sql,
            &args.params,
            tools.caps(None),
            Some(timeout),
            shown.as_deref(),
        )
        .await?;
    let plan = result
        .rows
        .values()
        .into_iter()
        .next()
        .and_then(|row| row.into_iter().next())
        .unwrap_or(Value::Null);
    Ok(Plan {
        plan,
        analyzed: args.analyze,
        elapsed_ms: result.elapsed_ms,
        statement_timeout_ms: tools.limits.statement_timeout_ms,
    })
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::sync::Arc;

    use pgmcp_crds::config::ScopeGrant;

    use super::*;

    fn grant(schema: &str, tables: &[&str]) -> ScopeGrant {
        ScopeGrant {
            schema: schema.into(),
            tables: tables.iter().map(|t| (*t).to_owned()).collect(),
        }
    }

    fn system() -> SystemRelations {
        Arc::new(
            ["pg_class", "pg_authid"]
                .into_iter()
                .map(Box::from)
                .collect::<HashSet<_>>(),
        )
    }

    #[test]
    fn names_are_resolved_locally_only_where_postgresql_would_agree() {
        let whole = Scope::new(vec![grant("public", &["*"]), grant("sales", &["*"])]);
        let resolve = |scope: &Scope, name| resolve_locally(scope, &system(), name);
        assert_eq!(
            resolve(&whole, "pg_class"),
            Some(Some("pg_catalog".to_owned())),
            "pg_catalog comes first on the path"
        );
        assert_eq!(
            resolve(&whole, "orders"),
            Some(None),
            "a granted schema or nowhere"
        );

        let partial = Scope::new(vec![grant("public", &["*"]), grant("sales", &["orders"])]);
        assert_eq!(
            resolve(&partial, "pg_authid"),
            Some(Some("pg_catalog".to_owned()))
        );
        assert_eq!(
            resolve(&partial, "orders"),
            None,
            "which schema has it: ask"
        );

        let catalog = Scope::new(vec![grant("public", &["*"]), grant("pg_catalog", &["*"])]);
        assert_eq!(
            resolve(&catalog, "pg_class"),
            None,
            "a granted pg_catalog takes its place on the path"
        );
    }
}
