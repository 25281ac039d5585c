//! `pgmcp-testenv`: the local environment behind `make demo`.
//!
//! Starts the test control plane and PostgreSQL 15 with the sample shop database, creates the
//! `agents` namespace with the admin Secret, installs the Helm chart, applies the password-mode
//! example binding pointed at that database (the operator creates the read-only role, its
//! password Secret and the grants), waits for the binding to be Ready, checks that the server
//! answers, prints how to connect a client, and keeps everything running until Ctrl-C (or stops
//! at once with `--exit`). Everything it started is stopped when it ends.
//!
//! On a machine that can run a node (`pgmcp_tests::node::cannot_run`), everything runs in
//! namespaces of its own with a real kubelet: the operator and the server run as pods from the
//! images `make images` built, and this process publishes the apiserver, PostgreSQL and the MCP
//! Service on loopback ports (`pgmcp_tests::publish`), so the printed settings work from the
//! user's shell. Elsewhere the operator runs as a local process with the chart's ServiceAccount
//! and arguments, and the pod runner starts the rendered server pod once as a local process.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use k8s_openapi::api::apps::v1::Deployment;
use kube::Api;
use pgmcp_crds::v1alpha1::PostgresMcpBinding;
use pgmcp_tests::node::{self, TestNode};
use pgmcp_tests::operator::Operator;
use pgmcp_tests::publish::{self, Target};
use pgmcp_tests::{Postgres, TestEnv, bindings, mcp, paths, podrunner, wait_for};

/// Local control plane + PostgreSQL + sample binding for trying pgmcp.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Stop everything right after setting it up (a smoke test of the demo).
    #[arg(long)]
    exit: bool,
    /// Internal: proxy a published port into the node's namespaces (`pgmcp_tests::publish`).
    #[arg(long, hide = true)]
    proxy: Option<String>,
}

/// The line the demo on the node prints when it is up, followed by what the publisher needs.
const UP: &str = "PGMCP_DEMO_UP ";

const NAMESPACE: &str = "agents";
const DATABASE: &str = "shop";
/// The role `manifests/examples/password.yaml` names.
const ROLE: &str = "shop_mcp";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Some(target) = &args.proxy {
        return publish::serve(Target::parse(target)?).await;
    }
    if node::inside() {
        return on_node().await;
    }
    let parent = Parent::now();
    let images = paths::images();
    let cannot = node::cannot_run().or_else(|| {
        images
            .iter()
            .find(|image| !image.exists())
            .map(|image| format!("{} is missing (make images)", image.display()))
    });
    match cannot {
        None => published(&args, parent).await,
        Some(why) => {
            println!(
                "No kubelet can run here ({why}): the operator and the MCP server run as local \
                 processes instead (the pod runner starts the rendered pod once; docs/development.md)."
            );
            with_pod_runner(&args, parent).await
        }
    }
}

/// What the demo on the node tells the process that publishes it.
#[derive(serde::Serialize, serde::Deserialize)]
struct Up {
    kubeconfig: std::path::PathBuf,
    postgres_port: u16,
    postgres_password: String,
    binding: std::path::PathBuf,
}

/// Runs the demo on a node in namespaces of its own, publishes it on loopback, prints the
/// summary, and stops it when asked.
async fn published(args: &Args, parent: Parent) -> anyhow::Result<()> {
    use std::io::BufRead as _;
    let exe = std::env::current_exe()?;
    let mut demo = node::unshare(&exe)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .context("failed to run unshare (util-linux)")?;
    let lines = std::io::BufReader::new(demo.stdout.take().context("no stdout")?).lines();
    let (up_tx, up_rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let mut up_tx = Some(up_tx);
        for line in lines.map_while(Result::ok) {
            match line.strip_prefix(UP) {
                Some(up) => {
                    if let Some(tx) = up_tx.take() {
                        let _ = tx.send(up.to_owned());
                    }
                }
                None => println!("{line}"),
            }
        }
    });
    let up: Up = match up_rx.await {
        Ok(up) => serde_json::from_str(&up)?,
        Err(_) => anyhow::bail!("the demo on the node failed ({})", demo.wait()?),
    };
    // The demo's first process, as seen from here: the child of `unshare`.
    let unshare = demo.id();
    let inside: u32 = std::fs::read_to_string(format!("/proc/{unshare}/task/{unshare}/children"))?
        .split_whitespace()
        .next()
        .context("unshare has no child")?
        .parse()?;
    let (api_port, _api) =
        publish::publish(&exe, inside, &Target::Address("127.0.0.1:443".into()))?;
    let (pg_port, _pg) = publish::publish(
        &exe,
        inside,
        &Target::Address(format!("127.0.0.1:{}", up.postgres_port)),
    )?;
    let (mcp_port, _mcp) = publish::publish(
        &exe,
        inside,
        &Target::Service {
            kubeconfig: up.kubeconfig.clone(),
            namespace: NAMESPACE.to_owned(),
            name: "shop-mcp".to_owned(),
            port: 8080,
        },
    )?;
    // The user's kubeconfig: the same credentials, the published apiserver.
    let kubeconfig = up.kubeconfig.with_file_name("kubeconfig-published");
    std::fs::write(
        &kubeconfig,
        std::fs::read_to_string(&up.kubeconfig)?.replace(
            "server: https://127.0.0.1:443",
            &format!("server: https://127.0.0.1:{api_port}"),
        ),
    )?;
    let url = format!("http://127.0.0.1:{mcp_port}/mcp");
    let tools = wait_for(
        "the MCP server to answer on its published port",
        Duration::from_secs(30),
        || async {
            mcp::Session::open(mcp_port)
                .await
                .ok()?
                .tool_names()
                .await
                .ok()
        },
    )
    .await;
    println!("the MCP server at {url} offers: {}", tools.join(", "));
    print_summary(&Summary {
        kubeconfig: &kubeconfig,
        postgres: ("127.0.0.1", pg_port, &up.postgres_password),
        binding: &up.binding,
        url: &url,
        server_log: &format!("kubectl logs -n {NAMESPACE} deploy/shop-mcp"),
        operator_log: "kubectl logs -n pgmcp-system -l app.kubernetes.io/name=pgmcp",
        on_node: true,
    });
    if args.exit {
        println!("--exit given: stopping everything");
    } else {
        println!("Press Ctrl-C to stop the node, the control plane and PostgreSQL.");
        let why = tokio::select! {
            why = stop_requested(parent) => why?,
            _ = wait_exit(&mut demo) => "the demo on the node ended".to_owned(),
        };
        println!("{why}: stopping");
    }
    // End of its stdin: the demo stops in order (node, control plane, PostgreSQL).
    drop(demo.stdin.take());
    let status = demo.wait()?;
    anyhow::ensure!(status.success(), "the demo on the node ended with {status}");
    Ok(())
}

async fn wait_exit(child: &mut std::process::Child) {
    while matches!(child.try_wait(), Ok(None)) {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The demo inside the node's namespaces: the control plane, PostgreSQL and a node; the chart
/// and the binding; then it says it is up and runs until its stdin ends (or a signal).
async fn on_node() -> anyhow::Result<()> {
    let (env, pg) = tokio::try_join!(TestEnv::start_for_node(), Postgres::start_for_node())?;
    load_sample(&pg).await?;
    let node = TestNode::start(&env, &paths::images()).await?;
    println!(
        "started node {} ({}): kubelet {}, containerd, runc; imported the images of make images",
        node::NODE_NAME,
        node::NODE_IP,
        paths::KUBERNETES_VERSION
    );
    let binding_file = create_namespace(&env, &pg, pg.host_for_pods())?;
    helm_install(&env, &["--wait", "--timeout", "180s"])?;
    println!("the operator runs as the chart's Deployment (two pods, leader election):");
    kubectl(&env, &["get", "pods", "-n", "pgmcp-system", "-o", "wide"])?;
    apply_binding(&env, &binding_file).await?;
    let client = env.client().await?;
    wait_for(
        "the server's pod to be Ready behind Service shop-mcp",
        Duration::from_secs(120),
        || async {
            let ready = publish::ready_endpoints(&client, NAMESPACE, "shop-mcp").await;
            ready.ok().filter(|ready| !ready.is_empty())
        },
    )
    .await;
    kubectl(&env, &["get", "pods", "-n", NAMESPACE, "-o", "wide"])?;
    let up = Up {
        kubeconfig: env.kubeconfig().to_path_buf(),
        postgres_port: pg.port(),
        postgres_password: pg.password().to_owned(),
        binding: binding_file,
    };
    println!("{UP}{}", serde_json::to_string(&up)?);
    // Its stdin ends when the publishing process stops it (or ends itself).
    let (closed_tx, closed) = tokio::sync::oneshot::channel::<()>();
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut std::io::stdin(), &mut std::io::sink());
        let _ = closed_tx.send(());
    });
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = closed => {}
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    drop(node);
    drop(env);
    drop(pg);
    Ok(())
}

/// The sample database `shop`.
async fn load_sample(pg: &Postgres) -> anyhow::Result<()> {
    let sample = paths::workspace_root().join("tests/fixtures/shop.sql");
    let admin = pg.connect("postgres").await?;
    admin
        .batch_execute(&format!("CREATE DATABASE {DATABASE}"))
        .await?;
    let shop = pg.connect(DATABASE).await?;
    shop.batch_execute(&std::fs::read_to_string(&sample)?)
        .await
        .with_context(|| format!("failed to load {}", sample.display()))?;
    println!(
        "loaded the sample database {DATABASE} ({})",
        sample.display()
    );
    Ok(())
}

/// Namespace `agents` with the admin Secret, and the example binding's manifest pointed at
/// PostgreSQL on `host`; returns the manifest's path.
fn create_namespace(
    env: &TestEnv,
    pg: &Postgres,
    host: &str,
) -> anyhow::Result<std::path::PathBuf> {
    kubectl(env, &["create", "namespace", NAMESPACE])?;
    kubectl(
        env,
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
    let binding = bindings::password_example(host, pg.port(), DATABASE, ROLE);
    let binding_file = env.kubeconfig().with_file_name("shop-binding.yaml");
    std::fs::write(&binding_file, binding)?;
    Ok(binding_file)
}

/// What a user installs: the chart (its CRD is already there, so Helm keeps it).
fn helm_install(env: &TestEnv, extra: &[&str]) -> anyhow::Result<()> {
    let chart = paths::workspace_root().join("charts/pgmcp");
    run(Command::new(paths::helm())
        .arg("--kubeconfig")
        .arg(env.kubeconfig())
        .args(["install", "pgmcp"])
        .arg(&chart)
        .args(["--namespace", "pgmcp-system", "--create-namespace"])
        .args(extra))?;
    println!(
        "installed the Helm chart {} into namespace pgmcp-system",
        chart.display()
    );
    Ok(())
}

/// `kubectl apply` of the binding, then waits until the operator created the role and grants.
async fn apply_binding(env: &TestEnv, binding_file: &Path) -> anyhow::Result<()> {
    kubectl(
        env,
        &[
            "apply",
            "-n",
            NAMESPACE,
            "-f",
            &binding_file.display().to_string(),
        ],
    )?;
    let bindings: Api<PostgresMcpBinding> = Api::namespaced(env.client().await?, NAMESPACE);
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
    Ok(())
}

/// The demo without a node: the operator as a local process with the chart's ServiceAccount
/// and arguments, the server's pod run once by the pod runner.
async fn with_pod_runner(args: &Args, parent: Parent) -> anyhow::Result<()> {
    let (env, pg) = tokio::try_join!(TestEnv::start(), Postgres::start())?;

    load_sample(&pg).await?;
    let binding_file = create_namespace(&env, &pg, pg.host())?;
    helm_install(&env, &[])?;
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
    apply_binding(&env, &binding_file).await?;
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

    print_summary(&Summary {
        kubeconfig: env.kubeconfig(),
        postgres: (pg.host(), pg.port(), pg.password()),
        binding: &binding_file,
        url: &url,
        server_log: &pod.root.path().join("container.log").display().to_string(),
        operator_log: &operator.log_path().display().to_string(),
        on_node: false,
    });
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

/// What the summary shows.
struct Summary<'a> {
    kubeconfig: &'a Path,
    /// Host, port and superuser password.
    postgres: (&'a str, u16, &'a str),
    binding: &'a Path,
    url: &'a str,
    /// Where, or how, to read the logs.
    server_log: &'a str,
    operator_log: &'a str,
    on_node: bool,
}

fn print_summary(summary: &Summary<'_>) {
    let Summary {
        kubeconfig,
        postgres: (host, port, password),
        binding,
        url,
        server_log: log,
        operator_log,
        on_node,
    } = *summary;
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
ConfigMap and roll the Deployment (kubectl get rs). {rollout}
",
        rollout = if on_node {
            "The new pods start on the demo's node\n(kubectl get pods -n agents -w), and the MCP server's address follows them."
        } else {
            "There is no kubelet here: the demo ran the\nrendered pod once as a local process, which keeps the configuration it started with."
        },
        version = paths::KUBERNETES_VERSION,
        kubeconfig = kubeconfig.display(),
        kubectl = kubectl.display(),
        binding = binding.display(),
        inspector = cache.join("node/node_modules/.bin/mcp-inspector").display(),
        python = cache.join("venv/mcp/bin/python").display(),
        client = paths::workspace_root().join("tests/interop/mcp_client.py").display(),
    );
}
