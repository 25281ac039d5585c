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
    /// How callers authenticate.
    #[serde(default)]
    pub auth: AuthConfig,
    /// How tool results are presented to the model.
    #[serde(default, skip_serializing_if = "ResultsConfig::is_default")]
    pub results: ResultsConfig,
    /// What the audit event of each tool call records.
    #[serde(default, skip_serializing_if = "AuditConfig::is_default")]
    pub audit: AuditConfig,
}

/// How tool results are presented to the model.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ResultsConfig {
    /// Wrap the database data in each result's text in a boundary unique to the answer, with a
    /// sentence before and after telling the model it is data whose instructions must not be
    /// followed. `structuredContent` is never wrapped.
    pub untrusted_data_framing: bool,
}

impl Default for ResultsConfig {
    fn default() -> Self {
        Self {
            untrusted_data_framing: true,
        }
    }
}

impl ResultsConfig {
    fn is_default(&self) -> bool {
        *self == Self::default()
    }
}

/// What the audit event of each tool call records.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AuditConfig {
    /// How the caller's SQL appears in audit events (and trace spans).
    #[serde(default)]
    pub statements: AuditStatements,
    /// `namespace/name` of the binding the server serves, named in every audit event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub binding: Option<String>,
}

impl AuditConfig {
    fn is_default(&self) -> bool {
        *self == Self::default()
    }
}

/// How the caller's SQL appears in audit events and trace spans.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "crd", derive(schemars::JsonSchema))]
#[serde(rename_all = "lowercase")]
pub enum AuditStatements {
    /// The statement as the caller sent it.
    #[default]
    Full,
    /// The statement with every literal replaced by `?` (comments dropped, layout normalised).
    Redacted,
    /// Only a 16-hex-digit fingerprint of the redacted statement.
    Fingerprint,
}

impl AuditStatements {
    /// The value as written in configuration and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            AuditStatements::Full => "full",
            AuditStatements::Redacted => "redacted",
            AuditStatements::Fingerprint => "fingerprint",
        }
    }
}

impl std::str::FromStr for AuditStatements {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "full" => Ok(AuditStatements::Full),
            "redacted" => Ok(AuditStatements::Redacted),
            "fingerprint" => Ok(AuditStatements::Fingerprint),
            other => Err(format!(
                "unknown audit statements mode {other:?}: expected full, redacted or fingerprint"
            )),
        }
    }
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
    /// The password is a Microsoft Entra access token for Azure Database for PostgreSQL,
    /// obtained with Azure workload identity (`AZURE_CLIENT_ID`, `AZURE_TENANT_ID`,
    /// `AZURE_FEDERATED_TOKEN_FILE`, `AZURE_AUTHORITY_HOST`, injected by the webhook).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub workload_identity: bool,
    /// The Entra token scope for the database (workload identity). Default: the scope of the
    /// cloud the host name belongs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_scope: Option<String>,
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
            workload_identity: false,
            token_scope: None,
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
    /// SECURITY DEFINER functions the server may call (every overload of each name); calls to
    /// any other SECURITY DEFINER function outside `pg_catalog` are refused.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub functions: Vec<ScopeFunction>,
    /// Caller classes, in order: the first whose `match` fits a caller's verified token
    /// decides the role its statements run as and what it sees. With classes, `grants` (when
    /// not empty) is the default class of callers that match none; empty, such callers are
    /// refused. Needs Entra caller authentication.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub callers: Vec<CallerClassConfig>,
}

/// One caller class.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CallerClassConfig {
    /// The class's name (audit log, messages, the `class` claim).
    pub name: String,
    /// The NOLOGIN role the class's statements run as (`SET LOCAL ROLE`); the server's role is
    /// a member of it.
    pub role: String,
    /// Which callers belong to the class.
    #[serde(rename = "match")]
    pub matches: CallerMatchConfig,
    /// What the class sees and reads.
    pub grants: Vec<ScopeGrant>,
    /// SECURITY DEFINER functions the class may call.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub functions: Vec<ScopeFunction>,
}

/// Token values that place a caller in a class: any one is enough.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CallerMatchConfig {
    /// App roles (the `roles` claim).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub app_roles: Vec<String>,
    /// Group object ids (the `groups` claim).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
    /// Caller object ids (`oid`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub object_ids: Vec<String>,
    /// Calling application client ids (`azp`, or `appid` in v1 tokens).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub app_ids: Vec<String>,
}

/// Longest PostgreSQL identifier (NAMEDATALEN - 1 bytes).
pub const MAX_ROLE_NAME: usize = 63;

/// The PostgreSQL role of caller class `class` of the binding whose role is `principal`:
/// `<principal>__<class>`, or, when that is longer than PostgreSQL keeps, the principal cut
/// short (at a character boundary) followed by `_` and 8 hex digits of a hash of the whole
/// principal name, so two long principals never share class roles.
pub fn class_role_name(principal: &str, class: &str) -> String {
    let full = format!("{principal}__{class}");
    if full.len() <= MAX_ROLE_NAME {
        return full;
    }
    // FNV-1a: stable across builds and platforms, unlike std's hasher.
    let hash = principal.bytes().fold(0x811c_9dc5_u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    });
    let room = MAX_ROLE_NAME - class.len() - 2 - 9;
    let mut cut = room.min(principal.len());
    while !principal.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}_{hash:08x}__{class}", &principal[..cut])
}

/// One granted schema: `["*"]` or table names.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ScopeGrant {
    pub schema: String,
    pub tables: Vec<String>,
}

/// A function name in a schema, as PostgreSQL stores them (case-sensitive), standing for all
/// its overloads.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ScopeFunction {
    pub schema: String,
    pub name: String,
}

/// Caps of every tool call, stated in each result.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LimitsConfig {
    pub max_rows: u32,
    pub max_bytes: u64,
    pub statement_timeout_ms: u64,
    /// Largest text of one discovery answer (list_tables, search_objects, ...): longer ones
    /// are paged with a cursor.
    #[serde(default = "default_discovery_max_bytes")]
    pub discovery_max_bytes: u64,
}

/// The SQL that installs pgmcp's catalog tracker in a database: the operator runs it with the
/// admin's rights (`spec.access.catalogTracker`), and the server's catalog snapshot checks its
/// record (`mcp-server/src/tools/snapshot.rs`).
pub const CATALOG_TRACKER_SQL: &str = include_str!("catalog_tracker.sql");

/// The default discovery budget: 16 KiB, a few thousand tokens.
pub const DEFAULT_DISCOVERY_MAX_BYTES: u64 = 16 * 1024;

/// The discovery budget's bounds: room for a page's summary, frame and one entry; at most 1 MiB.
pub const DISCOVERY_MAX_BYTES: std::ops::RangeInclusive<u64> = 4 * 1024..=1024 * 1024;

fn default_discovery_max_bytes() -> u64 {
    DEFAULT_DISCOVERY_MAX_BYTES
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_rows: 1000,
            max_bytes: 1024 * 1024,
            statement_timeout_ms: 15_000,
            discovery_max_bytes: DEFAULT_DISCOVERY_MAX_BYTES,
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
    /// The URL callers use to reach `/mcp` from outside (the resource named in OAuth protected
    /// resource metadata). Defaults to the URL of the request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_url: Option<String>,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".to_owned(),
            allowed_hosts: Vec::new(),
            allowed_origins: Vec::new(),
            public_url: None,
        }
    }
}

/// Caller authentication. A listener on a non-loopback address needs `entra` or an explicit
/// `insecureAllowUnauthenticated`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AuthConfig {
    /// Require Microsoft Entra ID access tokens (`Authorization: Bearer`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entra: Option<EntraAuthConfig>,
    /// Serve without caller authentication on a non-loopback address (development only).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub insecure_allow_unauthenticated: bool,
}

/// Validation of Entra ID access tokens.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EntraAuthConfig {
    /// Tenant that issues the callers' tokens.
    pub tenant_id: String,
    /// Client id of the server's app registration (or its `api://` application id URI).
    pub audience: String,
    /// App roles a token must carry, any one of them.
    pub required_roles: Vec<String>,
    /// When non-empty, only these caller object ids (`oid`) are accepted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_caller_object_ids: Vec<String>,
    /// Entra authority host (sovereign clouds).
    #[serde(default = "default_authority_host")]
    pub authority_host: String,
}

impl EntraAuthConfig {
    /// The scope a caller requests its token for: `<audience>/.default` (what the server's
    /// protected resource metadata names, and what a binding's status.connect.tokenScope says).
    pub fn token_scope(&self) -> String {
        token_scope(&self.audience)
    }
}

/// `<audience>/.default`: the scope of a token for the app registration `audience` (its client
/// id or application id URI).
pub fn token_scope(audience: &str) -> String {
    format!("{}/.default", audience.trim_end_matches('/'))
}

/// The tools every pgmcp-server offers, sorted by name (`mcp-server/src/tools/registry.rs`
/// declares them; a test there keeps the two equal). The operator writes them into a binding's
/// status for agents' `allowed_tools`.
pub const TOOLS: &[&str] = &[
    "describe_table",
    "explain",
    "list_databases",
    "list_relationships",
    "list_schemas",
    "list_tables",
    "query",
    "search_objects",
    "server_info",
];

/// The public-cloud Entra authority.
pub const DEFAULT_AUTHORITY_HOST: &str = "https://login.microsoftonline.com";

fn default_authority_host() -> String {
    DEFAULT_AUTHORITY_HOST.to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn class_role_names_fit_postgresql_and_stay_distinct() {
        assert_eq!(
            class_role_name("sales-mcp", "support"),
            "sales-mcp__support"
        );
        let long_a = "a".repeat(60);
        let long_b = format!("{}b", "a".repeat(59));
        let a = class_role_name(&long_a, "support-agents");
        let b = class_role_name(&long_b, "support-agents");
        assert!(
            a.len() <= MAX_ROLE_NAME && b.len() <= MAX_ROLE_NAME,
            "{a} {b}"
        );
        assert!(a.ends_with("__support-agents"), "{a}");
        assert_ne!(a, b);
        let accents = "é".repeat(31);
        let c = class_role_name(&accents, "x");
        assert!(c.len() <= MAX_ROLE_NAME, "{c}");
        assert_eq!(c, class_role_name(&accents, "x"));
    }
}
