//! The connection pool and the one way SQL reaches PostgreSQL.
//!
//! Layer two of the read-only defence: every connection starts with
//! `default_transaction_read_only=on`, a `statement_timeout`, an
//! `idle_in_transaction_session_timeout`, `standard_conforming_strings=on` (how the SQL guard
//! reads string literals) and a fixed `search_path` (startup options, so no statement can skip
//! them), and every statement runs inside `BEGIN READ ONLY` through the
//! extended protocol, which carries exactly one statement. Rows are fetched through a portal
//! limited to `max_rows + 1`, so a huge result is never read past the cap.
//!
//! With workload identity every new connection gets a current Entra token as its password
//! ([`Connector`]); an open connection stays open past its token's expiry (Azure only checks the
//! token at login), and a failed token exchange fails only the connection attempt, so the pool
//! recovers on its own once Entra answers again.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use deadpool::managed::{self, Metrics, RecycleError, RecycleResult};
use deadpool_postgres::ClientWrapper;
use futures::{StreamExt as _, pin_mut};
use pgmcp_identity::TokenProvider;
use serde::Serialize;
use serde_json::Value;
use tokio_postgres::Statement;
use tokio_postgres::error::SqlState;
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::pgvalue::{Cell, Param, ParamError};

type Pool = managed::Pool<Connector>;

/// The pool plus the caps every statement runs under.
#[derive(Clone, Debug)]
pub struct Database {
    pool: Pool,
    statement_timeout: Duration,
}

/// Opens pooled connections. With a token provider, the password of each new connection is the
/// provider's current token (fetched or refreshed as needed).
pub struct Connector {
    pg: tokio_postgres::Config,
    tls: MakeRustlsConnect,
    token: Option<TokenProvider>,
    /// Names of the relations in `pg_catalog`, read by every new connection (see
    /// [`Database::system_relations`]).
    system_relations: RwLock<Option<SystemRelations>>,
}

/// The names of the relations in `pg_catalog`.
pub type SystemRelations = Arc<HashSet<Box<str>>>;

impl std::fmt::Debug for Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connector")
            .field("token", &self.token.as_ref().map(TokenProvider::scope))
            .finish_non_exhaustive()
    }
}

/// Why a new connection could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error(transparent)]
    Token(#[from] pgmcp_identity::Error),
    #[error(transparent)]
    Postgres(#[from] tokio_postgres::Error),
}

/// Prepared statements kept per connection: the catalog tools' SQL and repeated queries skip
/// the Parse round trip. Bounded, so a stream of distinct statements cannot grow the server's
/// (or PostgreSQL's) memory; the least recently used one is closed first.
const STATEMENT_CACHE_SIZE: usize = 64;

/// How long a call keeps trying while the database is unreachable (a restart, a failover)
/// before it reports the database unavailable.
pub const OUTAGE_WAIT: Duration = Duration::from_secs(3);

/// PostgreSQL's error when a prepared statement's result columns changed since it was prepared.
const STALE_PLAN: &str = "cached plan must not change result type";

/// A pooled connection and its prepared statements.
#[derive(Debug)]
pub struct Conn {
    client: ClientWrapper,
    statements: StatementCache,
    /// Set while a `BEGIN` may be open without a [`tokio_postgres::Transaction`] guarding it (a
    /// call cancelled mid-start): such a connection is discarded at recycle, never reused.
    unsettled: bool,
}

#[derive(Debug, Default)]
struct StatementCache {
    entries: HashMap<Box<str>, (Statement, u64)>,
    clock: u64,
}

impl StatementCache {
    fn get(&mut self, sql: &str) -> Option<Statement> {
        self.clock += 1;
        let clock = self.clock;
        self.entries.get_mut(sql).map(|(statement, used)| {
            *used = clock;
            statement.clone()
        })
    }

    fn insert(&mut self, sql: &str, statement: Statement) {
        if self.entries.len() >= STATEMENT_CACHE_SIZE {
            let oldest = self
                .entries
                .iter()
                .min_by_key(|(_, (_, used))| *used)
                .map(|(sql, _)| sql.clone());
            // Dropping the statement closes it on the server.
            if let Some(oldest) = oldest {
                self.entries.remove(&oldest);
            }
        }
        self.entries.insert(sql.into(), (statement, self.clock));
    }

    fn remove(&mut self, sql: &str) {
        self.entries.remove(sql);
    }
}

impl managed::Manager for Connector {
    type Type = Conn;
    type Error = ConnectError;

    async fn create(&self) -> Result<Conn, ConnectError> {
        let mut pg = self.pg.clone();
        if let Some(provider) = &self.token {
            let token = provider.token().await?;
            pg.password(token.secret().as_bytes());
        }
        let (client, connection) = pg.connect(self.tls.clone()).await?;
        let task = tokio::spawn(async move {
            if let Err(err) = connection.await {
                tracing::debug!(error = %err, "database connection ended");
            }
        });
        let names = client
            .query(
                "SELECT relname::text FROM pg_class WHERE relnamespace = 'pg_catalog'::regnamespace",
                &[],
            )
            .await?
            .iter()
            .map(|row| row.try_get::<_, String>(0).map(Box::from))
            .collect::<Result<HashSet<_>, _>>()?;
        *self
            .system_relations
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(Arc::new(names));
        Ok(Conn {
            client: ClientWrapper::new(client, task),
            statements: StatementCache::default(),
            unsettled: false,
        })
    }

    async fn recycle(&self, conn: &mut Conn, _: &Metrics) -> RecycleResult<ConnectError> {
        if conn.client.is_closed() {
            return Err(RecycleError::message("the connection is closed"));
        }
        if conn.unsettled {
            return Err(RecycleError::message(
                "a call was cancelled while opening a transaction",
            ));
        }
        Ok(())
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
    /// An established connection died (terminated, failover): another one may work.
    #[error("the database connection was lost ({0}); try again in a moment")]
    ConnectionLost(String),
    #[error(
        "the statement was cancelled after the {0:?} statement timeout: add filters or a LIMIT, or aggregate in SQL"
    )]
    Timeout(Duration),
    #[error("{}", sql_message(.code, .message, .detail, .hint, .position))]
    Sql {
        code: String,
        message: String,
        detail: Option<String>,
        hint: Option<String>,
        position: Option<u32>,
    },
    #[error(transparent)]
    Param(#[from] ParamError),
    #[error(
        "the statement has {expected} parameter(s) ($1..${expected}) but {got} value(s) were given in params"
    )]
    ParamCount { expected: usize, got: usize },
}

fn sql_message(
    code: &str,
    message: &str,
    detail: &Option<String>,
    hint: &Option<String>,
    position: &Option<u32>,
) -> String {
    let mut out = format!("PostgreSQL error {code}: {message}");
    if let Some(position) = position {
        out.push_str(&format!(" (at character {position})"));
    }
    if let Some(detail) = detail {
        out.push_str(&format!(". Detail: {detail}"));
    }
    if let Some(hint) = hint {
        out.push_str(&format!(". Hint: {hint}"));
    }
    if code == SqlState::READ_ONLY_SQL_TRANSACTION.code() {
        out.push_str(". This server is read-only: only SELECT-style statements can run");
    } else if code == SqlState::INSUFFICIENT_PRIVILEGE.code() {
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
            DbError::Unavailable(_) | DbError::ConnectionLost(_) => true,
            DbError::Sql { code, message, .. } => {
                code == SqlState::FEATURE_NOT_SUPPORTED.code() && message.starts_with(STALE_PLAN)
            }
            _ => false,
        }
    }

    /// Bounded label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            DbError::Unavailable(_) | DbError::ConnectionLost(_) => "unavailable",
            DbError::Timeout(_) => "timeout",
            DbError::Sql { .. } => "sql_error",
            DbError::Param(_) | DbError::ParamCount { .. } => "bad_params",
        }
    }

    fn from_pg(err: tokio_postgres::Error, timeout: Duration) -> Self {
        match err.as_db_error() {
            Some(db) if *db.code() == SqlState::QUERY_CANCELED => DbError::Timeout(timeout),
            // The connection is gone (terminated, server shutting down or restarting).
            Some(db)
                if db.code().code().starts_with("08") || db.code().code().starts_with("57P") =>
            {
                DbError::ConnectionLost(format!("{}: {}", db.code().code(), db.message()))
            }
            Some(db) => DbError::Sql {
                code: db.code().code().to_owned(),
                message: db.message().to_owned(),
                detail: db.detail().map(str::to_owned),
                hint: db.hint().map(str::to_owned),
                position: match db.position() {
                    Some(tokio_postgres::error::ErrorPosition::Original(p)) => Some(*p),
                    _ => None,
                },
            },
            None if err.is_closed() => {
                DbError::ConnectionLost("the connection was closed".to_owned())
            }
            None => DbError::Unavailable(err.to_string()),
        }
    }
}

/// An error with its causes (`error performing TLS handshake: invalid peer certificate: …`).
/// tokio-postgres errors never contain the password or connection string.
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
            managed::PoolError::Backend(ConnectError::Postgres(e)) => {
                DbError::Unavailable(match e.as_db_error() {
                    Some(db) => format!("{}: {}", db.code().code(), db.message()),
                    None => with_causes(&e),
                })
            }
            managed::PoolError::Backend(ConnectError::Token(e)) => {
                DbError::Unavailable(e.to_string())
            }
            other => DbError::Unavailable(with_causes(&other)),
        }
    }
}

/// A column of a result: its name and PostgreSQL type.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Column {
    pub name: String,
    #[serde(rename = "type")]
    pub type_name: String,
}

/// The rows of one statement, capped.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Rows {
    pub columns: Vec<Column>,
    pub rows: Vec<Vec<Value>>,
    pub row_count: usize,
    /// True when more rows existed than were returned.
    pub truncated: bool,
    /// `max_rows` or `max_bytes` when truncated.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub truncated_by: Option<&'static str>,
    pub elapsed_ms: u64,
    /// Columns whose type could not be decoded (shown as hex of the binary value).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub undecoded_columns: Vec<String>,
}

/// Caps of one statement.
#[derive(Debug, Clone, Copy)]
pub struct Caps {
    pub max_rows: usize,
    pub max_bytes: usize,
}

fn escape_option(value: &str) -> String {
    value.replace('\\', "\\\\").replace(' ', "\\ ")
}

fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Length of `value` as compact JSON, without building the text.
fn json_size<T: Serialize>(value: &T) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    match serde_json::to_writer(&mut count, value) {
        Ok(()) => count.0,
        Err(_) => 0,
    }
}

impl Database {
    /// Creates the pool. Connections are opened lazily; see [`Database::ping`].
    pub fn new(options: &ConnectOptions) -> Result<Self, String> {
        let mut pg = tokio_postgres::Config::new();
        pg.host(&options.host)
            .port(options.port)
            .dbname(&options.dbname)
            .user(&options.user)
            .application_name("pgmcp-server")
            .connect_timeout(Duration::from_secs(10));
        if let Some(password) = &options.password {
            pg.password(password.as_bytes());
        }
        let (ssl_mode, tls) =
            crate::tls::connector(&options.ssl_mode, options.ssl_root_cert.as_deref())?;
        pg.ssl_mode(ssl_mode);
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
        pg.options(format!(
            "-c default_transaction_read_only=on -c statement_timeout={timeout_ms} \
             -c idle_in_transaction_session_timeout={} -c standard_conforming_strings=on \
             -c search_path={}",
            timeout_ms * 2 + 1000,
            escape_option(&search_path)
        ));
        let manager = Connector {
            pg,
            tls,
            token: options.token.clone(),
            system_relations: RwLock::new(None),
        };
        let pool = Pool::builder(manager)
            .max_size(options.pool_size.max(1))
            .wait_timeout(Some(Duration::from_secs(10)))
            .create_timeout(Some(Duration::from_secs(10)))
            .runtime(deadpool::Runtime::Tokio1)
            .build()
            .map_err(|e| format!("failed to create the connection pool: {e}"))?;
        Ok(Self {
            pool,
            statement_timeout: options.statement_timeout,
        })
    }

    /// `SELECT 1` on a pooled connection (readiness).
    pub async fn ping(&self) -> Result<(), DbError> {
        let conn = self.pool.get().await?;
        conn.client
            .simple_query("SELECT 1")
            .await
            .map_err(|e| DbError::from_pg(e, self.statement_timeout))?;
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
    ///
    /// One round trip on a cached statement. It needs no transaction around it: the SQL is the
    /// server's own, the names are only parameters to `to_regclass`, and the session default
    /// is read-only anyway.
    pub async fn resolve_relations(
        &self,
        names: &[String],
    ) -> Result<Vec<Option<String>>, DbError> {
        const SQL: &str = "SELECT n.nspname::text
             FROM unnest($1::text[]) WITH ORDINALITY AS r(name, i)
             LEFT JOIN pg_class c ON c.oid = to_regclass(r.name)
             LEFT JOIN pg_namespace n ON n.oid = c.relnamespace
             ORDER BY r.i";
        let pg = |e| DbError::from_pg(e, self.statement_timeout);
        self.retrying(|| async {
            let mut conn = self.pool.get().await?;
            let Conn {
                client, statements, ..
            } = &mut *conn;
            let statement = match statements.get(SQL) {
                Some(statement) => statement,
                None => {
                    let statement = client.prepare(SQL).await.map_err(pg)?;
                    statements.insert(SQL, statement.clone());
                    statement
                }
            };
            let rows = client.query(&statement, &[&names]).await.map_err(pg)?;
            rows.iter()
                .map(|row| row.try_get::<_, Option<String>>(0).map_err(pg))
                .collect::<Result<Vec<_>, DbError>>()
        })
        .await
    }

    /// Runs `once` again while it fails in a way another attempt can fix, for at most
    /// [`OUTAGE_WAIT`]: a pooled connection that died (each failure discards one), the
    /// database restarting or failing over, a cached statement whose result type changed
    /// (`once` dropped it, so the next attempt prepares it again). Everything run here is
    /// read-only, so running it again is always safe.
    async fn retrying<T, F, Fut>(&self, once: F) -> Result<T, DbError>
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
            .when(|err| err.is_transient() && started.elapsed() < OUTAGE_WAIT)
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
    pub async fn query(
        &self,
        sql: &str,
        params: &[Value],
        caps: Caps,
        timeout: Option<Duration>,
    ) -> Result<Rows, DbError> {
        self.retrying(|| self.query_once(sql, params, caps, timeout))
            .await
    }

    async fn query_once(
        &self,
        sql: &str,
        params: &[Value],
        caps: Caps,
        timeout: Option<Duration>,
    ) -> Result<Rows, DbError> {
        let started = Instant::now();
        let timeout = timeout.map_or(self.statement_timeout, |t| t.min(self.statement_timeout));
        let pg = |e| DbError::from_pg(e, timeout);
        let mut conn = self.pool.get().await?;
        let Conn {
            client,
            statements,
            unsettled,
        } = &mut *conn;
        // From here until `tx` exists, a cancelled call leaves a transaction open: `unsettled`
        // makes the pool discard the connection. Once `tx` exists, dropping it rolls back.
        *unsettled = true;
        let tx = client
            .build_transaction()
            .read_only(true)
            .start()
            .await
            .map_err(pg)?;
        *unsettled = false;
        let set_timeout = async {
            if timeout == self.statement_timeout {
                return Ok(());
            }
            tx.batch_execute(&format!(
                "SET LOCAL statement_timeout = {}",
                timeout.as_millis()
            ))
            .await
        };
        // Both go out back to back (one round trip): tokio-postgres sends a request when its
        // future is first polled and answers them in order.
        let statement = match statements.get(sql) {
            Some(statement) => {
                set_timeout.await.map_err(pg)?;
                statement
            }
            None => {
                let (statement, ()) =
                    futures::try_join!(tx.prepare(sql), set_timeout).map_err(pg)?;
                statements.insert(sql, statement.clone());
                statement
            }
        };
        let types = statement.params();
        if types.len() != params.len() {
            return Err(DbError::ParamCount {
                expected: types.len(),
                got: params.len(),
            });
        }
        let bound: Vec<Param> = types
            .iter()
            .zip(params)
            .enumerate()
            .map(|(i, (ty, value))| Param::bind(i + 1, ty, value))
            .collect::<Result<_, _>>()?;
        let columns: Vec<Column> = statement
            .columns()
            .iter()
            .map(|c| Column {
                name: c.name().to_owned(),
                type_name: c.type_().name().to_owned(),
            })
            .collect();
        let portal = match tx.bind_raw(&statement, bound.iter()).await {
            Ok(portal) => portal,
            Err(err) => {
                // The cached plan's result type changed: prepare it again next time.
                if err
                    .as_db_error()
                    .is_some_and(|db| db.message().starts_with(STALE_PLAN))
                {
                    statements.remove(sql);
                }
                return Err(pg(err));
            }
        };
        let limit = i32::try_from(caps.max_rows.saturating_add(1)).unwrap_or(i32::MAX);
        let stream = tx.query_portal_raw(&portal, limit).await.map_err(pg)?;
        let mut undecoded = vec![false; columns.len()];
        let read = async {
            pin_mut!(stream);
            let mut rows = Vec::new();
            let mut bytes = 0usize;
            let mut truncated_by = None;
            while let Some(row) = stream.next().await {
                let row = row?;
                if rows.len() == caps.max_rows {
                    truncated_by = Some("max_rows");
                    break;
                }
                let mut values = Vec::with_capacity(columns.len());
                for (i, flag) in undecoded.iter_mut().enumerate() {
                    let cell: Cell = row.try_get(i)?;
                    *flag |= cell.undecoded;
                    values.push(cell.value);
                }
                let size = json_size(&values);
                if bytes + size > caps.max_bytes {
                    truncated_by = Some("max_bytes");
                    break;
                }
                bytes += size;
                rows.push(values);
            }
            Ok::<_, tokio_postgres::Error>((rows, truncated_by))
        };
        // Read-only: nothing to keep. Rolling back also closes the portal. The ROLLBACK goes
        // out right behind the Execute (pipelined) and is answered after the rows.
        let (read, rollback) = futures::join!(read, tx.rollback());
        let (rows, truncated_by) = read.map_err(pg)?;
        rollback.map_err(pg)?;
        let undecoded_columns = columns
            .iter()
            .zip(undecoded)
            .filter(|(_, u)| *u)
            .map(|(c, _)| {
                format!(
                    "{} ({}): cast it in SQL, e.g. {}::text",
                    c.name, c.type_name, c.name
                )
            })
            .collect();
        Ok(Rows {
            row_count: rows.len(),
            rows,
            truncated: truncated_by.is_some(),
            truncated_by,
            elapsed_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
            columns,
            undecoded_columns,
        })
    }
}
