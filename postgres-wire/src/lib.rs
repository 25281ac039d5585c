//! pgmcp's PostgreSQL client: open a connection ([`connect`]), run one read-only pipeline on it
//! ([`Connection::run`]), cancel it. A pool, retries and what the rows mean are the caller's.
//!
//! Every statement goes out as one pipeline — `BEGIN READ ONLY`, the statement through a
//! portal capped at `max_rows + 1`, `Sync`, `ROLLBACK` — and its answers come back in one
//! round trip. tokio-postgres cannot express that: it awaits `BEGIN` on its own, binds a portal
//! in a round trip of its own and prepares every new statement in another, so each call cost
//! three or four round trips, and every message passed through its connection task. Here the
//! caller owns the socket while it holds the connection, and nothing else runs in between.
//!
//! Statements without parameters need no round trip before they run: PostgreSQL infers
//! everything and describes the portal in the same pipeline. A statement with parameters is
//! prepared once per connection (its parameter types decide how the JSON values are bound); a
//! statement seen a second time is kept prepared, so its parse and plan are not repeated.
//! Both are bounded (64 prepared, 256 seen); an evicted statement is closed in the next
//! pipeline. Results are written as JSON straight from PostgreSQL's binary format ([`Rows`]);
//! parameters arrive as JSON and are bound with the type PostgreSQL inferred for each `$n`.
//!
//! The login is the protocol's own start-up flow on the crate's socket: TLS as libpq's
//! `sslmode` means it ([`Tls`]), then SCRAM-SHA-256 (channel-bound over TLS), MD5 or a
//! cleartext password (how Entra tokens are sent). The session's cancel key comes with it:
//! [`Connection::run`] cancels through PostgreSQL's CancelRequest when its token fires and
//! leaves the connection settled ([`CancelHandle`] does the same from anywhere).
//!
//! Nothing here retries, pools or logs statements; errors never contain a password.

mod cancel;
mod connection;
mod error;
mod login;
mod rows;
mod stream;
mod tls;
mod types;
mod value;

pub use cancel::CancelHandle;
pub use connection::{Connection, Identity, Statement};
pub use error::{ConnectError, Error, ParamError, SqlError};
pub use login::{Config, connect};
pub use rows::{Caps, Column, JsonRows, Rows};
pub use tls::{SSL_MODES, SslMode, Tls, TlsError};
pub use types::TypeCache;
