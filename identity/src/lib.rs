//! Microsoft Entra access tokens for pgmcp's own identities: the MCP server reaching Azure
//! Database for PostgreSQL, and (later) the operator reaching PostgreSQL and ARM.
//!
//! [`WorkloadIdentity`] is AKS workload identity as the azure-workload-identity webhook sets it
//! up (`AZURE_CLIENT_ID`, `AZURE_TENANT_ID`, `AZURE_FEDERATED_TOKEN_FILE`,
//! `AZURE_AUTHORITY_HOST`): the projected ServiceAccount token is exchanged for an Entra token
//! with `azure_identity`'s client-assertion credential. The token file is read again for every
//! exchange, because the kubelet rotates it. [`TokenProvider`] caches one scope's token and
//! refreshes it before it expires.
//!
//! No secret is ever logged or put in an error: errors name the identity (client id, tenant,
//! token file) and the authority's reason.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use azure_core::cloud::{CloudConfiguration, CustomConfiguration};
use azure_core::credentials::TokenCredential as _;
use azure_core::http::{ClientMethodOptions, ClientOptions, ExponentialRetryOptions, RetryOptions};
use azure_identity::{
    ClientAssertion, ClientAssertionCredential, ClientAssertionCredentialOptions,
};

/// Scope of Azure Database for PostgreSQL in the public cloud (the token is the connection
/// password).
pub const POSTGRES_SCOPE: &str = "https://ossrdbms-aad.database.windows.net/.default";
/// Azure Database for PostgreSQL's scope in the other clouds, by the server host's suffix
/// (`az cloud show --query endpoints.ossrdbmsResourceId`, plus `/.default`).
const POSTGRES_SCOPES: [(&str, &str); 2] = [
    (
        ".usgovcloudapi.net",
        "https://ossrdbms-aad.database.usgovcloudapi.net/.default",
    ),
    (
        ".chinacloudapi.cn",
        "https://ossrdbms-aad.database.chinacloudapi.cn/.default",
    ),
];

/// The token scope for the Azure Database for PostgreSQL server `host`: its cloud's, from the
/// host name (`….postgres.database.usgovcloudapi.net` is US Government's), else the public
/// cloud's. A host the suffix does not tell (an IP address, a private DNS name) needs the scope
/// configured.
pub fn postgres_scope_for(host: &str) -> &'static str {
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    POSTGRES_SCOPES
        .iter()
        .find(|(suffix, _)| host.ends_with(suffix))
        .map_or(POSTGRES_SCOPE, |(_, scope)| scope)
}
/// The public-cloud Entra authority, used when `AZURE_AUTHORITY_HOST` is not set.
pub const DEFAULT_AUTHORITY_HOST: &str = "https://login.microsoftonline.com";
/// The audience of the ServiceAccount tokens that workload identity exchanges.
pub const TOKEN_EXCHANGE_AUDIENCE: &str = "api://AzureADTokenExchange";

/// Environment variables injected by the azure-workload-identity webhook.
pub const ENV_CLIENT_ID: &str = "AZURE_CLIENT_ID";
pub const ENV_TENANT_ID: &str = "AZURE_TENANT_ID";
pub const ENV_FEDERATED_TOKEN_FILE: &str = "AZURE_FEDERATED_TOKEN_FILE";
pub const ENV_AUTHORITY_HOST: &str = "AZURE_AUTHORITY_HOST";

/// A token is refreshed this long before it expires (or halfway through a shorter life).
const REFRESH_MARGIN: Duration = Duration::from_secs(300);
/// After a failed refresh, a still-valid cached token is used and the next try waits this long.
const RETRY_AFTER_FAILED_REFRESH: Duration = Duration::from_secs(5);

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Failures of token acquisition. Never contains a token or an assertion.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "workload identity is not configured: {0} is not set (the azure-workload-identity webhook \
         sets it when the pod has the label azure.workload.identity/use: \"true\" and its \
         ServiceAccount the annotation azure.workload.identity/client-id)"
    )]
    MissingEnv(&'static str),
    #[error("invalid workload identity setting {name}: {reason}")]
    Invalid { name: &'static str, reason: String },
    #[error("failed to get a token for {scope} as {identity}: {reason}")]
    Token {
        scope: String,
        identity: String,
        reason: String,
        /// The authority answered and refused (a 4xx other than 408/429): the same request
        /// keeps failing until something changes in Entra (a federated credential is created,
        /// or reaches every Entra replica minutes after it was; a role is assigned).
        rejected: bool,
    },
    /// The authority's TLS certificate is not trusted. The CA bundle (`SSL_CERT_FILE`) is read
    /// once, when the credential is built: only a restart with other settings can help.
    #[error("failed to get a token for {scope} as {identity}: {reason}")]
    Untrusted {
        scope: String,
        identity: String,
        reason: String,
    },
}

impl Error {
    /// Whether retrying the same request cannot help until something changes: Entra refused it
    /// (wrong federated credential, unknown client, …), the authority is not trusted, or a
    /// setting is invalid; as opposed to a failure that may pass (network, 5xx, throttling).
    pub fn is_rejected(&self) -> bool {
        matches!(
            self,
            Error::Token { rejected: true, .. } | Error::Untrusted { .. } | Error::Invalid { .. }
        )
    }

    /// Whether only a restart with other settings can help: a variable is missing or invalid,
    /// or the authority's certificate is not trusted. An Entra refusal is not such a failure:
    /// a federated credential created minutes ago is refused until it has propagated, and
    /// then the same request succeeds.
    pub fn needs_restart(&self) -> bool {
        matches!(
            self,
            Error::MissingEnv(_) | Error::Invalid { .. } | Error::Untrusted { .. }
        )
    }

    /// Bounded label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::MissingEnv(_) | Error::Invalid { .. } => "config",
            Error::Untrusted { .. } => "untrusted",
            Error::Token { rejected: true, .. } => "rejected",
            Error::Token { .. } => "unavailable",
        }
    }
}

/// An access token. `Debug` does not show it.
#[derive(Clone, PartialEq, Eq)]
pub struct AccessToken {
    secret: String,
    expires_at: SystemTime,
}

impl AccessToken {
    pub fn new(secret: impl Into<String>, expires_at: SystemTime) -> Self {
        Self {
            secret: secret.into(),
            expires_at,
        }
    }

    /// The bearer token itself: send it, never log it.
    pub fn secret(&self) -> &str {
        &self.secret
    }

    pub fn expires_at(&self) -> SystemTime {
        self.expires_at
    }
}

impl fmt::Debug for AccessToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AccessToken")
            .field("secret", &"<redacted>")
            .field("expires_at", &epoch_secs(self.expires_at))
            .finish()
    }
}

/// Seconds since the epoch, enough to read an expiry in logs without a date crate.
fn epoch_secs(at: SystemTime) -> u64 {
    at.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Something that can obtain a fresh token for a scope. [`WorkloadIdentity`] is the one pgmcp
/// ships; the trait lets both binaries (and unit tests) use [`TokenProvider`] over any source.
#[async_trait::async_trait]
pub trait TokenSource: Send + Sync + fmt::Debug {
    /// Requests a new token from the authority (no caching here).
    async fn fetch(&self, scope: &str) -> Result<AccessToken>;
    /// Who is asking, for messages: "client id … in tenant …".
    fn identity(&self) -> String;
}

/// Where workload identity comes from, as the webhook injects it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkloadIdentityConfig {
    pub client_id: String,
    pub tenant_id: String,
    /// The projected ServiceAccount token (audience `api://AzureADTokenExchange`).
    pub token_file: PathBuf,
    /// Entra authority, `https://…` (sovereign clouds differ).
    pub authority_host: String,
}

impl WorkloadIdentityConfig {
    /// Reads the webhook's variables through `env` (injected so callers and tests need not touch
    /// the process environment).
    pub fn from_env(env: impl Fn(&str) -> Option<String>) -> Result<Self> {
        let var = |name: &'static str| {
            env(name)
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
                .ok_or(Error::MissingEnv(name))
        };
        Ok(Self {
            client_id: var(ENV_CLIENT_ID)?,
            tenant_id: var(ENV_TENANT_ID)?,
            token_file: PathBuf::from(var(ENV_FEDERATED_TOKEN_FILE)?),
            authority_host: env(ENV_AUTHORITY_HOST)
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
                .unwrap_or_else(|| DEFAULT_AUTHORITY_HOST.to_owned()),
        })
    }

    fn describe(&self) -> String {
        format!(
            "workload identity client id {} in tenant {} (federated token file {}, authority {})",
            self.client_id,
            self.tenant_id,
            self.token_file.display(),
            self.authority_host
        )
    }
}

/// The projected ServiceAccount token, read from its file for every exchange.
#[derive(Debug)]
struct FederatedTokenFile(PathBuf);

#[async_trait::async_trait]
impl ClientAssertion for FederatedTokenFile {
    async fn secret(&self, _: Option<ClientMethodOptions<'_>>) -> azure_core::Result<String> {
        let token = tokio::fs::read_to_string(&self.0).await.map_err(|e| {
            azure_core::Error::with_message(
                azure_core::error::ErrorKind::Io,
                format!(
                    "failed to read the federated token file {}: {e}",
                    self.0.display()
                ),
            )
        })?;
        let token = token.trim();
        if token.is_empty() {
            return Err(azure_core::Error::with_message(
                azure_core::error::ErrorKind::Credential,
                format!("the federated token file {} is empty", self.0.display()),
            ));
        }
        Ok(token.to_owned())
    }
}

/// AKS workload identity: exchanges the projected ServiceAccount token for Entra tokens.
pub struct WorkloadIdentity {
    config: WorkloadIdentityConfig,
    credential: Arc<ClientAssertionCredential<FederatedTokenFile>>,
}

impl fmt::Debug for WorkloadIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WorkloadIdentity")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl WorkloadIdentity {
    /// Builds the credential. Nothing is requested yet.
    ///
    /// Retries are few and short (about 5 s in all): the default policy of `azure_core` keeps
    /// trying for a minute, which turns a misconfiguration (an untrusted or unreachable
    /// authority) into a long silent hang at start-up, and [`TokenProvider`] tries again on the
    /// next use anyway.
    pub fn new(config: WorkloadIdentityConfig) -> Result<Self> {
        if !config.authority_host.starts_with("https://") {
            return Err(Error::Invalid {
                name: ENV_AUTHORITY_HOST,
                reason: format!(
                    "{} is not an https:// URL (Entra authorities are always https)",
                    config.authority_host
                ),
            });
        }
        let mut cloud = CustomConfiguration::default();
        cloud.authority_host = config.authority_host.trim_end_matches('/').to_owned();
        let client_options = ClientOptions {
            retry: RetryOptions::exponential(ExponentialRetryOptions {
                initial_delay: azure_core::time::Duration::milliseconds(250),
                max_retries: 3,
                max_total_elapsed: azure_core::time::Duration::seconds(5),
                max_delay: azure_core::time::Duration::seconds(2),
            }),
            cloud: Some(Arc::new(CloudConfiguration::Custom(cloud))),
            ..Default::default()
        };
        let credential = ClientAssertionCredential::new(
            config.tenant_id.clone(),
            config.client_id.clone(),
            FederatedTokenFile(config.token_file.clone()),
            Some(ClientAssertionCredentialOptions { client_options }),
        )
        .map_err(|e| Error::Invalid {
            name: ENV_TENANT_ID,
            reason: e.to_string(),
        })?;
        Ok(Self { config, credential })
    }

    /// Reads the webhook's variables and builds the credential.
    pub fn from_env(env: impl Fn(&str) -> Option<String>) -> Result<Self> {
        Self::new(WorkloadIdentityConfig::from_env(env)?)
    }

    pub fn config(&self) -> &WorkloadIdentityConfig {
        &self.config
    }
}

#[async_trait::async_trait]
impl TokenSource for WorkloadIdentity {
    async fn fetch(&self, scope: &str) -> Result<AccessToken> {
        match self.credential.get_token(&[scope], None).await {
            Ok(token) => {
                let expires_at = SystemTime::UNIX_EPOCH
                    + Duration::from_secs(
                        u64::try_from(token.expires_on.unix_timestamp()).unwrap_or(0),
                    );
                Ok(AccessToken::new(token.token.secret(), expires_at))
            }
            Err(err) if untrusted_certificate(&err) => Err(Error::Untrusted {
                scope: scope.to_owned(),
                identity: self.identity(),
                reason: reason(&err),
            }),
            Err(err) => Err(Error::Token {
                scope: scope.to_owned(),
                identity: self.identity(),
                rejected: is_refused(&err),
                reason: reason(&err),
            }),
        }
    }

    fn identity(&self) -> String {
        self.config.describe()
    }
}

/// The azure_core errors in `err`'s chain, outermost first.
fn azure_errors(err: &azure_core::Error) -> Vec<&azure_core::Error> {
    let mut found = vec![err];
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        if let Some(azure) = cause.downcast_ref::<azure_core::Error>() {
            found.push(azure);
        }
        source = cause.source();
    }
    found
}

/// Whether Entra answered and refused: a 4xx other than 408/429.
fn is_refused(err: &azure_core::Error) -> bool {
    azure_errors(err).iter().any(|e| match e.kind() {
        azure_core::error::ErrorKind::HttpResponse { status, .. } => {
            let code = u16::from(*status);
            (400..500).contains(&code) && code != 408 && code != 429
        }
        _ => false,
    })
}

fn untrusted_certificate(err: &(dyn std::error::Error + 'static)) -> bool {
    if let Some(rustls::Error::InvalidCertificate(_)) = err.downcast_ref::<rustls::Error>() {
        return true;
    }
    // io::Error hides the error it wraps from source() (and may wrap another io::Error).
    if let Some(inner) = err
        .downcast_ref::<std::io::Error>()
        .and_then(|io| io.get_ref())
        && untrusted_certificate(inner)
    {
        return true;
    }
    err.source().is_some_and(untrusted_certificate)
}

/// The authority's reason (`AADSTS700213: …`) or the transport failure with its causes, without
/// the credential's own wrapper text and troubleshooting link.
fn reason(err: &azure_core::Error) -> String {
    let errors = azure_errors(err);
    // The credential wraps the real error; start from the innermost azure error.
    let inner: &azure_core::Error = errors.last().copied().unwrap_or(err);
    let mut parts: Vec<String> = Vec::new();
    if let azure_core::error::ErrorKind::HttpResponse { status, .. } = inner.kind() {
        parts.push(format!("Entra ID answered HTTP {}", u16::from(*status)));
    }
    parts.push(inner.to_string());
    let mut source = std::error::Error::source(inner);
    while let Some(cause) = source {
        let text = cause.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        source = cause.source();
    }
    parts
        .into_iter()
        .map(|p| p.trim().replace(['\r', '\n'], " "))
        .filter(|p| !p.is_empty())
        .collect::<Vec<_>>()
        .join(": ")
}

/// One scope's token, cached and refreshed before it expires. Clones share the cache.
#[derive(Clone, Debug)]
pub struct TokenProvider {
    source: Arc<dyn TokenSource>,
    scope: String,
    cache: Arc<tokio::sync::Mutex<Option<Cached>>>,
}

#[derive(Debug)]
struct Cached {
    token: AccessToken,
    refresh_at: SystemTime,
}

impl TokenProvider {
    pub fn new(source: Arc<dyn TokenSource>, scope: impl Into<String>) -> Self {
        Self {
            source,
            scope: scope.into(),
            cache: Arc::default(),
        }
    }

    pub fn scope(&self) -> &str {
        &self.scope
    }

    /// Who the tokens are for, for messages.
    pub fn identity(&self) -> String {
        self.source.identity()
    }

    /// A token valid for a while yet: the cached one, or a new one once the cached one is within
    /// five minutes of expiry (or past half of a shorter lifetime). When a refresh fails while
    /// the cached token is still valid, the cached token is returned and the refresh is tried
    /// again a few seconds later. Concurrent callers share one request.
    pub async fn token(&self) -> Result<AccessToken> {
        let mut cache = self.cache.lock().await;
        let now = SystemTime::now();
        if let Some(cached) = cache.as_ref()
            && now < cached.refresh_at
        {
            return Ok(cached.token.clone());
        }
        match self.source.fetch(&self.scope).await {
            Ok(token) => {
                let now = SystemTime::now();
                let life = token.expires_at.duration_since(now).unwrap_or_default();
                let refresh_at = token.expires_at - REFRESH_MARGIN.min(life / 2);
                tracing::info!(
                    scope = %self.scope,
                    expires_in_s = life.as_secs(),
                    refresh_in_s = refresh_at.duration_since(now).unwrap_or_default().as_secs(),
                    "obtained an Entra access token"
                );
                *cache = Some(Cached {
                    token: token.clone(),
                    refresh_at,
                });
                Ok(token)
            }
            Err(err) => match cache.as_mut() {
                Some(cached) if now < cached.token.expires_at => {
                    tracing::warn!(error = %err, "token refresh failed; using the cached token until it expires");
                    cached.refresh_at =
                        (now + RETRY_AFTER_FAILED_REFRESH).min(cached.token.expires_at);
                    Ok(cached.token.clone())
                }
                _ => Err(err),
            },
        }
    }
}

/// One identity's tokens for any number of scopes (the PostgreSQL servers of several clouds),
/// each scope cached by a [`TokenProvider`] of its own. Clones share the caches.
#[derive(Clone, Debug)]
pub struct Tokens {
    source: Arc<dyn TokenSource>,
    providers: Arc<std::sync::Mutex<std::collections::HashMap<String, TokenProvider>>>,
}

impl Tokens {
    pub fn new(source: Arc<dyn TokenSource>) -> Self {
        Self {
            source,
            providers: Arc::default(),
        }
    }

    /// The provider of `scope`'s tokens (made on first use, then shared).
    pub fn for_scope(&self, scope: &str) -> TokenProvider {
        let mut providers = self
            .providers
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        providers
            .entry(scope.to_owned())
            .or_insert_with(|| TokenProvider::new(self.source.clone(), scope))
            .clone()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::sync::Mutex;

    use super::*;

    /// Hands out the queued answers in order.
    #[derive(Debug, Default)]
    struct Scripted {
        answers: Mutex<Vec<Result<AccessToken>>>,
        calls: Mutex<usize>,
    }

    #[async_trait::async_trait]
    impl TokenSource for Scripted {
        async fn fetch(&self, _scope: &str) -> Result<AccessToken> {
            *self.calls.lock().unwrap() += 1;
            self.answers.lock().unwrap().remove(0)
        }
        fn identity(&self) -> String {
            "scripted".into()
        }
    }

    fn token(name: &str, valid_for: Duration) -> AccessToken {
        AccessToken::new(name, SystemTime::now() + valid_for)
    }

    fn unavailable() -> Error {
        Error::Token {
            scope: POSTGRES_SCOPE.into(),
            identity: "scripted".into(),
            reason: "connection refused".into(),
            rejected: false,
        }
    }

    #[tokio::test]
    async fn a_token_is_reused_until_its_refresh_time_then_replaced() {
        let source = Arc::new(Scripted::default());
        *source.answers.lock().unwrap() = vec![
            Ok(token("long", Duration::from_secs(3600))),
            Ok(token("short", Duration::from_millis(400))),
            Ok(token("next", Duration::from_secs(3600))),
        ];
        let provider = TokenProvider::new(source.clone(), POSTGRES_SCOPE);
        assert_eq!(provider.token().await.unwrap().secret(), "long");
        assert_eq!(provider.token().await.unwrap().secret(), "long");
        assert_eq!(
            *source.calls.lock().unwrap(),
            1,
            "an hour-long token is cached"
        );

        *provider.cache.lock().await = None;
        assert_eq!(provider.token().await.unwrap().secret(), "short");
        tokio::time::sleep(Duration::from_millis(250)).await;
        assert_eq!(
            provider.token().await.unwrap().secret(),
            "next",
            "past half of a short life, the token is refreshed"
        );
    }

    #[tokio::test]
    async fn a_failed_refresh_keeps_a_valid_token_and_fails_only_without_one() {
        let source = Arc::new(Scripted::default());
        *source.answers.lock().unwrap() = vec![
            Ok(token("first", Duration::from_secs(60))),
            Err(unavailable()),
            Err(unavailable()),
        ];
        let provider = TokenProvider::new(source.clone(), POSTGRES_SCOPE);
        assert_eq!(provider.token().await.unwrap().secret(), "first");
        // Within five minutes of expiry: refresh is due, fails, the valid token is kept.
        {
            let mut cache = provider.cache.lock().await;
            cache.as_mut().unwrap().refresh_at = SystemTime::now();
        }
        assert_eq!(provider.token().await.unwrap().secret(), "first");
        // Expired and the authority is down: the error names who and why.
        {
            let mut cache = provider.cache.lock().await;
            let cached = cache.as_mut().unwrap();
            cached.refresh_at = SystemTime::now();
            cached.token.expires_at = SystemTime::now();
        }
        let err = provider.token().await.unwrap_err();
        assert!(!err.is_rejected());
        assert_eq!(
            err.to_string(),
            "failed to get a token for https://ossrdbms-aad.database.windows.net/.default as scripted: connection refused"
        );
    }

    #[test]
    fn only_configuration_failures_need_a_restart_and_an_entra_refusal_does_not() {
        let refused = Error::Token {
            scope: POSTGRES_SCOPE.into(),
            identity: "scripted".into(),
            reason: "Entra ID answered HTTP 401: AADSTS700213: No matching federated identity record found".into(),
            rejected: true,
        };
        let untrusted = Error::Untrusted {
            scope: POSTGRES_SCOPE.into(),
            identity: "scripted".into(),
            reason: "invalid peer certificate: UnknownIssuer".into(),
        };
        let invalid = Error::Invalid {
            name: ENV_AUTHORITY_HOST,
            reason: "not https".into(),
        };
        let cases = [
            (&refused, true, false, "rejected"),
            (&untrusted, true, true, "untrusted"),
            (&invalid, true, true, "config"),
            (&Error::MissingEnv(ENV_CLIENT_ID), false, true, "config"),
            (&unavailable(), false, false, "unavailable"),
        ];
        for (err, rejected, restart, label) in cases {
            assert_eq!(err.is_rejected(), rejected, "{err}");
            assert_eq!(err.needs_restart(), restart, "{err}");
            assert_eq!(err.metric_label(), label, "{err}");
        }
    }

    #[test]
    fn the_postgres_scope_follows_the_cloud_of_the_host() {
        for (host, scope) in [
            ("contoso.postgres.database.azure.com", POSTGRES_SCOPE),
            (
                "contoso.postgres.database.usgovcloudapi.net",
                "https://ossrdbms-aad.database.usgovcloudapi.net/.default",
            ),
            (
                "Contoso.Postgres.Database.ChinaCloudAPI.cn.",
                "https://ossrdbms-aad.database.chinacloudapi.cn/.default",
            ),
            ("10.0.0.4", POSTGRES_SCOPE),
        ] {
            assert_eq!(postgres_scope_for(host), scope, "{host}");
        }
    }

    #[test]
    fn the_webhook_variables_are_required_and_the_authority_defaults_to_the_public_cloud() {
        let env = |vars: &'static [(&'static str, &'static str)]| {
            move |name: &str| {
                vars.iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| (*v).to_owned())
            }
        };
        let err = WorkloadIdentityConfig::from_env(env(&[("AZURE_CLIENT_ID", "c")])).unwrap_err();
        assert!(
            err.to_string().contains("AZURE_TENANT_ID is not set"),
            "{err}"
        );
        let config = WorkloadIdentityConfig::from_env(env(&[
            ("AZURE_CLIENT_ID", "11111111-1111-1111-1111-111111111111"),
            ("AZURE_TENANT_ID", "22222222-2222-2222-2222-222222222222"),
            (
                "AZURE_FEDERATED_TOKEN_FILE",
                "/var/run/secrets/azure/tokens/azure-identity-token",
            ),
        ]))
        .unwrap();
        assert_eq!(config.authority_host, DEFAULT_AUTHORITY_HOST);
        let mut plain = config.clone();
        plain.authority_host = "http://login.example".into();
        let err = WorkloadIdentity::new(plain).unwrap_err();
        assert!(err.to_string().contains("not an https:// URL"), "{err}");
        let identity = WorkloadIdentity::new(config).unwrap();
        assert!(
            identity
                .identity()
                .contains("client id 11111111-1111-1111-1111-111111111111 in tenant 22222222"),
            "{}",
            identity.identity()
        );
        assert!(!format!("{:?}", token("s3cr3t", Duration::from_secs(1))).contains("s3cr3t"));
    }
}
