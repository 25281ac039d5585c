//! The `pgmcp-operator` binary as a process against the test control plane, scoped to one
//! namespace (its bindings and its leader Lease), so tests running in parallel never see each
//! other's operator.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::daemon::{Daemon, Spec};
use crate::entra::{App, EntraFake, FederatedCredential, TOKEN_EXCHANGE_AUDIENCE};
use crate::{TestEnv, TestNamespace, paths};

/// ServiceAccount the operator runs as in [`Operator::start_with_workload_identity`].
pub const SERVICE_ACCOUNT: &str = "pgmcp-operator";

/// The operator's own managed identity, in the Entra fake.
#[derive(Debug)]
pub struct WorkloadIdentity<'a> {
    pub entra: &'a EntraFake,
    pub tenant: &'a str,
    pub client_id: &'a str,
    pub object_id: &'a str,
    /// CAs the process trusts through `SSL_CERT_FILE`: the fakes it calls.
    pub trust: &'a [&'a Path],
}

impl WorkloadIdentity<'_> {
    /// Registers the identity in the Entra fake with a federated credential for ServiceAccount
    /// [`SERVICE_ACCOUNT`] of `namespace` in `env`, and lets the fake check that cluster's
    /// tokens (OIDC discovery through the apiserver).
    pub async fn register(&self, env: &TestEnv, namespace: &str) -> anyhow::Result<()> {
        self.entra.register_app(
            self.tenant,
            App {
                client_id: self.client_id.to_owned(),
                object_id: self.object_id.to_owned(),
                display_name: SERVICE_ACCOUNT.to_owned(),
                access_token_version: 1,
                federated_credentials: vec![FederatedCredential {
                    issuer: env.server().to_owned(),
                    subject: format!("system:serviceaccount:{namespace}:{SERVICE_ACCOUNT}"),
                    audiences: vec![TOKEN_EXCHANGE_AUDIENCE.to_owned()],
                }],
                ..App::default()
            },
        )?;
        self.entra.trust_issuer(env.server(), env.client().await?);
        Ok(())
    }

    /// The PEM of the CAs in [`WorkloadIdentity::trust`], one after the other.
    pub fn trust_pem(&self) -> anyhow::Result<String> {
        let mut pem = String::new();
        for ca in self.trust {
            pem.push_str(&std::fs::read_to_string(ca)?);
        }
        Ok(pem)
    }
}

/// A running operator; stopped with SIGTERM (releasing its Lease) when dropped.
#[derive(Debug)]
pub struct Operator {
    pub identity: String,
    pub metrics_port: u16,
    log: PathBuf,
    _dir: tempfile::TempDir,
    daemon: Daemon,
    /// The projected token and CA bundle of a workload identity, kept while it runs.
    identity_files: Option<(tempfile::TempDir, PathBuf)>,
}

impl Operator {
    /// Starts the operator watching `namespace`, with the Lease in that namespace, and waits
    /// for its /healthz. `extra` flags come last and win.
    pub async fn start(
        env: &TestEnv,
        namespace: &str,
        identity: &str,
        extra: &[&str],
    ) -> anyhow::Result<Self> {
        Self::start_with_env(env, namespace, identity, extra, &[]).await
    }

    /// [`Operator::start`] with extra environment variables (e.g. the workload-identity ones).
    pub async fn start_with_env(
        env: &TestEnv,
        namespace: &str,
        identity: &str,
        extra: &[&str],
        vars: &[(String, String)],
    ) -> anyhow::Result<Self> {
        let mut args: Vec<String> = vec![
            format!("--kubeconfig={}", env.kubeconfig().display()),
            format!("--namespace={namespace}"),
            format!("--lease-namespace={namespace}"),
            "--server-image=pgmcp-server:test".to_owned(),
            "--log-format=text".to_owned(),
        ];
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        Self::launch(identity, args, vars).await
    }

    /// [`Operator::start`] as the workload-identity webhook would run it: ServiceAccount
    /// [`SERVICE_ACCOUNT`] in `ns` federated (in the Entra fake) with app `identity.client_id`, a
    /// TokenRequest token in a file, the four `AZURE_*` variables and `SSL_CERT_FILE`.
    pub async fn start_with_workload_identity(
        env: &TestEnv,
        ns: &TestNamespace,
        name: &str,
        identity: &WorkloadIdentity<'_>,
        extra: &[&str],
    ) -> anyhow::Result<Self> {
        identity.register(env, &ns.name).await?;
        let files = tempfile::Builder::new()
            .prefix("pgmcp-operator-identity-")
            .tempdir()?;
        let token_file = files.path().join("azure-identity-token");
        std::fs::write(
            &token_file,
            crate::entra::service_account_token(ns, SERVICE_ACCOUNT).await?,
        )?;
        let bundle = files.path().join("ca-bundle.pem");
        std::fs::write(&bundle, identity.trust_pem()?)?;
        let vars = [
            ("AZURE_CLIENT_ID", identity.client_id.to_owned()),
            ("AZURE_TENANT_ID", identity.tenant.to_owned()),
            (
                "AZURE_FEDERATED_TOKEN_FILE",
                token_file.display().to_string(),
            ),
            ("AZURE_AUTHORITY_HOST", identity.entra.url().to_owned()),
            ("SSL_CERT_FILE", bundle.display().to_string()),
        ]
        .map(|(k, v)| (k.to_owned(), v));
        let mut operator = Self::start_with_env(env, &ns.name, name, extra, &vars).await?;
        operator.identity_files = Some((files, bundle));
        Ok(operator)
    }

    /// The CA bundle a workload identity was started with (trusting the fakes).
    pub fn trust_file(&self) -> Option<&Path> {
        self.identity_files
            .as_ref()
            .map(|(_, bundle)| bundle.as_path())
    }

    /// Starts the operator with the credentials in `kubeconfig` (e.g. a ServiceAccount token,
    /// to prove its RBAC suffices) and exactly the flags in `args`, as a Deployment would pass
    /// them: no namespace, Lease or image flags are added. Only `--kubeconfig`, `--identity` and
    /// a free loopback `--metrics-listen` come first; a `--metrics-listen` in `args` is dropped.
    /// Waits for its /healthz.
    pub async fn start_with_kubeconfig(
        kubeconfig: &std::path::Path,
        identity: &str,
        args: &[&str],
    ) -> anyhow::Result<Self> {
        let args = std::iter::once(format!("--kubeconfig={}", kubeconfig.display()))
            .chain(
                args.iter()
                    .filter(|a| !a.starts_with("--metrics-listen"))
                    .map(|s| (*s).to_owned()),
            )
            .collect();
        Self::launch(identity, args, &[]).await
    }

    /// Runs the binary with `--identity`, a free `--metrics-listen`, then `args`; waits for
    /// /healthz.
    async fn launch(
        identity: &str,
        args: Vec<String>,
        vars: &[(String, String)],
    ) -> anyhow::Result<Self> {
        let bin = paths::operator_bin();
        paths::require(&bin, "build it with `cargo build -p pgmcp-operator`")?;
        let dir = tempfile::Builder::new()
            .prefix("pgmcp-operator-")
            .tempdir()?;
        let metrics_port = paths::free_port()?;
        let log = dir.path().join("operator.log");
        let all: Vec<String> = [
            format!("--identity={identity}"),
            format!("--metrics-listen=127.0.0.1:{metrics_port}"),
        ]
        .into_iter()
        .chain(args)
        .collect();
        let mut spec = Spec::new("pgmcp-operator", &bin, &log).args(all);
        spec.env = vars.to_vec();
        let mut daemon = Daemon::spawn(spec)?;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok((200, _, _)) =
                crate::http::request(metrics_port, "GET", "/healthz", &[], "").await
            {
                break;
            }
            anyhow::ensure!(
                !daemon.exited() && Instant::now() < deadline,
                "pgmcp-operator did not start:\n{}",
                daemon.log_tail(30)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(Self {
            identity: identity.to_owned(),
            metrics_port,
            log,
            _dir: dir,
            daemon,
            identity_files: None,
        })
    }

    /// The operator's `/metrics` text.
    pub async fn metrics(&self) -> anyhow::Result<String> {
        let (status, _, body) =
            crate::http::request(self.metrics_port, "GET", "/metrics", &[], "").await?;
        anyhow::ensure!(status == 200, "GET /metrics answered {status}");
        Ok(body)
    }

    /// Sum of every sample of metric `name` (all label sets); 0 when absent.
    pub async fn metric(&self, name: &str) -> anyhow::Result<f64> {
        Ok(sum_samples(&self.metrics().await?, name))
    }

    /// Reconciles finished so far (`pgmcp_operator_reconciles_total`).
    pub async fn reconciles(&self) -> f64 {
        self.metric("pgmcp_operator_reconciles_total")
            .await
            .unwrap_or_default()
    }

    /// Waits until at least `count` reconciles have finished: proof that a reconcile ran before
    /// a test asserts that it changed nothing.
    pub async fn wait_reconciles(&self, count: f64, timeout: Duration) {
        crate::eventually(&format!("{count} reconciles"), timeout, || async {
            self.reconciles().await >= count
        })
        .await;
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// A guard that prints this operator's log if the test fails while it lives.
    pub fn log_on_panic(&self) -> LogOnPanic {
        LogOnPanic(self.log.clone())
    }

    pub fn log_path(&self) -> PathBuf {
        self.log.clone()
    }

    /// Whether the process has exited.
    pub fn exited(&mut self) -> bool {
        self.daemon.exited()
    }

    /// SIGTERM, then waits for the process to exit.
    pub fn stop(&mut self) {
        self.daemon.stop();
    }

    /// SIGKILL: the process ends wherever it is, its Lease is not released.
    pub fn kill(&mut self) -> anyhow::Result<()> {
        self.daemon.kill()
    }
}

/// Prints the tail of an operator's log when the test panics while this is alive
/// ([`Operator::log_on_panic`]).
#[derive(Debug)]
pub struct LogOnPanic(PathBuf);

impl Drop for LogOnPanic {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- operator log {}\n{}",
                self.0.display(),
                crate::daemon::log_tail(&self.0, 300)
            );
        }
    }
}

/// Sum of the samples named exactly `name` (with or without labels) in a text exposition.
pub fn sum_samples(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let metric = series.split('{').next()?;
            (metric == name)
                .then(|| value.parse::<f64>().ok())
                .flatten()
        })
        .sum()
}
