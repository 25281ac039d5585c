//! Test harness for pgmcp: real components, started and stopped by the tests themselves.
//!
//! - [`TestEnv`]: etcd + kube-apiserver + kube-controller-manager built from Kubernetes' own Go
//!   modules (`tests/controlplane/build.sh`), with the pgmcp CRD installed and a fresh namespace
//!   per test.
//! - [`Postgres`]: a PostgreSQL instance in a temporary directory, a fresh database per test
//!   (Debian's 15, or the major `PGMCP_POSTGRES_VERSION` names: 14 to 18).
//! - [`otel::Collector`]: an OpenTelemetry Collector (`tests/otelcol/build.sh`) receiving OTLP/HTTP
//!   and writing what it received to files the tests read back.
//! - [`webhook::WorkloadIdentityWebhook`]: Azure Workload Identity's mutating admission webhook,
//!   registered with the control plane, so labelled pods get their identity as on AKS.
//!
//! Each test binary shares one control plane and one PostgreSQL (starting them takes seconds);
//! isolation comes from namespaces and databases. Every process is started under a lifeline
//! ([`daemon`]) so it stops when the test binary exits, also on panic or SIGKILL.

pub mod activity;
pub mod arm;
pub mod bindings;
pub mod controlplane;
pub mod daemon;
pub mod entra;
pub mod foundry;
pub mod graph;
pub mod http;
pub mod mcp;
pub mod node;
pub mod operator;
pub mod otel;
pub mod paths;
pub mod pki;
pub mod podrunner;
pub mod postgres;
pub mod publish;
mod tls_listener;
pub mod webhook;

pub use controlplane::{TestEnv, TestNamespace};
pub use postgres::{Postgres, TestDatabase};

/// Polls `check` every 200 ms until it returns `Some`, and returns that; panics naming `what`
/// after `timeout`.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: std::time::Duration, check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    match wait_for_opt(timeout, check).await {
        Some(value) => value,
        None => panic!("timed out after {timeout:?} waiting for {what}"),
    }
}

/// Polls `check` every 200 ms until it returns `Some` or `timeout` passes.
pub async fn wait_for_opt<T, F, Fut>(timeout: std::time::Duration, mut check: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return Some(value);
        }
        if std::time::Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

/// [`wait_for`] a condition that becomes true.
pub async fn eventually<F, Fut>(what: &str, timeout: std::time::Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    wait_for(what, timeout, || {
        let fut = check();
        async move { fut.await.then_some(()) }
    })
    .await;
}

/// `test` as an identifier: lower-case ASCII letters and digits, other characters as `sep`,
/// at most `max` characters, no leading or trailing `sep`.
pub(crate) fn slug(test: &str, sep: char, max: usize) -> String {
    let mut name: String = test
        .to_ascii_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { sep })
        .collect();
    name.truncate(max);
    name.trim_matches(sep).to_owned()
}

/// Runs an async initialisation on a thread of its own, with a runtime of its own.
///
/// Shared fixtures outlive the per-test tokio runtimes, so nothing they keep may be bound to one;
/// this also lets a synchronous `OnceLock` initialiser be called from inside an async test.
pub(crate) fn run_detached<T, F>(
    name: &str,
    make: impl FnOnce() -> F + Send + 'static,
) -> anyhow::Result<T>
where
    T: Send + 'static,
    F: std::future::Future<Output = anyhow::Result<T>>,
{
    std::thread::Builder::new()
        .name(name.to_owned())
        .spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(make())
        })?
        .join()
        .map_err(|_| anyhow::anyhow!("{name} panicked"))?
}
