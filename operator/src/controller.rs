//! The PostgresMcpBinding controller. One reconcile, top to bottom:
//!
//! ```text
//! fetch     read the Secrets the binding names or owns                 (reads only)
//! validate  check references and parse limits                          (pure)
//! record    status.inventory: what exists outside the cluster          (record.rs)
//! protect   the in-use finalizer on the admin Secret                   (protect.rs)
//! build     desired ServiceAccount, ConfigMap, Deployment, Service,
//!           PodDisruptionBudget, NetworkPolicy                          (pure)
//! apply     server-side apply of what differs, delete what is unwanted  (writes)
//! database  principal, grants equal to the spec, read-only probe       (PostgreSQL)
//! azure     federated credential, Foundry connection, app role         (ARM, Graph)
//! status    kstatus conditions, written only when they change          (one write at most)
//! events    what the steps changed or failed at, published once at the end
//! ```
//!
//! The external steps (database, azure) share one contract: what the spec asks for now and
//! what the record says exists go in; the step creates what is missing (recording it first),
//! removes what is recorded but no longer asked for, and returns a report for status and
//! Events. A finalizer removes what the record holds ([`cleanup`]), without needing a valid
//! spec; children inside the cluster carry a controller owner reference and are
//! garbage-collected by Kubernetes. Children are watched (label
//! `app.kubernetes.io/managed-by=pgmcp-operator`), so an edited or deleted child is repaired
//! within seconds; the watch caches double as the "live" side of apply's comparison.

pub mod apply;
pub mod azure;
pub mod build;
pub mod cleanup;
pub mod database;
pub mod fetch;
pub mod protect;
pub mod record;
pub mod status;
pub mod validate;
pub mod watch;

use std::collections::HashMap;
use std::fmt::Debug;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tracing::Instrument as _;

use futures::{Stream, StreamExt as _};
use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, ObjectReference, Service, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::Api;
use kube::runtime::controller::{Action, Config as ControllerConfig, Controller};
use kube::runtime::events::{Event as KubeEvent, EventType, Recorder, Reporter};
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{Predicate as _, PredicateConfig, WatchStreamExt as _, predicates, watcher};
use kube::{Client, Resource, ResourceExt as _};
use pgmcp_crds::v1alpha1::PostgresMcpBinding;
use serde::de::DeserializeOwned;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::settings::Defaults;
use record::Record;
use status::Outcome;

/// Label selector of every child the operator creates (and watches).
pub const CHILD_SELECTOR: &str = "app.kubernetes.io/managed-by=pgmcp-operator";
/// How often a binding waiting for a Secret is re-checked.
const WAITING_RECHECK: Duration = Duration::from_secs(10);
/// Longest retry delay after repeated failures.
const MAX_BACKOFF: Duration = Duration::from_secs(300);

/// Watch caches of the children, for comparing desired against live without a GET.
#[derive(Clone)]
pub struct Stores {
    pub service_accounts: Store<ServiceAccount>,
    pub config_maps: Store<ConfigMap>,
    pub services: Store<Service>,
    pub deployments: Store<Deployment>,
    pub pod_disruption_budgets: Store<PodDisruptionBudget>,
    pub network_policies: Store<NetworkPolicy>,
    /// Set once every store above has listed; see [`Stores::wait_until_ready`].
    pub ready: Arc<tokio::sync::OnceCell<()>>,
}

impl Debug for Stores {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stores").finish_non_exhaustive()
    }
}

impl Stores {
    /// Waits until every child cache has listed.
    ///
    /// Only one task at a time may wait on a `Store` (kube-runtime's `DelayedInit` keeps the waker
    /// of the last task that polled it): when an operator starts with bindings in place, its first
    /// `--concurrency` reconciles all waited here, only one was woken, and the others hung forever,
    /// holding their concurrency slots and blocking shutdown. One task waits; the others wait on
    /// the cell, which wakes them all.
    async fn wait_until_ready(&self) {
        self.ready
            .get_or_init(|| async {
                let _ = futures::join!(
                    self.service_accounts.wait_until_ready(),
                    self.config_maps.wait_until_ready(),
                    self.services.wait_until_ready(),
                    self.deployments.wait_until_ready(),
                    self.pod_disruption_budgets.wait_until_ready(),
                    self.network_policies.wait_until_ready(),
                );
            })
            .await;
    }

    fn report(&self, metrics: &Metrics) {
        metrics.set_managed("ServiceAccount", self.service_accounts.len());
        metrics.set_managed("ConfigMap", self.config_maps.len());
        metrics.set_managed("Service", self.services.len());
        metrics.set_managed("Deployment", self.deployments.len());
        metrics.set_managed("PodDisruptionBudget", self.pod_disruption_budgets.len());
        metrics.set_managed("NetworkPolicy", self.network_policies.len());
    }
}

/// What every reconcile shares.
pub struct Context {
    pub client: Client,
    pub defaults: Defaults,
    pub stores: Stores,
    pub metrics: Arc<Metrics>,
    /// Who publishes Events (see [`Context::event`]).
    pub reporter: Reporter,
    pub resync: Duration,
    /// The operator's own Entra tokens for PostgreSQL (`postgres.admin.entra`), one scope per
    /// cloud, when it runs with a workload identity.
    pub postgres_tokens: Option<pgmcp_identity::Tokens>,
    /// Azure Resource Manager with the operator's own workload identity, when it has one.
    pub arm: Option<crate::azure::arm::ArmClient>,
    /// Microsoft Graph with the same identity (`foundry.assignAppRole`).
    pub graph: Option<crate::azure::graph::GraphClient>,
    /// Idle admin connections to PostgreSQL, kept for the next reconcile.
    pub admin_pool: crate::database::pool::Pool<tokio_postgres::Client>,
    /// Consecutive failures per binding (`namespace/name`) at the same stage, for the retry
    /// delay.
    failures: Mutex<HashMap<String, (String, u32)>>,
}

impl Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("defaults", &self.defaults)
            .field("resync", &self.resync)
            .finish_non_exhaustive()
    }
}

impl Context {
    /// Publishes an Event on the binding; a failure to publish is logged, never fatal.
    /// `related` names the child concerned; Events about different children stay apart.
    async fn event(
        &self,
        binding: &PostgresMcpBinding,
        type_: EventType,
        reason: &str,
        note: String,
        related: Option<ObjectReference>,
    ) {
        let event = KubeEvent {
            type_,
            reason: reason.to_owned(),
            note: Some(note),
            action: "Reconcile".to_owned(),
            secondary: related,
        };
        // A recorder of its own for each Event: kube's Recorder merges Events with the same
        // reason and related object into a series and keeps the first note, so a second
        // "Granted" or "Updated" would show the first one's text.
        let result = Recorder::new(self.client.clone(), self.reporter.clone())
            .publish(&event, &binding.object_ref(&()))
            .await;
        self.metrics.write("Event", "create", result.is_ok());
        if let Err(err) = result {
            tracing::warn!(binding = %key(binding), error = %err, "failed to publish an event");
        }
    }
}

/// Why a reconcile failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Fetch(#[from] fetch::Error),
    #[error(transparent)]
    Apply(#[from] apply::Error),
    #[error(transparent)]
    Cleanup(#[from] cleanup::Error),
    #[error(transparent)]
    Database(#[from] database::Error),
    #[error(transparent)]
    Azure(#[from] azure::Error),
    #[error(transparent)]
    Protect(#[from] protect::Error),
    #[error(transparent)]
    Record(#[from] record::Error),
    #[error("failed to write the status of binding {binding}: {source}")]
    Status {
        binding: String,
        #[source]
        source: kube::Error,
    },
    #[error("{0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),
}

impl Error {
    /// Where the reconcile stopped: the category, and for a deletion the step that failed.
    fn stage(&self) -> String {
        use kube::runtime::finalizer::Error as F;
        match self {
            Error::Cleanup(e) => format!("cleanup {:?}", e.step),
            Error::Finalizer(inner) => match inner.as_ref() {
                F::ApplyFailed(e) | F::CleanupFailed(e) => e.stage(),
                _ => self.metric_label().to_owned(),
            },
            _ => self.metric_label().to_owned(),
        }
    }

    /// Bounded error category for metrics.
    pub fn metric_label(&self) -> &'static str {
        use kube::runtime::finalizer::Error as F;
        match self {
            Error::Fetch(_) => "fetch",
            Error::Apply(e) if e.needs_user() => "apply_refused",
            Error::Apply(_) => "apply",
            Error::Cleanup(_) => "cleanup",
            Error::Database(e) if e.needs_user() => "database_refused",
            Error::Database(_) => "database",
            Error::Azure(e) if e.needs_user() => "azure_refused",
            Error::Azure(_) => "azure",
            Error::Protect(_) => "secret_finalizer",
            Error::Record(_) => "record",
            Error::Status { .. } => "status",
            Error::Finalizer(inner) => match inner.as_ref() {
                F::ApplyFailed(e) | F::CleanupFailed(e) => e.metric_label(),
                F::AddFinalizer(_) | F::RemoveFinalizer(_) => "finalizer",
                F::UnnamedObject | F::InvalidFinalizer => "internal",
            },
        }
    }
}

fn key(binding: &PostgresMcpBinding) -> String {
    format!(
        "{}/{}",
        binding.namespace().unwrap_or_default(),
        binding.name_any()
    )
}

/// Entry point of every reconcile: the finalizer dispatches to [`reconcile_binding`] or
/// [`cleanup_binding`].
pub async fn reconcile(
    binding: Arc<PostgresMcpBinding>,
    ctx: Arc<Context>,
) -> Result<Action, Error> {
    // One span per reconcile, exported when OpenTelemetry is on (`pgmcp_telemetry`).
    let span = tracing::info_span!(
        target: "pgmcp::trace",
        "reconcile",
        otel.name = "reconcile PostgresMcpBinding",
        otel.kind = "internal",
        otel.status_code = tracing::field::Empty,
        k8s.namespace.name = binding.namespace().unwrap_or_default(),
        pgmcp.binding = binding.name_any(),
        error.type = tracing::field::Empty,
    );
    let result = reconcile_in(binding, ctx).instrument(span.clone()).await;
    if let Err(err) = &result {
        span.record("otel.status_code", "ERROR");
        span.record("error.type", err.metric_label());
    }
    result
}

async fn reconcile_in(
    binding: Arc<PostgresMcpBinding>,
    ctx: Arc<Context>,
) -> Result<Action, Error> {
    let started = Instant::now();
    ctx.stores.wait_until_ready().await;
    let api: Api<PostgresMcpBinding> =
        Api::namespaced(ctx.client.clone(), &binding.namespace().unwrap_or_default());
    let result = finalizer(
        &api,
        pgmcp_crds::FINALIZER,
        binding.clone(),
        |event| async {
            match event {
                Finalizer::Apply(binding) => reconcile_binding(&binding, &ctx).await,
                Finalizer::Cleanup(binding) => cleanup_binding(&binding, &ctx).await,
            }
        },
    )
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)));
    ctx.metrics.reconciled(
        started.elapsed(),
        result.as_ref().err().map(Error::metric_label),
    );
    ctx.stores.report(&ctx.metrics);
    if result.is_ok()
        && let Ok(mut failures) = ctx.failures.lock()
    {
        failures.remove(&key(&binding));
    }
    result
}

async fn reconcile_binding(binding: &PostgresMcpBinding, ctx: &Context) -> Result<Action, Error> {
    let inputs = fetch::fetch(&ctx.client, binding).await?;
    // What exists outside the cluster, as recorded (before anything else is written about the
    // binding, so its status never lacks the record).
    let mut record = load_record(ctx, binding).await?;
    let valid = match validate::validate(binding, &inputs) {
        Ok(valid) => valid,
        Err(invalid) => {
            stop(ctx, binding, invalid.reason(), invalid.to_string(), true).await?;
            return Ok(if invalid.waits_for_other_object() {
                Action::requeue(WAITING_RECHECK)
            } else {
                Action::await_change()
            });
        }
    };
    // The admin Secret is protected before anything is created that would need it to be
    // removed.
    let protected = protect::protect(ctx, binding, inputs.admin_secret.as_ref(), &mut record);
    if let Err(err) = protected.await {
        stop(
            ctx,
            binding,
            "AdminSecretNotProtected",
            err.to_string(),
            false,
        )
        .await?;
        return Err(err.into());
    }
    let desired = build::build(&valid, &ctx.defaults);
    let applied = match apply::apply(ctx, binding, &desired).await {
        Ok(applied) => applied,
        Err(err) => {
            stop(
                ctx,
                binding,
                err.reason(),
                err.to_string(),
                err.needs_user(),
            )
            .await?;
            return Err(err.into());
        }
    };
    let secrets = (
        inputs.admin_secret.as_ref(),
        inputs.password_secret.as_ref(),
    );
    let database = database::reconcile(ctx, binding, &valid, &mut record, secrets).await;
    let azure = azure::reconcile(ctx, &valid, &mut record).await;
    // Objects found in place (adopted) are recorded now.
    record.save(ctx).await?;

    let mut notes = Notes::default();
    notes.children(&applied.changes);
    notes.database(&database);
    notes.azure(&azure);
    let outcome = Outcome::Applied {
        valid: &valid,
        desired: &desired,
        deployment: applied.deployment.as_ref(),
        database: &database,
        azure: &azure,
    };
    // Failures are announced when they change what status says, not on every retry.
    if write_status(ctx, binding, &outcome).await? {
        notes.failures(&database, &azure);
    }
    notes.publish(ctx, binding).await;
    database?;
    if let Some(err) = azure.into_errors().next() {
        return Err(err.into());
    }
    Ok(Action::requeue(ctx.resync))
}

/// The binding's record, saved (empty) before anything else is written about a new binding; one
/// reconciled by an operator that kept none is made from what its spec names.
async fn load_record(ctx: &Context, binding: &PostgresMcpBinding) -> Result<Record, Error> {
    let mut record = Record::load(binding);
    if record.is_legacy() {
        database::adopt_legacy(binding, &mut record);
        azure::adopt_legacy(ctx, binding, &mut record).await?;
    }
    if record.is_new() {
        record.save(ctx).await?;
    }
    Ok(record)
}

/// A reconcile that ends early: status says why (`Stalled` when only the user can fix it),
/// with a Warning Event when that is news.
async fn stop(
    ctx: &Context,
    binding: &PostgresMcpBinding,
    reason: &'static str,
    message: String,
    needs_user: bool,
) -> Result<(), Error> {
    let outcome = if needs_user {
        Outcome::Stalled {
            reason,
            message: message.clone(),
        }
    } else {
        Outcome::Failed {
            reason,
            message: message.clone(),
        }
    };
    if write_status(ctx, binding, &outcome).await? {
        let mut notes = Notes::default();
        notes.warning(reason, message);
        notes.publish(ctx, binding).await;
    }
    Ok(())
}

/// The Events of one reconcile, published together at its end ([`Notes::publish`]).
#[derive(Debug, Default)]
struct Notes(Vec<(EventType, &'static str, String, Option<ObjectReference>)>);

impl Notes {
    fn normal(&mut self, reason: &'static str, note: String) {
        self.0.push((EventType::Normal, reason, note, None));
    }

    fn warning(&mut self, reason: &'static str, note: String) {
        self.0.push((EventType::Warning, reason, note, None));
    }

    /// One Event for every child changed in this pass ("created ServiceAccount ns/a, ConfigMap
    /// ns/b, …"): a new binding costs the apiserver one write here, not one per child.
    fn children(&mut self, changes: &[(apply::Change, ObjectReference)]) {
        let Some(((first, object), rest)) = changes.split_first() else {
            return;
        };
        let reason = if rest.iter().all(|(change, _)| change == first) {
            match first {
                apply::Change::Created => "Created",
                apply::Change::Updated => "Updated",
                apply::Change::Deleted => "Deleted",
            }
        } else {
            "Applied"
        };
        let note = changes
            .iter()
            .map(|(change, object)| format!("{} {}", change.verb(), apply::describe(object)))
            .collect::<Vec<_>>()
            .join(", ");
        let related = rest.is_empty().then(|| object.clone());
        self.0.push((EventType::Normal, reason, note, related));
    }

    /// The grants made or repaired, the principal's and each caller class's, and memberships
    /// in class roles made or repaired.
    fn database(&mut self, database: &Result<database::Report, database::Error>) {
        let Ok(report) = database else {
            return;
        };
        let reason = |repaired: bool| {
            if repaired {
                "GrantsRepaired"
            } else {
                "Granted"
            }
        };
        if let Some(plan) = &report.changed {
            self.normal(reason(report.repaired), truncate(&plan.to_string(), 1000));
        }
        for class in &report.callers {
            if !class.membership.is_empty() {
                self.normal(
                    "Granted",
                    truncate(
                        &format!(
                            "caller class {}: made role {} a member of role {} that does not inherit it ({})",
                            class.name,
                            report.principal.name,
                            class.role,
                            class.membership.join("; ")
                        ),
                        1000,
                    ),
                );
            }
            if let Some(plan) = &class.changed {
                self.normal(
                    reason(class.repaired),
                    truncate(
                        &format!("caller class {} (role {}): {plan}", class.name, class.role),
                        1000,
                    ),
                );
            }
        }
    }

    /// Azure objects created, updated, and deleted because the binding no longer asks for them.
    fn azure(&mut self, azure: &azure::Report) {
        for ensured in azure.ensured() {
            let verb = match ensured.change {
                crate::azure::Change::Unchanged => continue,
                crate::azure::Change::Created => "Created",
                crate::azure::Change::Updated => "Updated",
            };
            self.normal(verb, format!("{} {}", verb.to_lowercase(), ensured.what));
        }
        for removal in azure.removed.iter().filter(|r| r.result.is_ok()) {
            self.normal("Deleted", format!("deleted {}", removal.what));
        }
    }

    /// A Warning for each step that failed.
    fn failures(
        &mut self,
        database: &Result<database::Report, database::Error>,
        azure: &azure::Report,
    ) {
        if let Err(err) = database {
            self.warning(err.reason(), err.to_string());
        }
        for err in azure.errors() {
            self.warning(err.reason(), err.to_string());
        }
    }

    async fn publish(self, ctx: &Context, binding: &PostgresMcpBinding) {
        for (type_, reason, note, related) in self.0 {
            ctx.event(binding, type_, reason, note, related).await;
        }
    }
}

/// At most `max` bytes of `text`, cut at a character boundary.
fn truncate(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

async fn cleanup_binding(binding: &PostgresMcpBinding, ctx: &Context) -> Result<Action, Error> {
    if let Err(err) = cleanup::cleanup(ctx, binding).await {
        stop(ctx, binding, "CleanupFailed", err.to_string(), false).await?;
        return Err(err.into());
    }
    Ok(Action::await_change())
}

async fn write_status(
    ctx: &Context,
    binding: &PostgresMcpBinding,
    outcome: &Outcome<'_>,
) -> Result<bool, Error> {
    status::update(ctx, binding, outcome)
        .await
        .map_err(|source| Error::Status {
            binding: key(binding),
            source,
        })
}

/// Retry delay after a failed reconcile: exponential from 1s to 5 minutes, with ±20% jitter so
/// bindings that failed together do not retry together. A failure at another stage than the
/// last one (ARM answers again, now PostgreSQL is down) is progress: the delay starts over, so a
/// long outage of one service does not delay the recovery from the next.
pub fn error_policy(binding: Arc<PostgresMcpBinding>, error: &Error, ctx: Arc<Context>) -> Action {
    let stage = error.stage();
    let failures = ctx
        .failures
        .lock()
        .map(|mut failures| {
            let entry = failures
                .entry(key(&binding))
                .or_insert_with(|| (stage.clone(), 0));
            if entry.0 != stage {
                *entry = (stage, 0);
            }
            entry.1 = entry.1.saturating_add(1);
            entry.1
        })
        .unwrap_or(1);
    let delay = backoff(failures, jitter_source());
    tracing::warn!(
        binding = %key(&binding),
        error = %error,
        category = error.metric_label(),
        retry_in_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
        "reconcile failed"
    );
    Action::requeue(delay)
}

/// `failures` ≥ 1; `jitter` in 0..1000 picks a point in ±20%.
pub fn backoff(failures: u32, jitter: u32) -> Duration {
    let base = Duration::from_secs(1)
        .saturating_mul(2u32.saturating_pow(failures.saturating_sub(1).min(16)))
        .min(MAX_BACKOFF);
    let permille = 800 + (jitter % 1000) * 400 / 1000;
    base * permille / 1000
}

fn jitter_source() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_micros())
        .unwrap_or(0)
}

fn scoped<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// A watch of one child kind (our label only), feeding a cache and the controller.
fn watch_children<K>(
    client: &Client,
    namespace: Option<&str>,
) -> (
    Store<K>,
    impl Stream<Item = Result<K, watcher::Error>> + Send + 'static,
)
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
        + Clone
        + Debug
        + DeserializeOwned
        + Send
        + Sync
        + 'static,
{
    let (store, writer) = reflector::store();
    let stream = watcher(
        scoped::<K>(client, namespace),
        watcher::Config::default().labels(CHILD_SELECTOR),
    )
    .backoff(watch::backoff())
    .modify(drop_managed_fields)
    .reflect(writer)
    .touched_objects();
    (store, stream)
}

/// Cached objects without `metadata.managedFields`: nothing here reads them, and they are the
/// larger part of a Deployment (at 1,000 bindings, tens of MB of the operator's memory).
fn drop_managed_fields<K: Resource>(object: &mut K) {
    object.meta_mut().managed_fields = None;
}

/// How the controller runs.
#[derive(Debug, Clone)]
pub struct Options {
    /// Namespaces to watch; empty means all.
    pub namespaces: Vec<String>,
    pub defaults: Defaults,
    pub resync: Duration,
    pub concurrency: u16,
    /// Reporting instance in Events (the pod name).
    pub identity: String,
    /// See [`Context::postgres_tokens`].
    pub postgres_tokens: Option<pgmcp_identity::Tokens>,
    /// See [`Context::arm`].
    pub arm: Option<crate::azure::arm::ArmClient>,
    /// See [`Context::graph`].
    pub graph: Option<crate::azure::graph::GraphClient>,
}

/// Runs the controller (one per watched namespace, or one for all) until `shutdown`.
pub async fn run(
    client: Client,
    options: Options,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) {
    let scopes: Vec<Option<String>> = if options.namespaces.is_empty() {
        vec![None]
    } else {
        options.namespaces.iter().cloned().map(Some).collect()
    };
    let runs = scopes.into_iter().map(|namespace| {
        run_scope(
            client.clone(),
            namespace,
            options.clone(),
            metrics.clone(),
            shutdown.clone(),
        )
    });
    futures::future::join_all(runs).await;
}

async fn run_scope(
    client: Client,
    namespace: Option<String>,
    options: Options,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) {
    let ns = namespace.as_deref();
    let (service_accounts, sa_events) = watch_children::<ServiceAccount>(&client, ns);
    let (config_maps, cm_events) = watch_children::<ConfigMap>(&client, ns);
    let (services, svc_events) = watch_children::<Service>(&client, ns);
    let (deployments, deploy_events) = watch_children::<Deployment>(&client, ns);
    let (pod_disruption_budgets, pdb_events) = watch_children::<PodDisruptionBudget>(&client, ns);
    let (network_policies, np_events) = watch_children::<NetworkPolicy>(&client, ns);
    let reporter = Reporter {
        controller: pgmcp_crds::FIELD_MANAGER.to_owned(),
        instance: Some(options.identity.clone()),
    };
    let ctx = Arc::new(Context {
        reporter,
        client: client.clone(),
        defaults: options.defaults.clone(),
        stores: Stores {
            service_accounts,
            config_maps,
            services,
            deployments,
            pod_disruption_budgets,
            network_policies,
            ready: Arc::default(),
        },
        metrics,
        resync: options.resync,
        postgres_tokens: options.postgres_tokens.clone(),
        arm: options.arm.clone(),
        graph: options.graph.clone(),
        admin_pool: crate::database::pool::Pool::new(
            crate::database::pool::IDLE_PER_KEY,
            crate::database::pool::IDLE_TIMEOUT,
        ),
        failures: Mutex::default(),
    });
    tracing::info!(namespace = ns.unwrap_or("<all>"), "controller started");
    let (bindings, writer) = reflector::store();
    let binding_events = watcher(
        scoped::<PostgresMcpBinding>(&client, ns),
        watcher::Config::default().any_semantic(),
    )
    .backoff(watch::backoff())
    .modify(drop_managed_fields)
    .reflect(writer)
    .applied_objects()
    // Our own status writes change nothing to reconcile: only spec (generation, which
    // deletion also bumps), finalizers, labels and annotations trigger one. Children's
    // changes and the resync still do.
    .predicate_filter(
        predicates::generation
            .combine(predicates::finalizers)
            .combine(predicates::labels)
            .combine(predicates::annotations),
        PredicateConfig::default(),
    );
    Controller::for_stream(binding_events, bindings)
        .owns_stream(sa_events)
        .owns_stream(cm_events)
        .owns_stream(svc_events)
        .owns_stream(deploy_events)
        .owns_stream(pdb_events)
        .owns_stream(np_events)
        .trigger_backoff(watch::NoSharedDelay)
        .with_config(ControllerConfig::default().concurrency(options.concurrency))
        .graceful_shutdown_on(async move { shutdown.cancelled().await })
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            // Reconcile errors are logged by error_policy; what arrives here are scheduler
            // messages (an object vanished before its reconcile, a watch error).
            if let Err(err) = result {
                tracing::debug!(error = %err, "controller event");
            }
        })
        .await;
    tracing::info!(namespace = ns.unwrap_or("<all>"), "controller stopped");
}

#[cfg(test)]
pub(crate) mod tests {
    use pgmcp_crds::v1alpha1::PostgresMcpBinding;

    use super::*;

    /// An example from manifests/examples/, as the apiserver would hand it to us.
    pub fn binding(file: &str) -> PostgresMcpBinding {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../manifests/examples")
            .join(file);
        let text = std::fs::read_to_string(path).unwrap();
        let mut binding: PostgresMcpBinding = serde_saphyr::from_str(&text).unwrap();
        binding.metadata.namespace = Some("agents".to_owned());
        binding.metadata.uid = Some("0f7c1a9e-0000-4000-8000-000000000001".to_owned());
        binding.metadata.generation = Some(1);
        binding
    }

    #[tokio::test]
    async fn every_reconcile_waiting_for_the_caches_wakes_when_they_are_ready() {
        use kube::runtime::reflector::store::Writer;
        use kube::runtime::watcher::Event;

        fn pair<K>() -> (Writer<K>, Store<K>)
        where
            K: kube::Resource<DynamicType = ()> + Clone + 'static,
        {
            let writer = Writer::default();
            let store = writer.as_reader();
            (writer, store)
        }
        let (mut sa, service_accounts) = pair::<ServiceAccount>();
        let (mut cm, config_maps) = pair::<ConfigMap>();
        let (mut svc, services) = pair::<Service>();
        let (mut deploy, deployments) = pair::<Deployment>();
        let (mut pdb, pod_disruption_budgets) = pair::<PodDisruptionBudget>();
        let (mut np, network_policies) = pair::<NetworkPolicy>();
        let stores = Stores {
            service_accounts,
            config_maps,
            services,
            deployments,
            pod_disruption_budgets,
            network_policies,
            ready: Arc::default(),
        };
        // Four reconciles (the default concurrency) wait before any cache has listed.
        let waiting: Vec<_> = (0..4)
            .map(|_| {
                let stores = stores.clone();
                tokio::spawn(async move { stores.wait_until_ready().await })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(50)).await;
        sa.apply_watcher_event(&Event::InitDone);
        cm.apply_watcher_event(&Event::InitDone);
        svc.apply_watcher_event(&Event::InitDone);
        deploy.apply_watcher_event(&Event::InitDone);
        pdb.apply_watcher_event(&Event::InitDone);
        np.apply_watcher_event(&Event::InitDone);
        for task in waiting {
            tokio::time::timeout(Duration::from_secs(5), task)
                .await
                .expect("every waiter wakes")
                .unwrap();
        }
    }

    #[test]
    fn backoff_doubles_to_five_minutes_with_bounded_jitter() {
        assert_eq!(backoff(1, 500), Duration::from_secs(1));
        assert_eq!(backoff(2, 500), Duration::from_secs(2));
        assert_eq!(backoff(4, 500), Duration::from_secs(8));
        assert_eq!(backoff(30, 500), MAX_BACKOFF);
        assert_eq!(backoff(3, 0), Duration::from_millis(3200));
        assert_eq!(backoff(3, 999), Duration::from_millis(4796));
    }
}
