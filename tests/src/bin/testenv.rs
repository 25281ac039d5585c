//! `pgmcp-testenv`: the local environment behind `make demo`.
//!
//! Starts the test control plane and PostgreSQL 15 with the sample shop database, creates the
//! `agents` namespace with the admin Secret, installs the Helm chart and runs the operator with
//! the chart's ServiceAccount and arguments, applies the password-mode example binding pointed at
//! that database (the operator creates the read-only role, its password Secret and the grants),
//! runs the MCP server pod the operator rendered (pod runner: no kubelet here), waits for the
//! binding to be Ready, checks that the server answers, prints how to connect a client, and
//! keeps everything running until Ctrl-C (or stops at once with `--exit`). Everything it
//! started is stopped when it ends.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use k8s_openapi::api::apps::v1::Deployment;
use kube::Api;
use pgmcp_crds::v1alpha1::PostgresMcpBinding;
use pgmcp_tests::operator::Operator;
use pgmcp_tests::{Postgres, TestEnv, bindings, mcp, paths, podrunner, wait_for};

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
/// The role `manifests/examples/password.yaml` names.
const ROLE: &str = "shop_mcp";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let parent = Parent::now();
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
    let binding = bindings::password_example(pg.host(), pg.port(), DATABASE, ROLE);
    let binding_file = env.kubeconfig().with_file_name("shop-binding.yaml");
    std::fs::write(&binding_file, binding)?;
    // What a user installs: the chart (its CRD is already there, so Helm keeps it), then the
    // operator runs with nothing but the chart's ServiceAccount and the Deployment's arguments.
    let chart = paths::workspace_root().join("charts/pgmcp");
    run(Command::new(paths::helm())
        .arg("--kubeconfig")
        .arg(env.kubeconfig())
        .args(["install", "pgmcp"])
        .arg(&chart)
        .args(["--namespace", "pgmcp-system", "--create-namespace"]))?;
    println!(
        "installed the Helm chart {} into namespace pgmcp-system",
        chart.display()
    );
    let client = env.client().await?;
    let operator_args =
        podrunner::container_args(&client, "pgmcp-system", "pgmcp-operator").await?;
    let dir = env
        .kubeconfig()
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let sa_kubeconfig = env.service_account_kubeconfig("pgmcp-system", "pgmcp-operator", &dir)?;
    let operator_args: Vec<&str> = operator_args.iter().map(String::as_str).collect();
    let operator =
        Operator::start_with_kubeconfig(&sa_kubeconfig, "pgmcp-demo", &operator_args).await?;
    println!(
        "started pgmcp-operator as ServiceAccount pgmcp-system/pgmcp-operator with the chart's \
         arguments (no kubelet here; metrics at http://127.0.0.1:{}/metrics)",
        operator.metrics_port
    );
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
    let bindings: Api<PostgresMcpBinding> = Api::namespaced(client.clone(), NAMESPACE);
    let database_ready = |binding: PostgresMcpBinding| {
        binding
            .status?
            .conditions
            .iter()
            .any(|c| c.type_ == "DatabaseReady" && c.status == "True")
            .then_some(())
    };
    wait_for(
        "the operator to create role shop_mcp and its grants",
        Duration::from_secs(60),
        || async { database_ready(bindings.get("shop").await.ok()?) },
    )
    .await;
    println!(
        "the operator created role {ROLE} (SELECT on the tables of schema public) and Secret shop-postgres with its password"
    );
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), NAMESPACE);
    wait_for(
        "the operator to create Deployment shop-mcp",
        Duration::from_secs(60),
        || async { deployments.get_opt("shop-mcp").await.ok().flatten() },
    )
    .await;
    println!("the operator created ServiceAccount, ConfigMap, Service and Deployment shop-mcp");
    let pod = podrunner::run_deployment_pod(
        &client,
        NAMESPACE,
        "shop-mcp",
        &paths::server_bin(),
        Duration::from_secs(60),
    )
    .await
    .context(
        "failed to run the MCP server pod the operator rendered (make demo builds pgmcp-server)",
    )?;
    println!(
        "running pod {} as a local process (no kubelet here), published on 127.0.0.1:{}",
        pod.pod, pod.port
    );
    let bindings: Api<PostgresMcpBinding> = Api::namespaced(client, NAMESPACE);
    wait_for(
        "binding shop to be Ready",
        Duration::from_secs(60),
        || async {
            let binding = bindings.get("shop").await.ok()?;
            let status = binding.status?;
            status
                .conditions
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True")
                .then_some(())
        },
    )
    .await;
    kubectl(&env, &["get", "postgresmcpbindings", "-n", NAMESPACE])?;
    let url = pod.url();
    let tools = mcp::Session::open(pod.port).await?.tool_names().await?;
    println!("the MCP server at {url} offers: {}", tools.join(", "));

    print_summary(
        env.kubeconfig(),
        &pg,
        &binding_file,
        &url,
        &pod.root.path().join("container.log"),
        &operator.log_path(),
    );
    if args.exit {
        println!("--exit given: stopping everything");
    } else {
        println!("Press Ctrl-C to stop the control plane and PostgreSQL.");
        let why = stop_requested(parent).await?;
        println!("{why}: stopping");
    }
    drop(pod);
    drop(operator);
    drop(env);
    drop(pg);
    Ok(())
}

/// Waits until the demo is asked to stop: SIGINT (Ctrl-C), SIGTERM or SIGHUP to this process,
/// or its parent told to stop. Every process the demo started also stops when this one ends
/// without cleaning up (their lifelines, `tests/src/daemon.rs`); this is the orderly way.
async fn stop_requested(parent: Parent) -> anyhow::Result<String> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut hangup = signal(SignalKind::hangup())?;
    Ok(tokio::select! {
        got = tokio::signal::ctrl_c() => { got?; "SIGINT".to_owned() }
        _ = term.recv() => "SIGTERM".to_owned(),
        _ = hangup.recv() => "SIGHUP".to_owned(),
        why = parent.stopped() => why,
    })
}

/// Signals that end a process unless it catches them.
const STOPPING: [(u32, &str); 3] = [(1, "SIGHUP"), (2, "SIGINT"), (15, "SIGTERM")];

/// The process that started the demo, and the signals it caught then.
#[derive(Debug, Clone, Copy)]
struct Parent {
    pid: u32,
    caught: u64,
}

impl Parent {
    fn now() -> Self {
        let pid = std::os::unix::process::parent_id();
        Self {
            pid,
            caught: caught_signals(pid).unwrap_or(0),
        }
    }

    /// Resolves when the parent ends, or stops catching SIGINT, SIGTERM or SIGHUP. GNU make
    /// sent SIGINT or SIGHUP alone (a script's `kill -INT <make>`) passes it on to no one: it
    /// restores the signal's default action and waits for its recipe to end, so `make demo`
    /// would wait for ever; that restored default is how the demo knows. (SIGTERM make passes
    /// on.)
    async fn stopped(self) -> String {
        loop {
            if std::os::unix::process::parent_id() != self.pid {
                return format!("the parent process {} ended", self.pid);
            }
            let now = caught_signals(self.pid).unwrap_or(0);
            for (number, name) in STOPPING {
                let bit = 1u64 << (number - 1);
                if self.caught & bit != 0 && now & bit == 0 {
                    return format!("the parent process {} was sent {name}", self.pid);
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// The signals process `pid` catches (`SigCgt` of /proc/PID/status: bit N-1 for signal N).
fn caught_signals(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let mask = status.lines().find_map(|l| l.strip_prefix("SigCgt:"))?;
    u64::from_str_radix(mask.trim(), 16).ok()
}

/// Runs a command, failing with its output.
fn run(command: &mut Command) -> anyhow::Result<()> {
    let out = command
        .output()
        .context("failed to run helm (make tools)")?;
    anyhow::ensure!(
        out.status.success(),
        "{:?} failed: {}{}",
        command,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
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

fn print_summary(
    kubeconfig: &Path,
    pg: &Postgres,
    binding: &Path,
    url: &str,
    log: &Path,
    operator_log: &Path,
) {
    let kubectl = paths::kubectl();
    let cache = paths::cache_dir();
    println!(
        "
pgmcp demo is up.

  MCP server:        {url}   (read-only, tables of schema public; log: {log})
  Kubernetes {version}: export KUBECONFIG={kubeconfig}
                     alias kubectl={kubectl}
  The binding:       kubectl get pgmcp -n {NAMESPACE} -o wide; kubectl describe pgmcp shop -n {NAMESPACE}
  What clients need: kubectl get pgmcp shop -n {NAMESPACE} -o jsonpath='{{.status.connect}}'   (docs/agents.md)
                     kubectl explain postgresmcpbinding.spec
  What it created:   kubectl get deploy,svc,cm,sa -n {NAMESPACE} -l app.kubernetes.io/instance=shop
  Operator log:      {operator_log}
  Its manifest:      {binding}
  PostgreSQL 15:     PGPASSWORD={password} psql -h {host} -p {port} -U postgres {DATABASE}

Connect a client:
  VS Code (.vscode/mcp.json):  {{ \"servers\": {{ \"shop\": {{ \"type\": \"http\", \"url\": \"{url}\" }} }} }}
  Claude Code:                 claude mcp add --transport http shop {url}
  Claude Desktop (claude_desktop_config.json, through the mcp-remote bridge):
                               {{ \"mcpServers\": {{ \"shop\": {{ \"command\": \"npx\", \"args\": [\"-y\", \"mcp-remote\", \"{url}\"] }} }} }}
  MCP Inspector (installed):   {inspector} --cli {url} --transport http --method tools/list
  Python MCP SDK (installed):  echo '{{\"calls\":[{{\"tool\":\"search_objects\",\"arguments\":{{\"pattern\":\"customer\"}}}}]}}' \\
                                 | {python} {client} --url {url}

Then ask: \"which tables hold customer information?\", \"top 5 products by quantity\".
Edit the binding (kubectl edit pgmcp shop -n {NAMESPACE}) and watch the operator update the
ConfigMap and roll the Deployment (kubectl get rs). There is no kubelet here: the demo ran the
rendered pod once as a local process, which keeps the configuration it started with.
",
        version = paths::KUBERNETES_VERSION,
        kubeconfig = kubeconfig.display(),
        kubectl = kubectl.display(),
        binding = binding.display(),
        password = pg.password(),
        host = pg.host(),
        port = pg.port(),
        log = log.display(),
        operator_log = operator_log.display(),
        inspector = cache.join("node/node_modules/.bin/mcp-inspector").display(),
        python = cache.join("venv/mcp/bin/python").display(),
        client = paths::workspace_root().join("tests/interop/mcp_client.py").display(),
    );
}
