//! The server's start, from parsed arguments to exit: logging, the async runtime, then MCP
//! over HTTP (with caller authentication) or stdio, with the start-up sequence beside it
//! ([`startup::run`]: the first database token, the role check, the SECURITY DEFINER functions
//! read again every 30 s), which makes the server ready or stops it. `main.rs` only parses the
//! arguments.

use std::future::IntoFuture as _;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::serve::ListenerExt as _;
use tokio::task::JoinError;
use tokio_util::sync::CancellationToken;

use crate::access::Access;
use crate::audit::{Audit, Sink};
use crate::auth::Auth;
use crate::auth::jwt::{DiscoveryError, EntraValidator};
use crate::config::{Args, ConfigError, Settings};
use crate::db::Database;
use crate::metrics::Metrics;
use crate::readiness::Readiness;
use crate::tools::Tools;
use crate::{AppState, PgMcpServer, router, startup};

/// Why the server stopped before SIGTERM. `main` prints it with its causes, one per line.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("failed to start the async runtime")]
    Runtime(#[source] std::io::Error),
    #[error("the server panicked")]
    Panicked(#[source] JoinError),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Database(#[from] crate::db::SetupError),
    #[error(transparent)]
    Entra(DiscoveryError),
    #[error(
        "refusing to serve without caller authentication on {listen}: configure Entra ID \
         (--entra-tenant-id, --entra-audience, --entra-required-role), listen on \
         127.0.0.1, or pass --insecure-allow-unauthenticated (development only)"
    )]
    Unauthenticated { listen: SocketAddr },
    #[error(
        "refusing to serve caller classes ({classes}) {how}: a caller's class is decided from \
         the claims of its verified Microsoft Entra token, so every caller would be refused. \
         Configure Entra ID (--entra-tenant-id, --entra-audience; spec.server.auth.entra) or \
         remove scope.callers"
    )]
    ClassesWithoutEntra { classes: String, how: &'static str },
    #[error("failed to listen on {listen}")]
    Listen {
        listen: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    /// Serving HTTP failed.
    #[error(transparent)]
    Io(std::io::Error),
    /// Serving stdio failed.
    #[error(transparent)]
    Stdio(anyhow::Error),
    /// The start-up sequence refused to go on.
    #[error(transparent)]
    Startup(#[from] startup::Error),
    #[error(transparent)]
    StartupPanicked(JoinError),
}

/// Starts logging and the async runtime, and serves until SIGTERM or a start-up failure.
pub fn run(args: Args) -> Result<(), Error> {
    // Logs go to stderr: stdout carries MCP in stdio mode, and the audit events.
    // rmcp logs every stateless request (a service per request) at info.
    let telemetry = pgmcp_telemetry::init(
        "pgmcp-server",
        &args.log_format,
        "info,rmcp=warn",
        pgmcp_telemetry::LogWriter::Stderr,
    );
    crate::telemetry::install(telemetry.logger_provider());
    let dropped = telemetry.dropped();
    let served = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(usize::from(args.worker_threads))
        .enable_all()
        .build()
        .map_err(Error::Runtime)
        .and_then(|runtime| {
            runtime.block_on(async {
                // On a worker, not on this thread: with the one default worker, the stdio
                // loop, the accept loop and every call then share a thread, and none wakes
                // another.
                tokio::spawn(serve(args, dropped))
                    .await
                    .map_err(Error::Panicked)?
            })
        });
    // Off the runtime: the exporters' blocking client sends what waits.
    telemetry.shutdown();
    served
}

async fn serve(args: Args, dropped: pgmcp_telemetry::DroppedCounts) -> Result<(), Error> {
    let settings = Settings::resolve(&args, |var| std::env::var(var).ok())?;
    let db = Database::new(&settings.connect).map_err(Error::Database)?;
    let access = Arc::new(Access::new(&settings.file.scope, &settings.connect.user));
    if access.per_caller() && (settings.stdio || settings.entra.is_none()) {
        return Err(Error::ClassesWithoutEntra {
            classes: access.class_names().join(", "),
            how: if settings.stdio {
                "over stdio"
            } else {
                "without Entra ID caller authentication"
            },
        });
    }
    // Tool calls wait for the start-up sequence, and fail with its reason while it waits for
    // something that passes by itself; the transport answers meanwhile.
    let readiness = Readiness::starting();
    let tools = Arc::new(
        Tools::with_access(db, access.clone(), settings.file.limits.clone())
            .with_results(settings.file.results.clone())
            .with_audit(Audit::new(
                settings.file.audit.statements,
                settings.file.audit.binding.clone(),
                // Over stdio, stdout is the MCP channel.
                if settings.stdio {
                    Sink::Stderr
                } else {
                    Sink::Stdout
                },
            ))
            .gated(readiness.clone()),
    );
    let mut started = tokio::spawn(startup::run(
        tools.clone(),
        settings.connect.token.clone(),
        settings.allow_unsafe_role,
    ));
    let metrics = Arc::new(Metrics::default().with_telemetry(&dropped));

    if settings.stdio {
        tracing::info!("serving MCP on stdio");
        let serve = crate::stdio::serve(PgMcpServer::new(tools, metrics));
        tokio::pin!(serve);
        tokio::select! {
            served = &mut serve => return served.map_err(Error::Stdio),
            started = &mut started => started.map_err(Error::StartupPanicked)??,
        }
        return serve.await.map_err(Error::Stdio);
    }

    let validator = match &settings.entra {
        Some(entra) => {
            let validator = EntraValidator::new(entra.clone()).map_err(Error::Entra)?;
            tracing::info!(
                tenant = %entra.tenant_id,
                audience = %entra.audience,
                required_roles = ?entra.required_roles,
                allowed_callers = entra.allowed_caller_object_ids.len(),
                "callers must present Microsoft Entra ID access tokens"
            );
            let validator = Arc::new(validator);
            // Warm the key cache in the background; a failure is retried on the first request.
            let prefetch = validator.clone();
            tokio::spawn(async move {
                if let Err(err) = prefetch.prefetch().await {
                    tracing::warn!(error = %err, "failed to fetch the tenant's signing keys; retrying on the first request");
                }
            });
            Some(validator)
        }
        None => {
            if !settings.listen.ip().is_loopback() && !settings.insecure_allow_unauthenticated {
                return Err(Error::Unauthenticated {
                    listen: settings.listen,
                });
            }
            tracing::warn!(listen = %settings.listen, "serving WITHOUT caller authentication: anyone who can reach this address can read the granted tables");
            None
        }
    };
    let auth = Arc::new(Auth {
        validator,
        public_url: settings.file.http.public_url.clone(),
        allowed_hosts: settings.file.http.allowed_hosts.clone(),
        access,
    });
    let shutdown = CancellationToken::new();
    let app = router(
        AppState {
            tools,
            metrics,
            auth,
        },
        &settings.file.http,
        shutdown.clone(),
    );
    let listener = match tokio::net::TcpListener::bind(settings.listen).await {
        Ok(listener) => listener,
        Err(err) => {
            // A refused role or an untrusted authority is the more useful reason; the first
            // attempt's outcome is known within seconds.
            tokio::select! {
                started = &mut started => started.map_err(Error::StartupPanicked)??,
                _ = readiness.past_start() => {}
            }
            return Err(Error::Listen {
                listen: settings.listen,
                source: err,
            });
        }
    };
    tracing::info!(listen = %listener.local_addr().map_err(Error::Io)?, "serving MCP at /mcp");
    // Responses go out in more than one write (head, then body): without TCP_NODELAY, Nagle's
    // algorithm holds the second write until the client's delayed ACK, ~40 ms per call.
    let listener = listener.tap_io(|tcp| {
        if let Err(err) = tcp.set_nodelay(true) {
            tracing::debug!(error = %err, "failed to set TCP_NODELAY");
        }
    });
    let stop = shutdown.clone();
    tokio::spawn(async move {
        pgmcp_telemetry::wait_for_signal().await;
        tracing::info!("shutting down");
        stop.cancel();
    });
    let serve = axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .into_future();
    tokio::pin!(serve);
    tokio::select! {
        served = &mut serve => return served.map_err(Error::Io),
        started = &mut started => started.map_err(Error::StartupPanicked)??,
    }
    serve.await.map_err(Error::Io)
}
