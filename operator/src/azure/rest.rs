//! What Azure Resource Manager and Microsoft Graph share as bearer-token REST APIs: the HTTP
//! client (https only, no redirects, bounded timeouts), one request with its token and metric,
//! the services' `{"error":{"code","message"}}` bodies, `Retry-After` in its three spellings,
//! and the retry loop (exponential backoff with jitter, bounded by a [`RetryPolicy`]).
//!
//! Service-specific meaning (which statuses are transient, what an error message names) stays in
//! [`super::arm`] and [`super::graph`]; both build on this module and neither imports the other.
//! The token is sent to the configured endpoint only and never appears in an error or a log
//! line. No Kubernetes here.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use backon::{ExponentialBuilder, Retryable as _};
use pgmcp_identity::TokenProvider;
use reqwest::header::{HeaderMap, RETRY_AFTER};
use reqwest::{Method, Url};
use serde_json::Value;

use crate::metrics::Metrics;

/// Millisecond variants of `Retry-After` that Azure services send.
const RETRY_AFTER_MS: [&str; 2] = ["retry-after-ms", "x-ms-retry-after-ms"];
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// The services' messages are short; anything longer is cut (a proxy's HTML page, say).
const MAX_MESSAGE_CHARS: usize = 1000;

/// Why a client could not be set up: its endpoint, its CA certificates or its HTTP client.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{service} endpoint {endpoint:?} is not a URL: {cause}")]
    NotAUrl {
        service: String,
        endpoint: String,
        cause: UrlError,
    },
    #[error(
        "{service} endpoint {endpoint} is not an https:// URL (the bearer token must not travel in clear text)"
    )]
    NotHttps { service: String, endpoint: String },
    #[error("{service} endpoint {endpoint} must not carry a query or fragment")]
    QueryOrFragment { service: String, endpoint: String },
    #[error("failed to read CA certificates: {0}")]
    Certificates(reqwest::Error),
    #[error("failed to set up the HTTP client for {service}: {}", describe(.cause))]
    HttpClient {
        service: String,
        cause: reqwest::Error,
    },
}

/// `url::ParseError`, named through reqwest's `Url` (the operator does not depend on `url`).
pub type UrlError = <Url as std::str::FromStr>::Err;

/// How hard one call tries before it gives the error back to the controller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts of one request, the first included.
    pub max_attempts: usize,
    /// First backoff wait (doubled per attempt, plus jitter).
    pub min_delay: Duration,
    /// Longest computed backoff wait.
    pub max_delay: Duration,
    /// Longest total wait across the retries of one request (including `Retry-After` waits):
    /// a wait that would pass it ends the call with the error instead.
    pub max_elapsed: Duration,
    /// Wait between polls of a long-running operation when ARM sends no `Retry-After`.
    pub poll_interval: Duration,
    /// Longest time a long-running operation is followed before it is left to the next
    /// reconcile.
    pub operation_timeout: Duration,
    /// Longest wait for one answer; a request that takes longer fails as a transport error
    /// (and is retried like one).
    pub request_timeout: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 5,
            min_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(10),
            max_elapsed: Duration::from_secs(30),
            poll_interval: Duration::from_secs(5),
            operation_timeout: Duration::from_secs(60),
            request_timeout: REQUEST_TIMEOUT,
        }
    }
}

/// What a request does to its resource, for messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Read,
    CreateOrUpdate,
    Delete,
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Action::Read => "read",
            Action::CreateOrUpdate => "create or update",
            Action::Delete => "delete",
        })
    }
}

/// One answer, read whole.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: HeaderMap,
    /// The JSON body; `Null` when empty or not JSON.
    pub body: Value,
}

/// Why one request got no usable answer, before the service gives it a meaning.
#[derive(Debug)]
pub enum Failure {
    /// No token for the service's scope.
    Token(pgmcp_identity::Error),
    /// The service answered with an error status.
    Status {
        status: u16,
        /// `error.code`, or "" if none.
        code: String,
        message: String,
        /// What the service asked for with `Retry-After`.
        retry_after: Option<Duration>,
    },
    /// No answer: connection refused, TLS, timeout.
    Transport(String),
}

/// A bearer-token REST endpoint: the HTTP client, the configured origin, the token for it, the
/// request metric. Clones share the connection pool and the token cache.
#[derive(Clone)]
pub struct Rest {
    /// The service's name in messages: "ARM", "Microsoft Graph".
    service: &'static str,
    http: reqwest::Client,
    endpoint: Url,
    token: TokenProvider,
    metrics: Arc<Metrics>,
    retry: RetryPolicy,
}

impl fmt::Debug for Rest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Rest")
            .field("service", &self.service)
            .field("endpoint", &self.endpoint.as_str())
            .field("scope", &self.token.scope())
            .field("retry", &self.retry)
            .finish_non_exhaustive()
    }
}

impl Rest {
    /// A client for `endpoint` (an `https://` URL without query), authenticating with `token`.
    /// Server certificates are checked against the platform's roots, which honour
    /// `SSL_CERT_FILE`.
    pub fn new(
        service: &'static str,
        endpoint: &str,
        token: TokenProvider,
        metrics: Arc<Metrics>,
    ) -> Result<Self, ConfigError> {
        Ok(Self {
            service,
            http: http_client(service, &[])?,
            endpoint: parse_endpoint(service, endpoint)?,
            token,
            metrics,
            retry: RetryPolicy::default(),
        })
    }

    /// Also trusts the CA certificates in `pem` (a private cloud's, or a test's).
    pub fn with_root_certificates(mut self, pem: &[u8]) -> Result<Self, ConfigError> {
        let certs =
            reqwest::Certificate::from_pem_bundle(pem).map_err(ConfigError::Certificates)?;
        self.http = http_client(self.service, &certs)?;
        Ok(self)
    }

    pub fn with_retry_policy(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    pub fn retry_policy(&self) -> &RetryPolicy {
        &self.retry
    }

    pub fn endpoint(&self) -> &Url {
        &self.endpoint
    }

    /// The scope the tokens are for.
    pub fn scope(&self) -> &str {
        self.token.scope()
    }

    /// Whether `url` is on the configured endpoint's origin: the only place the token goes.
    pub fn same_origin(&self, url: &Url) -> bool {
        url.origin() == self.endpoint.origin()
    }

    /// One HTTP request: token, send, read the answer, count it (`op` is the metric label).
    /// With `not_found_ok`, 404 is an answer rather than a failure.
    pub async fn attempt(
        &self,
        op: &'static str,
        method: &Method,
        url: &Url,
        body: Option<&Value>,
        not_found_ok: bool,
    ) -> Result<Reply, Failure> {
        let token = self.token.token().await.map_err(Failure::Token)?;
        let mut request = self
            .http
            .request(method.clone(), url.clone())
            .timeout(self.retry.request_timeout)
            .bearer_auth(token.secret());
        if let Some(body) = body {
            request = request.json(body);
        }
        let started = Instant::now();
        let response = match request.send().await {
            Ok(response) => response,
            Err(err) => {
                self.metrics.arm_request(op, None);
                return Err(Failure::Transport(describe(&err)));
            }
        };
        let status = response.status().as_u16();
        self.metrics.arm_request(op, Some(status));
        let headers = response.headers().clone();
        let text = response
            .text()
            .await
            .map_err(|e| Failure::Transport(describe(&e)))?;
        tracing::debug!(
            service = self.service,
            operation = op,
            method = %method,
            path = url.path(),
            status,
            elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
            "request answered"
        );
        let body: Value = if text.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::Null)
        };
        if (200..300).contains(&status) || (status == 404 && not_found_ok) {
            return Ok(Reply {
                status,
                headers,
                body,
            });
        }
        let (code, message) = error_body(&body, &text, status);
        Err(Failure::Status {
            status,
            code,
            message,
            retry_after: retry_after(&headers),
        })
    }
}

/// What the retry loop needs from a service's error.
pub trait Retry: fmt::Display {
    fn is_transient(&self) -> bool;
    /// The wait the service asked for (`Retry-After`).
    fn retry_after(&self) -> Option<Duration>;
    fn reason(&self) -> &'static str;
}

/// Runs `attempt` until it succeeds, fails for good, or the policy is spent: exponential backoff
/// with jitter, the service's `Retry-After` replacing the computed wait, the total wait bounded
/// by [`RetryPolicy::max_elapsed`]. `service` and `op` name the request in log lines.
pub async fn with_retries<T, E, F, Fut>(
    policy: RetryPolicy,
    service: &'static str,
    op: &'static str,
    resource: &str,
    attempt: F,
) -> Result<T, E>
where
    E: Retry,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let started = Instant::now();
    let backoff = ExponentialBuilder::default()
        .with_min_delay(policy.min_delay)
        .with_max_delay(policy.max_delay)
        .with_max_times(policy.max_attempts.saturating_sub(1))
        .with_jitter();
    attempt
        .retry(backoff)
        .when(|err: &E| err.is_transient())
        .adjust(|err: &E, next| {
            // The service's Retry-After wins over the computed wait; the attempt budget still
            // counts.
            let wait = err.retry_after().or(next).filter(|_| next.is_some())?;
            (started.elapsed() + wait <= policy.max_elapsed).then_some(wait)
        })
        .notify(|err: &E, wait| {
            tracing::info!(
                service,
                operation = op,
                resource,
                reason = err.reason(),
                error = %err,
                wait_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
                "request failed; retrying"
            );
        })
        .await
}

/// `endpoint` as an `https://` URL without query or fragment; `service` names it in messages.
pub fn parse_endpoint(service: &str, endpoint: &str) -> Result<Url, ConfigError> {
    let url = Url::parse(endpoint.trim()).map_err(|cause| ConfigError::NotAUrl {
        service: service.to_owned(),
        endpoint: endpoint.to_owned(),
        cause,
    })?;
    if url.scheme() != "https" {
        return Err(ConfigError::NotHttps {
            service: service.to_owned(),
            endpoint: endpoint.to_owned(),
        });
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(ConfigError::QueryOrFragment {
            service: service.to_owned(),
            endpoint: endpoint.to_owned(),
        });
    }
    Ok(url)
}

/// The token scope of a service at `endpoint`, as Azure's SDKs derive it for a cloud:
/// `{endpoint}/.default` (`https://management.usgovcloudapi.net/.default`,
/// `https://microsoftgraph.chinacloudapi.cn/.default`). The public cloud's endpoints give the
/// public scopes.
pub fn scope_for(endpoint: &str) -> String {
    let origin = Url::parse(endpoint.trim())
        .map(|url| url.origin().ascii_serialization())
        .unwrap_or_else(|_| endpoint.trim().trim_end_matches('/').to_owned());
    format!("{origin}/.default")
}

/// The HTTP client of a bearer-token API: https only, no redirects (following one would carry
/// the token along), bounded timeouts, `roots` trusted besides the platform's.
fn http_client(
    service: &str,
    roots: &[reqwest::Certificate],
) -> Result<reqwest::Client, ConfigError> {
    let mut builder = reqwest::Client::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(REQUEST_TIMEOUT)
        .https_only(true)
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("pgmcp-operator/", env!("CARGO_PKG_VERSION")));
    for cert in roots {
        builder = builder.add_root_certificate(cert.clone());
    }
    builder.build().map_err(|cause| ConfigError::HttpClient {
        service: service.to_owned(),
        cause,
    })
}

/// The `{"error":{"code","message"}}` of ARM and Graph (some resource providers leave out the
/// `error` wrapper), else the start of the body, else the HTTP reason.
pub fn error_body(body: &Value, text: &str, status: u16) -> (String, String) {
    let error = if body["error"].is_object() {
        &body["error"]
    } else {
        body
    };
    let code = error["code"].as_str().unwrap_or_default().to_owned();
    let message = match error["message"].as_str() {
        Some(message) => clip(message),
        None if !text.trim().is_empty() => clip(text.trim()),
        None => reqwest::StatusCode::from_u16(status)
            .ok()
            .and_then(|s| s.canonical_reason())
            .unwrap_or("no message")
            .to_owned(),
    };
    (code, message)
}

/// One line of at most [`MAX_MESSAGE_CHARS`] characters.
pub fn clip(text: &str) -> String {
    let one_line = text.replace(['\r', '\n'], " ");
    match one_line.char_indices().nth(MAX_MESSAGE_CHARS) {
        Some((at, _)) => format!("{}…", &one_line[..at]),
        None => one_line,
    }
}

/// The wait a response asks for: `retry-after-ms`/`x-ms-retry-after-ms`, else `Retry-After` in
/// seconds or as an HTTP date.
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let text = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    };
    for name in RETRY_AFTER_MS {
        if let Some(ms) = text(name).and_then(|v| v.parse::<u64>().ok()) {
            return Some(Duration::from_millis(ms));
        }
    }
    let value = text(RETRY_AFTER.as_str())?;
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = jiff::fmt::rfc2822::parse(value).ok()?;
    let at = SystemTime::from(at.timestamp());
    Some(at.duration_since(SystemTime::now()).unwrap_or_default())
}

/// An error with its causes, e.g. "error sending request for url (…): connection refused".
pub fn describe(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text = format!("{text}: {cause_text}");
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use reqwest::header::HeaderValue;
    use serde_json::json;

    use super::*;

    #[test]
    fn retry_after_reads_seconds_milliseconds_and_dates() {
        let mut headers = HeaderMap::new();
        assert_eq!(retry_after(&headers), None);
        headers.insert(RETRY_AFTER, HeaderValue::from_static("7"));
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(7)));
        headers.insert("x-ms-retry-after-ms", HeaderValue::from_static("250"));
        assert_eq!(retry_after(&headers), Some(Duration::from_millis(250)));

        let mut headers = HeaderMap::new();
        let later = jiff::Timestamp::now() + jiff::SignedDuration::from_secs(120);
        let date = jiff::fmt::rfc2822::DateTimePrinter::new()
            .timestamp_to_rfc9110_string(&later)
            .unwrap();
        headers.insert(RETRY_AFTER, HeaderValue::from_str(&date).unwrap());
        let wait = retry_after(&headers).unwrap();
        assert!(
            wait > Duration::from_secs(100) && wait <= Duration::from_secs(120),
            "{wait:?}"
        );
        headers.insert(
            RETRY_AFTER,
            HeaderValue::from_static("Wed, 21 Oct 2015 07:28:00 GMT"),
        );
        assert_eq!(retry_after(&headers), Some(Duration::ZERO));
    }

    #[test]
    fn error_bodies_with_and_without_the_wrapper() {
        let wrapped = json!({"error": {"code": "AuthorizationFailed", "message": "no"}});
        assert_eq!(
            error_body(&wrapped, "", 403),
            ("AuthorizationFailed".to_owned(), "no".to_owned())
        );
        let bare = json!({"code": "UserError", "message": "bad\r\ncategory"});
        assert_eq!(
            error_body(&bare, "", 400),
            ("UserError".to_owned(), "bad  category".to_owned())
        );
        assert_eq!(
            error_body(&Value::Null, "<html>gateway</html>", 502),
            (String::new(), "<html>gateway</html>".to_owned())
        );
        assert_eq!(
            error_body(&Value::Null, "", 503),
            (String::new(), "Service Unavailable".to_owned())
        );
        let long = "x".repeat(5000);
        assert_eq!(
            error_body(&Value::Null, &long, 500).1.chars().count(),
            MAX_MESSAGE_CHARS + 1
        );
    }

    #[test]
    fn endpoints_must_be_https_without_query() {
        assert!(parse_endpoint("ARM", "https://management.azure.com").is_ok());
        assert!(parse_endpoint("ARM", "https://127.0.0.1:8443/").is_ok());
        assert_eq!(
            parse_endpoint("ARM", "http://management.azure.com")
                .unwrap_err()
                .to_string(),
            "ARM endpoint http://management.azure.com is not an https:// URL (the bearer token \
             must not travel in clear text)"
        );
        assert!(parse_endpoint("ARM", "https://x/?a=b").is_err());
        assert_eq!(
            parse_endpoint("ARM", "management.azure.com")
                .unwrap_err()
                .to_string(),
            "ARM endpoint \"management.azure.com\" is not a URL: relative URL without a base"
        );
    }

    #[test]
    fn scopes_follow_the_configured_cloud() {
        for (endpoint, scope) in [
            (
                "https://management.azure.com",
                "https://management.azure.com/.default",
            ),
            (
                "https://management.usgovcloudapi.net/",
                "https://management.usgovcloudapi.net/.default",
            ),
            (
                "https://management.chinacloudapi.cn",
                "https://management.chinacloudapi.cn/.default",
            ),
            (
                "https://graph.microsoft.com",
                "https://graph.microsoft.com/.default",
            ),
            (
                "https://graph.microsoft.us",
                "https://graph.microsoft.us/.default",
            ),
            (
                "https://microsoftgraph.chinacloudapi.cn/",
                "https://microsoftgraph.chinacloudapi.cn/.default",
            ),
            ("https://127.0.0.1:8443", "https://127.0.0.1:8443/.default"),
        ] {
            assert_eq!(scope_for(endpoint), scope, "{endpoint}");
        }
    }
}
