//! The MCP tools as plain async functions over [`Tools`]: no MCP types here, so tests call
//! them directly. `server.rs` wraps each one as an MCP tool.

pub mod catalog;
pub mod page;
pub mod registry;
pub mod schemas;
pub mod snapshot;
pub mod sql;

use std::time::Duration;

use pgmcp_crds::config::{LimitsConfig, ResultsConfig};
use serde::Serialize;
use serde_json::Value;

use std::sync::{Arc, OnceLock};

use sqlparser::ast::Statement;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use crate::access::Access;
use crate::audit::Audit;
use crate::db::{Caps, Database, DbError, Rows};
use crate::definer::{DefinerCall, Definers, Snapshot};
use crate::readiness::Readiness;
use crate::scope::{OutOfScope, Scope};
use crate::sql_guard::GuardError;

/// Implements `Deserialize` for tool argument structs that derive it with
/// `#[serde(remote = "Self")]`, so that an error names the field it is about ("max_rows: invalid
/// value: integer -1, expected u32"): serde's own messages for a wrong type or value do not, and
/// rmcp answers `tools/call` with that message. The derived `deserialize` does the work through
/// serde_path_to_error, which records where it failed.
macro_rules! deserialize_naming_the_field {
    ($($args:ty),+ $(,)?) => {$(
        impl<'de> serde::Deserialize<'de> for $args {
            fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let mut track = serde_path_to_error::Track::new();
                Self::deserialize(serde_path_to_error::Deserializer::new(deserializer, &mut track))
                    .map_err(|error| $crate::tools::name_the_field(error, &track.path()))
            }
        }
    )+};
}
pub(crate) use deserialize_naming_the_field;

/// `error` prefixed with the path of the field it is about, when it has one.
pub(crate) fn name_the_field<E: serde::de::Error>(error: E, path: &serde_path_to_error::Path) -> E {
    if path.iter().next().is_none() {
        return error;
    }
    E::custom(format!("{path}: {error}"))
}

/// What every tool works with.
#[derive(Debug, Clone)]
pub struct Tools {
    pub db: Database,
    /// The caller classes and what each sees ([`crate::access`]).
    pub access: Arc<Access>,
    pub limits: LimitsConfig,
    /// How results are presented to the model ([`crate::framing`]).
    pub results: ResultsConfig,
    /// Where each call's audit event goes ([`crate::audit`]).
    pub audit: Audit,
    /// Ready once the start-up sequence found the database role safe (see [`Tools::gated`]).
    readiness: Readiness,
    /// The SECURITY DEFINER functions calls are refused to, read on first use and by
    /// [`Tools::refresh_definers`].
    definers: Definers,
    /// The catalog snapshot discovery answers from ([`snapshot`]).
    catalog: Arc<snapshot::Catalog>,
}

/// What one tool call carries besides its arguments: the token that cancels it (a
/// `notifications/cancelled`, a client that went away), who asked, what its audit event says of
/// its statement, and the trace it continues.
#[derive(Debug, Default)]
pub struct Call {
    pub cancel: CancellationToken,
    /// Who asked: set on authenticated HTTP requests.
    pub caller: Option<crate::auth::Caller>,
    /// The caller's SQL, noted by the tools that run it, for the audit log.
    statement: OnceLock<crate::audit::NotedStatement>,
    /// The W3C trace context the request carried in `_meta` (its call's span continues it).
    pub trace: Option<crate::telemetry::MetaTrace>,
}

impl Call {
    pub fn new(cancel: CancellationToken, caller: Option<crate::auth::Caller>) -> Self {
        Call {
            cancel,
            caller,
            statement: OnceLock::new(),
            trace: None,
        }
    }

    /// `self`, continuing the trace context of the request's `_meta`.
    pub fn with_trace(mut self, trace: Option<crate::telemetry::MetaTrace>) -> Self {
        self.trace = trace.filter(|t| t.traceparent.is_some());
        self
    }

    /// Notes the caller's statement the call runs (`redacted`: [`crate::sql_guard::redact`]
    /// of it) and how many parameters came with it, for the audit log.
    pub(crate) fn note_statement(&self, sql: &str, redacted: String, params: usize) {
        let _ = self.statement.set(crate::audit::NotedStatement {
            sql: sql.to_owned(),
            redacted,
            params,
        });
    }

    /// The caller's statement the call ran, if it ran one.
    pub fn statement(&self) -> Option<&crate::audit::NotedStatement> {
        self.statement.get()
    }

    /// The role and claims the call's statements run with (per-caller access).
    pub fn identity(&self) -> Option<crate::db::Identity<'_>> {
        self.caller.as_ref()?.identity()
    }

    /// The caller class of the call, once resolved.
    pub fn class(&self) -> Option<&crate::access::Class> {
        self.caller.as_ref()?.class.as_deref()
    }
}

/// Why a tool call failed, phrased for the model (it becomes the text of an MCP tool error).
#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    #[error("refused: {0}")]
    Guard(#[from] GuardError),
    #[error("refused: {0}")]
    Scope(#[from] OutOfScope),
    #[error("refused: {0}")]
    Definer(#[from] DefinerCall),
    #[error(transparent)]
    Db(#[from] DbError),
    #[error("{0}")]
    NotFound(String),
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// Per-caller access is on and the call has no caller class (no verified caller).
    #[error(
        "refused: this server decides what a caller may read from its verified Microsoft Entra token, and the call has none"
    )]
    NoClass,
    /// The start-up sequence is waiting for something that passes by itself (see
    /// [`crate::readiness::State::Waiting`]).
    #[error("the server is not ready yet: {0}. Try again in a minute")]
    NotReady(std::sync::Arc<str>),
    /// A result that could not be written as JSON.
    #[error("internal error: {0}")]
    Internal(String),
}

impl ToolError {
    /// Whether the server refused the call (the SQL guard, the scope, a SECURITY DEFINER
    /// function, no caller class), rather than failing to run it.
    pub fn is_refusal(&self) -> bool {
        matches!(
            self,
            ToolError::Guard(_) | ToolError::Scope(_) | ToolError::Definer(_) | ToolError::NoClass
        )
    }

    /// Bounded label for metrics and the audit log.
    pub fn metric_label(&self) -> &'static str {
        match self {
            ToolError::Guard(_) => "refused_sql",
            ToolError::Scope(_) => "refused_scope",
            ToolError::Definer(_) => "refused_definer",
            ToolError::Db(e) => e.metric_label(),
            ToolError::NotFound(_) => "not_found",
            ToolError::NoClass => "no_caller_class",
            ToolError::InvalidArgument(_) => "invalid_argument",
            ToolError::NotReady(_) => "not_ready",
            ToolError::Internal(_) => "internal",
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
    /// Tools for one scope, as the server's own role (no caller classes).
    pub fn new(db: Database, scope: Scope, limits: LimitsConfig) -> Self {
        Self::with_access(db, Arc::new(Access::plain(scope)), limits)
    }

    /// Tools whose calls see and run as their caller's class.
    pub fn with_access(db: Database, access: Arc<Access>, limits: LimitsConfig) -> Self {
        Self {
            db,
            access,
            limits,
            results: ResultsConfig::default(),
            audit: Audit::default(),
            readiness: Readiness::ready(),
            definers: Definers::default(),
            catalog: Arc::default(),
        }
    }

    /// The most text one discovery answer may have.
    pub(crate) fn discovery_budget(&self) -> usize {
        usize::try_from(self.limits.discovery_max_bytes).unwrap_or(usize::MAX)
    }

    /// Bytes the untrusted-data frame adds to an answer's text.
    pub(crate) fn frame_overhead(&self) -> usize {
        if self.results.untrusted_data_framing {
            crate::framing::OVERHEAD
        } else {
            0
        }
    }

    /// Reads the catalog's SECURITY DEFINER functions again ([`crate::definer::SNAPSHOT_SQL`]);
    /// each call's scope decides which of them it may call.
    pub async fn refresh_definers(&self) -> Result<Arc<Snapshot>, ToolError> {
        let caps = Caps {
            max_rows: 1_000_000,
            max_bytes: usize::MAX,
        };
        // Shared by every call: the caller whose call first needed it cannot cancel it.
        let uncancelled = CancellationToken::new();
        let rows = self
            .db
            .query(
                crate::definer::SNAPSHOT_SQL,
                &[],
                caps,
                None,
                None,
                &uncancelled,
            )
            .await?;
        let text = |value: &Value| value.as_str().unwrap_or_default().to_owned();
        let snapshot = Arc::new(Snapshot::new(
            rows.rows
                .values()
                .iter()
                .filter(|row| row.len() == 5)
                .map(|row| [0, 1, 2, 3, 4].map(|i| text(&row[i]))),
        ));
        self.definers.set(snapshot.clone());
        Ok(snapshot)
    }

    /// Reads the SECURITY DEFINER functions again every [`crate::definer::REFRESH_INTERVAL`],
    /// for as long as the server runs; a failed read keeps the last snapshot.
    pub async fn keep_definers_fresh(self: Arc<Self>) {
        let mut interval = tokio::time::interval(crate::definer::REFRESH_INTERVAL);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        interval.tick().await;
        loop {
            interval.tick().await;
            if let Err(err) = self.refresh_definers().await {
                tracing::warn!(error = %err, "failed to read the SECURITY DEFINER functions again; the last list stays in force");
            }
        }
    }

    /// Refuses a statement that calls a SECURITY DEFINER function the scope does not allow
    /// (the snapshot is read first if it never was).
    pub(crate) async fn check_definers(
        &self,
        call: &Call,
        sql: &str,
        statement: &Statement,
    ) -> Result<(), ToolError> {
        let snapshot = match self.definers.current() {
            Some(snapshot) => snapshot,
            None => self.refresh_definers().await?,
        };
        snapshot.check(sql, statement, self.scope_of(call).functions())?;
        Ok(())
    }

    /// What `call` sees and reads: its caller's class, the default class for calls without
    /// a caller, or (the server's own calls, per-caller access without a default class)
    /// everything any class may read.
    pub fn scope_of<'a>(&'a self, call: &'a Call) -> &'a Scope {
        match call.class() {
            Some(class) => &class.scope,
            None => match self.access.default_class() {
                Some(class) => &class.scope,
                None => self.access.server_scope(),
            },
        }
    }

    /// Presents results as `results` says.
    pub fn with_results(mut self, results: ResultsConfig) -> Self {
        self.results = results;
        self
    }

    /// Writes each call's audit event to `audit`.
    pub fn with_audit(mut self, audit: Audit) -> Self {
        self.audit = audit;
        self
    }

    /// Runs tool calls only once `readiness` is ready, so the server can answer (tools/list,
    /// health) while the start-up sequence is still running or waiting.
    pub fn gated(mut self, readiness: Readiness) -> Self {
        self.readiness = readiness;
        self
    }

    pub fn readiness(&self) -> &Readiness {
        &self.readiness
    }

    /// Waits for the first start-up attempt; then `Ok` once ready, or why the server is not
    /// ready yet.
    pub async fn ready(&self) -> Result<(), ToolError> {
        if self.readiness.is_ready() {
            return Ok(());
        }
        self.readiness
            .past_start()
            .await
            .map_err(ToolError::NotReady)
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
        call: &Call,
        sql: &str,
        extra: &[Value],
    ) -> Result<RowsResult, ToolError> {
        let mut params = self.scope_params(call);
        params.extend_from_slice(extra);
        self.catalog_plain(call, sql, &params).await
    }

    /// Runs the server's own catalog SQL that needs no scope parameters.
    pub(crate) async fn catalog_plain(
        &self,
        call: &Call,
        sql: &str,
        params: &[Value],
    ) -> Result<RowsResult, ToolError> {
        let caps = self.caps(None);
        let rows = self.run(call, sql, params, caps, None, None).await?;
        Ok(RowsResult {
            rows,
            limits: self.limits_for(caps),
        })
    }

    /// Runs one statement of `call` as its caller's identity, in a trace span of its own
    /// (`shown`: the statement's text as the span may show it).
    pub(crate) async fn run(
        &self,
        call: &Call,
        sql: &str,
        params: &[Value],
        caps: Caps,
        timeout: Option<Duration>,
        shown: Option<&str>,
    ) -> Result<Rows, DbError> {
        self.run_as(
            call.identity(),
            &call.cancel,
            sql,
            params,
            caps,
            timeout,
            shown,
        )
        .await
    }

    /// [`Tools::run`] as `identity` (`None`: the server's own role), cancelled by `cancel`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn run_as(
        &self,
        identity: Option<crate::db::Identity<'_>>,
        cancel: &CancellationToken,
        sql: &str,
        params: &[Value],
        caps: Caps,
        timeout: Option<Duration>,
        shown: Option<&str>,
    ) -> Result<Rows, DbError> {
        let target = self.db.target();
        let span =
            crate::telemetry::statement_span(&target.dbname, shown, (&target.host, target.port));
        let result = self
            .db
            .query(sql, params, caps, timeout, identity, cancel)
            .instrument(span.clone())
            .await;
        crate::telemetry::end_statement(
            &span,
            result.as_ref().ok().map(|rows| rows.row_count),
            result.as_ref().err().and_then(DbError::sqlstate),
        );
        result
    }

    /// The caller's statement as trace spans may show it (the audit setting); none when
    /// nothing is exported.
    pub(crate) fn shown<'a>(&self, call: &'a Call) -> Option<&'a str> {
        if !crate::telemetry::exporting() {
            return None;
        }
        self.audit.statement_text(call.statement()?)
    }

    /// `$1` unrestricted, `$2` schemas granted with "*", `$3` explicitly granted tables as
    /// `schema.table`.
    fn scope_params(&self, call: &Call) -> Vec<Value> {
        let scope = self.scope_of(call);
        let grants = scope.grants();
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
            Value::Bool(scope.is_unrestricted()),
            serde_json::json!(star),
            serde_json::json!(explicit),
        ]
    }
}

/// Tool arguments as `tools/call` delivers them, through the same function rmcp's
/// `Parameters<T>` uses: arbitrary JSON never panics, and every error names the field.
#[cfg(test)]
mod properties {
    #![allow(clippy::unwrap_used)]

    use proptest::prelude::*;
    use rmcp::handler::server::tool::parse_json_object;
    use rmcp::model::JsonObject;
    use serde::de::DeserializeOwned;
    use serde_json::{Value, json};

    use super::catalog::{
        DescribeTableArgs, ListDatabasesArgs, ListRelationshipsArgs, ListSchemasArgs,
        ListTablesArgs, SearchObjectsArgs, ServerInfoArgs,
    };
    use super::sql::{ExplainArgs, QueryArgs};

    /// Every field of every tool's arguments.
    const FIELDS: &[&str] = &[
        "sql", "params", "max_rows", "analyze", "schema", "table", "pattern", "cursor", "detail",
    ];

    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(|n| json!(n)),
            any::<u64>().prop_map(|n| json!(n)),
            any::<f64>().prop_map(|f| json!(f)),
            Just(json!(4_294_967_296u64)),
            Just(json!(-1)),
            Just(json!(1.5)),
            "[a-z;'\"\\\\$ \u{0}\u{ff1b}é]{0,12}".prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 32, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                prop::collection::btree_map(key(), inner, 0..6)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    fn key() -> impl Strategy<Value = String> {
        prop_oneof![
            3 => prop::sample::select(FIELDS).prop_map(str::to_owned),
            1 => "[a-zA-Z_]{0,8}",
            1 => Just("SQL".to_owned()),
        ]
    }

    fn arguments() -> impl Strategy<Value = JsonObject> {
        prop::collection::btree_map(key(), json_value(), 0..5).prop_map(|m| m.into_iter().collect())
    }

    /// Parses like rmcp; an error must name one of `fields`.
    fn parse<T: DeserializeOwned>(arguments: &JsonObject, fields: &[&str]) -> Option<T> {
        match parse_json_object::<T>(arguments.clone()) {
            Ok(args) => Some(args),
            Err(error) => {
                let message = error.message.to_string();
                assert!(
                    fields
                        .iter()
                        .any(|f| message.contains(&format!("parameters: {f}: "))
                            || message.contains(&format!("field `{f}`"))),
                    "{message:?} names none of {fields:?} (arguments {arguments:?})"
                );
                None
            }
        }
    }

    fn text(arguments: &JsonObject, field: &str) -> Option<String> {
        arguments
            .get(field)
            .and_then(Value::as_str)
            .map(str::to_owned)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn arbitrary_arguments_never_panic_and_errors_name_the_field(arguments in arguments()) {
            if let Some(args) = parse::<QueryArgs>(&arguments, &["sql", "params", "max_rows"]) {
                prop_assert_eq!(Some(args.sql), text(&arguments, "sql"));
                let sent = arguments.get("params").and_then(Value::as_array).map_or(0, Vec::len);
                prop_assert_eq!(args.params.len(), sent);
                let sent = arguments.get("max_rows").and_then(Value::as_u64);
                prop_assert_eq!(args.max_rows.map(u64::from), sent);
            }
            if let Some(args) = parse::<ExplainArgs>(&arguments, &["sql", "params", "analyze"]) {
                prop_assert_eq!(Some(args.sql), text(&arguments, "sql"));
                let sent = arguments.get("analyze").and_then(Value::as_bool);
                prop_assert_eq!(args.analyze, sent.unwrap_or(false));
            }
            if let Some(args) = parse::<DescribeTableArgs>(&arguments, &["table", "schema", "cursor"]) {
                prop_assert_eq!(Some(args.table), text(&arguments, "table"));
                prop_assert_eq!(args.schema, text(&arguments, "schema"));
                prop_assert_eq!(args.cursor, text(&arguments, "cursor"));
            }
            if let Some(args) = parse::<ListTablesArgs>(&arguments, &["schema", "pattern", "detail", "cursor"]) {
                prop_assert_eq!(args.schema, text(&arguments, "schema"));
                prop_assert_eq!(args.pattern, text(&arguments, "pattern"));
                prop_assert_eq!(args.cursor, text(&arguments, "cursor"));
                let sent = arguments.get("detail").and_then(Value::as_bool);
                prop_assert_eq!(args.detail, sent.unwrap_or(false));
            }
            if let Some(args) = parse::<ListRelationshipsArgs>(&arguments, &["schema", "table", "cursor"]) {
                prop_assert_eq!(args.schema, text(&arguments, "schema"));
                prop_assert_eq!(args.table, text(&arguments, "table"));
            }
            if let Some(args) = parse::<SearchObjectsArgs>(&arguments, &["pattern", "cursor"]) {
                prop_assert_eq!(Some(args.pattern), text(&arguments, "pattern"));
            }
            if let Some(args) = parse::<ListSchemasArgs>(&arguments, &["cursor"]) {
                prop_assert_eq!(args.cursor, text(&arguments, "cursor"));
            }
            prop_assert!(parse::<ListDatabasesArgs>(&arguments, &[]).is_some());
            prop_assert!(parse::<ServerInfoArgs>(&arguments, &[]).is_some());
        }
    }

    fn error_of<T: DeserializeOwned + std::fmt::Debug>(arguments: Value) -> String {
        let Value::Object(arguments) = arguments else {
            unreachable!()
        };
        parse_json_object::<T>(arguments)
            .unwrap_err()
            .message
            .to_string()
    }

    #[test]
    fn a_wrong_type_or_value_names_the_field() {
        assert_eq!(
            error_of::<QueryArgs>(json!({"sql": 1})),
            "failed to deserialize parameters: sql: invalid type: integer `1`, expected a string"
        );
        assert_eq!(
            error_of::<QueryArgs>(json!({"sql": "SELECT 1", "max_rows": -1})),
            "failed to deserialize parameters: max_rows: invalid value: integer `-1`, expected u32"
        );
        assert_eq!(
            error_of::<ExplainArgs>(json!({"sql": "SELECT 1", "analyze": "yes"})),
            "failed to deserialize parameters: analyze: invalid type: string \"yes\", expected a \
             boolean"
        );
        assert_eq!(
            error_of::<DescribeTableArgs>(json!({})),
            "failed to deserialize parameters: missing field `table`"
        );
    }

    #[test]
    fn the_input_schemas_keep_their_names() {
        let schema = serde_json::to_value(schemars::schema_for!(QueryArgs)).unwrap();
        assert_eq!(schema["title"], "QueryArgs");
        assert_eq!(schema["required"], json!(["sql"]));
        let schema = serde_json::to_value(schemars::schema_for!(ListTablesArgs)).unwrap();
        assert_eq!(schema["title"], "ListTablesArgs");
    }
}
