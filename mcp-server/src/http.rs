//! The HTTP application: Streamable HTTP MCP at `/mcp` (behind caller authentication, see
//! [`crate::auth`]), `/healthz`, `/readyz`, `/metrics`, and the OAuth protected resource
//! metadata at `/.well-known/oauth-protected-resource`.
//!
//! Every message reaches [`crate::dispatch`]; what it leaves to rmcp, rmcp's Streamable HTTP
//! service answers. Sessions are issued (2025-11-25 clients expect them) but any replica accepts
//! any session id it has not seen terminated (see [`crate::sessions`]), so several replicas
//! behind one Service need no session affinity.
//!
//! A body that is not JSON (or not UTF-8, or nested too deep) gets 400 with a JSON-RPC parse
//! error, a batch in a revision without batches 400 with an invalid-request error, and a body
//! over [`MAX_REQUEST_BYTES`] 413 naming the limit.
//! `Host` must be loopback or configured, and a browser `Origin` must be loopback or configured
//! (DNS-rebinding protection).

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use pgmcp_crds::config::HttpConfig;
use rmcp::model::{ErrorData, ServerJsonRpcMessage};
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use crate::auth::{self, Auth, Caller};
use crate::dispatch::fast::{SESSION_REVISIONS, STATELESS};
use crate::dispatch::{Context, Dispatch, Revision, Route};
use crate::metrics::Metrics;
use crate::readiness;
use crate::server::PgMcpServer;
use crate::sessions::ReplicaSessions;
use crate::tools::Tools;

/// Largest JSON-RPC request body accepted.
pub const MAX_REQUEST_BYTES: usize = 1024 * 1024;

/// What the HTTP handlers share.
#[derive(Clone, Debug)]
pub struct AppState {
    pub tools: Arc<Tools>,
    pub metrics: Arc<Metrics>,
    pub auth: Arc<Auth>,
}

pub(crate) const LOOPBACK_HOSTS: [&str; 3] = ["localhost", "127.0.0.1", "::1"];

/// Whether `host` (a `Host` header) names one of `allowed` (`host` or `host:port`; IPv6 in
/// brackets or not), as rmcp's DNS-rebinding check reads them.
pub(crate) fn host_allowed(host: &str, allowed: &[String]) -> bool {
    let Ok(host) = host.parse::<axum::http::uri::Authority>() else {
        return false;
    };
    let name = host.host().trim_matches(['[', ']']);
    allowed
        .iter()
        .filter_map(|a| a.parse::<axum::http::uri::Authority>().ok())
        .any(|allowed| {
            allowed
                .host()
                .trim_matches(['[', ']'])
                .eq_ignore_ascii_case(name)
                && allowed
                    .port_u16()
                    .is_none_or(|p| host.port_u16() == Some(p))
        })
}
const LOOPBACK_ORIGINS: [&str; 3] = ["http://localhost:*", "http://127.0.0.1:*", "http://[::1]:*"];

/// Builds the application. `shutdown` ends open MCP streams on SIGTERM.
pub fn router(state: AppState, http: &HttpConfig, shutdown: CancellationToken) -> axum::Router {
    let hosts: Vec<String> = LOOPBACK_HOSTS
        .iter()
        .map(|h| (*h).to_owned())
        .chain(http.allowed_hosts.iter().cloned())
        .collect();
    let origins: Vec<String> = LOOPBACK_ORIGINS
        .iter()
        .map(|o| (*o).to_owned())
        .chain(http.allowed_origins.iter().cloned())
        .collect();
    let mut config = StreamableHttpServerConfig::default()
        .with_legacy_session_mode(true)
        // A stateless call answers with one JSON body instead of an SSE stream.
        .with_json_response(true)
        .with_allowed_hosts(hosts.clone())
        .with_allowed_origins(origins)
        .enforce_origin_validation()
        .with_max_request_body_bytes(MAX_REQUEST_BYTES)
        .with_cancellation_token(shutdown);
    let sessions = ReplicaSessions::default();
    config.session_store = Some(Arc::new(sessions.clone()));
    // One server, cloned (a few reference counts) for every request and session.
    let server = PgMcpServer::new(state.tools.clone(), state.metrics.clone());
    let rmcp = {
        let server = server.clone();
        StreamableHttpService::<PgMcpServer, LocalSessionManager>::new(
            move || Ok(server.clone()),
            Arc::default(),
            config,
        )
    };
    // Shared, not cloned per request: rmcp's service holds its whole configuration.
    let endpoint = Arc::new(Endpoint {
        dispatch: Dispatch::new(server),
        rmcp,
        hosts,
        sessions,
    });
    let mcp = any(move |request: Request| {
        let endpoint = endpoint.clone();
        // A span only for POSTs, the requests that carry calls (and only when exporting).
        let span = if request.method() == Method::POST {
            crate::telemetry::request_span(request.headers())
        } else {
            tracing::Span::none()
        };
        async move { endpoint.serve(request).await }.instrument(span)
    });
    let mcp =
        axum::Router::new()
            .nest_service("/mcp", mcp)
            .layer(axum::middleware::from_fn_with_state(
                state.clone(),
                auth::require_token,
            ));
    axum::Router::new()
        .merge(mcp)
        .route(auth::prm::WELL_KNOWN, get(auth::prm::metadata))
        .route(
            &format!("{}/{{*resource}}", auth::prm::WELL_KNOWN),
            get(auth::prm::metadata),
        )
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .with_state(state)
}

/// What `/mcp` needs per request.
struct Endpoint {
    dispatch: Dispatch,
    rmcp: StreamableHttpService<PgMcpServer, LocalSessionManager>,
    /// Accepted `Host` values (loopback and configured), as rmcp's check has them.
    hosts: Vec<String>,
    sessions: ReplicaSessions,
}

impl Endpoint {
    async fn serve(&self, request: Request) -> Response {
        if let Some(session) = request.headers().get("mcp-session-id")
            && self.sessions.is_terminated(session.as_bytes())
        {
            return (StatusCode::NOT_FOUND, "Not Found: Session not found").into_response();
        }
        if request.method() != Method::POST {
            return self.rmcp(request).await;
        }
        let eligible = eligible_headers(request.headers(), |host| host_allowed(host, &self.hosts));
        if eligible.is_none() && !is_json(request.headers()) {
            // rmcp refuses it (415, 406, 403…) in its own words.
            return self.rmcp(request).await;
        }
        let (parts, body) = request.into_parts();
        let bytes = match read_body(body).await {
            Ok(bytes) => bytes,
            Err(response) => return *response,
        };
        if let Some(revision) = eligible {
            let context = Context {
                revision,
                conversation: parts
                    .headers
                    .get("mcp-session-id")
                    .and_then(|v| v.to_str().ok())
                    .map(Arc::from),
                caller: parts.extensions.get::<Caller>().cloned(),
            };
            let json = |answer: Vec<u8>| {
                (
                    [(
                        header::CONTENT_TYPE,
                        HeaderValue::from_static("application/json"),
                    )],
                    answer,
                )
                    .into_response()
            };
            match self.dispatch.route(&bytes, &parts.headers, &context) {
                Route::Call(call) => {
                    return match call.answer().await {
                        Some(answer) => json(answer),
                        // Cancelled: the stream ends without an answer.
                        None => (
                            [(
                                header::CONTENT_TYPE,
                                HeaderValue::from_static("text/event-stream"),
                            )],
                            Body::empty(),
                        )
                            .into_response(),
                    };
                }
                Route::Answer(answer) => return json(answer),
                Route::Done => return StatusCode::ACCEPTED.into_response(),
                Route::Rmcp => {}
            }
        }
        if let Err(error) = check_message(&bytes, &parts.headers) {
            return bad_request(error);
        }
        self.rmcp(Request::from_parts(parts, Body::from(bytes)))
            .await
    }

    async fn rmcp(&self, request: Request) -> Response {
        Box::pin(self.rmcp.handle(request))
            .await
            .map(axum::body::Body::new)
    }
}

/// Whether the request says its body is JSON.
fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(is_json_type)
}

/// Whether a `Content-Type` value is `application/json` (parameters aside).
fn is_json_type(content_type: &str) -> bool {
    content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .eq_ignore_ascii_case("application/json")
}

/// The body, up to [`MAX_REQUEST_BYTES`].
async fn read_body(body: Body) -> Result<axum::body::Bytes, Box<Response>> {
    axum::body::to_bytes(body, MAX_REQUEST_BYTES)
        .await
        .map_err(|err| {
            let too_large = std::error::Error::source(&err)
                .is_some_and(|e| e.is::<http_body_util::LengthLimitError>());
            Box::new(if too_large {
                (
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!(
                        "Payload Too Large: the request body exceeds the limit of {MAX_REQUEST_BYTES} bytes"
                    ),
                )
                    .into_response()
            } else {
                (
                    StatusCode::BAD_REQUEST,
                    format!("Bad Request: failed to read the body: {err}"),
                )
                    .into_response()
            })
        })
}

/// A JSON-RPC error as an HTTP 400 answer (the id is unknown: the message could not be read).
fn bad_request(error: ErrorData) -> Response {
    let body = serde_json::to_vec(&ServerJsonRpcMessage::error(error, None)).unwrap_or_default();
    (
        StatusCode::BAD_REQUEST,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body,
    )
        .into_response()
}

/// Refuses what is not one JSON-RPC message rmcp could read: not UTF-8, not JSON, nested too
/// deep (serde_json's limit of 128 levels), or a batch in a revision that has none (all but
/// 2025-03-26).
fn check_message(bytes: &[u8], headers: &HeaderMap) -> Result<(), ErrorData> {
    let text = std::str::from_utf8(bytes).map_err(|err| {
        ErrorData::parse_error(format!("Parse error: the body is not UTF-8: {err}"), None)
    })?;
    // A Value, not IgnoredAny: skipping a value does not count nesting.
    serde_json::from_str::<serde_json::Value>(text).map_err(|err| {
        ErrorData::parse_error(format!("Parse error: the body is not JSON: {err}"), None)
    })?;
    let version = headers
        .get("mcp-protocol-version")
        .and_then(|v| v.to_str().ok())
        .unwrap_or(SESSION_REVISIONS[0]);
    if text.trim_start().starts_with('[') && version != SESSION_REVISIONS[0] {
        return Err(ErrorData::invalid_request(
            format!(
                "Invalid Request: protocol revision {version} has no JSON-RPC batches; send one message per request"
            ),
            None,
        ));
    }
    Ok(())
}

/// The revision a request's headers select, when they are all ones this handler answers:
/// an allowed `Host`, no `Origin`, both media types accepted, a JSON body of known size, and
/// either a session id (2025 revisions) or the 2026-07-28 version with its routing headers.
fn eligible_headers(headers: &HeaderMap, host_allowed: impl Fn(&str) -> bool) -> Option<Revision> {
    let text = |name: header::HeaderName| -> Option<&str> {
        let mut values = headers.get_all(name).iter();
        let value = values.next()?.to_str().ok()?;
        values.next().is_none().then_some(value)
    };
    if headers.contains_key(header::ORIGIN) || !host_allowed(text(header::HOST)?) {
        return None;
    }
    if !accepts_json_and_sse(text(header::ACCEPT)?) {
        return None;
    }
    if !is_json_type(text(header::CONTENT_TYPE)?) {
        return None;
    }
    let length: usize = text(header::CONTENT_LENGTH)?.parse().ok()?;
    if length > MAX_REQUEST_BYTES {
        return None;
    }
    if headers
        .keys()
        .any(|name| name.as_str().starts_with("mcp-param-"))
    {
        return None;
    }
    let version = headers
        .get("mcp-protocol-version")
        .map(|v| v.to_str().ok())
        .unwrap_or(Some(SESSION_REVISIONS[0]))?;
    match headers.get("mcp-session-id") {
        Some(session) => {
            uuid::Uuid::try_parse_ascii(session.as_bytes()).ok()?;
            SESSION_REVISIONS
                .contains(&version)
                .then_some(Revision::Session)
        }
        None => (version == STATELESS).then_some(Revision::Stateless),
    }
}

/// `Accept` lists both `application/json` and `text/event-stream`, without quality values
/// (which rmcp weighs; such requests go to it).
fn accepts_json_and_sse(accept: &str) -> bool {
    if accept.contains(';') {
        return false;
    }
    let mut json = false;
    let mut sse = false;
    for media in accept.split(',').map(str::trim) {
        json |= media.eq_ignore_ascii_case("application/json");
        sse |= media.eq_ignore_ascii_case("text/event-stream");
    }
    json && sse
}

async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    match state.tools.readiness().state() {
        readiness::State::Ready => {}
        readiness::State::Starting => {
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                "not ready: checking that the database role is read-only".to_owned(),
            );
        }
        readiness::State::Waiting(reason) => {
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                format!("not ready: {reason}\n"),
            );
        }
    }
    match state.tools.db.ping().await {
        Ok(()) if state.auth.validator.is_none() => (
            StatusCode::OK,
            "ok\nWARNING: caller authentication is disabled: anyone who can reach /mcp can read the granted tables\n"
                .to_owned(),
        ),
        Ok(()) => (StatusCode::OK, "ok".to_owned()),
        Err(err) => (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {err}")),
    }
}

async fn metrics_text(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.render(state.tools.db.pool_status()),
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use rmcp::model::ErrorCode;

    use super::*;
    use crate::dispatch::fast::headers;

    const SESSION: &str = "6f1c2f8e-8a4e-4c1b-9a59-0c7f0b1c2d3e";

    fn base(extra: &[(&str, &str)]) -> HeaderMap {
        let mut pairs = vec![
            ("host", "127.0.0.1:8080"),
            ("accept", "application/json, text/event-stream"),
            ("content-type", "application/json"),
            ("content-length", "100"),
        ];
        pairs.extend_from_slice(extra);
        headers(&pairs)
    }

    fn loopback(host: &str) -> bool {
        host.starts_with("127.0.0.1")
    }

    #[test]
    fn session_and_stateless_requests_are_told_apart_by_their_headers() {
        let session = base(&[
            ("mcp-session-id", SESSION),
            ("mcp-protocol-version", "2025-11-25"),
        ]);
        assert_eq!(
            eligible_headers(&session, loopback),
            Some(Revision::Session)
        );
        let no_version = base(&[("mcp-session-id", SESSION)]);
        assert_eq!(
            eligible_headers(&no_version, loopback),
            Some(Revision::Session)
        );
        let stateless = base(&[("mcp-protocol-version", "2026-07-28")]);
        assert_eq!(
            eligible_headers(&stateless, loopback),
            Some(Revision::Stateless)
        );
    }

    #[test]
    fn anything_unusual_in_the_headers_goes_to_rmcp() {
        for extra in [
            vec![
                ("origin", "http://127.0.0.1:8080"),
                ("mcp-session-id", SESSION),
            ],
            vec![("mcp-session-id", "not-a-uuid")],
            vec![
                ("mcp-session-id", SESSION),
                ("mcp-protocol-version", "2026-07-28"),
            ],
            vec![("mcp-protocol-version", "2025-11-25")],
            vec![
                ("mcp-protocol-version", "1999-01-01"),
                ("mcp-session-id", SESSION),
            ],
            vec![("mcp-session-id", SESSION), ("mcp-param-region", "eu")],
        ] {
            assert_eq!(eligible_headers(&base(&extra), loopback), None, "{extra:?}");
        }
        let foreign_host = headers(&[
            ("host", "evil.example"),
            ("accept", "application/json, text/event-stream"),
            ("content-type", "application/json"),
            ("content-length", "10"),
            ("mcp-session-id", SESSION),
        ]);
        assert_eq!(eligible_headers(&foreign_host, loopback), None);
        let weighted = headers(&[
            ("host", "127.0.0.1"),
            ("accept", "application/json, text/event-stream;q=0"),
            ("content-type", "application/json"),
            ("content-length", "10"),
            ("mcp-session-id", SESSION),
        ]);
        assert_eq!(eligible_headers(&weighted, loopback), None);
        let chunked = headers(&[
            ("host", "127.0.0.1"),
            ("accept", "application/json, text/event-stream"),
            ("content-type", "application/json"),
            ("mcp-session-id", SESSION),
        ]);
        assert_eq!(
            eligible_headers(&chunked, loopback),
            None,
            "no Content-Length"
        );
        let large = base(&[("mcp-session-id", SESSION), ("content-length", "99999999")]);
        assert_eq!(eligible_headers(&large, loopback), None);
    }

    #[test]
    fn quality_values_and_missing_media_types_are_declined() {
        assert!(accepts_json_and_sse("application/json, text/event-stream"));
        assert!(accepts_json_and_sse("text/event-stream,application/json"));
        assert!(!accepts_json_and_sse("application/json"));
        assert!(!accepts_json_and_sse(
            "application/json;q=1, text/event-stream"
        ));
        assert!(!accepts_json_and_sse("*/*"));
    }

    #[test]
    fn malformed_bodies_get_the_json_rpc_error_the_specification_names() {
        let none = HeaderMap::new();
        let code =
            |body: &[u8], headers: &HeaderMap| check_message(body, headers).unwrap_err().code;
        assert_eq!(code(b"\xff\xfe", &none), ErrorCode::PARSE_ERROR);
        assert_eq!(code(b"{not json", &none), ErrorCode::PARSE_ERROR);
        let deep = "[".repeat(200) + &"]".repeat(200);
        assert_eq!(code(deep.as_bytes(), &none), ErrorCode::PARSE_ERROR);
        let newer = headers(&[("mcp-protocol-version", "2025-11-25")]);
        assert_eq!(
            code(br#"[{"jsonrpc":"2.0","id":1,"method":"ping"}]"#, &newer),
            ErrorCode::INVALID_REQUEST
        );
        // 2025-03-26 (also what a request without the header is taken for) has batches.
        assert!(check_message(br#"[{"jsonrpc":"2.0","id":1,"method":"ping"}]"#, &none).is_ok());
        assert!(check_message(br#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#, &newer).is_ok());
    }
}
