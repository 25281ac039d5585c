//! The Azure Resource Manager client: GET, PUT and DELETE of one resource by id, with the
//! operator's own workload-identity token, bounded retries, long-running operations followed to
//! their end, ARM's error bodies in errors and every request counted in metrics.
//!
//! - **Auth**: `Authorization: Bearer` from a [`TokenProvider`] for
//!   `https://management.azure.com/.default` (cached and refreshed by the provider). The token
//!   is sent to the configured endpoint only — also when ARM names an operation-status URL
//!   elsewhere — and never appears in an error or a log line.
//! - **Retries** (429, 408, 500, 502, 503, 504, connection failures): exponential backoff with
//!   jitter ([`backon`]); `Retry-After` (seconds or HTTP date, or `retry-after-ms`) replaces the
//!   computed wait. One call is bounded by [`RetryPolicy`] (5 attempts, 30 s of waiting by
//!   default): when ARM asks for a longer wait, the error says so ([`Error::retry_after`]) and
//!   the controller's own backoff takes over, so a reconcile never hangs here.
//! - **Long-running operations**: a write answered with `Azure-AsyncOperation` is polled until
//!   `status` is `Succeeded` (`Failed`/`Canceled` become [`Error::OperationFailed`] with the
//!   operation's error); `202 Accepted` with `Location` is polled until it stops answering 202.
//!   Polls wait `Retry-After`, else [`RetryPolicy::poll_interval`], within
//!   [`RetryPolicy::operation_timeout`].
//! - **Metrics**: `pgmcp_operator_arm_requests_total{operation, class}` per HTTP request sent
//!   (retries and polls included).
//!
//! No Kubernetes here; resource-specific bodies live in [`super::fic`] and [`super::foundry`].

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use backon::{ExponentialBuilder, Retryable as _};
use pgmcp_identity::TokenProvider;
use reqwest::header::{HeaderMap, LOCATION, RETRY_AFTER};
use reqwest::{Method, Url};
use serde_json::Value;

use super::AzureSettings;
use super::graph::GraphClient;
use crate::metrics::Metrics;

const ASYNC_OPERATION: &str = "azure-asyncoperation";
/// Millisecond variants of `Retry-After` that Azure services send.
const RETRY_AFTER_MS: [&str; 2] = ["retry-after-ms", "x-ms-retry-after-ms"];
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// ARM's messages are short; anything longer is cut (a proxy's HTML page, say).
const MAX_MESSAGE_CHARS: usize = 1000;

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
    /// Longest time a long-running operation is followed before [`Error::OperationTimedOut`].
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

/// A kind of ARM resource: its name in messages and its metric operation labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResourceKind {
    /// For messages: "federated identity credential".
    pub noun: &'static str,
    pub get_op: &'static str,
    pub put_op: &'static str,
    pub delete_op: &'static str,
    /// Polls of its long-running operations.
    pub poll_op: &'static str,
}

/// Why an ARM call failed. Messages name the resource id and ARM's code and message; never a
/// token.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("failed to {action} {kind} {resource}: no ARM token: {source}")]
    Token {
        action: Action,
        kind: &'static str,
        resource: String,
        #[source]
        source: Box<pgmcp_identity::Error>,
    },
    #[error("failed to {action} {kind} {resource}: ARM answered HTTP {status} {code}: {message}")]
    Arm {
        action: Action,
        kind: &'static str,
        resource: String,
        status: u16,
        /// ARM's `error.code` (`AuthorizationFailed`, `ResourceNotFound`, …), or "" if none.
        code: String,
        message: String,
        /// What ARM asked for with `Retry-After` (429/503).
        retry_after: Option<Duration>,
    },
    #[error("failed to {action} {kind} {resource}: ARM could not be reached: {message}")]
    Transport {
        action: Action,
        kind: &'static str,
        resource: String,
        message: String,
    },
    #[error(
        "failed to {action} {kind} {resource}: ARM's long-running operation ended {status}: {code}: {message}"
    )]
    OperationFailed {
        action: Action,
        kind: &'static str,
        resource: String,
        /// `Failed` or `Canceled`.
        status: String,
        code: String,
        message: String,
    },
    #[error(
        "{action} of {kind} {resource} is still running in ARM after {waited_s} s; it is checked again at the next reconcile"
    )]
    OperationTimedOut {
        action: Action,
        kind: &'static str,
        resource: String,
        waited_s: u64,
    },
    #[error("failed to {action} {kind} {resource}: unexpected answer from ARM: {message}")]
    InvalidResponse {
        action: Action,
        kind: &'static str,
        resource: String,
        message: String,
    },
    #[error("invalid ARM resource id {resource:?} for a {kind}: {message}")]
    InvalidResourceId {
        kind: &'static str,
        resource: String,
        message: String,
    },
    #[error("invalid ARM client setting: {0}")]
    Config(String),
}

impl Error {
    /// Condition reason (bounded, CamelCase).
    pub fn reason(&self) -> &'static str {
        match self {
            Error::Token { .. } => "ArmTokenUnavailable",
            Error::Arm { status, .. } => match status {
                400 => "ArmBadRequest",
                401 => "ArmAuthenticationFailed",
                403 => "ArmAuthorizationFailed",
                404 => "ArmNotFound",
                409 => "ArmConflict",
                429 => "ArmThrottled",
                500..=599 => "ArmUnavailable",
                _ => "ArmRequestFailed",
            },
            Error::Transport { .. } => "ArmUnavailable",
            Error::OperationFailed { .. } => "ArmOperationFailed",
            Error::OperationTimedOut { .. } => "ArmOperationPending",
            Error::InvalidResponse { .. } => "ArmInvalidResponse",
            Error::InvalidResourceId { .. } => "ArmInvalidResourceId",
            Error::Config(_) => "ArmConfigInvalid",
        }
    }

    /// True when retrying cannot help until someone changes something: the request was invalid
    /// (400), the operator's identity was refused (401, or Entra refused its token) or lacks a
    /// role assignment (403), the parent resource does not exist (404: a missing resource
    /// itself is not an error for `ensure`/`delete`), or a resource id or setting is malformed.
    pub fn needs_user(&self) -> bool {
        match self {
            Error::Arm { status, .. } => matches!(status, 400 | 401 | 403 | 404),
            Error::Token { source, .. } => source.is_rejected(),
            Error::InvalidResourceId { .. } | Error::Config(_) => true,
            Error::Transport { .. }
            | Error::OperationFailed { .. }
            | Error::OperationTimedOut { .. }
            | Error::InvalidResponse { .. } => false,
        }
    }

    /// HTTP status ARM answered with, if it answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            Error::Arm { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// ARM's `error.code`, if it sent one.
    pub fn code(&self) -> Option<&str> {
        match self {
            Error::Arm { code, .. } | Error::OperationFailed { code, .. } if !code.is_empty() => {
                Some(code)
            }
            _ => None,
        }
    }

    /// The wait ARM asked for (`Retry-After`), for the controller's requeue.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Error::Arm { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// Whether sending the same request again may succeed: throttling, ARM's 5xx, timeouts,
    /// no connection, and the federated-credential RP's "concurrent writes" conflict.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Transport { .. } => true,
            Error::Arm { status, code, .. } => {
                matches!(status, 408 | 429 | 500 | 502 | 503 | 504)
                    || (*status == 409 && code.starts_with("Concurrent"))
            }
            _ => false,
        }
    }
}

/// One answer from ARM, read whole.
#[derive(Debug)]
struct Reply {
    status: u16,
    headers: HeaderMap,
    body: Value,
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

/// What a request is about, for errors and metrics.
#[derive(Clone, Copy)]
struct Call<'a> {
    kind: &'a ResourceKind,
    action: Action,
    op: &'static str,
    resource: &'a str,
}

/// The ARM client. Clones share the HTTP connection pool and the token cache.
#[derive(Clone)]
pub struct ArmClient {
    http: reqwest::Client,
    endpoint: Url,
    settings: AzureSettings,
    token: TokenProvider,
    metrics: Arc<Metrics>,
    retry: RetryPolicy,
    /// Microsoft Graph, for the steps that need both (app role assignments). It travels with
    /// the ARM client because both use the operator's one workload identity.
    graph: Option<GraphClient>,
}

impl fmt::Debug for ArmClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ArmClient")
            .field("endpoint", &self.endpoint.as_str())
            .field("settings", &self.settings)
            .field("scope", &self.token.scope())
            .field("retry", &self.retry)
            .field("graph", &self.graph)
            .finish_non_exhaustive()
    }
}

impl ArmClient {
    /// A client for `settings.arm_endpoint` (an `https://` URL), authenticating with `token`
    /// (a provider for [`pgmcp_identity::ARM_SCOPE`]). Server certificates are checked against
    /// the platform's roots, which honour `SSL_CERT_FILE`.
    pub fn new(
        settings: AzureSettings,
        token: TokenProvider,
        metrics: Arc<Metrics>,
    ) -> Result<Self, Error> {
        let endpoint = parse_endpoint("ARM", &settings.arm_endpoint).map_err(Error::Config)?;
        Ok(Self {
            http: http_client("ARM", &[]).map_err(Error::Config)?,
            endpoint,
            settings,
            token,
            metrics,
            retry: RetryPolicy::default(),
            graph: None,
        })
    }

    /// Also talks to Microsoft Graph through `graph`.
    pub fn with_graph(mut self, graph: GraphClient) -> Self {
        self.graph = Some(graph);
        self
    }

    /// The Microsoft Graph client, when the operator was given one.
    pub fn graph(&self) -> Option<&GraphClient> {
        self.graph.as_ref()
    }

    /// Also trusts the CA certificates in `pem` (a private cloud's, or a test's).
    pub fn with_root_certificates(mut self, pem: &[u8]) -> Result<Self, Error> {
        let certs = reqwest::Certificate::from_pem_bundle(pem)
            .map_err(|e| Error::Config(format!("failed to read CA certificates: {e}")))?;
        self.http = http_client("ARM", &certs).map_err(Error::Config)?;
        Ok(self)
    }

    /// Replaces the retry and polling bounds.
    pub fn with_retry_policy(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    pub fn settings(&self) -> &AzureSettings {
        &self.settings
    }

    pub fn retry_policy(&self) -> &RetryPolicy {
        &self.retry
    }

    /// The resource, or `None` when ARM answers 404.
    pub async fn get(
        &self,
        kind: &ResourceKind,
        resource_id: &str,
        api_version: &str,
    ) -> Result<Option<Value>, Error> {
        let call = Call {
            kind,
            action: Action::Read,
            op: kind.get_op,
            resource: resource_id,
        };
        let url = self.url(kind, resource_id, api_version)?;
        let reply = self.send(call, Method::GET, &url, None, true).await?;
        Ok((reply.status != 404).then_some(reply.body))
    }

    /// Creates or replaces the resource with `body` and returns what ARM holds afterwards
    /// (after a long-running operation: the resource read again).
    pub async fn put(
        &self,
        kind: &ResourceKind,
        resource_id: &str,
        api_version: &str,
        body: &Value,
    ) -> Result<Value, Error> {
        let call = Call {
            kind,
            action: Action::CreateOrUpdate,
            op: kind.put_op,
            resource: resource_id,
        };
        let url = self.url(kind, resource_id, api_version)?;
        let reply = self
            .send(call, Method::PUT, &url, Some(body), false)
            .await?;
        if !self.follow(call, &reply).await? {
            return Ok(reply.body);
        }
        self.get(kind, resource_id, api_version)
            .await?
            .ok_or_else(|| Error::InvalidResponse {
                action: call.action,
                kind: kind.noun,
                resource: resource_id.to_owned(),
                message: "the operation succeeded but the resource does not exist".to_owned(),
            })
    }

    /// Deletes the resource. `Ok(false)` when it was already gone (404 or 204), `Ok(true)` when
    /// ARM deleted it (a long-running delete is followed to its end).
    pub async fn delete(
        &self,
        kind: &ResourceKind,
        resource_id: &str,
        api_version: &str,
    ) -> Result<bool, Error> {
        let call = Call {
            kind,
            action: Action::Delete,
            op: kind.delete_op,
            resource: resource_id,
        };
        let url = self.url(kind, resource_id, api_version)?;
        let reply = self.send(call, Method::DELETE, &url, None, true).await?;
        if matches!(reply.status, 404 | 204) {
            return Ok(false);
        }
        self.follow(call, &reply).await?;
        Ok(true)
    }

    /// `{endpoint}{resource_id}?api-version=…`.
    fn url(&self, kind: &ResourceKind, resource_id: &str, api_version: &str) -> Result<Url, Error> {
        check_resource_id(resource_id).map_err(|message| Error::InvalidResourceId {
            kind: kind.noun,
            resource: resource_id.to_owned(),
            message,
        })?;
        let mut url = self.endpoint.clone();
        url.set_path(&format!(
            "{}{resource_id}",
            self.endpoint.path().trim_end_matches('/')
        ));
        url.query_pairs_mut()
            .clear()
            .append_pair("api-version", api_version);
        Ok(url)
    }

    /// One request with retries ([`with_retries`]). With `not_found_ok`, 404 is an answer rather
    /// than an error.
    async fn send(
        &self,
        call: Call<'_>,
        method: Method,
        url: &Url,
        body: Option<&Value>,
        not_found_ok: bool,
    ) -> Result<Reply, Error> {
        with_retries(self.retry, "ARM", call.op, call.resource, || {
            self.attempt(call, &method, url, body, not_found_ok)
        })
        .await
    }

    /// One HTTP request: token, send, read the answer, count it.
    async fn attempt(
        &self,
        call: Call<'_>,
        method: &Method,
        url: &Url,
        body: Option<&Value>,
        not_found_ok: bool,
    ) -> Result<Reply, Error> {
        let token = self.token.token().await.map_err(|source| Error::Token {
            action: call.action,
            kind: call.kind.noun,
            resource: call.resource.to_owned(),
            source: Box::new(source),
        })?;
        let mut request = self
            .http
            .request(method.clone(), url.clone())
            .timeout(self.retry.request_timeout)
            .bearer_auth(token.secret());
        if let Some(body) = body {
            request = request.json(body);
        }
        let transport = |message: String| Error::Transport {
            action: call.action,
            kind: call.kind.noun,
            resource: call.resource.to_owned(),
            message,
        };
        let started = Instant::now();
        let response = match request.send().await {
            Ok(response) => response,
            Err(err) => {
                self.metrics.arm_request(call.op, None);
                return Err(transport(describe(&err)));
            }
        };
        let status = response.status().as_u16();
        self.metrics.arm_request(call.op, Some(status));
        let headers = response.headers().clone();
        let text = response.text().await.map_err(|e| transport(describe(&e)))?;
        tracing::debug!(
            operation = call.op,
            method = %method,
            resource = call.resource,
            status,
            elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
            "ARM request"
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
        let (code, message) = arm_error(&body, &text, status);
        Err(Error::Arm {
            action: call.action,
            kind: call.kind.noun,
            resource: call.resource.to_owned(),
            status,
            code,
            message,
            retry_after: retry_after(&headers),
        })
    }

    /// Follows a long-running operation started by `reply`. `Ok(false)` when `reply` was final.
    async fn follow(&self, call: Call<'_>, reply: &Reply) -> Result<bool, Error> {
        let invalid = |message: String| Error::InvalidResponse {
            action: call.action,
            kind: call.kind.noun,
            resource: call.resource.to_owned(),
            message,
        };
        let header_url = |name: &str| -> Result<Option<Url>, Error> {
            let Some(value) = reply.headers.get(name) else {
                return Ok(None);
            };
            let url = value
                .to_str()
                .ok()
                .and_then(|v| Url::parse(v).ok())
                .ok_or_else(|| invalid(format!("the {name} header is not a URL")))?;
            // The bearer token goes to the ARM endpoint only.
            if url.origin() != self.endpoint.origin() {
                return Err(invalid(format!(
                    "the {name} header points at {}, not at the ARM endpoint {}; the token is not sent there",
                    url.origin().ascii_serialization(),
                    self.endpoint.origin().ascii_serialization()
                )));
            }
            Ok(Some(url))
        };
        let poll = Call {
            op: call.kind.poll_op,
            ..call
        };
        let deadline = Instant::now() + self.retry.operation_timeout;
        let mut wait = retry_after(&reply.headers).unwrap_or(self.retry.poll_interval);
        let timed_out = || Error::OperationTimedOut {
            action: call.action,
            kind: call.kind.noun,
            resource: call.resource.to_owned(),
            waited_s: self.retry.operation_timeout.as_secs(),
        };
        if let Some(status_url) = header_url(ASYNC_OPERATION)? {
            loop {
                if Instant::now() + wait > deadline {
                    return Err(timed_out());
                }
                tokio::time::sleep(wait).await;
                let answer = self
                    .send(poll, Method::GET, &status_url, None, false)
                    .await?;
                let status = answer.body["status"].as_str().unwrap_or_default();
                match status.to_ascii_lowercase().as_str() {
                    "succeeded" => return Ok(true),
                    "failed" | "canceled" | "cancelled" => {
                        let error = &answer.body["error"];
                        return Err(Error::OperationFailed {
                            action: call.action,
                            kind: call.kind.noun,
                            resource: call.resource.to_owned(),
                            status: status.to_owned(),
                            code: error["code"].as_str().unwrap_or_default().to_owned(),
                            message: clip(error["message"].as_str().unwrap_or_default()),
                        });
                    }
                    "" => {
                        return Err(invalid(
                            "the operation status has no status field".to_owned(),
                        ));
                    }
                    _ => wait = retry_after(&answer.headers).unwrap_or(self.retry.poll_interval),
                }
            }
        }
        if reply.status != 202 {
            return Ok(false);
        }
        let Some(location) = header_url(LOCATION.as_str())? else {
            return Err(invalid(
                "202 Accepted without an Azure-AsyncOperation or Location header".to_owned(),
            ));
        };
        loop {
            if Instant::now() + wait > deadline {
                return Err(timed_out());
            }
            tokio::time::sleep(wait).await;
            let answer = self.send(poll, Method::GET, &location, None, false).await?;
            if answer.status != 202 {
                return Ok(true);
            }
            wait = retry_after(&answer.headers).unwrap_or(self.retry.poll_interval);
        }
    }
}

/// What the retry loop needs from an error (ARM's and Microsoft Graph's).
pub(super) trait Retry: fmt::Display {
    fn is_transient(&self) -> bool;
    /// The wait the service asked for (`Retry-After`).
    fn retry_after(&self) -> Option<Duration>;
    fn reason(&self) -> &'static str;
}

impl Retry for Error {
    fn is_transient(&self) -> bool {
        Error::is_transient(self)
    }
    fn retry_after(&self) -> Option<Duration> {
        Error::retry_after(self)
    }
    fn reason(&self) -> &'static str {
        Error::reason(self)
    }
}

/// Runs `attempt` until it succeeds, fails for good, or the policy is spent: exponential backoff
/// with jitter, the service's `Retry-After` replacing the computed wait, the total wait bounded
/// by [`RetryPolicy::max_elapsed`]. `service` and `op` name the request in log lines.
pub(super) async fn with_retries<T, E, F, Fut>(
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
pub(super) fn parse_endpoint(service: &str, endpoint: &str) -> Result<Url, String> {
    let url = Url::parse(endpoint.trim())
        .map_err(|e| format!("{service} endpoint {endpoint:?} is not a URL: {e}"))?;
    if url.scheme() != "https" {
        return Err(format!(
            "{service} endpoint {endpoint} is not an https:// URL (the bearer token must not travel in clear text)"
        ));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(format!(
            "{service} endpoint {endpoint} must not carry a query or fragment"
        ));
    }
    Ok(url)
}

/// The HTTP client of a bearer-token API: https only, no redirects (following one would carry
/// the token along), bounded timeouts, `roots` trusted besides the platform's.
pub(super) fn http_client(
    service: &str,
    roots: &[reqwest::Certificate],
) -> Result<reqwest::Client, String> {
    let mut builder = reqwest::Client::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(REQUEST_TIMEOUT)
        .https_only(true)
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("pgmcp-operator/", env!("CARGO_PKG_VERSION")));
    for cert in roots {
        builder = builder.add_root_certificate(cert.clone());
    }
    builder.build().map_err(|e| {
        format!(
            "failed to set up the HTTP client for {service}: {}",
            describe(&e)
        )
    })
}

/// An ARM resource id: `/subscriptions/…`, plain path segments, nothing that would change the
/// URL's meaning (query, fragment, escapes, dot segments).
fn check_resource_id(id: &str) -> Result<(), String> {
    if !id
        .get(..15)
        .is_some_and(|p| p.eq_ignore_ascii_case("/subscriptions/"))
    {
        return Err("it must start with /subscriptions/".to_owned());
    }
    if let Some(c) = id
        .chars()
        .find(|c| c.is_control() || c.is_whitespace() || matches!(c, '?' | '#' | '%' | '\\'))
    {
        return Err(format!("it must not contain {c:?}"));
    }
    if id[1..]
        .split('/')
        .any(|segment| segment.is_empty() || segment == "." || segment == "..")
    {
        return Err("it has an empty, '.' or '..' segment".to_owned());
    }
    Ok(())
}

/// ARM's `{"error":{"code","message"}}` (some resource providers leave out the `error`
/// wrapper), else the start of the body, else the HTTP reason.
pub(super) fn arm_error(body: &Value, text: &str, status: u16) -> (String, String) {
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

pub(super) fn clip(text: &str) -> String {
    let one_line = text.replace(['\r', '\n'], " ");
    match one_line.char_indices().nth(MAX_MESSAGE_CHARS) {
        Some((at, _)) => format!("{}…", &one_line[..at]),
        None => one_line,
    }
}

/// The wait a response asks for: `retry-after-ms`/`x-ms-retry-after-ms`, else `Retry-After` in
/// seconds or as an HTTP date.
pub(super) fn retry_after(headers: &HeaderMap) -> Option<Duration> {
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
pub(super) fn describe(err: &dyn std::error::Error) -> String {
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
    fn arm_error_bodies_with_and_without_the_wrapper() {
        let wrapped = json!({"error": {"code": "AuthorizationFailed", "message": "no"}});
        assert_eq!(
            arm_error(&wrapped, "", 403),
            ("AuthorizationFailed".to_owned(), "no".to_owned())
        );
        let bare = json!({"code": "UserError", "message": "bad\r\ncategory"});
        assert_eq!(
            arm_error(&bare, "", 400),
            ("UserError".to_owned(), "bad  category".to_owned())
        );
        assert_eq!(
            arm_error(&Value::Null, "<html>gateway</html>", 502),
            (String::new(), "<html>gateway</html>".to_owned())
        );
        assert_eq!(
            arm_error(&Value::Null, "", 503),
            (String::new(), "Service Unavailable".to_owned())
        );
        let long = "x".repeat(5000);
        assert_eq!(
            arm_error(&Value::Null, &long, 500).1.chars().count(),
            MAX_MESSAGE_CHARS + 1
        );
    }

    #[test]
    fn resource_ids_that_would_change_the_url_are_refused() {
        let good = "/subscriptions/s/resourceGroups/rg-(1).a/providers/Microsoft.ManagedIdentity/userAssignedIdentities/mi";
        assert_eq!(check_resource_id(good), Ok(()));
        for bad in [
            "subscriptions/s",
            "/subscription/s",
            "/subscriptions/s/../other",
            "/subscriptions/s//x",
            "/subscriptions/s/x?api-version=1",
            "/subscriptions/s/x#f",
            "/subscriptions/s/x%2F..",
            "/subscriptions/s/x y",
            "/subscriptions/s/x/",
        ] {
            assert!(check_resource_id(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn endpoints_must_be_https_without_query() {
        assert!(parse_endpoint("ARM", "https://management.azure.com").is_ok());
        assert!(parse_endpoint("ARM", "https://127.0.0.1:8443/").is_ok());
        assert!(parse_endpoint("ARM", "http://management.azure.com").is_err());
        assert!(parse_endpoint("ARM", "https://x/?a=b").is_err());
        assert!(parse_endpoint("ARM", "management.azure.com").is_err());
    }

    fn arm(status: u16, code: &str) -> Error {
        Error::Arm {
            action: Action::CreateOrUpdate,
            kind: "federated identity credential",
            resource: "/subscriptions/s/x".to_owned(),
            status,
            code: code.to_owned(),
            message: "m".to_owned(),
            retry_after: None,
        }
    }

    #[test]
    fn reasons_and_who_can_fix_it() {
        let table = [
            (400, "BadRequest", "ArmBadRequest", true, false),
            (
                401,
                "InvalidAuthenticationToken",
                "ArmAuthenticationFailed",
                true,
                false,
            ),
            (
                403,
                "AuthorizationFailed",
                "ArmAuthorizationFailed",
                true,
                false,
            ),
            (404, "ParentResourceNotFound", "ArmNotFound", true, false),
            (409, "Conflict", "ArmConflict", false, false),
            (
                409,
                "ConcurrentFederatedIdentityCredentialsWritesForSingleManagedIdentity",
                "ArmConflict",
                false,
                true,
            ),
            (429, "TooManyRequests", "ArmThrottled", false, true),
            (500, "InternalServerError", "ArmUnavailable", false, true),
            (503, "ServiceUnavailable", "ArmUnavailable", false, true),
            (412, "PreconditionFailed", "ArmRequestFailed", false, false),
        ];
        for (status, code, reason, needs_user, transient) in table {
            let err = arm(status, code);
            assert_eq!(err.reason(), reason, "{status}");
            assert_eq!(err.needs_user(), needs_user, "{status}");
            assert_eq!(err.is_transient(), transient, "{status} {code}");
        }
        assert_eq!(
            arm(403, "AuthorizationFailed").to_string(),
            "failed to create or update federated identity credential /subscriptions/s/x: ARM answered HTTP 403 AuthorizationFailed: m"
        );
    }
}
