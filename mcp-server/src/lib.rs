//! pgmcp-server: a read-only PostgreSQL MCP server.
//!
//! `router()` builds the HTTP application (`/mcp`, `/healthz`, `/readyz`, `/metrics`,
//! `/.well-known/oauth-protected-resource`); [`run`] starts the server from its arguments and
//! serves that application (or stdio); `main.rs` only parses the arguments.

pub mod access;
pub mod app;
pub mod audit;
pub mod auth;
pub mod config;
pub mod db;
pub mod definer;
pub mod dispatch;
pub mod framing;
pub mod http;
pub mod metrics;
pub mod readiness;
pub mod scope;
pub mod server;
pub mod sessions;
pub mod sql_guard;
pub mod startup;
pub mod stdio;
pub mod telemetry;
pub mod tools;

pub use app::run;
pub use http::{AppState, router};
pub use server::PgMcpServer;
