//! pgmcp's PostgreSQL client: one connection driven with the extended query protocol directly,
//! every statement going out as one pipeline — `BEGIN READ ONLY`, the statement through a
//! portal capped at `max_rows + 1`, `Sync`, `ROLLBACK` — whose answers come back in one round
//! trip.
//!
//! tokio-postgres cannot express that: it awaits `BEGIN` on its own, binds a portal in a round
//! trip of its own and prepares every new statement in another, so each call cost three or four
//! round trips, and every message passed through its connection task. Here the caller owns the
//! socket while it holds the connection, and nothing else runs in between.
//!
//! Connecting is still tokio-postgres's job ([`connect`]): it negotiates TLS (with channel
//! binding) and authenticates (cleartext for Entra tokens, MD5, SCRAM), and hands the
//! authenticated stream back.
//!
//! Statements without parameters need no round trip before they run: PostgreSQL infers
//! everything and describes the portal in the same pipeline. A statement with parameters is
//! prepared once per connection (its parameter types decide how the JSON values are bound); a
//! statement seen a second time is kept prepared, so its parse and plan are not repeated.
//! Both are bounded (64 prepared, 256 seen); an evicted statement is closed in the next
//! pipeline.
//!
//! Values: results are written as JSON straight from PostgreSQL's binary format, parameters
//! arrive as JSON and are bound with the type PostgreSQL inferred for each `$n` (see `value`).

mod connection;
mod error;
mod rows;
mod tls;
mod value;

pub use connection::{Connection, Statement, Target, TypeCache, connect};
pub use error::{ConnectError, Error, ParamError, SqlError};
pub use rows::{Caps, Column, JsonRows, Rows};
pub use tls::{SSL_MODES, SslMode, Tls, TlsError};
