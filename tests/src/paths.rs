//! Where the harness finds binaries and files. Every location can be overridden by an
//! environment variable, which is how the Makefile and CI point at the `.cache/` they filled.

use std::net::TcpListener;
use std::path::{Path, PathBuf};

/// Kubernetes release the test control plane is built from (the minimum we support).
pub const KUBERNETES_VERSION: &str = "v1.34.4";
/// Version of the npm package carrying kubectl and helm.
pub const KUBECTL_LAYER_VERSION: &str = "2.2.2";

/// The repository root.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent directory")
        .to_path_buf()
}

/// `.cache/` at the repository root, or `$PGMCP_CACHE`.
pub fn cache_dir() -> PathBuf {
    std::env::var_os("PGMCP_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join(".cache"))
}

/// A control-plane binary (`etcd`, `kube-apiserver`, `kube-controller-manager`).
pub fn controlplane_bin(name: &str) -> PathBuf {
    std::env::var_os("PGMCP_CONTROLPLANE_BIN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| cache_dir().join("controlplane").join(KUBERNETES_VERSION))
        .join(name)
}

fn tool(env: &str, name: &str) -> PathBuf {
    std::env::var_os(env).map(PathBuf::from).unwrap_or_else(|| {
        cache_dir()
            .join("tools")
            .join(format!("kubectl-layer-{KUBECTL_LAYER_VERSION}"))
            .join("bin")
            .join(name)
    })
}

/// kubectl 1.34 (`$PGMCP_KUBECTL`).
pub fn kubectl() -> PathBuf {
    tool("PGMCP_KUBECTL", "kubectl")
}

/// helm 4 (`$PGMCP_HELM`).
pub fn helm() -> PathBuf {
    tool("PGMCP_HELM", "helm")
}

/// Directory of the PostgreSQL 15 server binaries (`$PGMCP_PG_BINDIR`).
pub fn postgres_bindir() -> PathBuf {
    std::env::var_os("PGMCP_PG_BINDIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/lib/postgresql/15/bin"))
}

/// The MCP server binary (`$PGMCP_SERVER_BIN`, else the workspace's debug build).
pub fn server_bin() -> PathBuf {
    std::env::var_os("PGMCP_SERVER_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            workspace_root()
                .join("target")
                .join("debug")
                .join("pgmcp-server")
        })
}

/// The operator binary (`$PGMCP_OPERATOR_BIN`, else the workspace's debug build).
pub fn operator_bin() -> PathBuf {
    std::env::var_os("PGMCP_OPERATOR_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            workspace_root()
                .join("target")
                .join("debug")
                .join("pgmcp-operator")
        })
}

/// The generated CRD, as users install it.
pub fn crd_file() -> PathBuf {
    workspace_root()
        .join("crds")
        .join("pgmcp.dev_postgresmcpbindings.yaml")
}

/// `manifests/examples/`.
pub fn examples_dir() -> PathBuf {
    workspace_root().join("manifests").join("examples")
}

/// A TCP port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Fails with a hint naming the make target when a required binary is missing.
pub fn require(path: &Path, hint: &str) -> anyhow::Result<()> {
    anyhow::ensure!(path.is_file(), "{} not found: {hint}", path.display());
    Ok(())
}
