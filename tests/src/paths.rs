//! Where the harness finds binaries and files. Every location can be overridden by an
//! environment variable, which is how the Makefile and CI point at the `.cache/` they filled.

use std::net::TcpListener;
use std::path::{Path, PathBuf};

/// Kubernetes release the test control plane is built from (the minimum we support).
pub const KUBERNETES_VERSION: &str = "v1.34.4";
/// Version of the npm package carrying kubectl and helm.
pub const KUBECTL_LAYER_VERSION: &str = "2.2.2";
/// OpenTelemetry Collector release `tests/otelcol/build.sh` builds (its go.mod pins it).
pub const OTELCOL_VERSION: &str = "v0.161.0";

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

/// The OpenTelemetry Collector of the telemetry tests (`$PGMCP_OTELCOL_BIN`, else what
/// `make otelcol` built).
pub fn otelcol_bin() -> PathBuf {
    std::env::var_os("PGMCP_OTELCOL_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            cache_dir()
                .join("otelcol")
                .join(OTELCOL_VERSION)
                .join("otelcol")
        })
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

/// The PostgreSQL major version the harness runs when `$PGMCP_POSTGRES_VERSION` is not set.
pub const DEFAULT_POSTGRES_MAJOR: u32 = 15;

/// Which PostgreSQL the harness starts, from `$PGMCP_POSTGRES_VERSION`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PostgresBuild {
    /// The major version its `postgres --version` must report.
    pub major: u32,
    /// Directory of `initdb` and `postgres`.
    pub bindir: PathBuf,
    /// How to install it, for the message when it is missing.
    pub install_hint: String,
}

/// `$PGMCP_POSTGRES_VERSION` unset or empty: Debian's PostgreSQL 15 (package postgresql-15,
/// installed by `make deps`), which `make test`, the demo and the benchmarks run with pgbench
/// from the same package. A major pinned in `tests/postgres/versions.txt` (14 to 18): the npm
/// build `tests/scripts/install-postgres.sh` put in `.cache/postgres/<major>`, one build family
/// for the whole matrix. `$PGMCP_PG_BINDIR` overrides the directory either way.
pub fn postgres_build() -> anyhow::Result<PostgresBuild> {
    let requested = std::env::var("PGMCP_POSTGRES_VERSION").unwrap_or_default();
    let pins = std::fs::read_to_string(postgres_pins())?;
    let mut build = postgres_build_for(&requested, &pins)?;
    if let Some(bindir) = std::env::var_os("PGMCP_PG_BINDIR") {
        build.bindir = bindir.into();
    }
    Ok(build)
}

/// [`postgres_build`] for `PGMCP_POSTGRES_VERSION=requested` and the pins file `pins`.
fn postgres_build_for(requested: &str, pins: &str) -> anyhow::Result<PostgresBuild> {
    let requested = requested.trim();
    if requested.is_empty() {
        return Ok(PostgresBuild {
            major: DEFAULT_POSTGRES_MAJOR,
            bindir: PathBuf::from("/usr/lib/postgresql/15/bin"),
            install_hint: "install PostgreSQL 15 (`apt-get install postgresql-15`, done by \
                           `make deps`), or set PGMCP_PG_BINDIR"
                .to_owned(),
        });
    }
    let pinned: Vec<&str> = pins
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .filter(|major| major.parse::<u32>().is_ok())
        .collect();
    let major = requested
        .parse()
        .ok()
        .filter(|_| pinned.contains(&requested));
    let Some(major) = major else {
        anyhow::bail!(
            "PGMCP_POSTGRES_VERSION={requested} is not a major version pinned in {} (pinned: {}; \
             unset: Debian's PostgreSQL 15)",
            postgres_pins().display(),
            pinned.join(", ")
        );
    };
    Ok(PostgresBuild {
        major,
        bindir: cache_dir().join("postgres").join(requested).join("bin"),
        install_hint: format!(
            "install it with `bash tests/scripts/install-postgres.sh {requested}` (done by \
             `make test-pg-matrix`), or set PGMCP_PG_BINDIR"
        ),
    })
}

/// `tests/postgres/versions.txt`: the npm builds of each major the matrix runs.
pub fn postgres_pins() -> PathBuf {
    workspace_root()
        .join("tests")
        .join("postgres")
        .join("versions.txt")
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

/// The operator's and the server's image archives that `make images` writes
/// (`PGMCP_IMAGES_DIR`, default `target/images/`).
pub fn images() -> Vec<PathBuf> {
    let dir = std::env::var_os("PGMCP_IMAGES_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target/images"));
    ["pgmcp-operator.tar", "pgmcp-server.tar"]
        .iter()
        .map(|name| dir.join(name))
        .collect()
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

#[cfg(test)]
mod tests {
    use super::*;

    const PINS: &str =
        "# major  npm version  sha256\n14 14.23.0-beta.17 aa\n18 18.4.0-beta.17 bb\n";

    #[test]
    fn otelcol_version_is_the_release_its_go_mod_pins() {
        let go_mod =
            std::fs::read_to_string(workspace_root().join("tests/otelcol/go.mod")).unwrap();
        let pinned = go_mod.lines().find_map(|line| {
            let mut words = line.split_whitespace();
            (words.next() == Some("go.opentelemetry.io/collector/otelcol"))
                .then(|| words.next())
                .flatten()
        });
        assert_eq!(pinned, Some(OTELCOL_VERSION));
    }

    #[test]
    fn no_version_is_debians_postgresql_15() {
        let build = postgres_build_for("", PINS).unwrap();
        assert_eq!(build.major, 15);
        assert_eq!(build.bindir, Path::new("/usr/lib/postgresql/15/bin"));
    }

    #[test]
    fn a_pinned_major_is_its_npm_build_in_the_cache() {
        let build = postgres_build_for("18", PINS).unwrap();
        assert_eq!(build.major, 18);
        assert_eq!(build.bindir, cache_dir().join("postgres/18/bin"));
        assert!(
            build.install_hint.contains("install-postgres.sh 18"),
            "{}",
            build.install_hint
        );
    }

    #[test]
    fn a_version_that_is_not_pinned_is_refused_with_the_pinned_ones() {
        for requested in ["16", "18.4", "latest", "#"] {
            let err = postgres_build_for(requested, PINS).unwrap_err().to_string();
            assert!(
                err.contains(&format!("PGMCP_POSTGRES_VERSION={requested} is not"))
                    && err.contains("(pinned: 14, 18;"),
                "{err}"
            );
        }
    }
}
