//! pgmcp-operator: reconciles PostgresMcpBinding objects.
//!
//! This release ships the API (the CRD) and its validation only; the controller follows. The
//! binary already checks what every later version needs first: that the CRD is installed.

use anyhow::Context as _;
use clap::Parser;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::{Api, Client};

/// Kubernetes operator for PostgresMcpBinding.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _args = Args::parse();
    let client = Client::try_default()
        .await
        .context("failed to create a Kubernetes client (in-cluster config or KUBECONFIG)")?;
    let crds = Api::<CustomResourceDefinition>::all(client);
    if crds.get_opt(pgmcp_crds::CRD_NAME).await?.is_none() {
        anyhow::bail!(
            "CustomResourceDefinition {} is not installed: kubectl apply -f crds/pgmcp.dev_postgresmcpbindings.yaml",
            pgmcp_crds::CRD_NAME
        );
    }
    anyhow::bail!("the controller is not part of this release yet: only the CRD is");
}
