//! Command-line flags (each with an environment variable) and the defaults the build step uses.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
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
    /// PEM file of the CA certificates to trust instead of the image's: a private cloud's, a
    /// TLS-inspecting proxy's, a private PostgreSQL server's. The operator gives every MCP server
    /// the same bundle (in its ConfigMap, as `SSL_CERT_FILE` and as the roots of `sslMode:
    /// verify-full`) and uses it as the roots of its own `verify-full` connections; for its own
    /// HTTPS calls, point `SSL_CERT_FILE` at the same file (the chart's `trustBundle` does both).
    #[arg(long, env = "PGMCP_TRUST_BUNDLE")]
    pub trust_bundle: Option<PathBuf>,
}

/// What the pure build step needs from the flags.
#[derive(Debug, Clone, PartialEq)]
pub struct Defaults {
    pub server_image: String,
    pub oidc_issuer: Option<String>,
    /// `--postgres-scope`: the operator's own token scope for PostgreSQL, when not derived.
    pub postgres_scope: Option<String>,
    /// `--trust-bundle`, read and checked at start.
    pub trust_bundle: Option<TrustBundle>,
}

/// The CA certificates of `--trust-bundle`: where the operator reads them, and their PEM text,
/// which every MCP server gets in its ConfigMap.
#[derive(Clone, PartialEq)]
pub struct TrustBundle {
    pub path: PathBuf,
    pub pem: Arc<str>,
    /// How many certificates the PEM holds.
    pub certificates: usize,
}

impl std::fmt::Debug for TrustBundle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrustBundle")
            .field("path", &self.path)
            .field("certificates", &self.certificates)
            .finish_non_exhaustive()
    }
}

/// Largest trust bundle: it travels in each server's ConfigMap, whose whole data must stay
/// under Kubernetes' 1 MiB (Debian's full bundle is about 220 KiB).
pub const MAX_TRUST_BUNDLE_BYTES: usize = 768 * 1024;

/// Why `--trust-bundle` cannot be used; each names the file.
#[derive(Debug, thiserror::Error)]
pub enum TrustBundleError {
    #[error("failed to read the trust bundle {}", .path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the trust bundle {} is not UTF-8 PEM text", .path.display())]
    NotText { path: PathBuf },
    #[error(
        "the trust bundle {} has {bytes} bytes; at most {MAX_TRUST_BUNDLE_BYTES} fit in the MCP servers' ConfigMaps",
        .path.display()
    )]
    TooLarge { path: PathBuf, bytes: usize },
    #[error("the trust bundle {} holds no PEM certificate (-----BEGIN CERTIFICATE-----)", .path.display())]
    NoCertificates { path: PathBuf },
    #[error("the trust bundle {} holds a certificate that cannot be read", .path.display())]
    BadCertificate {
        path: PathBuf,
        #[source]
        source: reqwest::Error,
    },
}

impl TrustBundle {
    /// Reads and checks the PEM file at `path`: text, not too large, at least one certificate,
    /// every certificate readable.
    pub fn read(path: &Path) -> Result<Self, TrustBundleError> {
        let path = path.to_owned();
        let bytes = std::fs::read(&path).map_err(|source| TrustBundleError::Read {
            path: path.clone(),
            source,
        })?;
        if bytes.len() > MAX_TRUST_BUNDLE_BYTES {
            return Err(TrustBundleError::TooLarge {
                path,
                bytes: bytes.len(),
            });
        }
        let pem = String::from_utf8(bytes)
            .map_err(|_| TrustBundleError::NotText { path: path.clone() })?;
        let certificates = reqwest::Certificate::from_pem_bundle(pem.as_bytes())
            .map_err(|source| TrustBundleError::BadCertificate {
                path: path.clone(),
                source,
            })?
            .len();
        if certificates == 0 {
            return Err(TrustBundleError::NoCertificates { path });
        }
        Ok(Self {
            path,
            pem: pem.into(),
            certificates,
        })
    }
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

    /// What the build step needs, with `--trust-bundle` read and checked.
    pub fn defaults(&self) -> Result<Defaults, TrustBundleError> {
        Ok(Defaults {
            server_image: self.server_image.clone(),
            oidc_issuer: self.oidc_issuer.clone(),
            postgres_scope: self.postgres_scope.clone(),
            trust_bundle: self
                .trust_bundle
                .as_deref()
                .map(TrustBundle::read)
                .transpose()?,
        })
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

    /// A CA certificate in PEM, as a trust bundle holds one.
    pub(crate) fn ca_pem(name: &str) -> String {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let key = rcgen::KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().pem()
    }

    #[test]
    fn a_trust_bundle_is_read_once_and_refused_with_the_file_named_when_unusable() {
        let dir = tempfile::tempdir().unwrap();
        let file = |name: &str, text: &[u8]| {
            let path = dir.path().join(name);
            std::fs::write(&path, text).unwrap();
            path
        };
        let bundle = format!("{}{}", ca_pem("private root"), ca_pem("proxy root"));
        let good = file("bundle.pem", bundle.as_bytes());
        let args = Args::parse_from([
            "pgmcp-operator",
            &format!("--trust-bundle={}", good.display()),
        ]);
        let read = args.defaults().unwrap().trust_bundle.unwrap();
        assert_eq!(read.certificates, 2);
        assert_eq!(&*read.pem, bundle);
        assert!(!format!("{read:?}").contains("BEGIN"), "{read:?}");
        assert_eq!(
            Args::parse_from(["pgmcp-operator"])
                .defaults()
                .unwrap()
                .trust_bundle,
            None
        );

        let refused = |path: &Path| TrustBundle::read(path).unwrap_err().to_string();
        let missing = dir.path().join("missing.pem");
        assert_eq!(
            refused(&missing),
            format!("failed to read the trust bundle {}", missing.display())
        );
        let empty = file("empty.pem", b"");
        assert_eq!(
            refused(&empty),
            format!(
                "the trust bundle {} holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
                empty.display()
            )
        );
        let binary = file("bundle.der", &[0x30, 0x82, 0xff, 0xfe]);
        assert!(refused(&binary).contains("is not UTF-8 PEM text"));
        let broken = file(
            "broken.pem",
            b"-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n",
        );
        assert!(
            refused(&broken).contains("holds a certificate that cannot be read"),
            "{}",
            refused(&broken)
        );
        let huge = file("huge.pem", &vec![b'#'; MAX_TRUST_BUNDLE_BYTES + 1]);
        assert!(refused(&huge).contains("fit in the MCP servers' ConfigMaps"));
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
