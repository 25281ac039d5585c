//! A real Kubernetes control plane for tests: etcd, kube-apiserver and kube-controller-manager,
//! started like controller-runtime's envtest (generated certificates, free loopback ports, RBAC,
//! ServiceAccount token issuing), with the pgmcp CRD installed from the generated YAML file.
//!
//! There is no kubelet here: pods stay Pending. The controller-manager provides garbage
//! collection, namespace deletion, ServiceAccounts and ReplicaSets. `crate::node` adds a real
//! node (kube-scheduler, kubelet, containerd) to a control plane started with
//! [`TestEnv::start_for_node`].

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};

use crate::daemon::{Daemon, Spec};
use crate::paths;
use crate::pki::Pki;

/// Field manager of everything the harness applies.
const HARNESS_MANAGER: &str = "pgmcp-tests";

/// A running control plane. Dropping it stops every process and removes its directory.
#[derive(Debug)]
pub struct TestEnv {
    kubeconfig: PathBuf,
    server: String,
    /// The CA of the apiserver's serving certificate.
    ca_cert: PathBuf,
    // Stopped in reverse order of start: controller-manager, apiserver, etcd.
    daemons: std::sync::Mutex<Vec<Daemon>>,
    dir: PathBuf,
    pki: Pki,
    etcd_client: String,
    /// Serving the test node: every address of the test's network namespace, port 443.
    for_node: bool,
}

/// Position of each component in [`TestEnv::daemons`].
const ETCD: usize = 0;
const APISERVER: usize = 1;
const CONTROLLER_MANAGER: usize = 2;

impl Drop for TestEnv {
    fn drop(&mut self) {
        let daemons = self
            .daemons
            .get_mut()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        while let Some(mut daemon) = daemons.pop() {
            daemon.stop();
        }
    }
}

impl TestEnv {
    /// The control plane shared by all tests of this test binary, started on first use.
    pub fn shared() -> &'static TestEnv {
        static SHARED: OnceLock<Result<TestEnv, String>> = OnceLock::new();
        let env = SHARED.get_or_init(|| {
            crate::run_detached("pgmcp-testenv-start", TestEnv::start).map_err(|e| format!("{e:#}"))
        });
        match env {
            Ok(env) => env,
            Err(err) => panic!("failed to start the test control plane: {err}"),
        }
    }

    /// Starts a new control plane and installs the CRD.
    pub async fn start() -> anyhow::Result<Self> {
        Self::start_with(false).await
    }

    /// A control plane for the test node (`crate::node`), inside the test's own network
    /// namespace: the apiserver listens on every address of it on port 443 and advertises the
    /// node's address, so pods reach it at the `kubernetes` Service's address (no kube-proxy:
    /// the node holds that address itself); it authorizes kubelets with the Node authorizer and
    /// reaches them (exec, logs) at their InternalIP.
    pub async fn start_for_node() -> anyhow::Result<Self> {
        Self::start_with(true).await
    }

    async fn start_with(for_node: bool) -> anyhow::Result<Self> {
        let started = Instant::now();
        let etcd_bin = paths::controlplane_bin("etcd");
        let apiserver_bin = paths::controlplane_bin("kube-apiserver");
        let kcm_bin = paths::controlplane_bin("kube-controller-manager");
        for bin in [&etcd_bin, &apiserver_bin, &kcm_bin] {
            paths::require(
                bin,
                "build it with `make controlplane` (tests/controlplane/build.sh)",
            )?;
        }

        let dir = tempfile::Builder::new()
            .prefix("pgmcp-controlplane-")
            .tempdir()?
            .keep();
        let pki = Pki::write(&dir.join("pki"))?;
        let etcd_port = paths::free_port()?;
        let etcd_peer_port = paths::free_port()?;
        let api_port = if for_node { 443 } else { paths::free_port()? };
        let server = format!("https://127.0.0.1:{api_port}");
        let kubeconfig = dir.join("kubeconfig");
        write_kubeconfig(
            &kubeconfig,
            &server,
            &pki.ca_cert,
            &pki.admin_cert,
            &pki.admin_key,
        )?;
        let kcm_kubeconfig = dir.join("controller-manager.kubeconfig");
        write_kubeconfig(
            &kcm_kubeconfig,
            &server,
            &pki.ca_cert,
            &pki.controller_manager_cert,
            &pki.controller_manager_key,
        )?;

        let etcd_client = format!("http://127.0.0.1:{etcd_port}");
        let etcd_peer = format!("http://127.0.0.1:{etcd_peer_port}");
        let mut etcd = Spec::new("etcd", etcd_bin, dir.join("etcd.log")).args([
            "--name=pgmcp-test".to_owned(),
            format!("--data-dir={}", dir.join("etcd-data").display()),
            format!("--listen-client-urls={etcd_client}"),
            format!("--advertise-client-urls={etcd_client}"),
            format!("--listen-peer-urls={etcd_peer}"),
            format!("--initial-advertise-peer-urls={etcd_peer}"),
            format!("--initial-cluster=pgmcp-test={etcd_peer}"),
            "--unsafe-no-fsync".to_owned(),
            "--log-level=warn".to_owned(),
        ]);
        // etcd is stopped last, so its wrapper removes the whole directory.
        etcd.cleanup_dir = Some(dir.clone());
        etcd.stop_after = Some(dir.join("etcd.stop-after"));
        let env = TestEnv {
            kubeconfig,
            server: server.clone(),
            ca_cert: pki.ca_cert.clone(),
            daemons: std::sync::Mutex::new(vec![Daemon::spawn(etcd)?]),
            dir: dir.clone(),
            pki: pki.clone(),
            etcd_client,
            for_node,
        };

        let apiserver = Daemon::spawn(env.apiserver_spec("kube-apiserver", api_port))?;
        env.daemons()[ETCD].stop_before(&apiserver)?;
        env.daemons().push(apiserver);

        let client = env.client().await?;
        env.wait_ready(&client, Duration::from_secs(90)).await?;

        let p = |path: &Path| path.display().to_string();
        let kcm = Spec::new(
            "kube-controller-manager",
            kcm_bin,
            dir.join("kube-controller-manager.log"),
        )
        .args([
            format!("--kubeconfig={}", p(&kcm_kubeconfig)),
            "--leader-elect=false".to_owned(),
            "--secure-port=0".to_owned(),
            "--controllers=*".to_owned(),
            // The default 20 requests/s makes the controller-manager, not the code under test,
            // the slowest part once there are hundreds of Deployments (the operator benchmark).
            "--kube-api-qps=200".to_owned(),
            "--kube-api-burst=400".to_owned(),
            "--use-service-account-credentials=true".to_owned(),
            format!(
                "--service-account-private-key-file={}",
                p(&pki.service_account_key)
            ),
            format!("--root-ca-file={}", p(&pki.ca_cert)),
            format!("--cluster-signing-cert-file={}", p(&pki.ca_cert)),
            format!("--cluster-signing-key-file={}", p(&pki.ca_key)),
        ]);
        let kcm = Daemon::spawn(kcm)?;
        env.daemons()[APISERVER].stop_before(&kcm)?;
        env.daemons().push(kcm);

        install_crd(&client).await?;
        eprintln!(
            "test control plane {} ready at {server} in {:.1}s (kubeconfig {})",
            paths::KUBERNETES_VERSION,
            started.elapsed().as_secs_f64(),
            env.kubeconfig.display()
        );
        Ok(env)
    }

    /// A kube-apiserver on `port` serving this control plane's etcd, as [`TestEnv::start`]
    /// runs it (`name` names its log and certificate directory).
    fn apiserver_spec(&self, name: &str, port: u16) -> Spec {
        let p = |path: &Path| path.display().to_string();
        let (dir, pki) = (&self.dir, &self.pki);
        let (bind, advertise, authorization) = if self.for_node {
            ("0.0.0.0", crate::node::NODE_IP, "Node,RBAC")
        } else {
            ("127.0.0.1", "127.0.0.1", "RBAC")
        };
        let mut spec = Spec::new(
            name,
            paths::controlplane_bin("kube-apiserver"),
            dir.join(format!("{name}.log")),
        )
        .args([
            format!("--etcd-servers={}", self.etcd_client),
            format!("--bind-address={bind}"),
            format!("--advertise-address={advertise}"),
            format!("--secure-port={port}"),
            format!("--cert-dir={}", dir.join(format!("{name}-certs")).display()),
            format!("--tls-cert-file={}", p(&pki.serving_cert)),
            format!("--tls-private-key-file={}", p(&pki.serving_key)),
            format!("--client-ca-file={}", p(&pki.ca_cert)),
            format!("--authorization-mode={authorization}"),
            // The first apiserver's URL, so every apiserver issues and accepts the same tokens.
            format!("--service-account-issuer={}", self.server),
            format!("--service-account-key-file={}", p(&pki.service_account_pub)),
            format!(
                "--service-account-signing-key-file={}",
                p(&pki.service_account_key)
            ),
            "--service-cluster-ip-range=10.0.0.0/24".to_owned(),
            "--allow-privileged=true".to_owned(),
        ]);
        if self.for_node {
            spec = spec.args([
                "--kubelet-preferred-address-types=InternalIP".to_owned(),
                format!("--kubelet-client-certificate={}", p(&pki.admin_cert)),
                format!("--kubelet-client-key={}", p(&pki.admin_key)),
            ]);
        }
        spec.stop_after = Some(dir.join(format!("{name}.stop-after")));
        spec
    }

    /// Stops kube-apiserver (SIGTERM, as in an upgrade of the control plane); etcd and the
    /// controller-manager keep running. [`TestEnv::start_apiserver`] brings it back.
    pub fn stop_apiserver(&self) {
        // On a full shutdown the apiserver outlives the controller-manager; not this time.
        let _ = std::fs::write(self.dir.join("kube-apiserver.stop-after"), "");
        self.daemons()[APISERVER].stop();
    }

    /// Kills kube-apiserver with SIGKILL, as a crash or the OOM killer would: its connections
    /// are cut without a GOAWAY, nothing is drained, no watch is closed cleanly. etcd and the
    /// controller-manager keep running. [`TestEnv::start_apiserver`] brings it back.
    pub fn kill_apiserver(&self) -> anyhow::Result<()> {
        // As in `stop_apiserver`: do not wait for the controller-manager to stop first.
        std::fs::write(self.dir.join("kube-apiserver.stop-after"), "")?;
        self.daemons()[APISERVER].kill()
    }

    /// Starts kube-apiserver again on the same port and waits until it is ready.
    pub async fn start_apiserver(&self) -> anyhow::Result<()> {
        let port = self.server.rsplit(':').next().unwrap_or_default().parse()?;
        let apiserver = Daemon::spawn(self.apiserver_spec("kube-apiserver", port))?;
        {
            let mut daemons = self.daemons();
            daemons[ETCD].stop_before(&apiserver)?;
            apiserver.stop_before(&daemons[CONTROLLER_MANAGER])?;
            daemons[APISERVER] = apiserver;
        }
        let client = self.client().await?;
        self.wait_ready(&client, Duration::from_secs(90)).await
    }

    /// A second kube-apiserver on the same etcd and a port of its own, as in a highly
    /// available control plane, with an admin kubeconfig for it. Stopped when dropped.
    pub async fn second_apiserver(&self) -> anyhow::Result<(Daemon, PathBuf)> {
        let port = paths::free_port()?;
        let apiserver = Daemon::spawn(self.apiserver_spec("kube-apiserver-2", port))?;
        self.daemons()[ETCD].stop_before(&apiserver)?;
        let kubeconfig = self.dir.join("kubeconfig-2");
        write_kubeconfig(
            &kubeconfig,
            &format!("https://127.0.0.1:{port}"),
            &self.pki.ca_cert,
            &self.pki.admin_cert,
            &self.pki.admin_key,
        )?;
        let config = Config::from_custom_kubeconfig(
            Kubeconfig::read_from(&kubeconfig)?,
            &KubeConfigOptions::default(),
        )
        .await?;
        let client = Client::try_from(config)?;
        self.wait_ready(&client, Duration::from_secs(90)).await?;
        Ok((apiserver, kubeconfig))
    }

    fn daemons(&self) -> std::sync::MutexGuard<'_, Vec<Daemon>> {
        self.daemons
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    async fn wait_ready(&self, client: &Client, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let request = http::Request::get("/readyz").body(Vec::new())?;
            match client.request_text(request).await {
                Ok(body) if body.trim() == "ok" => return Ok(()),
                result => {
                    let exited = self.daemons().iter_mut().find_map(|d| {
                        d.exited()
                            .then(|| format!("{} exited:\n{}", d.name(), d.log_tail(40)))
                    });
                    if let Some(exited) = exited {
                        anyhow::bail!("{exited}");
                    }
                    if Instant::now() > deadline {
                        let logs: Vec<String> = self
                            .daemons()
                            .iter()
                            .map(|d| format!("--- {}\n{}", d.name(), d.log_tail(20)))
                            .collect();
                        anyhow::bail!(
                            "kube-apiserver not ready after {timeout:?} (last answer: {result:?})\n{}",
                            logs.join("\n")
                        );
                    }
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
            }
        }
    }

    /// The certificates and keys of this control plane.
    pub(crate) fn pki(&self) -> &Pki {
        &self.pki
    }

    /// The directory of this control plane's files (removed when it stops).
    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    /// Path of an admin kubeconfig (client certificate in group system:masters).
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// `https://127.0.0.1:<port>`, also the ServiceAccount token issuer.
    pub fn server(&self) -> &str {
        &self.server
    }

    /// A new admin client, bound to the calling test's runtime.
    pub async fn client(&self) -> anyhow::Result<Client> {
        let kubeconfig = Kubeconfig::read_from(&self.kubeconfig)?;
        let config =
            Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await?;
        Ok(Client::try_from(config)?)
    }

    /// A kubeconfig holding a token of ServiceAccount `namespace/name` (TokenRequest, one hour):
    /// what a pod of that ServiceAccount would use. Written into `dir`.
    pub fn service_account_kubeconfig(
        &self,
        namespace: &str,
        name: &str,
        dir: &Path,
    ) -> anyhow::Result<PathBuf> {
        let out = self
            .kubectl()
            .args([
                "create",
                "token",
                name,
                "--namespace",
                namespace,
                "--duration=1h",
            ])
            .output()?;
        anyhow::ensure!(
            out.status.success(),
            "kubectl create token {namespace}/{name} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let token = String::from_utf8(out.stdout)?;
        let path = dir.join(format!("{namespace}-{name}.kubeconfig"));
        let ca = &self.ca_cert;
        std::fs::write(
            &path,
            format!(
                "apiVersion: v1
kind: Config
clusters:
- name: test
  cluster:
    server: {server}
    certificate-authority: {ca}
users:
- name: {name}
  user:
    token: {token}
contexts:
- name: test
  context:
    cluster: test
    user: {name}
current-context: test
",
                server = self.server,
                ca = ca.display(),
                token = token.trim(),
            ),
        )?;
        Ok(path)
    }

    /// `kubectl` pointed at this control plane.
    pub fn kubectl(&self) -> Command {
        let mut command = Command::new(paths::kubectl());
        command.arg("--kubeconfig").arg(&self.kubeconfig);
        command
    }

    /// A fresh namespace named after the test; see [`TestNamespace`].
    pub async fn namespace(&'static self, test: &str) -> anyhow::Result<TestNamespace> {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let client = self.client().await?;
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let name = format!("{}-{n}", crate::slug(test, '-', 50));
        let ns: Namespace = serde_json::from_value(serde_json::json!({
            "metadata": { "name": name, "labels": { "pgmcp.dev/test": "true" } }
        }))?;
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &ns)
            .await
            .with_context(|| format!("failed to create namespace {name}"))?;
        Ok(TestNamespace {
            name,
            client,
            env: self,
        })
    }
}

/// A namespace of its own for one test. When the test panics, dropping it prints the bindings
/// (with status), everything else in the namespace and its events; then the namespace is deleted.
pub struct TestNamespace {
    pub name: String,
    pub client: Client,
    env: &'static TestEnv,
}

impl std::fmt::Debug for TestNamespace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestNamespace")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl TestNamespace {
    /// `kubectl -n <namespace>` for this test.
    pub fn kubectl(&self) -> Command {
        let mut command = self.env.kubectl();
        command.arg("--namespace").arg(&self.name);
        command
    }

    /// Typed API for a namespaced resource in this namespace.
    pub fn api<K>(&self) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        <K as kube::Resource>::DynamicType: Default,
    {
        Api::namespaced(self.client.clone(), &self.name)
    }

    fn dump(&self) {
        eprintln!("--- state of namespace {} at failure", self.name);
        for args in [
            &["get", "postgresmcpbindings", "-o", "yaml"][..],
            &[
                "get",
                "all,configmaps,secrets,serviceaccounts",
                "-o",
                "wide",
            ][..],
            &["get", "events", "--sort-by=.lastTimestamp"][..],
        ] {
            match self.kubectl().args(args).output() {
                Ok(out) => eprintln!(
                    "$ kubectl {}\n{}{}",
                    args.join(" "),
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                ),
                Err(err) => eprintln!("kubectl {} failed: {err}", args.join(" ")),
            }
        }
    }
}

impl Drop for TestNamespace {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.dump();
        }
        // Deleted in the background: namespace finalization is not what the test measures.
        let _ = self
            .env
            .kubectl()
            .args(["delete", "namespace", &self.name, "--wait=false"])
            .output();
    }
}

pub(crate) fn write_kubeconfig(
    path: &Path,
    server: &str,
    ca: &Path,
    cert: &Path,
    key: &Path,
) -> anyhow::Result<()> {
    let config = format!(
        "apiVersion: v1
kind: Config
clusters:
- name: pgmcp-test
  cluster:
    server: {server}
    certificate-authority: {ca}
users:
- name: admin
  user:
    client-certificate: {cert}
    client-key: {key}
contexts:
- name: pgmcp-test
  context:
    cluster: pgmcp-test
    user: admin
current-context: pgmcp-test
",
        ca = ca.display(),
        cert = cert.display(),
        key = key.display(),
    );
    std::fs::write(path, config)?;
    Ok(())
}

/// Applies the generated CRD file (what users install) and waits until it is Established.
pub async fn install_crd(client: &Client) -> anyhow::Result<()> {
    let path = paths::crd_file();
    let yaml = std::fs::read_to_string(&path)
        .with_context(|| format!("failed to read {}: run `make generate`", path.display()))?;
    let crd: CustomResourceDefinition = serde_saphyr::from_str(&yaml)
        .with_context(|| format!("failed to parse {}", path.display()))?;
    let name = crd.metadata.name.clone().unwrap_or_default();
    let api = Api::<CustomResourceDefinition>::all(client.clone());
    api.patch(
        &name,
        &PatchParams::apply(HARNESS_MANAGER).force(),
        &Patch::Apply(&crd),
    )
    .await
    .with_context(|| format!("failed to apply CustomResourceDefinition {name}"))?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let current = api.get(&name).await?;
        let established = current
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|c| {
                c.iter()
                    .any(|c| c.type_ == "Established" && c.status == "True")
            });
        if established {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "CustomResourceDefinition {name} not Established after 30s: {:?}",
            current.status
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
