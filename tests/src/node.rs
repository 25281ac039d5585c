//! A real Kubernetes node for tests and the demo: kube-scheduler, and a kubelet built from the
//! same `k8s.io/kubernetes` module as the control plane, running pods with Debian's containerd,
//! runc and CNI plugins from the images `make images` builds.
//!
//! Everything runs inside namespaces the test creates ([`isolated`]): a network namespace
//! (loopback, a veth pair giving the node [`NODE_IP`], the CNI bridge with the pods' subnet
//! [`POD_SUBNET`]), so no packet to a pod ever leaves it; a mount namespace, whose private
//! tmpfs over `/run`, `/var/lib/kubelet`, `/var/lib/cni` and `/var/log/pods` holds what
//! containerd, runc, CNI and the kubelet write at fixed paths; and a PID namespace whose first
//! process is the test, so that when it ends, however it ends, the kernel ends every process of
//! the node (containerd's shims and the containers included).
//!
//! What this sandbox needs, and why:
//! - the apiserver listens on port 443 of every address and the node holds the `kubernetes`
//!   Service's address [`KUBERNETES_SERVICE_IP`] on its loopback: pods reach the apiserver the
//!   way in-cluster clients do, without kube-proxy;
//! - services the pods use (PostgreSQL, the Azure fakes) listen on [`NODE_IP`];
//! - without CAP_SYS_RESOURCE, runc cannot lower `oom_score_adj`: containerd's CRI option
//!   `restrict_oom_score_adj` keeps it at the kubelet's value or above, and the kubelet keeps
//!   its own at 0;
//! - cgroup v1 (`failCgroupV1: false`, the cgroupfs driver), under a cgroup root of the node's
//!   own, removed when the node stops;
//! - the mount points of those tmpfs are created on the machine's filesystem if missing (empty
//!   directories; nothing is written into them there);
//! - images cannot be pulled: the sandbox ("pause") image is built here from
//!   tests/controlplane/pause/main.go, and every image is imported with `ctr images import`;
//!   pods use them with `imagePullPolicy: IfNotPresent` or `Never`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use k8s_openapi::api::core::v1::Node as NodeObject;
use kube::Api;

use crate::controlplane::{TestEnv, write_kubeconfig};
use crate::daemon::{Daemon, Spec};
use crate::paths;
use crate::postgres::output;

/// The node's name (and its client certificate's `system:node:<name>`).
pub const NODE_NAME: &str = "pgmcp-node";
/// The node's address: the apiserver advertises it, services the pods use listen on it.
pub const NODE_IP: &str = "10.213.0.2";
/// The pods' addresses (the CNI bridge `pgmcp0` is the first of them).
pub const POD_SUBNET: &str = "10.214.0.0/24";
/// The `kubernetes` Service's ClusterIP: the first address of `--service-cluster-ip-range`.
pub const KUBERNETES_SERVICE_IP: &str = "10.0.0.1";
/// The sandbox image containerd starts every pod with.
pub const PAUSE_IMAGE: &str = "pgmcp.dev/test/pause:1";
/// The node's /etc/hosts (on its private /run).
const HOSTS: &str = "/run/pgmcp-hosts";
/// Marks a process that already runs in the node's namespaces.
const INSIDE: &str = "PGMCP_NODE_NAMESPACES";

/// Whether the calling test should run its body now. Outside the node's namespaces it runs
/// the test binary again for just `test` (the `#[test]` function's name) inside new network,
/// mount and PID namespaces, waits for it, fails with its output when it failed, and returns
/// false; inside them it sets up the node's network and private directories, and returns true.
pub fn isolated(test: &str) -> bool {
    if inside() {
        return true;
    }
    let exe = std::env::current_exe().expect("the test binary's path");
    let started = Instant::now();
    let out = unshare(&exe)
        .args(["--exact", test, "--nocapture", "--test-threads=1"])
        .output()
        .expect("failed to run unshare (util-linux)");
    let output = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && output.contains("1 passed"),
        "{test} in the node's namespaces failed ({}):\n{output}",
        out.status
    );
    // Shown with --nocapture, like the output of a test that ran in this process.
    eprint!("{output}");
    eprintln!(
        "{test} passed in the node's namespaces in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    false
}

/// `program` in new network, mount and PID namespaces (`unshare`), where [`inside`] is true;
/// killed when the `unshare` process ends, and with it every process of the namespaces.
pub fn unshare(program: &Path) -> Command {
    let mut command = Command::new("unshare");
    command
        .args([
            "--net",
            "--mount",
            "--propagation=private",
            "--pid",
            "--fork",
            "--mount-proc",
            "--kill-child",
            "--",
        ])
        .arg(program)
        .env(INSIDE, "1");
    command
}

/// Whether this process runs in namespaces [`unshare`] made; if so, the node's network and
/// private directories are set up (once).
pub fn inside() -> bool {
    if std::env::var_os(INSIDE).is_none() {
        return false;
    }
    static PREPARED: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    let prepared = PREPARED.get_or_init(|| prepare().map_err(|e| format!("{e:#}")));
    if let Err(err) = prepared {
        panic!("failed to prepare the node's namespaces: {err}");
    }
    true
}

/// Why a node cannot run on this machine, if it cannot: the tools, root, the kubelet, and
/// whether namespaces can be made at all.
pub fn cannot_run() -> Option<String> {
    for tool in [
        "containerd",
        "runc",
        "ctr",
        "ip",
        "mount",
        "unshare",
        "nsenter",
    ] {
        if !which(tool) {
            return Some(format!("{tool} is not installed (make deps)"));
        }
    }
    for bin in ["kubelet", "kube-scheduler", "pause"] {
        if !paths::controlplane_bin(bin).exists() {
            return Some(format!("{bin} is not built (make controlplane)"));
        }
    }
    let trial = Command::new("unshare")
        .args(["--net", "--mount", "--pid", "--fork", "true"])
        .output();
    match trial {
        Ok(out) if out.status.success() => None,
        Ok(out) => Some(format!(
            "cannot create namespaces here (unshare: {})",
            String::from_utf8_lossy(&out.stderr).trim()
        )),
        Err(err) => Some(format!("cannot run unshare: {err}")),
    }
}

/// Resolves `name` to `ip` for every process in the node's namespaces (its private
/// /etc/hosts), as cluster DNS would resolve a Service's name; with no kube-proxy, to a pod's
/// address. Replaces what `name` resolved to before.
pub fn resolve(name: &str, ip: &str) -> anyhow::Result<()> {
    let hosts = std::fs::read_to_string(HOSTS).context("not in the node's namespaces")?;
    let mut lines: Vec<String> = hosts
        .lines()
        .filter(|line| line.split_whitespace().nth(1) != Some(name))
        .map(str::to_owned)
        .collect();
    lines.push(format!("{ip} {name}"));
    std::fs::write(HOSTS, lines.join("\n") + "\n")?;
    Ok(())
}

/// A running node, registered and Ready. Dropping it stops the kubelet, then containerd, then
/// the scheduler, kills what is left in the node's cgroups (the containers) and removes them.
#[derive(Debug)]
pub struct TestNode {
    // Stopped in reverse order of start.
    daemons: Vec<Daemon>,
    containerd_socket: PathBuf,
    cgroup_root: String,
    dir: PathBuf,
}

impl Drop for TestNode {
    fn drop(&mut self) {
        while let Some(mut daemon) = self.daemons.pop() {
            daemon.stop();
        }
        remove_cgroups(&self.cgroup_root);
        if std::env::var_os("PGMCP_KEEP_TEST_DIRS").is_none() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

impl TestNode {
    /// Sets up the node's network and directories in the current namespaces (made by
    /// [`isolated`]), starts kube-scheduler, containerd and the kubelet against `env` (started
    /// with [`TestEnv::start_for_node`]), imports the pause image and `images`, and waits until
    /// the node is Ready.
    pub async fn start(env: &TestEnv, images: &[PathBuf]) -> anyhow::Result<Self> {
        anyhow::ensure!(
            std::env::var_os(INSIDE).is_some(),
            "the test node runs only inside namespaces of its own (node::isolated)"
        );
        let started = Instant::now();
        if let Some(why) = cannot_run() {
            anyhow::bail!("the test node cannot run: {why}");
        }
        let kubelet_bin = paths::controlplane_bin("kubelet");
        let scheduler_bin = paths::controlplane_bin("kube-scheduler");
        let dir = env.dir().join("node");
        std::fs::create_dir_all(&dir)?;
        let containerd_root = dir.join("containerd");
        std::fs::create_dir_all(&containerd_root)?;
        output(
            Command::new("mount")
                .args(["-t", "tmpfs", "-o", "mode=711", "tmpfs"])
                .arg(&containerd_root),
        )?;

        let pki = env.pki();
        let p = |path: &Path| path.display().to_string();
        let mut daemons = Vec::new();

        // kube-scheduler: places the pods on the node.
        let scheduler_kubeconfig = dir.join("scheduler.kubeconfig");
        write_kubeconfig(
            &scheduler_kubeconfig,
            env.server(),
            &pki.ca_cert,
            &pki.scheduler_cert,
            &pki.scheduler_key,
        )?;
        daemons.push(Daemon::spawn(
            Spec::new(
                "kube-scheduler",
                scheduler_bin,
                dir.join("kube-scheduler.log"),
            )
            .args([
                format!("--kubeconfig={}", p(&scheduler_kubeconfig)),
                format!("--authentication-kubeconfig={}", p(&scheduler_kubeconfig)),
                format!("--authorization-kubeconfig={}", p(&scheduler_kubeconfig)),
                "--leader-elect=false".to_owned(),
                "--bind-address=127.0.0.1".to_owned(),
                format!("--secure-port={}", paths::free_port()?),
            ]),
        )?);

        // containerd with the CRI plugin, runc and the CNI bridge.
        let cni_dir = dir.join("cni");
        std::fs::create_dir_all(&cni_dir)?;
        std::fs::write(cni_dir.join("10-pgmcp.conflist"), cni_config())?;
        let containerd_socket = containerd_root.join("containerd.sock");
        let containerd_config = dir.join("containerd.toml");
        std::fs::write(
            &containerd_config,
            containerd_config_text(&containerd_root, &containerd_socket, &cni_dir),
        )?;
        let mut containerd = Spec::new("containerd", "containerd", dir.join("containerd.log"))
            .args([format!("--config={}", p(&containerd_config))]);
        containerd.env.push(("PATH".to_owned(), search_path()));
        daemons.push(Daemon::spawn(containerd)?);
        let mut node = TestNode {
            daemons,
            containerd_socket,
            // Named after the control plane's directory: unique among runs on this machine.
            cgroup_root: format!(
                "pgmcp-node-{}",
                env.dir()
                    .file_name()
                    .map(|n| n.to_string_lossy().replace("pgmcp-controlplane-", ""))
                    .unwrap_or_default()
            ),
            dir: dir.clone(),
        };
        create_cgroups(&node.cgroup_root)?;
        node.wait_containerd(Duration::from_secs(30))?;
        let pause = node.build_pause_image()?;
        node.import(&pause)?;
        for image in images {
            node.import(image)?;
        }

        // The kubelet.
        let kubelet_kubeconfig = dir.join("kubelet.kubeconfig");
        write_kubeconfig(
            &kubelet_kubeconfig,
            env.server(),
            &pki.ca_cert,
            &pki.node_cert,
            &pki.node_key,
        )?;
        let kubelet_config = dir.join("kubelet.yaml");
        std::fs::write(
            &kubelet_config,
            kubelet_config_text(&pki.ca_cert, &node.containerd_socket, &node.cgroup_root),
        )?;
        let mut kubelet = Spec::new("kubelet", kubelet_bin, dir.join("kubelet.log")).args([
            format!("--config={}", p(&kubelet_config)),
            format!("--kubeconfig={}", p(&kubelet_kubeconfig)),
            format!("--hostname-override={NODE_NAME}"),
            format!("--node-ip={NODE_IP}"),
            "--root-dir=/var/lib/kubelet".to_owned(),
            "--v=1".to_owned(),
        ]);
        kubelet.env.push(("PATH".to_owned(), search_path()));
        let kubelet = Daemon::spawn(kubelet)?;
        node.daemons.push(kubelet);
        node.wait_ready(env, Duration::from_secs(60)).await?;
        eprintln!(
            "test node {NODE_NAME} ({NODE_IP}) Ready in {:.1}s",
            started.elapsed().as_secs_f64()
        );
        Ok(node)
    }

    /// `ctr` against this node's containerd, in the namespace the kubelet uses.
    pub fn ctr(&self) -> Command {
        let mut command = Command::new("ctr");
        command
            .arg("--address")
            .arg(&self.containerd_socket)
            .args(["--namespace", "k8s.io"]);
        command
    }

    /// Imports an image archive (OCI layout or docker-archive) into the node's containerd.
    pub fn import(&self, archive: &Path) -> anyhow::Result<()> {
        output(self.ctr().args(["images", "import"]).arg(archive))
            .with_context(|| format!("failed to import {}", archive.display()))?;
        Ok(())
    }

    /// The last lines of the kubelet's and containerd's logs, for failure messages.
    pub fn logs(&self, lines: usize) -> String {
        self.daemons
            .iter()
            .map(|d| format!("--- {}\n{}", d.name(), d.log_tail(lines)))
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn wait_containerd(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.ctr().arg("version").output()?.status.success() {
                return Ok(());
            }
            let containerd = self.daemons.last_mut().context("no containerd")?;
            anyhow::ensure!(
                !containerd.exited() && Instant::now() < deadline,
                "containerd did not start:\n{}",
                containerd.log_tail(30)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The sandbox image: tests/controlplane/pause/main.go's static binary as `/pause`.
    fn build_pause_image(&self) -> anyhow::Result<PathBuf> {
        use pgmcp_images::{dockerfile, oci};
        let binary = paths::controlplane_bin("pause");
        let plan = dockerfile::ImagePlan {
            copies: vec![dockerfile::Copy {
                from: None,
                sources: vec!["pause".to_owned()],
                destination: "/pause".to_owned(),
                line: 0,
            }],
            user: Some("65535:65535".to_owned()),
            entrypoint: Some(vec!["/pause".to_owned()]),
            ..Default::default()
        };
        let sources = oci::Sources {
            context: binary
                .parent()
                .context("pause has no directory")?
                .to_owned(),
            stage_paths: Vec::new(),
        };
        let archive = self.dir.join("pause.tar");
        oci::build(&plan, &sources, "amd64")?.write(PAUSE_IMAGE, &archive)?;
        Ok(archive)
    }

    async fn wait_ready(&mut self, env: &TestEnv, timeout: Duration) -> anyhow::Result<()> {
        let nodes: Api<NodeObject> = Api::all(env.client().await?);
        let deadline = Instant::now() + timeout;
        loop {
            let ready = nodes.get_opt(NODE_NAME).await?.is_some_and(|node| {
                node.status
                    .and_then(|s| s.conditions)
                    .unwrap_or_default()
                    .iter()
                    .any(|c| c.type_ == "Ready" && c.status == "True")
            });
            if ready {
                return Ok(());
            }
            let exited = self.daemons.iter_mut().any(Daemon::exited);
            anyhow::ensure!(
                !exited && Instant::now() < deadline,
                "node {NODE_NAME} not Ready after {:?}:\n{}",
                timeout,
                self.logs(40)
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// In the namespaces [`isolated`] made: loopback, the node's address on a veth pair (this
/// sandbox has no `dummy` device), the `kubernetes` Service's address, and private tmpfs over
/// the directories containerd, runc, CNI and the kubelet write at fixed paths.
fn prepare() -> anyhow::Result<()> {
    for private in ["/run", "/var/lib/kubelet", "/var/lib/cni", "/var/log/pods"] {
        std::fs::create_dir_all(private)?;
        output(Command::new("mount").args(["-t", "tmpfs", "-o", "mode=755", "tmpfs", private]))?;
    }
    // A private /etc/hosts, for the names [`resolve`] gives.
    std::fs::write(
        HOSTS,
        std::fs::read_to_string("/etc/hosts").unwrap_or_default(),
    )?;
    output(Command::new("mount").args(["--bind", HOSTS, "/etc/hosts"]))?;
    let ip = |args: &str| output(Command::new("ip").args(args.split_whitespace()));
    ip("link set lo up")?;
    ip("link add pgmcp-node type veth peer name pgmcp-node-peer")?;
    ip(&format!("addr add {NODE_IP}/24 dev pgmcp-node"))?;
    ip("link set pgmcp-node up")?;
    ip("link set pgmcp-node-peer up")?;
    ip(&format!("addr add {KUBERNETES_SERVICE_IP}/32 dev lo"))?;
    // A default route, which the kubelet and CNI expect; nothing answers beyond the namespace.
    ip("route add default dev pgmcp-node")?;
    Ok(())
}

fn cni_config() -> String {
    serde_json::json!({
        "cniVersion": "1.0.0",
        "name": "pgmcp",
        "plugins": [{
            "type": "bridge",
            "bridge": "pgmcp0",
            "isGateway": true,
            "ipMasq": false,
            "hairpinMode": true,
            "ipam": {
                "type": "host-local",
                "ranges": [[{ "subnet": POD_SUBNET }]],
                "routes": [{ "dst": "0.0.0.0/0" }],
            },
        }],
    })
    .to_string()
}

fn containerd_config_text(root: &Path, socket: &Path, cni_dir: &Path) -> String {
    format!(
        r#"version = 2
root = "{root}/root"
state = "{root}/state"
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs", "io.containerd.internal.v1.tracing"]

[grpc]
  address = "{socket}"

[plugins."io.containerd.internal.v1.opt"]
  path = "{root}/opt"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE_IMAGE}"
  restrict_oom_score_adj = true
  enable_selinux = false
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{cni}"
"#,
        root = root.display(),
        socket = socket.display(),
        cni = cni_dir.display(),
    )
}

fn kubelet_config_text(ca: &Path, containerd_socket: &Path, cgroup_root: &str) -> String {
    format!(
        r#"apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: {NODE_IP}
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 0
authentication:
  anonymous:
    enabled: false
  webhook:
    enabled: true
  x509:
    clientCAFile: {ca}
authorization:
  mode: Webhook
containerRuntimeEndpoint: unix://{socket}
cgroupDriver: cgroupfs
cgroupRoot: /{cgroup_root}
cgroupsPerQOS: true
enforceNodeAllocatable: ["pods"]
failCgroupV1: false
failSwapOn: false
oomScoreAdj: 0
protectKernelDefaults: false
podLogsDir: /var/log/pods
resolvConf: ""
serializeImagePulls: false
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard:
  memory.available: "1Mi"
  nodefs.available: "1%"
  nodefs.inodesFree: "1%"
  imagefs.available: "1%"
shutdownGracePeriod: 0s
localStorageCapacityIsolation: false
"#,
        ca = ca.display(),
        socket = containerd_socket.display(),
    )
}

/// The node's cgroup root in every hierarchy (cgroup v1), with the cpusets of its parent.
fn create_cgroups(root: &str) -> anyhow::Result<()> {
    for hierarchy in std::fs::read_dir("/sys/fs/cgroup")?.flatten() {
        let parent = hierarchy.path();
        if !parent.join("cgroup.procs").exists() {
            continue; // a symlink such as cpu,cpuacct, or not a hierarchy
        }
        let dir = parent.join(root);
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("failed to create cgroup {}", dir.display()))?;
        for file in ["cpuset.cpus", "cpuset.mems"] {
            if let Ok(value) = std::fs::read_to_string(parent.join(file)) {
                std::fs::write(dir.join(file), value.trim())?;
            }
        }
    }
    Ok(())
}

/// Removes the node's cgroups in every hierarchy, deepest first, killing what is left in them.
fn remove_cgroups(root: &str) {
    let Ok(hierarchies) = std::fs::read_dir("/sys/fs/cgroup") else {
        return;
    };
    for hierarchy in hierarchies.flatten() {
        let top = hierarchy.path().join(root);
        if top.is_dir() {
            remove_cgroup_tree(&top);
        }
    }
}

fn remove_cgroup_tree(dir: &Path) {
    if let Ok(children) = std::fs::read_dir(dir) {
        for child in children.flatten() {
            if child.file_type().is_ok_and(|t| t.is_dir()) {
                remove_cgroup_tree(&child.path());
            }
        }
    }
    if let Ok(procs) = std::fs::read_to_string(dir.join("cgroup.procs")) {
        for pid in procs.split_whitespace() {
            let _ = Command::new("kill").args(["-KILL", pid]).status();
        }
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while std::fs::remove_dir(dir).is_err() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// PATH with the sbin directories, where Debian puts runc.
fn search_path() -> String {
    let path = std::env::var("PATH").unwrap_or_default();
    format!("{path}:/usr/local/sbin:/usr/sbin:/sbin")
}

fn which(tool: &str) -> bool {
    search_path()
        .split(':')
        .any(|dir| Path::new(dir).join(tool).is_file())
}
