//! The connection pool and the one way SQL reaches PostgreSQL.
//!
//! Layer two of the read-only defence: every connection starts with
//! `default_transaction_read_only=on`, a `statement_timeout`, an
//! `idle_in_transaction_session_timeout`, `standard_conforming_strings=on` (how the SQL guard
//! reads string literals) and a fixed `search_path` (startup options, so no statement can skip
//! them), and every statement runs inside `BEGIN READ ONLY` through the extended protocol,
//! which carries exactly one statement. Rows are fetched through a portal limited to
//! `max_rows + 1`, so a huge result is never read past the cap. [`pgmcp_postgres_wire`] sends
//! all of that as one pipeline: one round trip per statement.
//!
//! With workload identity every new connection gets a current Entra token as its password
//! ([`Connector`]); an open connection stays open past its token's expiry (Azure only checks the
//! token at login), and a failed token exchange fails only the connection attempt, so the pool
//! recovers on its own once Entra answers again.

use std::collections::HashSet;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use deadpool::managed::{self, Metrics, RecycleError, RecycleResult};
use pgmcp_identity::TokenProvider;
pub use pgmcp_postgres_wire::Identity;
use pgmcp_postgres_wire::{self as wire, Connection, Statement, TypeCache};
pub use pgmcp_postgres_wire::{Caps, Column, JsonRows, Rows};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

type Pool = managed::Pool<Connector>;

/// The pool plus the caps every statement runs under.
#[derive(Clone, Debug)]
pub struct Database {
    pool: Pool,
    statement_timeout: Duration,
    /// The database and server, as trace spans name them.
    target: Arc<Target>,
}

/// Which database a [`Database`] reads, for trace spans.
#[derive(Debug)]
pub struct Target {
    pub dbname: String,
    pub host: String,
    pub port: u16,
}

/// Opens pooled connections. With a token provider, the password of each new connection is the
/// provider's current token (fetched or refreshed as needed).
pub struct Connector {
    /// Where, as whom, with which startup options; the password is a token's with workload
    /// identity.
    config: wire::Config,
    token: Option<TokenProvider>,
    /// Names of the relations in `pg_catalog`, read by every new connection (see
    /// [`Database::system_relations`]).
    system_relations: RwLock<Option<SystemRelations>>,
    /// Types that are not built in, as the database described them.
    types: Arc<TypeCache>,
}

/// The names of the relations in `pg_catalog`.
pub type SystemRelations = Arc<HashSet<Box<str>>>;

impl std::fmt::Debug for Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connector")
            .field("host", &self.config.host)
            .field("port", &self.config.port)
            .field("token", &self.token.as_ref().map(TokenProvider::scope))
            .finish_non_exhaustive()
    }
}

/// Why the pool could not be set up (a configuration the server cannot start with).
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error(transparent)]
    Tls(#[from] wire::TlsError),
    #[error("failed to create the connection pool: {0}")]
    Pool(#[from] managed::BuildError),
}

/// Why a new connection could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error(transparent)]
    Token(#[from] pgmcp_identity::Error),
    #[error(transparent)]
    Connect(#[from] wire::ConnectError),
    #[error("failed to read the catalog of a new connection: {0}")]
    Catalog(wire::Error),
}

/// How long a call keeps trying while the database is unreachable (a restart, a failover)
/// before it reports the database unavailable.
pub const OUTAGE_WAIT: Duration = Duration::from_secs(3);

/// How long a new connection may take to answer.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

type Conn = Connection;

impl managed::Manager for Connector {
    type Type = Conn;
    type Error = ConnectError;

    async fn create(&self) -> Result<Conn, ConnectError> {
        // Boxed: a login (TCP, TLS, authentication, the catalog read) is a large future, and
        // every call's future would otherwise carry one for the rare call that opens a
        // connection. One allocation per new connection.
        Box::pin(self.open()).await
    }

    async fn recycle(&self, conn: &mut Conn, _: &Metrics) -> RecycleResult<ConnectError> {
        // A cancelled call leaves its connection settled; a dropped one (or one whose cancel
        // request failed) does not.
        if !conn.is_settled() {
            return Err(RecycleError::message(
                "a call was dropped before all its answers were read",
            ));
        }
        Ok(())
    }
}

impl Connector {
    /// Opens a connection and reads the catalog's relation names on it.
    async fn open(&self) -> Result<Conn, ConnectError> {
        let mut conn = match &self.token {
            Some(provider) => {
                let token = provider.token().await?;
                let config = wire::Config {
                    password: Some(token.secret().to_owned()),
                    ..self.config.clone()
                };
                wire::connect(&config, self.types.clone()).await?
            }
            None => wire::connect(&self.config, self.types.clone()).await?,
        };
        let catalog = Statement {
            sql: "SELECT relname::text FROM pg_class \
                  WHERE relnamespace = 'pg_catalog'::regnamespace",
            params: &[],
            caps: Caps {
                max_rows: 100_000,
                max_bytes: usize::MAX,
            },
            timeout: None,
            identity: None,
        };
        // The pool bounds this with its create timeout; no caller waits to cancel it.
        let names = conn
            .run(catalog, &CancellationToken::new())
            .await
            .map_err(ConnectError::Catalog)?
            .rows
            .values()
            .into_iter()
            .filter_map(|row| row.into_iter().next()?.as_str().map(Box::from))
            .collect::<HashSet<_>>();
        *self
            .system_relations
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(Arc::new(names));
        Ok(conn)
    }
}

/// Connection settings, resolved (password included) from the configuration.
#[derive(Clone)]
pub struct ConnectOptions {
    pub host: String,
    pub port: u16,
    pub dbname: String,
    pub user: String,
    pub password: Option<String>,
    /// Entra tokens used as the password of each new connection (workload identity).
    pub token: Option<TokenProvider>,
    pub ssl_mode: String,
    /// PEM file of the CAs trusted for `verify-full` (default: the Mozilla roots).
    pub ssl_root_cert: Option<std::path::PathBuf>,
    pub pool_size: usize,
    pub statement_timeout: Duration,
    /// Schemas put on the fixed `search_path`.
    pub search_path: Vec<String>,
}

impl std::fmt::Debug for ConnectOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectOptions")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("dbname", &self.dbname)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("token", &self.token.as_ref().map(|t| t.identity()))
            .finish_non_exhaustive()
    }
}

/// Failures of a statement, phrased so a model can act on them. Never contains a password
/// or connection string.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("the database is unavailable ({0}); try again in a moment")]
    Unavailable(String),
    #[error(
        "the statement was cancelled after the {0:?} statement timeout: add filters or a LIMIT, or aggregate in SQL"
    )]
    Timeout(Duration),
    /// What the connection reported; SQL errors with what this server adds for the model.
    #[error("{}", explain(.0))]
    Statement(#[from] wire::Error),
}

/// SQLSTATEs this server explains or maps.
const READ_ONLY_SQL_TRANSACTION: &str = "25006";
const INSUFFICIENT_PRIVILEGE: &str = "42501";
const QUERY_CANCELED: &str = "57014";

fn explain(error: &wire::Error) -> String {
    if let wire::Error::Identity { .. } = error {
        return format!(
            "{error}. The server's role must be a member of the role of each caller class (the \
             operator keeps it so; see the binding's DatabaseReady condition)"
        );
    }
    let wire::Error::Sql(sql) = error else {
        return error.to_string();
    };
    let mut out = sql.to_string();
    if sql.code == READ_ONLY_SQL_TRANSACTION {
        out.push_str(". This server is read-only: only SELECT-style statements can run");
    } else if sql.code == INSUFFICIENT_PRIVILEGE {
        out.push_str(
            ". The server's role cannot read this object: use list_tables to see what is available",
        );
    }
    out
}

impl DbError {
    /// Whether running the same call again may succeed: the database or a connection was
    /// unavailable, or a cached plan went stale.
    fn is_transient(&self) -> bool {
        match self {
            DbError::Unavailable(_) | DbError::Statement(wire::Error::ConnectionLost(_)) => true,
            DbError::Statement(wire::Error::Sql(sql)) => sql.is_stale_plan(),
            _ => false,
        }
    }

    /// The caller cancelled the call.
    pub fn is_cancelled(&self) -> bool {
        matches!(self, DbError::Statement(wire::Error::Cancelled))
    }

    /// Bounded label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            DbError::Unavailable(_) => "unavailable",
            DbError::Timeout(_) => "timeout",
            DbError::Statement(e) => match e {
                wire::Error::ConnectionLost(_) => "unavailable",
                wire::Error::Sql(_) => "sql_error",
                wire::Error::Param(_) | wire::Error::ParamCount { .. } => "bad_params",
                wire::Error::Decode(_) => "decode_error",
                wire::Error::Cancelled => "cancelled",
                wire::Error::Identity { .. } => "identity_refused",
                wire::Error::IdentityChanged => "refused_identity_change",
            },
        }
    }

    /// The SQLSTATE PostgreSQL answered with, for the audit log.
    pub fn sqlstate(&self) -> Option<&str> {
        match self {
            DbError::Timeout(_) => Some(QUERY_CANCELED),
            DbError::Statement(wire::Error::Sql(sql)) => Some(&sql.code),
            DbError::Statement(wire::Error::Identity { cause, .. }) => Some(&cause.code),
            DbError::Unavailable(_) | DbError::Statement(_) => None,
        }
    }

    /// A cancelled statement (SQLSTATE 57014) is the statement timeout `timeout`.
    fn timed_out_after(self, timeout: Duration) -> Self {
        match self {
            DbError::Statement(wire::Error::Sql(sql)) if sql.code == QUERY_CANCELED => {
                DbError::Timeout(timeout)
            }
            other => other,
        }
    }
}

/// An error with its causes (a pool timeout and what it waited for).
fn with_causes(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

impl From<managed::PoolError<ConnectError>> for DbError {
    fn from(err: managed::PoolError<ConnectError>) -> Self {
        match err {
            managed::PoolError::Backend(e) => DbError::Unavailable(e.to_string()),
            other => DbError::Unavailable(with_causes(&other)),
        }
    }
}

/// The server's own one-row statements.
const ONE_ROW: Caps = Caps {
    max_rows: 1,
    max_bytes: usize::MAX,
};

fn escape_option(value: &str) -> String {
    value.replace('\\', "\\\\").replace(' ', "\\ ")
}

fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

impl Database {
    /// Creates the pool. Connections are opened lazily; see [`Database::ping`].
    pub fn new(options: &ConnectOptions) -> Result<Self, SetupError> {
        let tls = wire::Tls::new(&options.ssl_mode, options.ssl_root_cert.as_deref())?;
        let search_path = if options.search_path.is_empty() {
            "public".to_owned()
        } else {
            options
                .search_path
                .iter()
                .map(|s| quote_ident(s))
                .collect::<Vec<_>>()
                .join(",")
        };
        let timeout_ms = options.statement_timeout.as_millis();
        let startup_options = format!(
            "-c default_transaction_read_only=on -c statement_timeout={timeout_ms} \
             -c idle_in_transaction_session_timeout={} -c standard_conforming_strings=on \
             -c search_path={}",
            timeout_ms * 2 + 1000,
            escape_option(&search_path)
        );
        let config = wire::Config {
            host: options.host.clone(),
            port: options.port,
            user: options.user.clone(),
            password: options.password.clone(),
            dbname: options.dbname.clone(),
            options: Some(startup_options),
            application_name: Some("pgmcp-server".to_owned()),
            connect_timeout: CONNECT_TIMEOUT,
            tls,
        };
        let manager = Connector {
            config,
            token: options.token.clone(),
            system_relations: RwLock::new(None),
            types: Arc::default(),
        };
        let pool = Pool::builder(manager)
            .max_size(options.pool_size.max(1))
            .wait_timeout(Some(Duration::from_secs(10)))
            .create_timeout(Some(Duration::from_secs(10)))
            .runtime(deadpool::Runtime::Tokio1)
            .build()?;
        Ok(Self {
            pool,
            statement_timeout: options.statement_timeout,
            target: Arc::new(Target {
                dbname: options.dbname.clone(),
                host: options.host.clone(),
                port: options.port,
            }),
        })
    }

    /// The database and server, for trace spans.
    pub fn target(&self) -> &Target {
        &self.target
    }

    /// `SELECT 1` on a pooled connection (readiness).
    pub async fn ping(&self) -> Result<(), DbError> {
        self.query(
            "SELECT 1",
            &[],
            ONE_ROW,
            None,
            None,
            &CancellationToken::new(),
        )
        .await?;
        Ok(())
    }

    /// The names of the relations in `pg_catalog`, as the newest connection read them; `None`
    /// before the first connection. They cannot change while connections stay open: PostgreSQL
    /// refuses to create relations in `pg_catalog` (short of `allow_system_table_mods`), and a
    /// major upgrade restarts the server, so every connection is opened again.
    pub fn system_relations(&self) -> Option<SystemRelations> {
        self.pool
            .manager()
            .system_relations
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// The schema each relation name (quoted as needed) resolves to through the session's
    /// `search_path`, `None` where there is no such relation: the scope check of `query`.
    /// One round trip once the statement is prepared on the connection.
    pub async fn resolve_relations(
        &self,
        names: &[String],
        cancel: &CancellationToken,
    ) -> Result<Vec<Option<String>>, DbError> {
        const SQL: &str = "SELECT n.nspname::text
             FROM unnest($1::text[]) WITH ORDINALITY AS r(name, i)
             LEFT JOIN pg_class c ON c.oid = to_regclass(r.name)
             LEFT JOIN pg_namespace n ON n.oid = c.relnamespace
             ORDER BY r.i";
        let caps = Caps {
            max_rows: names.len(),
            max_bytes: usize::MAX,
        };
        let rows = self
            .query(SQL, &[serde_json::json!(names)], caps, None, None, cancel)
            .await?;
        Ok(rows
            .rows
            .values()
            .into_iter()
            .map(|row| row.into_iter().next()?.as_str().map(str::to_owned))
            .collect())
    }

    /// Runs `once` again while it fails in a way another attempt can fix, for at most
    /// [`OUTAGE_WAIT`]: a pooled connection that died (each failure discards one), the
    /// database restarting or failing over, a cached statement whose result type changed
    /// (`once` dropped it, so the next attempt prepares it again). Everything run here is
    /// read-only, so running it again is always safe. A cancelled call is not tried again; a
    /// cancel during the pause between attempts is seen when the next one starts (no statement
    /// runs meanwhile).
    async fn retrying<T, F, Fut>(&self, cancel: &CancellationToken, once: F) -> Result<T, DbError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, DbError>>,
    {
        use backon::Retryable as _;
        let started = Instant::now();
        let policy = backon::ExponentialBuilder::new()
            .with_min_delay(Duration::from_millis(10))
            .with_max_delay(Duration::from_millis(500))
            .with_jitter()
            .without_max_times();
        once.retry(policy)
            .sleep(tokio::time::sleep)
            // Wall-clock bound: an attempt itself can take long (a pool wait, a connect).
            .when(|err| {
                err.is_transient() && !cancel.is_cancelled() && started.elapsed() < OUTAGE_WAIT
            })
            .notify(|err, delay| {
                tracing::warn!(error = %err, ?delay, "database call failed; trying again");
            })
            .await
    }

    /// Pool size and idle connections, for metrics.
    pub fn pool_status(&self) -> deadpool::Status {
        self.pool.status()
    }

    /// Runs one statement in a read-only transaction and returns at most `caps` of its rows.
    ///
    /// `sql` must already have passed the SQL guard (or be the server's own catalog SQL).
    /// `timeout` lowers the statement timeout for this call (it never raises it). A dead
    /// pooled connection or a database restart costs a retry, not an error ([`OUTAGE_WAIT`]).
    ///
    /// `identity` is the role and caller claims the statement runs with (per-caller access);
    /// `None` runs it as the server's own role.
    ///
    /// `cancel` stops the call: the statement is cancelled in PostgreSQL (the connection goes
    /// back to the pool, settled), a wait for a connection ends, and the error is
    /// [`DbError::is_cancelled`], never retried.
    pub async fn query(
        &self,
        sql: &str,
        params: &[Value],
        caps: Caps,
        timeout: Option<Duration>,
        identity: Option<Identity<'_>>,
        cancel: &CancellationToken,
    ) -> Result<Rows, DbError> {
        self.retrying(cancel, || {
            self.query_once(sql, params, caps, timeout, identity, cancel)
        })
        .await
    }

    async fn query_once(
        &self,
        sql: &str,
        params: &[Value],
        caps: Caps,
        timeout: Option<Duration>,
        identity: Option<Identity<'_>>,
        cancel: &CancellationToken,
    ) -> Result<Rows, DbError> {
        let effective = timeout.map_or(self.statement_timeout, |t| t.min(self.statement_timeout));
        let mut conn = tokio::select! {
            biased;
            conn = self.pool.get() => conn?,
            () = cancel.cancelled() => return Err(wire::Error::Cancelled.into()),
        };
        let statement = Statement {
            sql,
            params,
            caps,
            timeout: (effective < self.statement_timeout).then_some(effective),
            identity,
        };
        conn.run(statement, cancel)
            .await
            .map_err(|e| DbError::from(e).timed_out_after(effective))
    }
}
