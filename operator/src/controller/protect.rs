//! The in-use finalizer on administrator Secrets (`pgmcp.dev/secret-in-use`), as Kubernetes
//! protects a PersistentVolumeClaim a pod uses.
//!
//! Cleanup needs the administrator's credentials to drop the role. When a namespace is deleted,
//! its bindings and their admin Secret are deleted at the same time; without protection the
//! Secret is gone before the binding's finalizer runs, the role can never be dropped and the
//! namespace never finishes. So a binding puts the finalizer on the Secret it names before it
//! creates anything, and the finalizer comes off only when no binding of the namespace names the
//! Secret any more (its last user's cleanup is done, or every user moved to another Secret). A
//! Secret deleted meanwhile stays readable, marked for deletion, until then.

use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt as _;
use kube::api::{Api, ListParams, Patch, PatchParams};
use pgmcp_crds::SECRET_IN_USE_FINALIZER;
use pgmcp_crds::v1alpha1::PostgresMcpBinding;
use serde_json::json;

use super::Context;
use super::record::{self, Record};

/// Changing a Secret's finalizers, or reading who still needs it, failed (transient).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "failed to {action} the finalizer {SECRET_IN_USE_FINALIZER} of secret {namespace}/{name}: {source}"
    )]
    Secret {
        action: &'static str,
        namespace: String,
        name: String,
        #[source]
        source: Box<kube::Error>,
    },
    #[error("failed to list the bindings of namespace {namespace}: {source}")]
    List {
        namespace: String,
        #[source]
        source: Box<kube::Error>,
    },
    #[error(transparent)]
    Record(#[from] record::Error),
}

/// The admin Secret the binding names, if it names one.
fn wanted(binding: &PostgresMcpBinding) -> Option<&str> {
    binding
        .spec
        .postgres
        .admin
        .password_secret_ref
        .as_ref()
        .map(|r| r.name.as_str())
}

/// Puts the finalizer on `secret` (the Secret the binding names, as fetch read it) and records
/// it; releases a Secret the binding named before. A Secret already being deleted cannot take a
/// new finalizer; it is recorded all the same, so cleanup uses it while it lasts.
pub async fn protect(
    ctx: &Context,
    binding: &PostgresMcpBinding,
    secret: Option<&Secret>,
    record: &mut Record,
) -> Result<(), Error> {
    let namespace = binding.namespace().unwrap_or_default();
    if let Some(secret) = secret {
        change_finalizers(ctx, &namespace, secret.clone(), Change::Add).await?;
    }
    let name = wanted(binding).map(str::to_owned);
    let before = record.get().admin_secret.clone();
    if before != name {
        record.get_mut().admin_secret = name.clone();
        record.save(ctx).await?;
        if let Some(old) = before {
            release_if_unused(ctx, binding, &old).await?;
        }
    }
    Ok(())
}

/// The cleanup's last step: the binding no longer needs its admin Secret.
pub async fn release(
    ctx: &Context,
    binding: &PostgresMcpBinding,
    record: &mut Record,
) -> Result<(), Error> {
    let name = if record.is_legacy() {
        wanted(binding).map(str::to_owned)
    } else {
        record.get().admin_secret.clone()
    };
    if let Some(name) = name {
        release_if_unused(ctx, binding, &name).await?;
    }
    if record.get().admin_secret.is_some() {
        record.get_mut().admin_secret = None;
        record.save(ctx).await?;
    }
    Ok(())
}

/// Whether a binding that names an admin Secret may still need it: always, unless it is being
/// deleted and its cleanup has already removed its role. (Bindings deleted together, as in a
/// namespace deletion, would otherwise each see the other and none take the finalizer off.)
fn needs(binding: &PostgresMcpBinding) -> bool {
    let deleting = binding.metadata.deletion_timestamp.is_some();
    let role_gone = binding
        .status
        .as_ref()
        .and_then(|s| s.inventory.as_ref())
        .is_some_and(|inventory| inventory.role.is_none());
    !(deleting && role_gone)
}

/// Takes the finalizer off Secret `name` unless another binding of the namespace names it.
/// Bindings are listed from the apiserver, not a cache: one created a moment ago counts.
async fn release_if_unused(
    ctx: &Context,
    binding: &PostgresMcpBinding,
    name: &str,
) -> Result<(), Error> {
    let namespace = binding.namespace().unwrap_or_default();
    let bindings: Api<PostgresMcpBinding> = Api::namespaced(ctx.client.clone(), &namespace);
    let others = bindings
        .list(&ListParams::default())
        .await
        .map_err(|source| Error::List {
            namespace: namespace.clone(),
            source: Box::new(source),
        })?;
    let user = others
        .items
        .iter()
        .find(|other| other.uid() != binding.uid() && wanted(other) == Some(name) && needs(other));
    if let Some(user) = user {
        tracing::info!(secret = %format!("{namespace}/{name}"), binding = %user.name_any(), "admin secret still needed by another binding; its finalizer stays");
        return Ok(());
    }
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &namespace);
    let secret = secrets
        .get_opt(name)
        .await
        .map_err(|source| Error::Secret {
            action: "read",
            namespace: namespace.clone(),
            name: name.to_owned(),
            source: Box::new(source),
        })?;
    let Some(secret) = secret else {
        return Ok(());
    };
    change_finalizers(ctx, &namespace, secret, Change::Remove).await
}

/// What to do with the in-use finalizer.
#[derive(Clone, Copy, Debug)]
enum Change {
    Add,
    Remove,
}

impl Change {
    fn verb(self) -> &'static str {
        match self {
            Change::Add => "add",
            Change::Remove => "remove",
        }
    }

    /// The Secret's finalizers after the change, or `None` when there is nothing to do (already
    /// there, already gone, or a Secret being deleted, which cannot take a new finalizer).
    fn apply(self, secret: &Secret) -> Option<Vec<String>> {
        let present = secret
            .finalizers()
            .iter()
            .any(|f| f == SECRET_IN_USE_FINALIZER);
        match self {
            Change::Add if present || secret.metadata.deletion_timestamp.is_some() => None,
            Change::Add => {
                let mut finalizers = secret.finalizers().to_vec();
                finalizers.push(SECRET_IN_USE_FINALIZER.to_owned());
                Some(finalizers)
            }
            Change::Remove if !present => None,
            Change::Remove => Some(
                secret
                    .finalizers()
                    .iter()
                    .filter(|f| *f != SECRET_IN_USE_FINALIZER)
                    .cloned()
                    .collect(),
            ),
        }
    }
}

/// How many times a finalizer change is re-read and retried after a conflict. Bindings created
/// together all add the finalizer to their shared Secret at once; every round at least one of
/// them succeeds, and the others then find it there.
const CONFLICT_ATTEMPTS: usize = 5;

/// Sets the Secret's finalizers, on the condition that it has not changed since it was read
/// (`resourceVersion` in a merge patch is a precondition), so another writer's finalizer is never
/// overwritten. On a conflict the Secret is read again and the change computed afresh, as
/// client-go's `RetryOnConflict` does.
async fn change_finalizers(
    ctx: &Context,
    namespace: &str,
    mut secret: Secret,
    change: Change,
) -> Result<(), Error> {
    let name = secret.name_any();
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), namespace);
    let error = |action: &'static str, source: kube::Error| Error::Secret {
        action,
        namespace: namespace.to_owned(),
        name: name.clone(),
        source: Box::new(source),
    };
    let mut attempt = 1;
    loop {
        let Some(finalizers) = change.apply(&secret) else {
            return Ok(());
        };
        let patch = json!({
            "metadata": {
                "resourceVersion": secret.resource_version(),
                "finalizers": finalizers,
            }
        });
        let result = api
            .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await;
        let conflict = matches!(&result, Err(kube::Error::Api(status)) if status.code == 409);
        if conflict && attempt < CONFLICT_ATTEMPTS {
            tracing::debug!(secret = %format!("{namespace}/{name}"), attempt, "admin secret changed meanwhile; reading it again");
            attempt += 1;
            match api.get_opt(&name).await.map_err(|e| error("read", e))? {
                Some(fresh) => secret = fresh,
                None => return Ok(()),
            }
            continue;
        }
        ctx.metrics.write("Secret", "patch", result.is_ok());
        result.map_err(|e| error(change.verb(), e))?;
        tracing::info!(secret = %format!("{namespace}/{name}"), action = change.verb(), finalizer = SECRET_IN_USE_FINALIZER, "admin secret finalizer changed");
        return Ok(());
    }
}
