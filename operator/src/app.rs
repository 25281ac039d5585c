//! The operator's start, from parsed arguments to exit: logging → client → CRD check → HTTP
//! endpoints → leader election ([`crate::leader`]) → controller, until SIGTERM. `main.rs` only
//! parses the arguments.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::config::{KubeConfigOptions, Kubeconfig, KubeconfigError};
use kube::{Api, Client, Config};
use tokio_util::sync::CancellationToken;

use crate::azure::{arm, graph};
use crate::controller::{self, Options};
use crate::http;
use crate::leader::{self, run_as_leader};
use crate::metrics::Metrics;
use crate::settings::Args;

/// Why the operator stopped before SIGTERM. `main` prints it with its causes, one per line.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("failed to create a Kubernetes client from the in-cluster config or ~/.kube/config")]
    DefaultClient(#[source] kube::Error),
    #[error("failed to read kubeconfig {}", .path.display())]
    ReadKubeconfig {
        path: PathBuf,
        #[source]
        source: KubeconfigError,
    },
    #[error("failed to load kubeconfig {}", .path.display())]
    LoadKubeconfig {
        path: PathBuf,
        #[source]
        source: KubeconfigError,
    },
    #[error("failed to create a Kubernetes client")]
    Client(#[source] kube::Error),
    #[error(
        "CustomResourceDefinition {crd} is not installed: kubectl apply -f crds/pgmcp.dev_postgresmcpbindings.yaml \
         (or install the Helm chart, which includes it)",
        crd = pgmcp_crds::CRD_NAME
    )]
    CrdNotInstalled,
    #[error("failed to read CustomResourceDefinition {crd}", crd = pgmcp_crds::CRD_NAME)]
    ReadCrd(#[source] kube::Error),
    #[error("failed to listen on {listen}")]
    Listen {
        listen: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("failed to set up the Microsoft Graph client")]
    Graph(#[source] graph::Error),
    #[error("failed to set up the Azure Resource Manager client")]
    Arm(#[source] arm::Error),
    #[error(transparent)]
    TrustBundle(#[from] crate::settings::TrustBundleError),
    #[error(transparent)]
    Leader(#[from] leader::Error),
}

/// Checks the cluster and runs the controller (as leader, if elected) until SIGTERM; `dropped`
/// counts what OpenTelemetry export dropped, for the metrics.
pub async fn run(args: Args, dropped: pgmcp_telemetry::DroppedCounts) -> Result<(), Error> {
    let defaults = args.defaults()?;
    let client = client(&args).await?;
    check_crd(&client).await?;

    let metrics = Arc::new(Metrics::default().with_telemetry(&dropped));
    let shutdown = CancellationToken::new();
    let serve = http::bind(args.metrics_listen, metrics.clone(), shutdown.clone())
        .await
        .map_err(|source| Error::Listen {
            listen: args.metrics_listen,
            source,
        })?;
    let server = tokio::spawn(serve);
    let stop = shutdown.clone();
    tokio::spawn(async move {
        pgmcp_telemetry::wait_for_signal().await;
        tracing::info!("shutting down");
        stop.cancel();
    });

    let identity = args.identity.clone().unwrap_or_else(default_identity);
    let mut options = Options {
        namespaces: args.namespaces.clone(),
        defaults,
        resync: args.resync,
        concurrency: args.concurrency.max(1),
        identity: identity.clone(),
        postgres_tokens: None,
        arm: None,
        graph: None,
    };
    if let Some(identity) = workload_identity() {
        options.postgres_tokens = Some(pgmcp_identity::Tokens::new(identity.clone()));
        let settings = crate::azure::AzureSettings {
            arm_endpoint: args.arm_endpoint.clone(),
            fic_api_version: args.fic_api_version.clone(),
            foundry_api_version: args.foundry_api_version.clone(),
        };
        // Each service's scope follows its endpoint (sovereign clouds), as Azure's SDKs do.
        let token = pgmcp_identity::TokenProvider::new(identity.clone(), args.arm_scope());
        let graph_token = pgmcp_identity::TokenProvider::new(identity, args.graph_scope());
        options.graph = Some(
            graph::GraphClient::new(&args.graph_endpoint, graph_token, metrics.clone())
                .map_err(Error::Graph)?,
        );
        options.arm =
            Some(arm::ArmClient::new(settings, token, metrics.clone()).map_err(Error::Arm)?);
    }
    tracing::info!(
        namespaces = ?options.namespaces,
        server_image = %options.defaults.server_image,
        trust_bundle = ?options.defaults.trust_bundle,
        resync_s = options.resync.as_secs(),
        %identity,
        "starting"
    );
    let result = if args.leader_election {
        run_as_leader(&client, &args, identity, options, metrics, shutdown.clone())
            .await
            .map_err(Error::from)
    } else {
        controller::run(client, options, metrics, shutdown.clone()).await;
        Ok(())
    };
    shutdown.cancel();
    let _ = server.await;
    result
}

async fn client(args: &Args) -> Result<Client, Error> {
    let Some(path) = &args.kubeconfig else {
        return Client::try_default().await.map_err(Error::DefaultClient);
    };
    let kubeconfig = Kubeconfig::read_from(path).map_err(|source| Error::ReadKubeconfig {
        path: path.clone(),
        source,
    })?;
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .map_err(|source| Error::LoadKubeconfig {
            path: path.clone(),
            source,
        })?;
    Client::try_from(config).map_err(Error::Client)
}

async fn check_crd(client: &Client) -> Result<(), Error> {
    let crds = Api::<CustomResourceDefinition>::all(client.clone());
    match crds.get_opt(pgmcp_crds::CRD_NAME).await {
        Ok(Some(_)) => Ok(()),
        Ok(None) => Err(Error::CrdNotInstalled),
        Err(err) => Err(Error::ReadCrd(err)),
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
