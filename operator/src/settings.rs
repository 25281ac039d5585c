//! Command-line flags (each with an environment variable) and the defaults the build step uses.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

/// Image of the MCP server used when a binding does not name one.
pub const DEFAULT_SERVER_IMAGE: &str =
    concat!("ghcr.io/pgmcp/pgmcp-server:", env!("CARGO_PKG_VERSION"));

/// Kubernetes operator for PostgresMcpBinding.
#[derive(Parser, Debug, Clone)]
#[command(version, about)]
pub struct Args {
    /// Kubeconfig to use outside a cluster (default: in-cluster config, else ~/.kube/config).
    #[arg(long, env = "KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    /// Namespaces to watch (repeatable or comma-separated). Empty: every namespace, which needs
    /// cluster-wide RBAC; with a list, a Role per namespace is enough.
    #[arg(
        long = "namespace",
        env = "PGMCP_WATCH_NAMESPACES",
        value_delimiter = ','
    )]
    pub namespaces: Vec<String>,
    /// MCP server image for bindings that do not set spec.server.image.
    #[arg(long, env = "PGMCP_SERVER_IMAGE", default_value = DEFAULT_SERVER_IMAGE)]
    pub server_image: String,
    /// OIDC issuer URL of this cluster (AKS: `az aks show --query oidcIssuerProfile.issuerUrl`),
    /// the default issuer of federated identity credentials.
    #[arg(long, env = "PGMCP_OIDC_ISSUER")]
    pub oidc_issuer: Option<String>,
    /// Azure Resource Manager endpoint (sovereign clouds differ).
    #[arg(
        long,
        env = "PGMCP_ARM_ENDPOINT",
        default_value = "https://management.azure.com"
    )]
    pub arm_endpoint: String,
    /// Microsoft Graph endpoint (sovereign clouds differ); used only for bindings with
    /// foundry.assignAppRole, which needs Graph application permissions for the operator.
    #[arg(
        long,
        env = "PGMCP_GRAPH_ENDPOINT",
        default_value = "https://graph.microsoft.com"
    )]
    pub graph_endpoint: String,
    /// Token scope for Azure Resource Manager. Default: `<--arm-endpoint>/.default`, as Azure's
    /// SDKs derive it for each cloud.
    #[arg(long, env = "PGMCP_ARM_SCOPE")]
    pub arm_scope: Option<String>,
    /// Token scope for Microsoft Graph. Default: `<--graph-endpoint>/.default`.
    #[arg(long, env = "PGMCP_GRAPH_SCOPE")]
    pub graph_scope: Option<String>,
    /// Token scope for Azure Database for PostgreSQL (`postgres.admin.entra`). Default: the
    /// scope of the cloud each server's host name belongs to (Azure Government, Azure China,
    /// else the public cloud).
    #[arg(long, env = "PGMCP_POSTGRES_SCOPE")]
    pub postgres_scope: Option<String>,
    /// api-version of Microsoft.ManagedIdentity federatedIdentityCredentials.
    #[arg(long, env = "PGMCP_FIC_API_VERSION", default_value = "2023-01-31")]
    pub fic_api_version: String,
    /// api-version of Microsoft.CognitiveServices project connections (Azure AI Foundry).
    #[arg(
        long,
        env = "PGMCP_FOUNDRY_API_VERSION",
        default_value = "2025-04-01-preview"
    )]
    pub foundry_api_version: String,
    /// Microsoft Entra authority host (sovereign clouds differ).
    #[arg(long, env = "AZURE_AUTHORITY_HOST", default_value = pgmcp_crds::config::DEFAULT_AUTHORITY_HOST)]
    pub authority_host: String,
    /// Address of the health and metrics listener (/healthz, /readyz, /metrics).
    #[arg(long, env = "PGMCP_METRICS_LISTEN", default_value = "0.0.0.0:8081")]
    pub metrics_listen: SocketAddr,
    /// Every binding is re-checked this often even without a change (drift repair).
    #[arg(long, env = "PGMCP_RESYNC", default_value = "5m", value_parser = parse_duration)]
    pub resync: Duration,
    /// Bindings reconciled at the same time.
    #[arg(long, env = "PGMCP_CONCURRENCY", default_value_t = 4)]
    pub concurrency: u16,
    /// Run the controller only while holding a Lease, so several replicas can run.
    #[arg(long, env = "PGMCP_LEADER_ELECTION", default_value_t = true, action = clap::ArgAction::Set)]
    pub leader_election: bool,
    /// Namespace of the leader-election Lease (default: the pod's namespace).
    #[arg(long, env = "PGMCP_LEASE_NAMESPACE")]
    pub lease_namespace: Option<String>,
    /// Name of the leader-election Lease.
    #[arg(long, env = "PGMCP_LEASE_NAME", default_value = "pgmcp-operator")]
    pub lease_name: String,
    /// How long a Lease stays valid without renewal; a standby takes over after this when the
    /// leader dies without releasing it.
    #[arg(long, env = "PGMCP_LEASE_DURATION", default_value = "15s", value_parser = parse_duration)]
    pub lease_duration: Duration,
    /// Identity in the Lease and in Events (default: the pod name, else the host name).
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,
    /// Log format: json (default) or text.
    #[arg(long, env = "PGMCP_LOG_FORMAT", default_value = "json")]
    pub log_format: String,
}

/// What the pure build step needs from the flags.
#[derive(Debug, Clone, PartialEq)]
pub struct Defaults {
    pub server_image: String,
    pub oidc_issuer: Option<String>,
    /// `--postgres-scope`: the operator's own token scope for PostgreSQL, when not derived.
    pub postgres_scope: Option<String>,
}

impl Args {
    /// The ARM token scope: `--arm-scope`, else derived from `--arm-endpoint`.
    pub fn arm_scope(&self) -> String {
        self.arm_scope
            .clone()
            .unwrap_or_else(|| crate::azure::rest::scope_for(&self.arm_endpoint))
    }

    /// The Microsoft Graph token scope: `--graph-scope`, else derived from `--graph-endpoint`.
    pub fn graph_scope(&self) -> String {
        self.graph_scope
            .clone()
            .unwrap_or_else(|| crate::azure::rest::scope_for(&self.graph_endpoint))
    }

    pub fn defaults(&self) -> Defaults {
        Defaults {
            server_image: self.server_image.clone(),
            oidc_issuer: self.oidc_issuer.clone(),
            postgres_scope: self.postgres_scope.clone(),
        }
    }
}

/// Why [`parse_duration`] could not read a duration; `text` is the input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    #[error("empty duration")]
    Empty,
    #[error("{text}: expected a duration such as 30s, 5m or 1h30m")]
    NotANumber { text: String },
    #[error("{text}: unknown unit {unit:?} (use ms, s, m or h)")]
    UnknownUnit { text: String, unit: String },
    #[error("{text}: too large")]
    TooLarge { text: String },
}

/// Parses `90s`, `5m`, `1h30m`, `500ms`.
pub fn parse_duration(text: &str) -> Result<Duration, DurationError> {
    let mut total = Duration::ZERO;
    let mut rest = text.trim();
    if rest.is_empty() {
        return Err(DurationError::Empty);
    }
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        let value: u64 = rest[..digits]
            .parse()
            .map_err(|_| DurationError::NotANumber {
                text: text.to_owned(),
            })?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let unit = match &rest[..unit_len] {
            "ms" => Duration::from_millis(1),
            "s" => Duration::from_secs(1),
            "m" => Duration::from_secs(60),
            "h" => Duration::from_secs(3600),
            other => {
                return Err(DurationError::UnknownUnit {
                    text: text.to_owned(),
                    unit: other.to_owned(),
                });
            }
        };
        total = u32::try_from(value)
            .ok()
            .and_then(|value| unit.checked_mul(value))
            .and_then(|part| total.checked_add(part))
            .ok_or_else(|| DurationError::TooLarge {
                text: text.to_owned(),
            })?;
        rest = &rest[unit_len..];
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_scopes_follow_the_endpoints_unless_given() {
        let args = |extra: &[&str]| {
            Args::parse_from(
                ["pgmcp-operator"]
                    .iter()
                    .chain(extra)
                    .copied()
                    .collect::<Vec<_>>(),
            )
        };
        let public = args(&[]);
        assert_eq!(public.arm_scope(), "https://management.azure.com/.default");
        assert_eq!(public.graph_scope(), "https://graph.microsoft.com/.default");
        let government = args(&[
            "--arm-endpoint=https://management.usgovcloudapi.net",
            "--graph-endpoint=https://graph.microsoft.us",
        ]);
        assert_eq!(
            government.arm_scope(),
            "https://management.usgovcloudapi.net/.default"
        );
        assert_eq!(
            government.graph_scope(),
            "https://graph.microsoft.us/.default"
        );
        let explicit = args(&["--arm-scope=https://management.core.usgovcloudapi.net/.default"]);
        assert_eq!(
            explicit.arm_scope(),
            "https://management.core.usgovcloudapi.net/.default"
        );
    }

    #[test]
    fn durations_parse_like_kubernetes_writes_them() {
        assert_eq!(parse_duration("15s"), Ok(Duration::from_secs(15)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(
            parse_duration("15").unwrap_err().to_string(),
            "15: unknown unit \"\" (use ms, s, m or h)"
        );
        assert!(parse_duration("s").is_err());
        assert!(parse_duration("").is_err());
    }
}
