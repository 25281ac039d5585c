//! The Microsoft Graph client: GET, POST and DELETE of `/v1.0/…` paths with the operator's own
//! workload-identity token, the same request plumbing and retry policy as ARM ([`super::rest`]),
//! Graph's error bodies in errors, every request counted in metrics
//! (`pgmcp_operator_arm_requests_total{operation="graph_…"}`).
//!
//! Graph is used for one optional thing only (`foundry.assignAppRole`, [`super::app_role`]); the
//! operator's identity then needs Graph application permissions, which is why it is off by
//! default. The token goes to the configured endpoint only (no redirects) and never appears in
//! an error or a log line. No Kubernetes here.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use pgmcp_identity::TokenProvider;
use reqwest::{Method, Url};
use serde_json::Value;

use super::rest::{self, Action, Failure, Rest, RetryPolicy, with_retries};
use crate::metrics::Metrics;

/// The public cloud's Microsoft Graph.
pub const DEFAULT_GRAPH_ENDPOINT: &str = "https://graph.microsoft.com";

/// Pages of one list followed at most: 1,000 pages of up to 999 items.
const MAX_PAGES: usize = 1000;

/// Why a Graph call failed. Messages name the object and Graph's code and message; never a
/// token.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("failed to {action} {what}: no Microsoft Graph token: {source}")]
    Token {
        action: Action,
        what: String,
        #[source]
        source: Box<pgmcp_identity::Error>,
    },
    #[error("failed to {action} {what}: Microsoft Graph answered HTTP {status} {code}: {message}")]
    Graph {
        action: Action,
        what: String,
        status: u16,
        /// Graph's `error.code` (`Authorization_RequestDenied`, `Request_ResourceNotFound`, …),
        /// or "" if none.
        code: String,
        message: String,
        retry_after: Option<Duration>,
    },
    #[error("failed to {action} {what}: Microsoft Graph could not be reached: {message}")]
    Transport {
        action: Action,
        what: String,
        message: String,
    },
    #[error("failed to {action} {what}: unexpected answer from Microsoft Graph: {message}")]
    InvalidResponse {
        action: Action,
        what: String,
        message: String,
    },
    #[error("invalid Microsoft Graph client setting: {0}")]
    Config(rest::ConfigError),
}

impl Error {
    /// Condition reason (bounded, CamelCase).
    pub fn reason(&self) -> &'static str {
        match self {
            Error::Token { .. } => "GraphTokenUnavailable",
            Error::Graph { status, .. } => match status {
                400 => "GraphBadRequest",
                401 => "GraphAuthenticationFailed",
                403 => "GraphAuthorizationRequestDenied",
                404 => "GraphNotFound",
                409 => "GraphConflict",
                429 => "GraphThrottled",
                500..=599 => "GraphUnavailable",
                _ => "GraphRequestFailed",
            },
            Error::Transport { .. } => "GraphUnavailable",
            Error::InvalidResponse { .. } => "GraphInvalidResponse",
            Error::Config(_) => "GraphConfigInvalid",
        }
    }

    /// True when retrying cannot help until someone changes something: an invalid request
    /// (400), a refused token (401, or Entra refused to issue one), a missing Graph permission
    /// (403), a missing object (404), or a malformed setting.
    pub fn needs_user(&self) -> bool {
        match self {
            Error::Graph { status, .. } => matches!(status, 400 | 401 | 403 | 404),
            Error::Token { source, .. } => source.is_rejected(),
            Error::Config(_) => true,
            Error::Transport { .. } | Error::InvalidResponse { .. } => false,
        }
    }

    /// Graph's `error.code`, if it sent one.
    pub fn code(&self) -> Option<&str> {
        match self {
            Error::Graph { code, .. } if !code.is_empty() => Some(code),
            _ => None,
        }
    }

    /// Whether the same request may succeed when sent again: throttling, 5xx, no connection.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Transport { .. } => true,
            Error::Graph { status, .. } => matches!(status, 408 | 429 | 500 | 502 | 503 | 504),
            _ => false,
        }
    }
}

impl rest::Retry for Error {
    fn is_transient(&self) -> bool {
        Error::is_transient(self)
    }
    fn retry_after(&self) -> Option<Duration> {
        match self {
            Error::Graph { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
    fn reason(&self) -> &'static str {
        Error::reason(self)
    }
}

/// What a request is about, for errors and metrics.
#[derive(Debug, Clone, Copy)]
pub struct Call<'a> {
    pub action: Action,
    /// Metric operation label: `graph_sp_get`, `graph_assignment_post`, …
    pub op: &'static str,
    /// For messages: "service principal of app 4444…".
    pub what: &'a str,
}

/// The Graph client. Clones share the HTTP connection pool and the token cache.
#[derive(Clone)]
pub struct GraphClient {
    rest: Rest,
}

impl fmt::Debug for GraphClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GraphClient")
            .field("rest", &self.rest)
            .finish()
    }
}

impl GraphClient {
    /// A client for `endpoint` (an `https://` URL such as [`DEFAULT_GRAPH_ENDPOINT`]),
    /// authenticating with `token` (a provider for the scope of that endpoint,
    /// [`super::rest::scope_for`]).
    pub fn new(endpoint: &str, token: TokenProvider, metrics: Arc<Metrics>) -> Result<Self, Error> {
        Ok(Self {
            rest: Rest::new("Microsoft Graph", endpoint, token, metrics).map_err(Error::Config)?,
        })
    }

    /// Also trusts the CA certificates in `pem`.
    pub fn with_root_certificates(mut self, pem: &[u8]) -> Result<Self, Error> {
        self.rest = self
            .rest
            .with_root_certificates(pem)
            .map_err(Error::Config)?;
        Ok(self)
    }

    /// Replaces the retry bounds.
    pub fn with_retry_policy(mut self, retry: RetryPolicy) -> Self {
        self.rest = self.rest.with_retry_policy(retry);
        self
    }

    /// `{endpoint}/v1.0/{path}` with `query` ([`url`]).
    pub fn url(&self, path: &str, query: &[(&str, &str)]) -> Url {
        url(self.rest.endpoint(), path, query)
    }

    /// The object, or `None` when Graph answers 404.
    pub async fn get(&self, call: Call<'_>, url: &Url) -> Result<Option<Value>, Error> {
        let (status, body) = self.send(call, Method::GET, url, None, true).await?;
        Ok((status != 404).then_some(body))
    }

    /// Every item of a collection: the `value` of each page, following `@odata.nextLink` until
    /// a page has none. Graph pages every list (100 items by default); reading only the first
    /// page would miss objects. A next link must stay on the configured endpoint, since the
    /// token goes with it. `None` when the first page answers 404.
    pub async fn list(&self, call: Call<'_>, url: &Url) -> Result<Option<Vec<Value>>, Error> {
        let mut items = Vec::new();
        let mut next = url.clone();
        for page in 0.. {
            let (status, body) = self.send(call, Method::GET, &next, None, page == 0).await?;
            if status == 404 {
                return Ok(None);
            }
            let invalid = |message: String| Error::InvalidResponse {
                action: call.action,
                what: call.what.to_owned(),
                message,
            };
            match body.get("value") {
                Some(Value::Array(values)) => items.extend(values.iter().cloned()),
                _ => return Err(invalid("a page of the list has no value array".to_owned())),
            }
            let Some(link) = body.get("@odata.nextLink") else {
                return Ok(Some(items));
            };
            let link = link
                .as_str()
                .and_then(|l| Url::parse(l).ok())
                .ok_or_else(|| invalid("@odata.nextLink is not a URL".to_owned()))?;
            if !self.rest.same_origin(&link) {
                return Err(invalid(format!(
                    "@odata.nextLink points at {}, not at the Microsoft Graph endpoint {}; the token is not sent there",
                    link.origin().ascii_serialization(),
                    self.rest.endpoint().origin().ascii_serialization()
                )));
            }
            if page >= MAX_PAGES {
                return Err(invalid(format!("the list has more than {MAX_PAGES} pages")));
            }
            next = link;
        }
        Ok(Some(items))
    }

    /// Creates an object; returns what Graph stored.
    pub async fn post(&self, call: Call<'_>, url: &Url, body: &Value) -> Result<Value, Error> {
        let (_, body) = self
            .send(call, Method::POST, url, Some(body), false)
            .await?;
        Ok(body)
    }

    /// Deletes an object: `Ok(false)` when it was already gone (404).
    pub async fn delete(&self, call: Call<'_>, url: &Url) -> Result<bool, Error> {
        let (status, _) = self.send(call, Method::DELETE, url, None, true).await?;
        Ok(status != 404)
    }

    async fn send(
        &self,
        call: Call<'_>,
        method: Method,
        url: &Url,
        body: Option<&Value>,
        not_found_ok: bool,
    ) -> Result<(u16, Value), Error> {
        with_retries(
            *self.rest.retry_policy(),
            "Microsoft Graph",
            call.op,
            call.what,
            || self.attempt(call, &method, url, body, not_found_ok),
        )
        .await
    }

    /// One HTTP request, its failure named after the object.
    async fn attempt(
        &self,
        call: Call<'_>,
        method: &Method,
        url: &Url,
        body: Option<&Value>,
        not_found_ok: bool,
    ) -> Result<(u16, Value), Error> {
        let action = call.action;
        let what = call.what.to_owned();
        // Graph's error body has ARM's shape: {"error":{"code","message"}}.
        match self
            .rest
            .attempt(call.op, method, url, body, not_found_ok)
            .await
        {
            Ok(reply) => Ok((reply.status, reply.body)),
            Err(Failure::Token(source)) => Err(Error::Token {
                action,
                what,
                source: Box::new(source),
            }),
            Err(Failure::Status {
                status,
                code,
                message,
                retry_after,
            }) => Err(Error::Graph {
                action,
                what,
                status,
                code,
                message,
                retry_after,
            }),
            Err(Failure::Transport(message)) => Err(Error::Transport {
                action,
                what,
                message,
            }),
        }
    }
}

/// `{endpoint}/v1.0/{path}` with `query`. `path` is built by the caller from checked pieces
/// (GUIDs); `query` values are encoded here.
fn url(endpoint: &Url, path: &str, query: &[(&str, &str)]) -> Url {
    let mut url = endpoint.clone();
    url.set_path(&format!(
        "{}/v1.0/{}",
        endpoint.path().trim_end_matches('/'),
        path.trim_start_matches('/')
    ));
    url.set_query(None);
    if !query.is_empty() {
        let mut pairs = url.query_pairs_mut();
        for (name, value) in query {
            pairs.append_pair(name, value);
        }
    }
    url
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn graph(status: u16, code: &str) -> Error {
        Error::Graph {
            action: Action::CreateOrUpdate,
            what: "app role assignment of MCP.Read to 5555".to_owned(),
            status,
            code: code.to_owned(),
            message: "Insufficient privileges to complete the operation.".to_owned(),
            retry_after: None,
        }
    }

    #[test]
    fn reasons_and_who_can_fix_it() {
        for (status, reason, needs_user, transient) in [
            (400, "GraphBadRequest", true, false),
            (401, "GraphAuthenticationFailed", true, false),
            (403, "GraphAuthorizationRequestDenied", true, false),
            (404, "GraphNotFound", true, false),
            (409, "GraphConflict", false, false),
            (429, "GraphThrottled", false, true),
            (503, "GraphUnavailable", false, true),
        ] {
            let err = graph(status, "x");
            assert_eq!(err.reason(), reason, "{status}");
            assert_eq!(err.needs_user(), needs_user, "{status}");
            assert_eq!(err.is_transient(), transient, "{status}");
        }
        assert_eq!(
            graph(403, "Authorization_RequestDenied").to_string(),
            "failed to create or update app role assignment of MCP.Read to 5555: Microsoft Graph answered HTTP 403 Authorization_RequestDenied: Insufficient privileges to complete the operation."
        );
    }

    #[test]
    fn urls_keep_graph_key_syntax_and_encode_queries() {
        let endpoint =
            rest::parse_endpoint("Microsoft Graph", "https://graph.microsoft.com/").unwrap();
        assert_eq!(
            url(
                &endpoint,
                "servicePrincipals(appId='44444444-4444-4444-8444-444444444444')",
                &[("$select", "id,appRoles")]
            )
            .as_str(),
            "https://graph.microsoft.com/v1.0/servicePrincipals(appId='44444444-4444-4444-8444-444444444444')?%24select=id%2CappRoles"
        );
        assert_eq!(
            url(&endpoint, "servicePrincipals/abc/appRoleAssignedTo", &[]).as_str(),
            "https://graph.microsoft.com/v1.0/servicePrincipals/abc/appRoleAssignedTo"
        );
        assert!(rest::parse_endpoint("Microsoft Graph", "http://graph.microsoft.com").is_err());
    }
}
