//! pgmcp-server: parse arguments, get the first database token (workload identity), check the
//! database role, read the SECURITY DEFINER functions (again every 30 s), serve MCP over HTTP
//! (with caller authentication) or stdio.

use std::future::IntoFuture as _;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use axum::serve::ListenerExt as _;
use clap::Parser;
use pgmcp_server::auth::Auth;
use pgmcp_server::auth::jwt::EntraValidator;
use pgmcp_server::config::{Args, Settings};
use pgmcp_server::db::Database;
use pgmcp_server::metrics::Metrics;
use pgmcp_server::scope::Scope;
use pgmcp_server::tools::Tools;
use pgmcp_server::{AppState, PgMcpServer, router, startup};
use tokio_util::sync::CancellationToken;

/// The static (musl) images allocate with mimalloc, without transparent huge pages. musl's own
/// allocator maps and unmaps memory several times per call: +40 % server CPU per call against
/// the glibc build. With huge pages allowed, mimalloc backs its arenas with 2 MiB pages and
/// idle RSS doubles. glibc builds keep glibc's allocator: as fast here, and about 1 MB smaller
/// at idle (BENCHMARKS.md).
#[cfg(target_env = "musl")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    init_logging(&args.log_format);
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(usize::from(args.worker_threads))
        .enable_all()
        .build()
        .context("failed to start the async runtime")?
        .block_on(async {
            // On a worker, not on this thread: with the one default worker, the stdio loop,
            // the accept loop and every call then share a thread, and none wakes another.
            tokio::spawn(serve(args))
                .await
                .context("the server panicked")?
        })
}

async fn serve(args: Args) -> anyhow::Result<()> {
    let settings = Settings::resolve(&args, |var| std::env::var(var).ok())?;
    let db = Database::new(&settings.connect).map_err(anyhow::Error::msg)?;
    let scope = Scope::new(settings.file.scope.grants.clone())
        .with_functions(settings.file.scope.functions.clone());
    // Tool calls wait for the role check; over HTTP the listener answers meanwhile.
    let (role_checked, gate) = tokio::sync::watch::channel(false);
    let tools = Arc::new(Tools::new(db, scope, settings.file.limits.clone()).gated(gate));
    if let Some(provider) = &settings.connect.token {
        first_token(provider).await?;
    }
    let metrics = Arc::new(Metrics::default());

    if settings.stdio {
        check_role(&tools, settings.allow_unsafe_role).await?;
        load_definers(&tools).await;
        let _ = role_checked.send(true);
        tokio::spawn(tools.clone().keep_definers_fresh());
        tracing::info!("serving MCP on stdio");
        return pgmcp_server::stdio::serve(PgMcpServer::new(tools, metrics)).await;
    }

    let validator = match &settings.entra {
        Some(entra) => {
            let validator = EntraValidator::new(entra.clone()).map_err(anyhow::Error::msg)?;
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
                anyhow::bail!(
                    "refusing to serve without caller authentication on {}: configure Entra ID \
                     (--entra-tenant-id, --entra-audience, --entra-required-role), listen on \
                     127.0.0.1, or pass --insecure-allow-unauthenticated (development only)",
                    settings.listen
                );
            }
            tracing::warn!(listen = %settings.listen, "serving WITHOUT caller authentication: anyone who can reach this address can read the granted tables");
            None
        }
    };
    let auth = Arc::new(Auth {
        validator,
        public_url: settings.file.http.public_url.clone(),
        allowed_hosts: settings.file.http.allowed_hosts.clone(),
    });
    let shutdown = CancellationToken::new();
    let tools_for_check = tools.clone();
    let tools_for_refresh = tools.clone();
    let app = router(
        AppState {
            tools,
            metrics,
            auth,
        },
        &settings.file.http,
        shutdown.clone(),
    );
    // The role check runs while the listener starts: readiness waits for no database round
    // trip, tool calls wait for the check (Tools::role_checked), and a failed check stops the
    // server with its reason.
    let mut check = tokio::spawn({
        let tools = tools_for_check;
        let allow_unsafe_role = settings.allow_unsafe_role;
        async move {
            check_role(&tools, allow_unsafe_role).await?;
            load_definers(&tools).await;
            anyhow::Ok(())
        }
    });
    let listener = match tokio::net::TcpListener::bind(settings.listen).await {
        Ok(listener) => listener,
        Err(err) => {
            // A refused role is the more useful reason.
            (&mut check).await??;
            return Err(err).with_context(|| format!("failed to listen on {}", settings.listen));
        }
    };
    tracing::info!(listen = %listener.local_addr()?, "serving MCP at /mcp");
    // Responses go out in more than one write (head, then body): without TCP_NODELAY, Nagle's
    // algorithm holds the second write until the client's delayed ACK, ~40 ms per call.
    let listener = listener.tap_io(|tcp| {
        if let Err(err) = tcp.set_nodelay(true) {
            tracing::debug!(error = %err, "failed to set TCP_NODELAY");
        }
    });
    let stop = shutdown.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutting down");
        stop.cancel();
    });
    let serve = axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .into_future();
    tokio::pin!(serve);
    tokio::select! {
        served = &mut serve => return Ok(served?),
        checked = &mut check => checked??,
    }
    let _ = role_checked.send(true);
    tokio::spawn(tools_for_refresh.keep_definers_fresh());
    serve.await?;
    Ok(())
}

/// Gets the first database token. Entra refusing the exchange (no matching federated credential,
/// unknown client, …) stops the start at once with its reason; an unreachable authority is
/// retried for a minute.
async fn first_token(provider: &pgmcp_identity::TokenProvider) -> anyhow::Result<()> {
    let mut delay = Duration::from_millis(500);
    let started = std::time::Instant::now();
    loop {
        match provider.token().await {
            Ok(_) => {
                tracing::info!(identity = %provider.identity(), "the database password is an Entra token (workload identity)");
                return Ok(());
            }
            Err(err) if err.is_rejected() || started.elapsed() > Duration::from_secs(60) => {
                anyhow::bail!("refusing to start: {err}")
            }
            Err(err) => {
                tracing::warn!(error = %err, "Entra token not available yet; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// Retries while the database is unreachable (it may start after us), then checks the role.
async fn check_role(tools: &Tools, allow_unsafe_role: bool) -> anyhow::Result<()> {
    let mut delay = Duration::from_millis(200);
    let mut waited = Duration::ZERO;
    let problems = loop {
        match startup::role_problems(tools).await {
            Ok(problems) => break problems,
            Err(err) if waited < Duration::from_secs(60) => {
                tracing::warn!(error = %err, "database not ready; retrying");
                tokio::time::sleep(delay).await;
                waited += delay;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
            Err(err) => anyhow::bail!("{err}"),
        }
    };
    if problems.is_empty() {
        return Ok(());
    }
    let list = problems.join("; ");
    if allow_unsafe_role {
        tracing::error!(problems = %list, "UNSAFE: serving with a role that is not read-only (--allow-unsafe-role); the SQL guard and read-only transactions are the only protection left");
        Ok(())
    } else {
        anyhow::bail!(
            "refusing to serve: {list}. Use a role with SELECT only (what a PostgresMcpBinding creates), \
             or pass --allow-unsafe-role for development"
        )
    }
}

/// Reads the SECURITY DEFINER functions before the first call, naming those refused. A failure
/// only delays the read to the first query.
async fn load_definers(tools: &Tools) {
    match tools.refresh_definers().await {
        Ok(snapshot) if !snapshot.is_empty() => tracing::warn!(
            functions = %snapshot.definers().join(", "),
            "calls to these SECURITY DEFINER functions are refused (they run with their owner's rights); allow one with --allow-function SCHEMA.NAME (spec.access.functions) if agents may call it"
        ),
        Ok(_) => {}
        Err(err) => {
            tracing::warn!(error = %err, "failed to read the SECURITY DEFINER functions; reading them at the first query");
        }
    }
}

fn init_logging(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        // rmcp logs every stateless request (a service per request) at info.
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,rmcp=warn"));
    // Logs go to stderr: stdout carries MCP in stdio mode.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if format == "text" {
        builder.init();
    } else {
        builder.json().flatten_event(true).init();
    }
}

async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
