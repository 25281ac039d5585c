//! The MCP server's configuration file: written by the operator (a ConfigMap), read by
//! `pgmcp-server --config`. Plain serde types, no kube, so the server can use them with the
//! `crd` feature off. Secrets are never part of it: the password comes from a file or the
//! environment, named here.

use serde::{Deserialize, Serialize};

/// Everything `pgmcp-server` needs besides secrets.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServerConfig {
    /// The database and how to reach it.
    #[serde(default)]
    pub database: DatabaseConfig,
    /// What the server shows and lets queries read.
    #[serde(default)]
    pub scope: ScopeConfig,
    /// Caps applied to every tool call.
    #[serde(default)]
    pub limits: LimitsConfig,
    /// The HTTP listener.
    #[serde(default)]
    pub http: HttpConfig,
}

/// Connection settings of the server's own (read-only) role.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DatabaseConfig {
    pub host: String,
    pub port: u16,
    pub dbname: String,
    pub user: String,
    /// libpq sslmode: disable, prefer, require or verify-full.
    pub ssl_mode: String,
    /// PEM file of the CAs trusted for verify-full (default: the public web roots).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssl_root_cert: Option<String>,
    /// File holding the password (a mounted Secret key).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_file: Option<String>,
    /// Environment variable holding the password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_env: Option<String>,
    /// Largest number of pooled connections.
    pub pool_size: usize,
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        Self {
            host: "127.0.0.1".to_owned(),
            port: 5432,
            dbname: "postgres".to_owned(),
            user: "postgres".to_owned(),
            ssl_mode: "prefer".to_owned(),
            ssl_root_cert: None,
            password_file: None,
            password_env: None,
            pool_size: 8,
        }
    }
}

/// The schemas and tables the binding grants. Empty means "whatever the role can read"
/// (local use only; the operator always writes the binding's grants).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ScopeConfig {
    #[serde(default)]
    pub grants: Vec<ScopeGrant>,
}

/// One granted schema: `["*"]` or table names.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ScopeGrant {
    pub schema: String,
    pub tables: Vec<String>,
}

/// Caps of every tool call, stated in each result.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LimitsConfig {
    pub max_rows: u32,
    pub max_bytes: u64,
    pub statement_timeout_ms: u64,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_rows: 1000,
            max_bytes: 1024 * 1024,
            statement_timeout_ms: 15_000,
        }
    }
}

/// The Streamable HTTP listener.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpConfig {
    /// Address to listen on, `host:port`.
    pub listen: String,
    /// Accepted `Host` header values (host or host:port), besides loopback.
    #[serde(default)]
    pub allowed_hosts: Vec<String>,
    /// Accepted browser `Origin`s (`scheme://host[:port]`); requests without Origin pass.
    #[serde(default)]
    pub allowed_origins: Vec<String>,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".to_owned(),
            allowed_hosts: Vec::new(),
            allowed_origins: Vec::new(),
        }
    }
}
