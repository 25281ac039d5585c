//! pgmcp-operator: flags → logging → client → CRD check → HTTP endpoints → leader election →
//! controller, until SIGTERM.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};
use kube_lease_manager::{LeaseManager, LeaseManagerBuilder, LeaseManagerError};
use pgmcp_operator::controller::{self, Options};
use pgmcp_operator::http;
use pgmcp_operator::metrics::Metrics;
use pgmcp_operator::settings::Args;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    init_logging(&args.log_format);
    let client = client(&args).await?;
    check_crd(&client).await?;

    let metrics = Arc::new(Metrics::default());
    let shutdown = CancellationToken::new();
    let serve = http::bind(args.metrics_listen, metrics.clone(), shutdown.clone())
        .await
        .with_context(|| format!("failed to listen on {}", args.metrics_listen))?;
    let server = tokio::spawn(serve);
    let stop = shutdown.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutting down");
        stop.cancel();
    });

    let identity = args.identity.clone().unwrap_or_else(default_identity);
    let mut options = Options {
        namespaces: args.namespaces.clone(),
        defaults: args.defaults(),
        resync: args.resync,
        concurrency: args.concurrency.max(1),
        identity: identity.clone(),
        postgres_tokens: None,
        arm: None,
        graph: None,
    };
    if let Some(identity) = workload_identity() {
        options.postgres_tokens = Some(pgmcp_identity::Tokens::new(identity.clone()));
        let settings = pgmcp_operator::azure::AzureSettings {
            arm_endpoint: args.arm_endpoint.clone(),
            fic_api_version: args.fic_api_version.clone(),
            foundry_api_version: args.foundry_api_version.clone(),
        };
        // Each service's scope follows its endpoint (sovereign clouds), as Azure's SDKs do.
        let token = pgmcp_identity::TokenProvider::new(identity.clone(), args.arm_scope());
        let graph_token = pgmcp_identity::TokenProvider::new(identity, args.graph_scope());
        options.graph = Some(
            pgmcp_operator::azure::graph::GraphClient::new(
                &args.graph_endpoint,
                graph_token,
                metrics.clone(),
            )
            .context("failed to set up the Microsoft Graph client")?,
        );
        options.arm = Some(
            pgmcp_operator::azure::arm::ArmClient::new(settings, token, metrics.clone())
                .context("failed to set up the Azure Resource Manager client")?,
        );
    }
    tracing::info!(
        namespaces = ?options.namespaces,
        server_image = %options.defaults.server_image,
        resync_s = options.resync.as_secs(),
        %identity,
        "starting"
    );
    let result = if args.leader_election {
        run_as_leader(&client, &args, identity, options, metrics, shutdown.clone()).await
    } else {
        controller::run(client, options, metrics, shutdown.clone()).await;
        Ok(())
    };
    shutdown.cancel();
    let _ = server.await;
    result
}

/// Waits for the Lease, runs the controller while holding it, releases it on shutdown. Losing
/// the Lease ends the process: a restart begins from a clean state, as controller-runtime does.
async fn run_as_leader(
    client: &Client,
    args: &Args,
    identity: String,
    options: Options,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let namespace = args
        .lease_namespace
        .clone()
        .unwrap_or_else(|| client.default_namespace().to_owned());
    let duration = args.lease_duration.as_secs().max(2);
    let manager = LeaseManagerBuilder::new(client.clone(), &args.lease_name)
        .with_namespace(&namespace)
        .with_identity(&identity)
        .with_duration(duration)
        .with_grace((duration / 3).max(1))
        .build()
        .await
        .with_context(|| {
            format!(
                "failed to set up leader election with Lease {namespace}/{}",
                args.lease_name
            )
        })?;
    let lease = format!("{namespace}/{}", args.lease_name);
    let (mut leader, lease_task) = hold_lease(manager, lease.clone());
    tracing::info!(%lease, "waiting for the leader Lease");
    let became_leader = loop {
        if *leader.borrow_and_update() {
            break true;
        }
        tokio::select! {
            changed = leader.changed() => if changed.is_err() { break false },
            () = shutdown.cancelled() => break false,
        }
    };
    let mut lost = false;
    if became_leader {
        metrics.set_leader(true);
        tracing::info!("acquired the leader Lease; reconciling");
        let lost_lease = async {
            while leader.changed().await.is_ok() {
                if !*leader.borrow_and_update() {
                    break;
                }
            }
        };
        tokio::select! {
            () = controller::run(client.clone(), options, metrics.clone(), shutdown.clone()) => {}
            () = lost_lease => lost = true,
        }
        metrics.set_leader(false);
    }
    // Closing the channel makes the lease task release the Lease, so a standby takes over
    // without waiting for it to expire.
    drop(leader);
    match lease_task.await {
        Ok(Ok(())) => tracing::info!("released the leader Lease"),
        Ok(Err(err)) => tracing::warn!(error = %err, "failed to release the leader Lease"),
        Err(err) => tracing::warn!(error = %err, "leader election task failed"),
    }
    if lost {
        anyhow::bail!(
            "lost the leader Lease to another replica; exiting so a restart begins from a clean state"
        );
    }
    Ok(())
}

/// Keeps trying to acquire, then renew, the Lease, and publishes whether this replica holds it;
/// releases it once the receiver is dropped.
///
/// kube-lease-manager's own `watch()` waits 1 s doubling to 30 s after a failed call and starts
/// over only when leadership changes, so each apiserver outage in the life of a leader left it
/// slower to renew after the next one: up to 30 s, twice the default 15 s Lease, during which a
/// standby could take the Lease while this replica still reconciled. Here a failed call is
/// retried after 1 to 2 s, as client-go's leader election does (RetryPeriod, 2 s). A Lease that
/// expired during an outage is still ours if no other replica took it: the next renewal keeps
/// it, and the process keeps running.
fn hold_lease(
    manager: LeaseManager,
    lease: String,
) -> (
    watch::Receiver<bool>,
    JoinHandle<Result<(), LeaseManagerError>>,
) {
    let (sender, receiver) = watch::channel(false);
    let task = tokio::spawn(async move {
        loop {
            tokio::select! {
                biased;
                () = sender.closed() => break,
                changed = manager.changed() => match changed {
                    Ok(leader) => {
                        sender.send_replace(leader);
                    }
                    Err(err) => {
                        tracing::warn!(%lease, error = %err, "failed to read or renew the leader Lease; retrying");
                        tokio::select! {
                            () = sender.closed() => break,
                            () = tokio::time::sleep(lease_retry_delay()) => {}
                        }
                    }
                },
            }
        }
        manager.release().await
    });
    (receiver, task)
}

/// 1 to 2 s, at random, so replicas that failed together do not retry together.
fn lease_retry_delay() -> Duration {
    let jitter = getrandom::u32().unwrap_or(0) % 1000;
    Duration::from_millis(1000 + u64::from(jitter))
}

async fn client(args: &Args) -> anyhow::Result<Client> {
    let Some(path) = &args.kubeconfig else {
        return Client::try_default().await.context(
            "failed to create a Kubernetes client from the in-cluster config or ~/.kube/config",
        );
    };
    let kubeconfig = Kubeconfig::read_from(path)
        .with_context(|| format!("failed to read kubeconfig {}", path.display()))?;
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .with_context(|| format!("failed to load kubeconfig {}", path.display()))?;
    Client::try_from(config).context("failed to create a Kubernetes client")
}

async fn check_crd(client: &Client) -> anyhow::Result<()> {
    let crds = Api::<CustomResourceDefinition>::all(client.clone());
    match crds.get_opt(pgmcp_crds::CRD_NAME).await {
        Ok(Some(_)) => Ok(()),
        Ok(None) => anyhow::bail!(
            "CustomResourceDefinition {} is not installed: kubectl apply -f crds/pgmcp.dev_postgresmcpbindings.yaml \
             (or install the Helm chart, which includes it)",
            pgmcp_crds::CRD_NAME
        ),
        Err(err) => Err(err).with_context(|| {
            format!(
                "failed to read CustomResourceDefinition {}",
                pgmcp_crds::CRD_NAME
            )
        }),
    }
}

/// The operator's own workload identity, when the webhook gave it one: it signs in to
/// PostgreSQL as an Entra administrator (`postgres.admin.entra`) and to Azure Resource Manager.
fn workload_identity() -> Option<Arc<dyn pgmcp_identity::TokenSource>> {
    match pgmcp_identity::WorkloadIdentity::from_env(|var| std::env::var(var).ok()) {
        Ok(identity) => {
            tracing::info!(identity = %pgmcp_identity::TokenSource::identity(&identity), "workload identity found: Entra admin connections and ARM enabled");
            Some(Arc::new(identity))
        }
        Err(err) => {
            tracing::info!(reason = %err, "no workload identity: bindings with postgres.admin.entra, a federated credential or a Foundry connection will report NoWorkloadIdentity");
            None
        }
    }
}

fn default_identity() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "pgmcp-operator".to_owned());
    format!("{host}-{}", std::process::id())
}

fn init_logging(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    if format == "text" {
        builder.init();
    } else {
        builder.json().flatten_event(true).init();
    }
}

async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
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
