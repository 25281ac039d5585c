//! pgmcp-operator: reconciles PostgresMcpBinding objects into an identity-wired, read-only MCP
//! server. `main.rs` wires flags, logging, leader election and the HTTP endpoints;
//! [`controller`] holds the reconcile pipeline.

pub mod azure;
pub mod controller;
pub mod database;
pub mod http;
pub mod metrics;
pub mod settings;
