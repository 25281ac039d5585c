//! pgmcp-operator: reconciles PostgresMcpBinding objects into an identity-wired, read-only MCP
//! server. [`run`] wires logging, the client, the HTTP endpoints, leader election ([`leader`])
//! and the controller; `main.rs` only parses the arguments; [`controller`] holds the reconcile
//! pipeline.

pub mod app;
pub mod azure;
pub mod controller;
pub mod database;
pub mod http;
mod leader;
pub mod metrics;
pub mod settings;

pub use app::run;
