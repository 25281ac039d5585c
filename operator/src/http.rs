//! The operator's own HTTP endpoints: `/healthz`, `/readyz` and `/metrics`. A standby replica
//! (not holding the Lease) is healthy and ready too: it is there to take over.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;

pub fn router(metrics: Arc<Metrics>) -> axum::Router {
    axum::Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(|| async { "ok" }))
        .route("/metrics", get(render))
        .with_state(metrics)
}

async fn render(State(metrics): State<Arc<Metrics>>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        metrics.render(),
    )
}

/// Binds `listen` now (so a taken port fails start-up) and serves until `shutdown`.
pub async fn bind(
    listen: SocketAddr,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) -> std::io::Result<impl std::future::Future<Output = std::io::Result<()>>> {
    let listener = tokio::net::TcpListener::bind(listen).await?;
    tracing::info!(listen = %listener.local_addr()?, "serving /healthz, /readyz and /metrics");
    Ok(async move {
        axum::serve(listener, router(metrics))
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await
    })
}
