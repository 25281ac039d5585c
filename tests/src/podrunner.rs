//! A kubelet stand-in for one container: reads the Deployment the operator rendered, takes one
//! of its Pending pods, and runs the container's binary as that pod would run it — same
//! command and args, environment (`value` and `valueFrom` Secret/ConfigMap keys), and its
//! ConfigMap, Secret and emptyDir volumes materialised on disk. When the readiness probe
//! answers, it marks the pod Ready through the status subresource, as a kubelet does, so the
//! controller-manager and the operator see an available Deployment.
//!
//! Translations a real node makes implicitly, done explicitly here and nowhere else: each
//! mountPath becomes a directory of its own (the path is rewritten in the args and in the
//! mounted files that mention it), and the container port is published on a free loopback port
//! (`--listen`). Images are not pulled: the binary is given.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Container, Pod, PodSpec, Secret};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt as _};

use crate::daemon::{Daemon, Spec};
use crate::paths;

/// One pod of a Deployment, running as a local process.
#[derive(Debug)]
pub struct RunningPod {
    pub pod: String,
    /// Loopback port the container port is published on.
    pub port: u16,
    pub root: tempfile::TempDir,
    daemon: Daemon,
}

impl RunningPod {
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/mcp", self.port)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.root.path().join("container.log")).unwrap_or_default()
    }

    pub fn stop(&mut self) {
        self.daemon.stop();
    }

    /// Whether the process still runs.
    pub fn running(&mut self) -> bool {
        !self.daemon.exited()
    }

    /// What a kubelet does when its pod is deleted (garbage collection after the binding, a
    /// rollout): waits until the pod object is gone, then stops the process.
    pub async fn stop_when_deleted(
        &mut self,
        client: &Client,
        namespace: &str,
        timeout: Duration,
    ) -> anyhow::Result<()> {
        let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
        let deadline = Instant::now() + timeout;
        while pods.get_opt(&self.pod).await?.is_some() {
            anyhow::ensure!(
                Instant::now() < deadline,
                "pod {namespace}/{} still exists after {timeout:?}",
                self.pod
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        self.stop();
        Ok(())
    }
}

/// What the azure-workload-identity webhook is configured with in this "cluster".
#[derive(Debug, Clone, Default)]
pub struct Webhook {
    /// `AZURE_AUTHORITY_HOST` it injects (the Entra fake's URL in tests).
    pub authority_host: String,
    /// Extra environment a node would provide, such as `SSL_CERT_FILE` trusting the fake.
    pub env: Vec<(String, String)>,
}

/// Runs a pod of Deployment `namespace/name` with `binary` as its only container.
pub async fn run_deployment_pod(
    client: &Client,
    namespace: &str,
    name: &str,
    binary: &Path,
    timeout: Duration,
) -> anyhow::Result<RunningPod> {
    run_deployment_pod_with(client, namespace, name, binary, timeout, None).await
}

/// [`run_deployment_pod`], with the workload-identity webhook's injection when the pod carries
/// `azure.workload.identity/use: "true"`: `AZURE_CLIENT_ID` and `AZURE_TENANT_ID` from its
/// ServiceAccount's annotations, `AZURE_AUTHORITY_HOST`, and `AZURE_FEDERATED_TOKEN_FILE` holding
/// a token for that ServiceAccount with audience `api://AzureADTokenExchange` (TokenRequest).
pub async fn run_deployment_pod_with(
    client: &Client,
    namespace: &str,
    name: &str,
    binary: &Path,
    timeout: Duration,
    webhook: Option<&Webhook>,
) -> anyhow::Result<RunningPod> {
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), namespace);
    let deployment = deployments
        .get(name)
        .await
        .with_context(|| format!("failed to read Deployment {namespace}/{name}"))?;
    let pod = pending_pod(client, namespace, &deployment, timeout).await?;
    let spec = pod.spec.clone().context("pod has no spec")?;
    let container = spec
        .containers
        .first()
        .cloned()
        .context("pod has no container")?;

    let root = tempfile::Builder::new()
        .prefix("pgmcp-pod-")
        .disable_cleanup(std::env::var_os("PGMCP_KEEP_TEST_DIRS").is_some())
        .tempdir()?;
    let mounts = materialise_volumes(client, namespace, &spec, &container, root.path()).await?;
    let mut env = container_env(client, namespace, &pod, &container).await?;
    let uses_workload_identity = pod
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(pgmcp_crds::workload_identity::USE_LABEL))
        .is_some_and(|v| v == "true");
    if uses_workload_identity {
        let webhook = webhook.context(
            "the pod uses workload identity but the runner was given no webhook configuration",
        )?;
        env.extend(workload_identity_env(client, namespace, &spec, webhook, root.path()).await?);
    } else if let Some(webhook) = webhook {
        // What the node provides (a CA bundle trusting the Entra fake) applies to every pod.
        env.extend(webhook.env.iter().cloned());
    }
    let port = paths::free_port()?;
    let mut args: Vec<String> = container
        .args
        .clone()
        .unwrap_or_default()
        .iter()
        .map(|a| rewrite(a, &mounts))
        .collect();
    args.push(format!("--listen=127.0.0.1:{port}"));

    let log = root.path().join("container.log");
    let mut process = Spec::new(&format!("pod {}", pod.name_any()), binary, &log).args(args);
    process.env = env;
    let mut daemon = Daemon::spawn(process)?;

    let probe = container
        .readiness_probe
        .as_ref()
        .and_then(|p| p.http_get.as_ref())
        .and_then(|h| h.path.clone())
        .unwrap_or_else(|| "/".to_owned());
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok((200, _, _)) = crate::http::request(port, "GET", &probe, &[], "").await {
            break;
        }
        anyhow::ensure!(
            !daemon.exited() && Instant::now() < deadline,
            "pod {} did not become ready (readiness probe {probe} on port {port}; files in {}):\n{}",
            pod.name_any(),
            root.path().display(),
            daemon.log_tail(30)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    mark_ready(client, namespace, &pod.name_any()).await?;
    Ok(RunningPod {
        pod: pod.name_any(),
        port,
        root,
        daemon,
    })
}

/// The environment the azure-workload-identity webhook injects, and the projected token file.
async fn workload_identity_env(
    client: &Client,
    namespace: &str,
    spec: &PodSpec,
    webhook: &Webhook,
    root: &Path,
) -> anyhow::Result<Vec<(String, String)>> {
    use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
    use k8s_openapi::api::core::v1::ServiceAccount;
    use pgmcp_crds::workload_identity as wi;
    let account_name = spec
        .service_account_name
        .clone()
        .unwrap_or_else(|| "default".to_owned());
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), namespace);
    let account = accounts
        .get(&account_name)
        .await
        .with_context(|| format!("failed to read ServiceAccount {namespace}/{account_name}"))?;
    let annotation = |key: &str| {
        account
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(key))
            .cloned()
            .with_context(|| {
                format!("ServiceAccount {namespace}/{account_name} has no annotation {key}")
            })
    };
    let request = TokenRequest {
        spec: TokenRequestSpec {
            audiences: vec![wi::TOKEN_AUDIENCE.to_owned()],
            expiration_seconds: Some(3600),
            ..Default::default()
        },
        ..Default::default()
    };
    let token = accounts
        .create_token_request(&account_name, &PostParams::default(), &request)
        .await?
        .status
        .context("TokenRequest returned no token")?
        .token;
    let dir = root.join("azure-identity-token");
    std::fs::create_dir_all(&dir)?;
    let file = dir.join("azure-identity-token");
    std::fs::write(&file, token)?;
    let mut env = vec![
        (
            "AZURE_CLIENT_ID".to_owned(),
            annotation(wi::CLIENT_ID_ANNOTATION)?,
        ),
        (
            "AZURE_TENANT_ID".to_owned(),
            annotation(wi::TENANT_ID_ANNOTATION)?,
        ),
        (
            "AZURE_FEDERATED_TOKEN_FILE".to_owned(),
            file.display().to_string(),
        ),
        (
            "AZURE_AUTHORITY_HOST".to_owned(),
            webhook.authority_host.clone(),
        ),
    ];
    env.extend(webhook.env.iter().cloned());
    Ok(env)
}

/// The first container's arguments of Deployment `namespace/name`, as its pods would run.
pub async fn container_args(
    client: &Client,
    namespace: &str,
    name: &str,
) -> anyhow::Result<Vec<String>> {
    let deployment = Api::<Deployment>::namespaced(client.clone(), namespace)
        .get(name)
        .await
        .with_context(|| format!("failed to read Deployment {namespace}/{name}"))?;
    Ok(deployment
        .spec
        .and_then(|s| s.template.spec)
        .and_then(|s| s.containers.into_iter().next())
        .and_then(|c| c.args)
        .unwrap_or_default())
}

/// A pod of the Deployment's current template that nobody runs yet.
async fn pending_pod(
    client: &Client,
    namespace: &str,
    deployment: &Deployment,
    timeout: Duration,
) -> anyhow::Result<Pod> {
    let labels = deployment
        .spec
        .as_ref()
        .and_then(|s| s.selector.match_labels.clone())
        .unwrap_or_default();
    let selector = labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",");
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let deadline = Instant::now() + timeout;
    loop {
        let list = pods.list(&ListParams::default().labels(&selector)).await?;
        if let Some(pod) = list.items.into_iter().find(|p| {
            p.metadata.deletion_timestamp.is_none()
                && p.status.as_ref().and_then(|s| s.phase.as_deref()) != Some("Running")
        }) {
            return Ok(pod);
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "no Pending pod of Deployment {namespace}/{} appeared",
            deployment.name_any()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Writes every mounted volume under `root`; returns mountPath → local directory.
async fn materialise_volumes(
    client: &Client,
    namespace: &str,
    spec: &PodSpec,
    container: &Container,
    root: &Path,
) -> anyhow::Result<Vec<(String, PathBuf)>> {
    let mut mounts = Vec::new();
    for (i, mount) in container
        .volume_mounts
        .clone()
        .unwrap_or_default()
        .iter()
        .enumerate()
    {
        let volume = spec
            .volumes
            .as_ref()
            .and_then(|v| v.iter().find(|v| v.name == mount.name))
            .with_context(|| format!("volumeMount {} names no volume", mount.name))?;
        let dir = root.join(format!("mount-{i}-{}", mount.name));
        std::fs::create_dir_all(&dir)?;
        let files: BTreeMap<String, Vec<u8>> = if let Some(source) = &volume.config_map {
            let cm: ConfigMap = Api::namespaced(client.clone(), namespace)
                .get(&source.name)
                .await
                .with_context(|| format!("failed to read ConfigMap {namespace}/{}", source.name))?;
            let data: BTreeMap<String, Vec<u8>> = cm
                .data
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, v.into_bytes()))
                .collect();
            select_items(data, source.items.as_deref())
        } else if let Some(source) = &volume.secret {
            let name = source.secret_name.clone().unwrap_or_default();
            let secret: Secret = Api::namespaced(client.clone(), namespace)
                .get(&name)
                .await
                .with_context(|| format!("failed to read Secret {namespace}/{name}"))?;
            let data: BTreeMap<String, Vec<u8>> = secret
                .data
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, v.0))
                .collect();
            select_items(data, source.items.as_deref())
        } else if volume.empty_dir.is_some() {
            BTreeMap::new()
        } else {
            anyhow::bail!(
                "volume {} has a type the pod runner does not support",
                volume.name
            );
        };
        for (path, bytes) in files {
            std::fs::write(dir.join(path), bytes)?;
        }
        mounts.push((mount.mount_path.clone(), dir));
    }
    // Mounted files may name other mount paths (a config naming a password file).
    for (_, dir) in &mounts {
        for entry in std::fs::read_dir(dir)? {
            let path = entry?.path();
            if let Ok(text) = std::fs::read_to_string(&path) {
                let rewritten = rewrite(&text, &mounts);
                if rewritten != text {
                    std::fs::write(&path, rewritten)?;
                }
            }
        }
    }
    Ok(mounts)
}

fn select_items(
    data: BTreeMap<String, Vec<u8>>,
    items: Option<&[k8s_openapi::api::core::v1::KeyToPath]>,
) -> BTreeMap<String, Vec<u8>> {
    match items {
        None => data,
        Some(items) => items
            .iter()
            .filter_map(|item| Some((item.path.clone(), data.get(&item.key)?.clone())))
            .collect(),
    }
}

/// Replaces each mount path where it starts a path in `text` (one pass, longest mount first,
/// so a directory the runner created is never rewritten again).
fn rewrite(text: &str, mounts: &[(String, PathBuf)]) -> String {
    let path_char = |c: char| c.is_alphanumeric() || "/-_.".contains(c);
    let mut sorted: Vec<&(String, PathBuf)> = mounts.iter().collect();
    sorted.sort_by_key(|(mount, _)| std::cmp::Reverse(mount.len()));
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    let mut previous: Option<char> = None;
    'scan: while let Some(c) = rest.chars().next() {
        if !previous.is_some_and(path_char) {
            for (mount, dir) in &sorted {
                let after = rest.strip_prefix(mount.as_str());
                if let Some(after) = after
                    && after
                        .chars()
                        .next()
                        .is_none_or(|n| n == '/' || !path_char(n))
                {
                    out.push_str(&dir.display().to_string());
                    previous = mount.chars().last();
                    rest = after;
                    continue 'scan;
                }
            }
        }
        out.push(c);
        previous = Some(c);
        rest = &rest[c.len_utf8()..];
    }
    out
}

async fn container_env(
    client: &Client,
    namespace: &str,
    pod: &Pod,
    container: &Container,
) -> anyhow::Result<Vec<(String, String)>> {
    let mut env = Vec::new();
    for var in container.env.clone().unwrap_or_default() {
        let value = if let Some(value) = var.value {
            value
        } else if let Some(from) = var.value_from {
            if let Some(key) = from.secret_key_ref {
                let secret: Secret = Api::namespaced(client.clone(), namespace)
                    .get(&key.name)
                    .await?;
                let bytes = secret
                    .data
                    .and_then(|d| d.get(&key.key).cloned())
                    .with_context(|| format!("Secret {} has no key {}", key.name, key.key))?;
                String::from_utf8(bytes.0)?
            } else if let Some(key) = from.config_map_key_ref {
                let cm: ConfigMap = Api::namespaced(client.clone(), namespace)
                    .get(&key.name)
                    .await?;
                cm.data
                    .and_then(|d| d.get(&key.key).cloned())
                    .with_context(|| format!("ConfigMap {} has no key {}", key.name, key.key))?
            } else if let Some(field) = from.field_ref {
                // The downward API, with this process standing in for the pod.
                match field.field_path.as_str() {
                    "metadata.name" => pod.metadata.name.clone().unwrap_or_default(),
                    "metadata.namespace" => namespace.to_owned(),
                    "metadata.uid" => pod.metadata.uid.clone().unwrap_or_default(),
                    "spec.serviceAccountName" => pod
                        .spec
                        .as_ref()
                        .and_then(|s| s.service_account_name.clone())
                        .unwrap_or_default(),
                    "spec.nodeName" => "pod-runner".to_owned(),
                    "status.podIP" | "status.hostIP" => "127.0.0.1".to_owned(),
                    other => anyhow::bail!(
                        "env {} uses fieldRef {other}, which the pod runner does not support",
                        var.name
                    ),
                }
            } else {
                anyhow::bail!(
                    "env {} uses a valueFrom the pod runner does not support",
                    var.name
                );
            }
        } else {
            String::new()
        };
        env.push((var.name, value));
    }
    Ok(env)
}

/// The status write a kubelet makes when the readiness probe passes.
pub async fn mark_ready(client: &Client, namespace: &str, pod: &str) -> anyhow::Result<()> {
    let now = jiff::Timestamp::now().to_string();
    let conditions: Vec<_> = ["PodScheduled", "Initialized", "ContainersReady", "Ready"]
        .iter()
        .map(|t| serde_json::json!({"type": t, "status": "True", "lastTransitionTime": now}))
        .collect();
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    pods.patch_status(
        pod,
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({
            "status": {"phase": "Running", "conditions": conditions, "startTime": now}
        })),
    )
    .await
    .with_context(|| format!("failed to mark pod {namespace}/{pod} Ready"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_downward_api_names_the_pod_this_process_stands_in_for() {
        // Never contacted: these variables need no API call.
        let client = Client::try_from(kube::Config::new(
            "http://127.0.0.1:1".parse().expect("url"),
        ))
        .expect("client");
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "op-7d9-x2", "uid": "u-1"},
            "spec": {"serviceAccountName": "pgmcp-operator", "containers": []}
        }))
        .expect("pod");
        let container: Container = serde_json::from_value(serde_json::json!({
            "name": "operator",
            "env": [
                {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
                {"name": "SA", "valueFrom": {"fieldRef": {"fieldPath": "spec.serviceAccountName"}}},
                {"name": "PLAIN", "value": "x"}
            ]
        }))
        .expect("container");
        let env = container_env(&client, "pgmcp-system", &pod, &container)
            .await
            .expect("env");
        assert_eq!(
            env,
            [
                ("POD_NAME".to_owned(), "op-7d9-x2".to_owned()),
                ("POD_NAMESPACE".to_owned(), "pgmcp-system".to_owned()),
                ("SA".to_owned(), "pgmcp-operator".to_owned()),
                ("PLAIN".to_owned(), "x".to_owned()),
            ]
        );
    }

    #[test]
    fn mount_paths_are_rewritten_once_and_only_where_a_path_starts() {
        let mounts = vec![
            ("/tmp".to_owned(), PathBuf::from("/tmp/pod/mount-1-tmp")),
            (
                "/etc/pgmcp".to_owned(),
                PathBuf::from("/tmp/pod/mount-0-config"),
            ),
        ];
        assert_eq!(
            rewrite("--config=/etc/pgmcp/config.json", &mounts),
            "--config=/tmp/pod/mount-0-config/config.json"
        );
        assert_eq!(
            rewrite("\"/tmp\" /var/tmp /tmpfoo", &mounts),
            "\"/tmp/pod/mount-1-tmp\" /var/tmp /tmpfoo"
        );
    }
}
