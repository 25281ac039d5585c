//! What can go wrong: a statement's errors ([`Error`]), as PostgreSQL reported them
//! ([`SqlError`]) or as the connection met them, and a login's ([`ConnectError`]).

use std::io;
use std::time::Duration;

use fallible_iterator::FallibleIterator as _;
use postgres_protocol::message::backend::ErrorResponseBody;
use postgres_protocol::message::frontend;

use crate::SslMode;
pub use crate::value::ParamError;

/// PostgreSQL's message when a prepared statement's result columns changed since it was
/// prepared (SQLSTATE 0A000).
const STALE_PLAN: &str = "cached plan must not change result type";

/// Why a statement failed. Never contains a password or connection string.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// PostgreSQL reported an error for the statement.
    #[error("{0}")]
    Sql(SqlError),
    /// An established connection died (terminated, failover): another one may work.
    #[error("the database connection was lost ({0}); try again in a moment")]
    ConnectionLost(String),
    #[error(transparent)]
    Param(#[from] ParamError),
    #[error(
        "the statement has {expected} parameter(s) ($1..${expected}) but {got} value(s) were given in params"
    )]
    ParamCount { expected: usize, got: usize },
    /// A value PostgreSQL sent that could not be read, or a message that could not be written.
    #[error("{0}")]
    Decode(String),
    /// The caller's token fired ([`crate::Connection::run`]).
    #[error("the statement was cancelled")]
    Cancelled,
    /// The statement's [`crate::Identity`] could not be taken on: the session's user is not a
    /// member of the role (or may not SET it), or the role does not exist.
    #[error("failed to act as role {role}: {cause}")]
    Identity { role: String, cause: Box<SqlError> },
    /// Something in the statement changed the role or the claims of its
    /// [`crate::Identity`]; its rows were not returned.
    #[error(
        "the statement changed the role or the caller claims (pgmcp.caller) it runs with, so its result was withheld: a statement cannot change whom it runs as, not through a function either"
    )]
    IdentityChanged,
}

/// An error PostgreSQL reported, with its SQLSTATE.
#[derive(Debug, Clone, PartialEq)]
pub struct SqlError {
    pub code: String,
    pub message: String,
    pub detail: Option<String>,
    pub hint: Option<String>,
    /// Where in the statement (1-based, in characters).
    pub position: Option<u32>,
}

impl std::fmt::Display for SqlError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PostgreSQL error {}: {}", self.code, self.message)?;
        if let Some(position) = self.position {
            write!(f, " (at character {position})")?;
        }
        if let Some(detail) = &self.detail {
            write!(f, ". Detail: {detail}")?;
        }
        if let Some(hint) = &self.hint {
            write!(f, ". Hint: {hint}")?;
        }
        Ok(())
    }
}

impl SqlError {
    /// A statement kept prepared whose result columns changed since (a table altered): it was
    /// dropped from the connection's cache, so running it again prepares it anew.
    pub fn is_stale_plan(&self) -> bool {
        self.code == "0A000" && self.message.starts_with(STALE_PLAN)
    }
}

/// Why a connection could not be opened (or a cancel request not sent).
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("failed to connect to {host}:{port}: {error}")]
    Tcp {
        host: String,
        port: u16,
        error: io::Error,
    },
    #[error("no answer from {host}:{port} within {timeout:?}")]
    Timeout {
        host: String,
        port: u16,
        timeout: Duration,
    },
    #[error("failed to set up TLS with {host}: {error}")]
    Tls { host: String, error: io::Error },
    #[error("{host} does not accept TLS, which sslmode {mode} requires")]
    TlsRefused { host: String, mode: SslMode },
    /// PostgreSQL refused the login: a wrong password, no such role or database, too many
    /// connections.
    #[error("{}: {}", .0.code, .0.message)]
    Refused(SqlError),
    /// This side could not authenticate: no password, a method pgmcp does not speak, a SCRAM
    /// server signature that does not verify.
    #[error("failed to authenticate: {0}")]
    Auth(String),
    #[error("the connection failed during the login: {0}")]
    Lost(io::Error),
    #[error("the server closed the connection during the login")]
    Closed,
    #[error("unexpected message from the server during the login")]
    Unexpected,
    #[error("the connection failed right after it opened: {0}")]
    Setup(Error),
    #[error("the server gave no key to cancel statements with")]
    NoCancelKey,
}

/// An ErrorResponse: the error, and whether it ended the session (severity FATAL or PANIC).
pub(crate) fn sql_error(body: &ErrorResponseBody) -> (SqlError, bool) {
    let mut error = SqlError {
        code: String::new(),
        message: String::new(),
        detail: None,
        hint: None,
        position: None,
    };
    let mut severity = None;
    let mut localized_severity = None;
    let mut fields = body.fields();
    while let Ok(Some(field)) = fields.next() {
        let value = || String::from_utf8_lossy(field.value_bytes()).into_owned();
        match field.type_() {
            b'C' => error.code = value(),
            b'M' => error.message = value(),
            b'D' => error.detail = Some(value()),
            b'H' => error.hint = Some(value()),
            b'P' => error.position = value().parse().ok(),
            b'V' => severity = Some(value()),
            b'S' => localized_severity = Some(value()),
            _ => {}
        }
    }
    // `V` (never translated) since PostgreSQL 9.6; `S` may be translated.
    let fatal = matches!(
        severity.or(localized_severity).as_deref(),
        Some("FATAL" | "PANIC")
    );
    (error, fatal)
}

/// The error a statement gets from an ErrorResponse: one that ends the session (FATAL, or the
/// server terminating, shutting down or restarting: SQLSTATE class 57P) loses the connection.
pub(crate) fn db_error(body: &ErrorResponseBody) -> Error {
    let (error, fatal) = sql_error(body);
    if fatal || error.code.starts_with("57P") {
        return Error::ConnectionLost(format!("{}: {}", error.code, error.message));
    }
    Error::Sql(error)
}

pub(crate) fn lost(err: io::Error) -> Error {
    Error::ConnectionLost(err.to_string())
}

pub(crate) fn parse(err: io::Error) -> Error {
    Error::ConnectionLost(format!("unexpected answer from the server: {err}"))
}

/// SQL PostgreSQL's protocol cannot carry (a NUL character).
pub(crate) fn unsendable(err: io::Error) -> Error {
    Error::Sql(SqlError {
        code: "22021".to_owned(),
        message: format!("the statement cannot be sent: {err}"),
        detail: None,
        hint: Some("remove NUL characters from the SQL".to_owned()),
        position: None,
    })
}

pub(crate) fn encode(err: io::Error) -> Error {
    Error::Decode(format!("failed to encode a message: {err}"))
}

pub(crate) fn bind_error(err: frontend::BindError) -> Error {
    match err {
        frontend::BindError::Conversion(e) => Error::Decode(e.to_string()),
        frontend::BindError::Serialization(e) => encode(e),
    }
}
