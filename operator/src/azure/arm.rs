//! The Azure Resource Manager client: GET, PUT and DELETE of one resource by id, with the
//! operator's own workload-identity token, bounded retries, long-running operations followed to
//! their end, ARM's error bodies in errors and every request counted in metrics.
//!
//! - **Auth**: `Authorization: Bearer` from a [`TokenProvider`] for the endpoint's scope
//!   (`https://management.azure.com/.default` in the public cloud, [`super::rest::scope_for`];
//!   cached and refreshed by the provider). The token
//!   is sent to the configured endpoint only — also when ARM names an operation-status URL
//!   elsewhere — and never appears in an error or a log line.
//! - **Retries** (429, 408, 500, 502, 503, 504, connection failures): exponential backoff with
//!   jitter ([`super::rest::with_retries`]); `Retry-After` (seconds or HTTP date, or `retry-after-ms`) replaces the
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
use std::time::{Duration, Instant};

use pgmcp_identity::TokenProvider;
use reqwest::header::LOCATION;
use reqwest::{Method, Url};
use serde_json::Value;

use super::rest::{self, Failure, Reply, Rest, clip, retry_after, with_retries};
pub use super::rest::{Action, RetryPolicy};
use super::{AzureSettings, Change, Observed};
use crate::metrics::Metrics;

const ASYNC_OPERATION: &str = "azure-asyncoperation";

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
    #[error("invalid ARM resource id {resource:?} for a {kind}: {problem}")]
    InvalidResourceId {
        kind: &'static str,
        resource: String,
        problem: ResourceIdError,
    },
    #[error("invalid ARM client setting: {0}")]
    Config(rest::ConfigError),
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
    rest: Rest,
    settings: AzureSettings,
}

impl fmt::Debug for ArmClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ArmClient")
            .field("rest", &self.rest)
            .field("settings", &self.settings)
            .finish()
    }
}

impl ArmClient {
    /// A client for `settings.arm_endpoint` (an `https://` URL), authenticating with `token`
    /// (a provider for the scope of that endpoint, [`super::rest::scope_for`]). Server
    /// certificates are checked against the platform's roots, which honour `SSL_CERT_FILE`.
    pub fn new(
        settings: AzureSettings,
        token: TokenProvider,
        metrics: Arc<Metrics>,
    ) -> Result<Self, Error> {
        let rest =
            Rest::new("ARM", &settings.arm_endpoint, token, metrics).map_err(Error::Config)?;
        Ok(Self { rest, settings })
    }

    /// Also trusts the CA certificates in `pem` (a private cloud's, or a test's).
    pub fn with_root_certificates(mut self, pem: &[u8]) -> Result<Self, Error> {
        self.rest = self
            .rest
            .with_root_certificates(pem)
            .map_err(Error::Config)?;
        Ok(self)
    }

    /// Replaces the retry and polling bounds.
    pub fn with_retry_policy(mut self, retry: RetryPolicy) -> Self {
        self.rest = self.rest.with_retry_policy(retry);
        self
    }

    pub fn settings(&self) -> &AzureSettings {
        &self.settings
    }

    pub fn retry_policy(&self) -> &RetryPolicy {
        self.rest.retry_policy()
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

    /// Reads the resource and compares it with what it should hold (`is_desired`).
    pub async fn observe(
        &self,
        kind: &ResourceKind,
        resource_id: &str,
        api_version: &str,
        is_desired: impl Fn(&Value) -> bool,
    ) -> Result<Observed, Error> {
        Ok(match self.get(kind, resource_id, api_version).await? {
            Some(observed) if is_desired(&observed) => {
                Observed::InPlace(arm_id(&observed, resource_id))
            }
            Some(_) => Observed::Differs(Change::Updated),
            None => Observed::Differs(Change::Created),
        })
    }

    /// Creates or replaces the resource with `body`; returns its ARM id.
    pub async fn write(
        &self,
        kind: &ResourceKind,
        resource_id: &str,
        api_version: &str,
        body: &Value,
    ) -> Result<String, Error> {
        let stored = self.put(kind, resource_id, api_version, body).await?;
        Ok(arm_id(&stored, resource_id))
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
        check_resource_id(resource_id).map_err(|problem| Error::InvalidResourceId {
            kind: kind.noun,
            resource: resource_id.to_owned(),
            problem,
        })?;
        let endpoint = self.rest.endpoint();
        let mut url = endpoint.clone();
        url.set_path(&format!(
            "{}{resource_id}",
            endpoint.path().trim_end_matches('/')
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
        with_retries(
            *self.rest.retry_policy(),
            "ARM",
            call.op,
            call.resource,
            || self.attempt(call, &method, url, body, not_found_ok),
        )
        .await
    }

    /// One HTTP request, its failure named after the resource.
    async fn attempt(
        &self,
        call: Call<'_>,
        method: &Method,
        url: &Url,
        body: Option<&Value>,
        not_found_ok: bool,
    ) -> Result<Reply, Error> {
        let action = call.action;
        let kind = call.kind.noun;
        let resource = call.resource.to_owned();
        self.rest
            .attempt(call.op, method, url, body, not_found_ok)
            .await
            .map_err(|failure| match failure {
                Failure::Token(source) => Error::Token {
                    action,
                    kind,
                    resource,
                    source: Box::new(source),
                },
                Failure::Status {
                    status,
                    code,
                    message,
                    retry_after,
                } => Error::Arm {
                    action,
                    kind,
                    resource,
                    status,
                    code,
                    message,
                    retry_after,
                },
                Failure::Transport(message) => Error::Transport {
                    action,
                    kind,
                    resource,
                    message,
                },
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
            if !self.rest.same_origin(&url) {
                return Err(invalid(format!(
                    "the {name} header points at {}, not at the ARM endpoint {}; the token is not sent there",
                    url.origin().ascii_serialization(),
                    self.rest.endpoint().origin().ascii_serialization()
                )));
            }
            Ok(Some(url))
        };
        let poll = Call {
            op: call.kind.poll_op,
            ..call
        };
        let policy = *self.rest.retry_policy();
        let deadline = Instant::now() + policy.operation_timeout;
        let mut wait = retry_after(&reply.headers).unwrap_or(policy.poll_interval);
        let timed_out = || Error::OperationTimedOut {
            action: call.action,
            kind: call.kind.noun,
            resource: call.resource.to_owned(),
            waited_s: policy.operation_timeout.as_secs(),
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
                    _ => wait = retry_after(&answer.headers).unwrap_or(policy.poll_interval),
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
            wait = retry_after(&answer.headers).unwrap_or(policy.poll_interval);
        }
    }
}

impl rest::Retry for Error {
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

/// ARM's id of the resource in `answer`, else the one we addressed.
fn arm_id(answer: &Value, fallback: &str) -> String {
    answer["id"]
        .as_str()
        .filter(|id| !id.is_empty())
        .unwrap_or(fallback)
        .to_owned()
}

/// What is wrong with a resource id, as the end of a sentence about it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResourceIdError {
    #[error("it must start with /subscriptions/")]
    NotInASubscription,
    #[error("it must not contain {0:?}")]
    Character(char),
    #[error("it has an empty, '.' or '..' segment")]
    Segment,
}

/// An ARM resource id: `/subscriptions/…`, plain path segments, nothing that would change the
/// URL's meaning (query, fragment, escapes, dot segments).
fn check_resource_id(id: &str) -> Result<(), ResourceIdError> {
    if !id
        .get(..15)
        .is_some_and(|p| p.eq_ignore_ascii_case("/subscriptions/"))
    {
        return Err(ResourceIdError::NotInASubscription);
    }
    if let Some(c) = id
        .chars()
        .find(|c| c.is_control() || c.is_whitespace() || matches!(c, '?' | '#' | '%' | '\\'))
    {
        return Err(ResourceIdError::Character(c));
    }
    if id[1..]
        .split('/')
        .any(|segment| segment.is_empty() || segment == "." || segment == "..")
    {
        return Err(ResourceIdError::Segment);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn the_id_is_arms_else_the_one_addressed() {
        let answer = serde_json::json!({"id": "/x"});
        assert_eq!(arm_id(&answer, "fallback"), "/x");
        assert_eq!(arm_id(&Value::Null, "fallback"), "fallback");
        assert_eq!(
            arm_id(&serde_json::json!({"id": ""}), "fallback"),
            "fallback"
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
