//! Publishes services of the node's network namespace (`crate::node`) on this machine's
//! loopback, for the demo: the user's shell, kubectl and MCP clients talk to 127.0.0.1, and no
//! packet to a private address ever leaves the namespace.
//!
//! [`publish`] binds a loopback port here and hands the listening socket, as its stdin, to a
//! proxy started in the node's network and PID namespaces (`nsenter`): it accepts connections
//! made here and opens their other end there. A proxy to a Service resolves the Service's ready
//! endpoints for each connection, so it follows rollouts (unlike `kubectl port-forward`, which
//! keeps the pod it started with). The proxies live in the node's PID namespace, so they end
//! with it.

use std::os::fd::AsFd as _;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use anyhow::Context as _;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Api;
use kube::api::ListParams;
use kube::config::{KubeConfigOptions, Kubeconfig};

/// Where a published port leads, in the node's network namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A fixed address, such as the apiserver's `127.0.0.1:443`.
    Address(String),
    /// A ready endpoint of Service `namespace/name`, on `port`, found through the apiserver
    /// `kubeconfig` names.
    Service {
        kubeconfig: PathBuf,
        namespace: String,
        name: String,
        port: u16,
    },
}

impl Target {
    /// The argument the proxy takes (`--proxy`).
    pub fn to_arg(&self) -> String {
        match self {
            Target::Address(address) => format!("address={address}"),
            Target::Service {
                kubeconfig,
                namespace,
                name,
                port,
            } => format!("service={namespace}/{name}:{port}@{}", kubeconfig.display()),
        }
    }

    pub fn parse(arg: &str) -> anyhow::Result<Self> {
        if let Some(address) = arg.strip_prefix("address=") {
            return Ok(Target::Address(address.to_owned()));
        }
        let parsed = arg.strip_prefix("service=").and_then(|rest| {
            let (service, kubeconfig) = rest.split_once('@')?;
            let (service, port) = service.rsplit_once(':')?;
            let (namespace, name) = service.split_once('/')?;
            Some(Target::Service {
                kubeconfig: PathBuf::from(kubeconfig),
                namespace: namespace.to_owned(),
                name: name.to_owned(),
                port: port.parse().ok()?,
            })
        });
        parsed.with_context(|| {
            format!(
                "--proxy {arg:?}: expected address=HOST:PORT or service=NS/NAME:PORT@KUBECONFIG"
            )
        })
    }

    async fn resolve(&self) -> anyhow::Result<String> {
        let (kubeconfig, namespace, name, port) = match self {
            Target::Address(address) => return Ok(address.clone()),
            Target::Service {
                kubeconfig,
                namespace,
                name,
                port,
            } => (kubeconfig, namespace, name, port),
        };
        let config = kube::Config::from_custom_kubeconfig(
            Kubeconfig::read_from(kubeconfig)?,
            &KubeConfigOptions::default(),
        )
        .await?;
        let client = kube::Client::try_from(config)?;
        let ip = ready_endpoints(&client, namespace, name)
            .await?
            .into_iter()
            .next()
            .with_context(|| format!("Service {namespace}/{name} has no ready endpoint"))?;
        Ok(format!("{ip}:{port}"))
    }
}

/// The addresses of Service `namespace/name`'s ready endpoints (its EndpointSlices): where the
/// Service routes.
pub async fn ready_endpoints(
    client: &kube::Client,
    namespace: &str,
    name: &str,
) -> anyhow::Result<Vec<String>> {
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), namespace);
    let selector = format!("kubernetes.io/service-name={name}");
    let list = slices
        .list(&ListParams::default().labels(&selector))
        .await?;
    Ok(list
        .items
        .iter()
        .flat_map(|slice| &slice.endpoints)
        .filter(|e| e.conditions.as_ref().and_then(|c| c.ready) == Some(true))
        .filter_map(|e| e.addresses.first().cloned())
        .collect())
}

/// Publishes `target` of the namespaces of process `inside` (a process of the node's PID and
/// network namespaces, as seen from here) on a free loopback port here. Returns the port and
/// the `nsenter` process.
pub fn publish(
    program: &std::path::Path,
    inside: u32,
    target: &Target,
) -> anyhow::Result<(u16, Child)> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let port = listener.local_addr()?.port();
    let socket = listener.as_fd().try_clone_to_owned()?;
    let child = Command::new("nsenter")
        .arg(format!("--target={inside}"))
        .args(["--net", "--pid", "--"])
        .arg(program)
        .arg(format!("--proxy={}", target.to_arg()))
        .stdin(Stdio::from(socket))
        .stdout(Stdio::null())
        .spawn()
        .context("failed to run nsenter (util-linux)")?;
    Ok((port, child))
}

/// The proxy: accepts on the listening socket it was given as stdin, and connects each
/// connection to `target` from the namespace it runs in.
pub async fn serve(target: Target) -> anyhow::Result<()> {
    let socket = std::io::stdin().as_fd().try_clone_to_owned()?;
    let listener = std::net::TcpListener::from(socket);
    listener.set_nonblocking(true)?;
    let listener = tokio::net::TcpListener::from_std(listener)?;
    loop {
        let (mut inbound, _) = listener.accept().await?;
        let target = target.clone();
        tokio::spawn(async move {
            let address = match target.resolve().await {
                Ok(address) => address,
                Err(err) => {
                    eprintln!("proxy: {err:#}");
                    return;
                }
            };
            match tokio::net::TcpStream::connect(&address).await {
                Ok(mut outbound) => {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
                Err(err) => eprintln!("proxy: cannot connect to {address}: {err}"),
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_round_trip_through_their_argument() {
        for target in [
            Target::Address("127.0.0.1:443".to_owned()),
            Target::Service {
                kubeconfig: PathBuf::from("/tmp/x/kubeconfig"),
                namespace: "agents".to_owned(),
                name: "shop-mcp".to_owned(),
                port: 8080,
            },
        ] {
            assert_eq!(Target::parse(&target.to_arg()).unwrap(), target);
        }
        assert!(Target::parse("shop-mcp").is_err());
    }
}
