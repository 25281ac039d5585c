//! `make bench-operator`: the operator at 1,000 bindings (issue 9), against a control plane and
//! a PostgreSQL of the bench's own, so every apiserver counter and every PostgreSQL session
//! belongs to this run.
//!
//! ```text
//! setup    control plane, PostgreSQL 15 (one database with the shop tables), admin Secret,
//!          the kubelet stand-in and the bench's watches, the operator process
//! create   N bindings (password mode, a role each); until all are Ready
//! settle   until nothing but Lease renewals is written for a few seconds
//! steady   a window longer than --resync, so every binding is re-checked: zero writes
//!          (apiserver, SQL, ARM) and no binding's resourceVersion moves
//! change   one binding's grants narrowed: until its new generation is Ready
//! ```
//!
//! Smoke mode (`make bench-operator-smoke`, part of `make test`) runs the same phases with 10
//! bindings and short windows and asserts the invariants; the timing targets are reported only.

pub mod apiserver;
pub mod kubelet;
pub mod process;
pub mod report;
pub mod watch;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use futures::{StreamExt as _, TryStreamExt as _};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt as _};
use pgmcp_crds::v1alpha1::PostgresMcpBinding;
use pgmcp_tests::operator::{Operator, sum_samples};
use pgmcp_tests::{Postgres, TestEnv};

use apiserver::{Actor, Requests};
use report::{Phase, Report, Target};

/// Namespace of the bench (its own control plane, so a fixed name is fine).
const NAMESPACE: &str = "pgmcp-bench";
/// Database every binding grants on.
const DATABASE: &str = "bench";
/// The binding the change phase edits.
const CHANGED: &str = "b-0000";

/// Targets of issue 9.
const READY_TARGET: Duration = Duration::from_secs(60);
const RSS_TARGET: u64 = 100 * 1024 * 1024;
const CHANGE_TARGET: Duration = Duration::from_secs(2);

#[derive(Debug, Clone)]
pub struct Config {
    pub bindings: usize,
    /// The operator's `--resync` (the steady window is longer, so every binding is re-checked).
    pub resync: Duration,
    pub steady: Duration,
    /// How long to wait for all bindings to be Ready (and for the change) before failing.
    pub timeout: Duration,
    /// Binding creates in flight.
    pub create_parallelism: usize,
    /// Extra operator flags, e.g. `--concurrency=16`.
    pub operator_args: Vec<String>,
    pub smoke: bool,
}

impl Config {
    pub fn smoke() -> Self {
        Config {
            bindings: 10,
            resync: Duration::from_secs(2),
            steady: Duration::from_secs(5),
            timeout: Duration::from_secs(90),
            create_parallelism: 10,
            operator_args: Vec::new(),
            smoke: true,
        }
    }

    pub fn full() -> Self {
        Config {
            bindings: 1000,
            resync: Duration::from_secs(30),
            steady: Duration::from_secs(40),
            timeout: Duration::from_secs(600),
            create_parallelism: 32,
            operator_args: Vec::new(),
            smoke: false,
        }
    }
}

/// Starts the control plane and PostgreSQL, measures, and stops everything it started (also
/// when the returned future is dropped: every process lives in a value owned here).
pub async fn run(config: &Config) -> anyhow::Result<Report> {
    let (env, pg) = tokio::join!(TestEnv::start(), Postgres::start());
    let env = env.context("failed to start the control plane")?;
    let pg = pg.context("failed to start PostgreSQL")?;
    let result = measure(config, &env, &pg).await;
    drop(pg);
    drop(env);
    result
}

/// Operator metrics at one moment.
#[derive(Debug, Clone, Default)]
struct OperatorMetrics(String);

impl OperatorMetrics {
    fn get(&self, name: &str) -> f64 {
        sum_samples(&self.0, name)
    }

    /// Samples of `name` by their label set.
    fn by_labels(&self, name: &str) -> HashMap<String, f64> {
        self.0
            .lines()
            .filter_map(|l| {
                let rest = l.strip_prefix(name)?.strip_prefix('{')?;
                let (labels, value) = rest.rsplit_once("} ")?;
                Some((labels.to_owned(), value.trim().parse().ok()?))
            })
            .collect()
    }
}

/// `category=n` of the reconcile errors between two snapshots.
fn error_categories(before: &OperatorMetrics, after: &OperatorMetrics) -> String {
    let name = "pgmcp_operator_reconcile_errors_total";
    let old = before.by_labels(name);
    let mut parts: Vec<String> = after
        .by_labels(name)
        .into_iter()
        .filter_map(|(labels, v)| {
            let d = v - old.get(&labels).copied().unwrap_or(0.0);
            (d > 0.0).then(|| format!("{} {d}", labels.replace('"', "")))
        })
        .collect();
    parts.sort();
    parts.join(", ")
}

/// Everything a phase compares.
#[derive(Debug, Clone)]
struct Snapshot {
    at: Instant,
    api: Requests,
    operator: OperatorMetrics,
    pg_sessions: i64,
    pg_commits: i64,
    cpu: f64,
    /// CPU seconds of each component's process tree.
    components: Vec<(&'static str, f64)>,
}

struct Probe<'a> {
    client: &'a Client,
    stats: &'a tokio_postgres::Client,
    /// The running operator and its process id.
    operator: Operator,
    pid: u32,
    /// Process (tree) roots of everything that shares the machine in this run.
    components: Vec<(&'static str, u32)>,
}

/// Starts the operator with `args` and waits until it holds the Lease; returns it and its pid.
async fn start_operator(env: &TestEnv, args: &[String]) -> anyhow::Result<(Operator, u32)> {
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let operator = Operator::start(env, NAMESPACE, "pgmcp-bench", &refs)
        .await
        .context("failed to start the operator")?;
    let bin = pgmcp_tests::paths::operator_bin();
    let marker = format!("--metrics-listen=127.0.0.1:{}", operator.metrics_port);
    let pid = process::find(&bin, &marker)
        .with_context(|| format!("no process of {} found", bin.display()))?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while OperatorMetrics(operator.metrics().await?).get("pgmcp_operator_leader") < 1.0 {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the operator did not become leader:\n{}",
            operator.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok((operator, pid))
}

/// The processes of this run's control plane and PostgreSQL, found by their unique arguments.
fn components(env: &TestEnv, pg: &Postgres, operator: u32) -> Vec<(&'static str, u32)> {
    let dir = env
        .kubeconfig()
        .parent()
        .map(std::path::Path::to_path_buf)
        .unwrap_or_default();
    let api_port = env
        .server()
        .rsplit(':')
        .next()
        .unwrap_or_default()
        .to_owned();
    let etcd_dir = format!("--data-dir={}", dir.join("etcd-data").display());
    let kcm = format!(
        "--kubeconfig={}",
        dir.join("controller-manager.kubeconfig").display()
    );
    let pg_port = pg.port().to_string();
    let found = [
        (
            "kube-apiserver",
            process::find_where(|a| {
                a[0].ends_with("kube-apiserver") && a.contains(&format!("--secure-port={api_port}"))
            }),
        ),
        (
            "etcd",
            process::find_where(|a| a[0].ends_with("etcd") && a.contains(&etcd_dir)),
        ),
        (
            "kube-controller-manager",
            process::find_where(|a| a[0].ends_with("kube-controller-manager") && a.contains(&kcm)),
        ),
        (
            "PostgreSQL",
            process::find_where(|a| {
                a[0].ends_with("/postgres") && a.windows(2).any(|w| w[0] == "-p" && w[1] == pg_port)
            }),
        ),
        ("operator", Some(operator)),
    ];
    found
        .into_iter()
        .filter_map(|(name, pid)| Some((name, pid?)))
        .collect()
}

impl Probe<'_> {
    /// Stops the operator (it releases its Lease) and starts a new one with `args`.
    async fn restart(
        &mut self,
        env: &TestEnv,
        pg: &Postgres,
        args: &[String],
    ) -> anyhow::Result<()> {
        let stopping = Instant::now();
        self.operator.stop();
        self.kill_if_stuck();
        let stopped = stopping.elapsed();
        let (operator, pid) = start_operator(env, args).await?;
        eprintln!(
            "bench: operator stopped in {:.1}s, new one leader after {:.1}s",
            stopped.as_secs_f64(),
            stopping.elapsed().as_secs_f64()
        );
        self.operator = operator;
        self.pid = pid;
        self.components = components(env, pg, pid);
        Ok(())
    }

    /// An operator still running after `stop()` waited 30 s gets SIGKILL (by its pid): the
    /// harness's lifeline would otherwise wait for it forever.
    fn kill_if_stuck(&self) {
        if std::path::Path::new(&format!("/proc/{}", self.pid)).exists() {
            eprintln!(
                "bench: the operator (pid {}) did not stop on SIGTERM; killing it",
                self.pid
            );
            let _ = std::process::Command::new("kill")
                .args(["-KILL", &self.pid.to_string()])
                .status();
        }
    }

    async fn snapshot(&self) -> anyhow::Result<Snapshot> {
        let row = self
            .stats
            .query_one(
                "SELECT coalesce(sum(sessions), 0)::bigint, coalesce(sum(xact_commit), 0)::bigint FROM pg_stat_database",
                &[],
            )
            .await?;
        Ok(Snapshot {
            at: Instant::now(),
            api: Requests::scrape(self.client).await?,
            operator: OperatorMetrics(self.operator.metrics().await?),
            pg_sessions: row.get(0),
            pg_commits: row.get(1),
            cpu: process::sample(self.pid).map(|s| s.cpu).unwrap_or(0.0),
            components: self
                .components
                .iter()
                .map(|(name, pid)| (*name, process::tree_cpu(*pid)))
                .chain(std::iter::once((
                    "bench",
                    process::sample(std::process::id()).map_or(0.0, |s| s.cpu),
                )))
                .collect(),
        })
    }

    fn rss(&self) -> process::Sample {
        process::sample(self.pid).unwrap_or_default()
    }
}

fn phase(name: &str, before: &Snapshot, after: &Snapshot, peak_rss: u64) -> Phase {
    let op = |metric: &str| after.operator.get(metric) - before.operator.get(metric);
    Phase {
        name: name.to_owned(),
        seconds: after.at.duration_since(before.at).as_secs_f64(),
        api: after.api.since(&before.api),
        reconciles: op("pgmcp_operator_reconciles_total"),
        reconcile_errors: op("pgmcp_operator_reconcile_errors_total"),
        error_categories: error_categories(&before.operator, &after.operator),
        reconcile_seconds: op("pgmcp_operator_reconcile_duration_seconds_sum"),
        operator_writes: op("pgmcp_operator_writes_total"),
        sql: op("pgmcp_operator_sql_statements_total"),
        arm: op("pgmcp_operator_arm_requests_total"),
        // The bench's own statistics query commits once per snapshot.
        pg_sessions: after.pg_sessions - before.pg_sessions,
        pg_commits: (after.pg_commits - before.pg_commits - 1).max(0),
        cpu: after.cpu - before.cpu,
        component_cpu: after
            .components
            .iter()
            .zip(&before.components)
            .map(|((name, a), (_, b))| ((*name).to_owned(), a - b))
            .collect(),
        peak_rss,
    }
}

/// Samples the operator's RSS every 100 ms; `take()` returns the peak since the last take.
struct RssSampler {
    peak: std::sync::Arc<std::sync::atomic::AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl RssSampler {
    fn start(pid: u32) -> Self {
        let peak = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let shared = peak.clone();
        let task = tokio::spawn(async move {
            loop {
                if let Some(s) = process::sample(pid) {
                    shared.fetch_max(s.rss, std::sync::atomic::Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        RssSampler { peak, task }
    }

    fn take(&self) -> u64 {
        self.peak.swap(0, std::sync::atomic::Ordering::Relaxed)
    }
}

impl Drop for RssSampler {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Aborts the bench's background tasks when the run ends, however it ends.
struct Tasks(Vec<tokio::task::JoinHandle<()>>);

impl Drop for Tasks {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}

fn binding_name(i: usize) -> String {
    format!("b-{i:04}")
}

fn role_name(i: usize) -> String {
    format!("bench_r_{i:04}")
}

/// The password example, pointed at the bench database, with a role of its own.
fn binding(pg: &Postgres, i: usize) -> anyhow::Result<PostgresMcpBinding> {
    let yaml =
        pgmcp_tests::bindings::password_example(pg.host(), pg.port(), DATABASE, &role_name(i));
    let mut binding: PostgresMcpBinding =
        serde_saphyr::from_str(&yaml).context("failed to parse the password example")?;
    binding.metadata.name = Some(binding_name(i));
    binding.metadata.namespace = Some(NAMESPACE.to_owned());
    binding
        .labels_mut()
        .insert("pgmcp.dev/bench".to_owned(), "operator".to_owned());
    Ok(binding)
}

/// Service IPs for the bench: the harness's apiserver has a /24 (253 addresses), one
/// ClusterIP Service per binding needs more. A second ServiceCIDR is what a cluster
/// administrator adds (networking.k8s.io/v1, GA in 1.33).
const SERVICE_CIDR: &str = "10.96.0.0/20";

async fn add_service_cidr(client: &Client) -> anyhow::Result<()> {
    use k8s_openapi::api::networking::v1::ServiceCIDR;
    let cidr: ServiceCIDR = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "pgmcp-bench"},
        "spec": {"cidrs": [SERVICE_CIDR]}
    }))?;
    let api = Api::<ServiceCIDR>::all(client.clone());
    api.create(&PostParams::default(), &cidr)
        .await
        .context("failed to add a ServiceCIDR")?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let ready = api
            .get("pgmcp-bench")
            .await?
            .status
            .and_then(|s| s.conditions)
            .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
        if ready {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "ServiceCIDR {SERVICE_CIDR} not Ready after 30s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn setup_cluster(client: &Client, pg: &Postgres) -> anyhow::Result<()> {
    add_service_cidr(client).await?;
    let ns: Namespace = serde_json::from_value(serde_json::json!({
        "metadata": {"name": NAMESPACE}
    }))?;
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
        .context("failed to create the namespace")?;
    let secret = Secret {
        metadata: kube::api::ObjectMeta {
            name: Some("pg-admin".to_owned()),
            ..Default::default()
        },
        data: Some(
            [
                ("username", pgmcp_tests::postgres::SUPERUSER),
                ("password", pg.password()),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), ByteString(v.as_bytes().to_vec())))
            .collect(),
        ),
        ..Default::default()
    };
    Api::<Secret>::namespaced(client.clone(), NAMESPACE)
        .create(&PostParams::default(), &secret)
        .await
        .context("failed to create the admin Secret")?;
    Ok(())
}

async fn setup_database(pg: &Postgres) -> anyhow::Result<()> {
    pg.connect("postgres")
        .await?
        .batch_execute(&format!("CREATE DATABASE {DATABASE}"))
        .await?;
    let shop = std::fs::read_to_string(
        pgmcp_tests::paths::workspace_root().join("tests/fixtures/shop.sql"),
    )?;
    pg.connect(DATABASE).await?.batch_execute(&shop).await?;
    Ok(())
}

/// p50, p90 and max of `values` (seconds).
fn percentiles(mut values: Vec<f64>) -> [f64; 3] {
    if values.is_empty() {
        return [0.0; 3];
    }
    values.sort_by(f64::total_cmp);
    let at = |q: f64| values[((values.len() - 1) as f64 * q).round() as usize];
    [at(0.5), at(0.9), at(1.0)]
}

async fn measure(config: &Config, env: &TestEnv, pg: &Postgres) -> anyhow::Result<Report> {
    let n = config.bindings;
    let client = env.client().await?;
    let (cluster, database) = tokio::join!(setup_cluster(&client, pg), setup_database(pg));
    cluster?;
    database.context("failed to create the bench database")?;
    let stats = pg.connect("postgres").await?;

    let (kubelet, kubelet_task) = kubelet::Kubelet::spawn(client.clone(), NAMESPACE).await?;
    let (bindings, bindings_task) = watch::bindings(&client, NAMESPACE).await;
    let (deployments, deployments_task) = watch::deployments(&client, NAMESPACE).await;
    let _tasks = Tasks(vec![kubelet_task, bindings_task, deployments_task]);

    let operator_bin = pgmcp_tests::paths::operator_bin();
    // Creating runs with the operator's default --resync (5m); the steady window restarts it
    // with a short one, so every binding is re-checked at start-up and again by resync.
    let args = config.operator_args.clone();
    let mut steady_args = vec![format!("--resync={}ms", config.resync.as_millis())];
    steady_args.extend(config.operator_args.iter().cloned());
    let (operator, pid) = start_operator(env, &args).await?;
    let mut probe = Probe {
        client: &client,
        stats: &stats,
        operator,
        pid,
        components: components(env, pg, pid),
    };
    // Caches filled, idle.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut sampler = RssSampler::start(pid);
    let rss_idle = probe.rss().rss;
    eprintln!(
        "bench: operator pid {pid} ({}) leader, RSS {:.1} MB; creating {n} bindings",
        operator_bin.display(),
        rss_idle as f64 / 1e6
    );

    let mut report = Report {
        mode: if config.smoke { "smoke" } else { "full" }.to_owned(),
        bindings: n,
        operator_bin: operator_bin
            .strip_prefix(pgmcp_tests::paths::workspace_root())
            .unwrap_or(&operator_bin)
            .display()
            .to_string(),
        operator_args: args.clone(),
        steady_operator_args: steady_args.clone(),
        machine: machine(),
        date: jiff::Timestamp::now()
            .strftime("%Y-%m-%d %H:%M UTC")
            .to_string(),
        rss_idle,
        ..Report::default()
    };

    // --- create
    let specs: Vec<PostgresMcpBinding> =
        (0..n).map(|i| binding(pg, i)).collect::<Result<_, _>>()?;
    let api: Api<PostgresMcpBinding> = Api::namespaced(client.clone(), NAMESPACE);
    sampler.take();
    let before = probe.snapshot().await?;
    let started = Instant::now();
    let created: HashMap<String, Instant> = futures::stream::iter(specs)
        .map(|spec| {
            let api = api.clone();
            async move {
                let name = spec.name_any();
                api.create(&PostParams::default(), &spec)
                    .await
                    .with_context(|| format!("failed to create binding {name}"))?;
                anyhow::Ok((name, Instant::now()))
            }
        })
        .buffer_unordered(config.create_parallelism.max(1))
        .try_collect()
        .await?;
    report.all_created = started.elapsed().as_secs_f64();
    let mut last_progress = Instant::now();
    loop {
        let states = bindings.snapshot();
        let ready = states.values().filter(|s| s.ready).count();
        if ready >= n {
            break;
        }
        if last_progress.elapsed() >= Duration::from_secs(5) {
            last_progress = Instant::now();
            let reconciled = states.values().filter(|s| s.reconciled).count();
            let available = deployments
                .snapshot()
                .values()
                .filter(|d| d.available_at.is_some())
                .count();
            eprintln!(
                "bench: {:>5.1}s reconciled {reconciled}/{n}, Deployments available {available}, Ready {ready}, pods marked {}, operator RSS {:.1} MB",
                started.elapsed().as_secs_f64(),
                kubelet.marked(),
                probe.rss().rss as f64 / 1e6
            );
        }
        if started.elapsed() > config.timeout {
            let not_ready: Vec<String> = states
                .iter()
                .filter(|(_, s)| !s.ready)
                .map(|(k, _)| k.clone())
                .take(5)
                .collect();
            anyhow::bail!(
                "only {ready}/{n} bindings Ready after {:?} (e.g. {not_ready:?}); operator log tail:\n{}",
                config.timeout,
                tail(&probe.operator.log(), 30)
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let after = probe.snapshot().await?;
    let states = bindings.snapshot();
    let since = |at: Option<Instant>| at.map(|t| t.duration_since(started).as_secs_f64());
    let latest = |f: &dyn Fn(&watch::BindingState) -> Option<Instant>| {
        states
            .values()
            .filter_map(|s| since(f(s)))
            .fold(0.0, f64::max)
    };
    report.all_ready = latest(&|s| s.ready_at);
    report.all_reconciled = latest(&|s| s.reconciled_at);
    report.all_available = deployments
        .snapshot()
        .values()
        .filter_map(|d| since(d.available_at))
        .fold(0.0, f64::max);
    let per_binding = |f: &dyn Fn(&watch::BindingState) -> Option<Instant>| {
        percentiles(
            states
                .iter()
                .filter_map(|(name, s)| Some(f(s)?.duration_since(*created.get(name)?)))
                .map(|d| d.as_secs_f64())
                .collect(),
        )
    };
    report.ready_latency = per_binding(&|s| s.ready_at);
    report.reconciled_latency = per_binding(&|s| s.reconciled_at);
    report.pods_marked = kubelet.marked();
    report.rss_after_create = probe.rss().rss;
    report.create = phase("create", &before, &after, sampler.take());
    report
        .create
        .api
        .subtract(&apiserver::binding_key("POST"), n as f64);
    eprintln!(
        "bench: all {n} Ready after {:.1}s (reconciled {:.1}s, Deployments available {:.1}s)",
        report.all_ready, report.all_reconciled, report.all_available
    );
    let mut series: Vec<(String, f64)> = report
        .create
        .api
        .by_key
        .iter()
        .map(|(k, v)| {
            (
                format!(
                    "{:<18} {} {}",
                    apiserver::actor(k).to_string(),
                    k.verb,
                    k.target()
                ),
                *v,
            )
        })
        .collect();
    series.sort_by(|a, b| b.1.total_cmp(&a.1));
    eprintln!("bench: apiserver requests while creating, by series:");
    for (name, count) in series {
        eprintln!("  {count:>7} {name}");
    }

    // --- settle: the controller-manager's and the operator's follow-ups
    let quiet_for = Duration::from_secs(3);
    let settle_deadline = Instant::now() + Duration::from_secs(if config.smoke { 30 } else { 120 });
    let mut last = probe.snapshot().await?;
    let mut quiet_since = Instant::now();
    while quiet_since.elapsed() < quiet_for && Instant::now() < settle_deadline {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = probe.snapshot().await?;
        let moved = !now.api.since(&last.api).writes_except_leases().is_empty()
            || now.operator.get("pgmcp_operator_writes_total")
                != last.operator.get("pgmcp_operator_writes_total");
        if moved {
            quiet_since = Instant::now();
        }
        last = now;
    }

    // --- steady: a restarted operator re-checks every binding at once, then resyncs
    report.hwm_create = probe.rss().hwm;
    let rvs_before: HashMap<String, String> = bindings
        .snapshot()
        .into_iter()
        .map(|(k, s)| (k, s.resource_version))
        .collect();
    let mut before = probe.snapshot().await?;
    eprintln!(
        "bench: steady window of {:?}: operator restarted with --resync={:?}",
        config.steady, config.resync
    );
    let restarted = Instant::now();
    probe.restart(env, pg, &steady_args).await?;
    drop(sampler);
    sampler = RssSampler::start(probe.pid);
    // The new process counts from zero.
    before.operator = OperatorMetrics::default();
    before.cpu = 0.0;
    for (name, cpu) in &mut before.components {
        if *name == "operator" {
            *cpu = 0.0;
        }
    }
    let mut last_progress = Instant::now();
    // The window lasts `steady`, and at least until the new process has been through every
    // binding once (a slow machine must not turn into "no binding was re-checked").
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let reconciles =
            OperatorMetrics(probe.operator.metrics().await?).get("pgmcp_operator_reconciles_total");
        if restarted.elapsed() >= config.steady
            && (reconciles >= n as f64 || restarted.elapsed() >= config.timeout)
        {
            if report.steady_all_checked == 0.0 && reconciles >= n as f64 {
                report.steady_all_checked = restarted.elapsed().as_secs_f64();
            }
            break;
        }
        if report.steady_all_checked == 0.0 && reconciles >= n as f64 {
            report.steady_all_checked = restarted.elapsed().as_secs_f64();
        }
        if last_progress.elapsed() >= Duration::from_secs(5) {
            last_progress = Instant::now();
            eprintln!(
                "bench: {:>5.1}s into the steady window: {reconciles} reconciles",
                restarted.elapsed().as_secs_f64()
            );
        }
    }
    let after = probe.snapshot().await?;
    report.steady = phase("steady", &before, &after, sampler.take());
    report.steady_writes = report
        .steady
        .api
        .writes_except_leases()
        .into_iter()
        .map(|(k, v)| (format!("{} {}", k.verb, k.target()), v))
        .collect();
    report.steady_rv_changed = bindings
        .snapshot()
        .iter()
        .filter(|(k, s)| rvs_before.get(*k) != Some(&s.resource_version))
        .count();
    report.rss_after_steady = probe.rss().rss;

    // --- change
    let generation = bindings
        .get(CHANGED)
        .map(|s| s.generation)
        .unwrap_or_default();
    sampler.take();
    let before = probe.snapshot().await?;
    let changed_at = Instant::now();
    api.patch(
        CHANGED,
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({
            "spec": {"access": {"grants": [{"schema": "public", "tables": ["customers", "orders"]}]}}
        })),
    )
    .await
    .context("failed to change a binding")?;
    let mut change_failure = None;
    let converged = loop {
        let state = bindings.get(CHANGED).unwrap_or_default();
        if state.generation > generation && state.ready {
            break state;
        }
        if changed_at.elapsed() > config.timeout.min(Duration::from_secs(120)) {
            // Reported as a failed invariant; the figures so far are still worth having.
            eprintln!(
                "bench: binding {CHANGED} not Ready for its new generation: {state:?}\n{}",
                tail(&probe.operator.log(), 30)
            );
            change_failure = Some(format!(
                "binding {CHANGED} not Ready for its new generation {:?} after the change (observed generation {})",
                changed_at.elapsed(),
                state.observed_generation
            ));
            break state;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let after = probe.snapshot().await?;
    report.change_ready = converged
        .ready_at
        .map_or(0.0, |t| t.duration_since(changed_at).as_secs_f64());
    report.change_reconciled = converged
        .reconciled_at
        .map_or(0.0, |t| t.duration_since(changed_at).as_secs_f64());
    report.change = phase("change", &before, &after, sampler.take());
    report
        .change
        .api
        .subtract(&apiserver::binding_key("PATCH"), 1.0);
    let role = role_name(0);
    let db = pg.connect(DATABASE).await?;
    let can = |table: &'static str| {
        let db = &db;
        let role = role.clone();
        async move {
            db.query_one(
                "SELECT has_table_privilege($1, $2, 'SELECT')",
                &[&role, &table],
            )
            .await
            .map(|r| r.get::<_, bool>(0))
        }
    };
    let narrowed = can("public.customers").await? && !can("public.products").await?;

    report.hwm_steady = probe.rss().hwm;
    report.hwm = report.hwm_steady.max(report.hwm_create);
    drop(sampler);

    // --- verdicts
    let mut failures = Vec::new();
    let steady = &report.steady;
    let mut check = |ok: bool, what: String| {
        if !ok {
            failures.push(what);
        }
    };
    check(
        steady.api.writes_of(Actor::Operator) == 0.0,
        format!(
            "the operator wrote to the apiserver in the steady window: {:?}",
            steady.api.by_verb(Actor::Operator)
        ),
    );
    check(
        steady.operator_writes == 0.0,
        format!(
            "the operator counted {} writes in the steady window",
            steady.operator_writes
        ),
    );
    check(
        steady.sql == 0.0,
        format!("{} SQL writes in the steady window", steady.sql),
    );
    check(
        steady.arm == 0.0,
        format!("{} ARM calls in the steady window", steady.arm),
    );
    check(
        report.steady_rv_changed == 0,
        format!(
            "{} bindings changed in the steady window",
            report.steady_rv_changed
        ),
    );
    check(
        config.steady <= config.resync || steady.reconciles >= n as f64,
        format!(
            "only {} reconciles in a steady window longer than --resync (want every binding re-checked: {n})",
            steady.reconciles
        ),
    );
    check(
        report.create.reconcile_errors == 0.0 && steady.reconcile_errors == 0.0,
        format!(
            "reconcile errors: {} while creating, {} at steady state",
            report.create.reconcile_errors, steady.reconcile_errors
        ),
    );
    check(
        report.change.sql > 0.0 && narrowed,
        format!(
            "the change did not reach the database ({} SQL statements; role narrowed: {narrowed})",
            report.change.sql
        ),
    );
    failures.extend(change_failure);
    report.failures = failures;
    report.targets = vec![
        Target {
            what: format!("{n} bindings → all Ready"),
            limit: "≤ 60 s".to_owned(),
            measured: format!("{:.1} s", report.all_ready),
            met: report.all_ready <= READY_TARGET.as_secs_f64(),
        },
        Target {
            what: "operator RSS (peak, VmHWM)".to_owned(),
            limit: "≤ 100 MB".to_owned(),
            measured: format!("{:.1} MB", report.hwm as f64 / 1_048_576.0),
            met: report.hwm <= RSS_TARGET,
        },
        Target {
            what: "writes at steady state (apiserver, SQL, ARM)".to_owned(),
            limit: "0".to_owned(),
            measured: format!(
                "{}, {}, {}",
                steady.api.writes_of(Actor::Operator),
                steady.sql,
                steady.arm
            ),
            met: steady.api.writes_of(Actor::Operator) == 0.0
                && steady.sql == 0.0
                && steady.arm == 0.0,
        },
        Target {
            what: "one change → Ready again".to_owned(),
            limit: "≤ 2 s".to_owned(),
            measured: format!("{:.2} s", report.change_ready),
            met: report.change_ready <= CHANGE_TARGET.as_secs_f64(),
        },
    ];
    let failed_lines: Vec<String> = probe
        .operator
        .log()
        .lines()
        .filter(|l| l.contains("reconcile failed"))
        .take(5)
        .map(str::to_owned)
        .collect();
    if !failed_lines.is_empty() {
        eprintln!(
            "bench: first failed reconciles:\n{}",
            failed_lines.join("\n")
        );
    }
    let (marked, failed) = (kubelet.marked(), kubelet.failed());
    eprintln!("bench: kubelet stand-in marked {marked} pods Ready ({failed} gone first)");
    probe.operator.stop();
    probe.kill_if_stuck();
    drop(probe);
    Ok(report)
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// CPU model and count, for the report.
fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|m| m.trim_start_matches([' ', '\t', ':']).to_owned())
        .unwrap_or_else(|| "unknown CPU".to_owned());
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!("{cpus} × {model}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_pick_from_the_sorted_values() {
        assert_eq!(percentiles(vec![]), [0.0; 3]);
        let values = (1..=10).map(f64::from).rev().collect();
        assert_eq!(percentiles(values), [6.0, 9.0, 10.0]);
    }
}
