//! TLS to PostgreSQL with libpq's `sslmode` meanings; shared with the operator, see
//! [`pgmcp_pgconn`].

pub use pgmcp_pgconn::*;
