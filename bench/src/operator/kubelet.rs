//! The kubelet's one write, for a control plane without nodes: every pod of the operator's
//! Deployments is marked Running and Ready through the pod status subresource as soon as the
//! ReplicaSet controller creates it. The controller-manager then computes ReplicaSet and
//! Deployment availability itself, and the operator sees the Deployment become available
//! exactly as it would in a cluster. Nothing in the measured path is short-circuited: the
//! Deployment status the operator reads is the controller-manager's.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use futures::StreamExt as _;
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::watcher::{self, Event};
use kube::runtime::{WatchStreamExt as _, watcher as watch};
use kube::{Api, Client, ResourceExt as _};
use tokio::sync::Semaphore;

/// Pods the operator's Deployments make carry this label.
pub const POD_SELECTOR: &str = "app.kubernetes.io/managed-by=pgmcp-operator";
/// Status patches in flight at once.
const PARALLEL: usize = 16;

/// Counts of the stand-in's writes.
#[derive(Debug, Default)]
pub struct Kubelet {
    /// Successful pod status patches.
    pub marked: AtomicU64,
    pub failed: AtomicU64,
}

impl Kubelet {
    /// Watches pods in `namespace` until the task is aborted. Returns once the watch has
    /// listed (so its LIST and WATCH come before any measured phase).
    pub async fn spawn(
        client: Client,
        namespace: &str,
    ) -> anyhow::Result<(Arc<Kubelet>, tokio::task::JoinHandle<()>)> {
        let kubelet = Arc::new(Kubelet::default());
        let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
        let (listed_tx, listed_rx) = tokio::sync::oneshot::channel();
        let this = kubelet.clone();
        let namespace = namespace.to_owned();
        let task = tokio::spawn(async move {
            let mut listed = Some(listed_tx);
            let mut seen = HashSet::new();
            let limit = Arc::new(Semaphore::new(PARALLEL));
            let stream = watch(pods, watcher::Config::default().labels(POD_SELECTOR))
                .default_backoff()
                .boxed();
            let mut stream = stream;
            while let Some(event) = stream.next().await {
                let pod = match event {
                    Ok(Event::InitDone) => {
                        if let Some(tx) = listed.take() {
                            let _ = tx.send(());
                        }
                        continue;
                    }
                    Ok(Event::Apply(pod) | Event::InitApply(pod)) => pod,
                    Ok(_) => continue,
                    Err(err) => {
                        eprintln!("kubelet stand-in: pod watch: {err}");
                        continue;
                    }
                };
                if pod.metadata.deletion_timestamp.is_some() || is_ready(&pod) {
                    continue;
                }
                let name = pod.name_any();
                if !seen.insert(name.clone()) {
                    continue;
                }
                let Ok(permit) = limit.clone().acquire_owned().await else {
                    break;
                };
                let client = client.clone();
                let namespace = namespace.clone();
                let this = this.clone();
                tokio::spawn(async move {
                    let result =
                        pgmcp_tests::podrunner::mark_ready(&client, &namespace, &name).await;
                    drop(permit);
                    match result {
                        Ok(()) => this.marked.fetch_add(1, Ordering::Relaxed),
                        // A pod deleted by a rollout before we got to it.
                        Err(_) => this.failed.fetch_add(1, Ordering::Relaxed),
                    };
                });
            }
        });
        let _ = listed_rx.await;
        Ok((kubelet, task))
    }

    pub fn marked(&self) -> u64 {
        self.marked.load(Ordering::Relaxed)
    }

    pub fn failed(&self) -> u64 {
        self.failed.load(Ordering::Relaxed)
    }
}

fn is_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}
