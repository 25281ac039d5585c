//! `pgmcp-testenv`: the local environment behind `make demo`.
//!
//! Starts the test control plane and PostgreSQL 15 with the sample shop database, creates the
//! `agents` namespace with the admin Secret, applies the password-mode example binding pointed
//! at that database, prints how to look at it, and keeps everything running until Ctrl-C (or
//! stops at once with `--exit`). Everything it started is stopped when it ends.

use std::path::Path;
use std::process::Command;

use anyhow::Context as _;
use clap::Parser;
use pgmcp_tests::{Postgres, TestEnv, paths};

/// Local control plane + PostgreSQL + sample binding for trying pgmcp.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Stop everything right after setting it up (a smoke test of the demo).
    #[arg(long)]
    exit: bool,
}

const NAMESPACE: &str = "agents";
const DATABASE: &str = "shop";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let (env, pg) = tokio::try_join!(TestEnv::start(), Postgres::start())?;

    let sample = paths::workspace_root().join("tests/fixtures/shop.sql");
    {
        let admin = pg.connect("postgres").await?;
        admin
            .batch_execute(&format!("CREATE DATABASE {DATABASE}"))
            .await?;
        let shop = pg.connect(DATABASE).await?;
        shop.batch_execute(&std::fs::read_to_string(&sample)?)
            .await
            .with_context(|| format!("failed to load {}", sample.display()))?;
    }
    println!(
        "loaded the sample database {DATABASE} ({})",
        sample.display()
    );

    kubectl(&env, &["create", "namespace", NAMESPACE])?;
    kubectl(
        &env,
        &[
            "create",
            "secret",
            "generic",
            "pg-admin",
            "-n",
            NAMESPACE,
            "--from-literal=username=postgres",
            &format!("--from-literal=password={}", pg.password()),
        ],
    )?;
    let example = paths::examples_dir().join("password.yaml");
    let binding = std::fs::read_to_string(&example)?.replace(
        "host: postgres.databases.svc.cluster.local",
        &format!("host: {}\n    port: {}", pg.host(), pg.port()),
    );
    let binding_file = env.kubeconfig().with_file_name("shop-binding.yaml");
    std::fs::write(&binding_file, binding)?;
    kubectl(
        &env,
        &[
            "apply",
            "-n",
            NAMESPACE,
            "-f",
            &binding_file.display().to_string(),
        ],
    )?;
    kubectl(&env, &["get", "postgresmcpbindings", "-n", NAMESPACE])?;

    print_summary(env.kubeconfig(), &pg, &binding_file);
    if args.exit {
        println!("--exit given: stopping everything");
    } else {
        println!("Press Ctrl-C to stop the control plane and PostgreSQL.");
        tokio::signal::ctrl_c().await?;
        println!("stopping");
    }
    drop(env);
    drop(pg);
    Ok(())
}

fn kubectl(env: &TestEnv, args: &[&str]) -> anyhow::Result<()> {
    let shown: Vec<&str> = args
        .iter()
        .map(|a| {
            if a.starts_with("--from-literal=password=") {
                "--from-literal=password=…"
            } else {
                a
            }
        })
        .collect();
    println!("$ kubectl {}", shown.join(" "));
    let status = Command::new(paths::kubectl())
        .arg("--kubeconfig")
        .arg(env.kubeconfig())
        .args(args)
        .status()
        .context("failed to run kubectl (make tools)")?;
    anyhow::ensure!(status.success(), "kubectl {} failed", shown.join(" "));
    Ok(())
}

fn print_summary(kubeconfig: &Path, pg: &Postgres, binding: &Path) {
    let kubectl = paths::kubectl();
    println!(
        "
pgmcp demo is up.

  Kubernetes {version}: export KUBECONFIG={kubeconfig}
                     alias kubectl={kubectl}
  The binding:       kubectl get pgmcp -n {NAMESPACE}; kubectl explain postgresmcpbinding.spec
  Its manifest:      {binding}
  PostgreSQL 15:     PGPASSWORD={password} psql -h {host} -p {port} -U postgres {DATABASE}

The binding is validated and stored by the API server. The operator that turns it into a
database role, grants and a running MCP server is not part of this release yet.
",
        version = paths::KUBERNETES_VERSION,
        kubeconfig = kubeconfig.display(),
        kubectl = kubectl.display(),
        binding = binding.display(),
        password = pg.password(),
        host = pg.host(),
        port = pg.port(),
    );
}
