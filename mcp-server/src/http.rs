//! The HTTP application: Streamable HTTP MCP at `/mcp` (behind caller authentication, see
//! [`crate::auth`]), `/healthz`, `/readyz`, `/metrics`, and the OAuth protected resource
//! metadata at `/.well-known/oauth-protected-resource`.
//!
//! Sessions are issued (2025-11-25 clients expect them) but any replica accepts any session id
//! (see [`crate::sessions`]), so several replicas behind one Service need no session affinity.
//! `Host` must be loopback or configured, and a browser `Origin` must be loopback or configured
//! (DNS-rebinding protection).

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{Method, StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::{any, get};
use pgmcp_crds::config::HttpConfig;
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use tokio_util::sync::CancellationToken;

use crate::auth::{self, Auth};
use crate::direct;
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
    config.session_store = Some(Arc::new(ReplicaSessions));
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
    // Plain tools/call requests are answered directly (crate::direct); rmcp serves the rest.
    // Shared, not cloned per request: rmcp's service holds its whole configuration.
    let endpoint = Arc::new(Endpoint {
        server,
        rmcp,
        hosts,
    });
    let mcp = any(move |request: Request| {
        let endpoint = endpoint.clone();
        async move { endpoint.serve(request).await }
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
    server: PgMcpServer,
    rmcp: StreamableHttpService<PgMcpServer, LocalSessionManager>,
    /// Accepted `Host` values (loopback and configured), as rmcp's check has them.
    hosts: Vec<String>,
}

impl Endpoint {
    async fn serve(&self, request: Request) -> axum::response::Response {
        let request = if request.method() == Method::POST {
            let host_allowed = |host: &str| host_allowed(host, &self.hosts);
            match Box::pin(direct::answer(&self.server, host_allowed, request)).await {
                Ok(response) => return response,
                Err(request) => request,
            }
        } else {
            request
        };
        Box::pin(self.rmcp.handle(request))
            .await
            .map(axum::body::Body::new)
    }
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
