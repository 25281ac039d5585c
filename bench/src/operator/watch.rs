//! The bench's view of bindings and Deployments: one watch each (opened before any measured
//! phase), remembering when each object first reached the state a phase waits for.

use std::collections::HashMap;
use std::fmt::Debug;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use futures::StreamExt as _;
use k8s_openapi::api::apps::v1::Deployment;
use kube::runtime::watcher::{self, Event};
use kube::runtime::{WatchStreamExt as _, watcher as watch};
use kube::{Api, Client, Resource, ResourceExt as _};
use pgmcp_crds::v1alpha1::PostgresMcpBinding;
use serde::de::DeserializeOwned;

/// What the bench knows of one binding.
#[derive(Debug, Clone, Default)]
pub struct BindingState {
    pub generation: i64,
    pub observed_generation: i64,
    pub resource_version: String,
    pub ready: bool,
    /// The operator finished its part for the current generation: status written for it,
    /// DatabaseReady and ReadOnlyVerified True, ServerAvailable reported (whatever the pods do).
    pub reconciled: bool,
    /// When `ready` (for the current generation) was first seen.
    pub ready_at: Option<Instant>,
    pub reconciled_at: Option<Instant>,
}

impl BindingState {
    fn update(&mut self, binding: &PostgresMcpBinding, now: Instant) {
        let generation = binding.metadata.generation.unwrap_or_default();
        if generation != self.generation {
            self.ready_at = None;
            self.reconciled_at = None;
        }
        self.generation = generation;
        self.resource_version = binding.resource_version().unwrap_or_default();
        let status = binding.status.as_ref();
        self.observed_generation = status
            .and_then(|s| s.observed_generation)
            .unwrap_or_default();
        let condition = |type_: &str| {
            status
                .and_then(|s| s.conditions.iter().find(|c| c.type_ == type_))
                .map(|c| c.status.as_str())
        };
        let current = self.observed_generation == generation;
        self.ready = current && condition("Ready") == Some("True");
        self.reconciled = current
            && condition("DatabaseReady") == Some("True")
            && condition("ReadOnlyVerified") == Some("True")
            && condition("ServerAvailable").is_some();
        if self.ready && self.ready_at.is_none() {
            self.ready_at = Some(now);
        }
        if self.reconciled && self.reconciled_at.is_none() {
            self.reconciled_at = Some(now);
        }
    }
}

/// A shared map of the latest state per object name, fed by a watch.
#[derive(Debug, Clone)]
pub struct Tracker<S> {
    pub states: Arc<Mutex<HashMap<String, S>>>,
}

impl<S: Clone> Tracker<S> {
    pub fn snapshot(&self) -> HashMap<String, S> {
        self.states.lock().map(|s| s.clone()).unwrap_or_default()
    }

    pub fn get(&self, name: &str) -> Option<S> {
        self.states.lock().ok()?.get(name).cloned()
    }
}

/// Watches `api`, applying `update` to each object's state; returns once the initial list is
/// in. The task ends when aborted.
async fn spawn<K, S>(
    api: Api<K>,
    update: impl Fn(&mut S, &K, Instant) + Send + 'static,
) -> (Tracker<S>, tokio::task::JoinHandle<()>)
where
    K: Resource<DynamicType = ()> + Clone + Debug + DeserializeOwned + Send + Sync + 'static,
    S: Default + Send + 'static,
{
    let states = Arc::new(Mutex::new(HashMap::new()));
    let tracker = Tracker {
        states: states.clone(),
    };
    let (listed_tx, listed_rx) = tokio::sync::oneshot::channel();
    let task = tokio::spawn(async move {
        let mut listed = Some(listed_tx);
        let mut stream = watch(api, watcher::Config::default())
            .default_backoff()
            .boxed();
        while let Some(event) = stream.next().await {
            let now = Instant::now();
            match event {
                Ok(Event::InitDone) => {
                    if let Some(tx) = listed.take() {
                        let _ = tx.send(());
                    }
                }
                Ok(Event::Apply(object) | Event::InitApply(object)) => {
                    if let Ok(mut states) = states.lock() {
                        update(states.entry(object.name_any()).or_default(), &object, now);
                    }
                }
                Ok(Event::Delete(object)) => {
                    if let Ok(mut states) = states.lock() {
                        states.remove(&object.name_any());
                    }
                }
                Ok(Event::Init) => {}
                Err(err) => eprintln!("bench watch: {err}"),
            }
        }
    });
    let _ = listed_rx.await;
    (tracker, task)
}

pub async fn bindings(
    client: &Client,
    namespace: &str,
) -> (Tracker<BindingState>, tokio::task::JoinHandle<()>) {
    spawn(
        Api::<PostgresMcpBinding>::namespaced(client.clone(), namespace),
        |state: &mut BindingState, binding, now| state.update(binding, now),
    )
    .await
}

/// When each Deployment was first seen available (the controller-manager's verdict).
#[derive(Debug, Clone, Default)]
pub struct DeploymentState {
    pub available_at: Option<Instant>,
}

pub async fn deployments(
    client: &Client,
    namespace: &str,
) -> (Tracker<DeploymentState>, tokio::task::JoinHandle<()>) {
    spawn(
        Api::<Deployment>::namespaced(client.clone(), namespace),
        |state: &mut DeploymentState, deployment: &Deployment, now| {
            // What the operator's ServerAvailable step checks.
            let status = deployment.status.as_ref();
            let available = status.and_then(|s| s.available_replicas).unwrap_or(0) > 0
                && status.and_then(|s| s.conditions.as_ref()).is_some_and(|c| {
                    c.iter()
                        .any(|c| c.type_ == "Available" && c.status == "True")
                });
            if available && state.available_at.is_none() {
                state.available_at = Some(now);
            }
        },
    )
    .await
}
