//! How pgmcp talks to PostgreSQL.

mod tls;

pub use tls::{SSL_MODES, SslMode, Tls, TlsError};
