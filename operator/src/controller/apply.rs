//! Apply: makes the cluster match [`Desired`] with server-side apply (field manager
//! `pgmcp-operator`, forced), and removes optional children that are no longer wanted.
//!
//! A child is only patched when it differs: each carries the hash of what we last applied, and
//! the live object (from the controller's watch cache, not a GET) must still contain every field
//! we set. A no-op reconcile therefore makes no write call at all.

use std::fmt::Debug;

use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::ObjectReference;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Resource, ResourceExt as _};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use sha2::{Digest as _, Sha256};

use super::Context;
use super::build::Desired;

/// Annotation on every child: hash of the object as the operator last applied it.
pub const APPLIED_HASH_ANNOTATION: &str = "pgmcp.dev/applied-hash";

/// What happened to one child.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Created,
    Updated,
    Deleted,
}

impl Change {
    pub fn verb(self) -> &'static str {
        match self {
            Change::Created => "created",
            Change::Updated => "updated",
            Change::Deleted => "deleted",
        }
    }
}

/// The result of applying a binding's children.
#[derive(Debug, Clone, Default)]
pub struct Applied {
    /// The Deployment as the apiserver (or the watch cache) last showed it, with its status.
    pub deployment: Option<Deployment>,
    /// Every child that changed.
    pub changes: Vec<(Change, ObjectReference)>,
}

/// A write the apiserver refused or could not make.
#[derive(Debug, thiserror::Error)]
#[error("failed to {verb} {kind} {namespace}/{name}: {source}")]
pub struct Error {
    verb: &'static str,
    kind: String,
    namespace: String,
    name: String,
    #[source]
    source: kube::Error,
}

impl Error {
    /// Condition reason (bounded).
    pub fn reason(&self) -> &'static str {
        match &self.source {
            kube::Error::Api(status) if status.code == 403 => "Forbidden",
            kube::Error::Api(status) if status.code == 422 => "Rejected",
            _ => "ApplyFailed",
        }
    }

    /// True when retrying cannot help until someone changes RBAC or the binding.
    pub fn needs_user(&self) -> bool {
        self.reason() != "ApplyFailed"
    }
}

pub async fn apply(
    ctx: &Context,
    binding: &pgmcp_crds::v1alpha1::PostgresMcpBinding,
    desired: &Desired,
) -> Result<Applied, Error> {
    let namespace = binding.namespace().unwrap_or_default();
    let owner = binding.uid().unwrap_or_default();
    let stores = &ctx.stores;
    let mut applied = Applied::default();
    // Order matters for the pods: their ServiceAccount and ConfigMap exist first.
    ensure(
        ctx,
        &stores.service_accounts,
        &desired.service_account,
        &mut applied,
    )
    .await?;
    ensure(ctx, &stores.config_maps, &desired.config_map, &mut applied).await?;
    ensure(ctx, &stores.services, &desired.service, &mut applied).await?;
    applied.deployment =
        Some(ensure(ctx, &stores.deployments, &desired.deployment, &mut applied).await?);
    let name = desired.deployment.name_any();
    match &desired.pod_disruption_budget {
        Some(pdb) => {
            ensure(ctx, &stores.pod_disruption_budgets, pdb, &mut applied).await?;
        }
        None => {
            ensure_absent(
                ctx,
                &stores.pod_disruption_budgets,
                &namespace,
                &name,
                &owner,
                &mut applied,
            )
            .await?
        }
    }
    match &desired.network_policy {
        Some(policy) => {
            ensure(ctx, &stores.network_policies, policy, &mut applied).await?;
        }
        None => {
            ensure_absent(
                ctx,
                &stores.network_policies,
                &namespace,
                &name,
                &owner,
                &mut applied,
            )
            .await?
        }
    }
    Ok(applied)
}

/// "Kind namespace/name" of a child, for Events and logs.
pub fn describe(object: &ObjectReference) -> String {
    format!(
        "{} {}/{}",
        object.kind.as_deref().unwrap_or_default(),
        object.namespace.as_deref().unwrap_or_default(),
        object.name.as_deref().unwrap_or_default()
    )
}

/// Applies `desired` unless the live object already matches; returns the live object.
async fn ensure<K>(
    ctx: &Context,
    store: &Store<K>,
    desired: &K,
    applied: &mut Applied,
) -> Result<K, Error>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
        + Clone
        + Debug
        + Serialize
        + DeserializeOwned,
{
    let mut desired = desired.clone();
    let hash = content_hash(&desired);
    desired
        .annotations_mut()
        .insert(APPLIED_HASH_ANNOTATION.to_owned(), hash.clone());
    let name = desired.name_any();
    let namespace = desired.namespace().unwrap_or_default();
    let live = store.get(&ObjectRef::new(&name).within(&namespace));
    if let Some(live) = &live
        && live.annotations().get(APPLIED_HASH_ANNOTATION) == Some(&hash)
        && contains(
            &serde_json::to_value(live.as_ref()).unwrap_or_default(),
            &serde_json::to_value(&desired).unwrap_or_default(),
        )
    {
        return Ok(live.as_ref().clone());
    }
    let api: Api<K> = Api::namespaced(ctx.client.clone(), &namespace);
    let result = api
        .patch(
            &name,
            &PatchParams::apply(pgmcp_crds::FIELD_MANAGER).force(),
            &Patch::Apply(&desired),
        )
        .await;
    ctx.metrics
        .write(K::kind(&()).as_ref(), "apply", result.is_ok());
    let object = result.map_err(|source| Error {
        verb: "apply",
        kind: K::kind(&()).into_owned(),
        namespace: namespace.clone(),
        name: name.clone(),
        source,
    })?;
    let change = if live.is_some() {
        Change::Updated
    } else {
        Change::Created
    };
    applied.changes.push((change, object.object_ref(&())));
    Ok(object)
}

/// Deletes an optional child the binding no longer wants, if this binding owns it.
async fn ensure_absent<K>(
    ctx: &Context,
    store: &Store<K>,
    namespace: &str,
    name: &str,
    owner_uid: &str,
    applied: &mut Applied,
) -> Result<(), Error>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
        + Clone
        + Debug
        + DeserializeOwned,
{
    let Some(live) = store.get(&ObjectRef::new(name).within(namespace)) else {
        return Ok(());
    };
    if !live.owner_references().iter().any(|o| o.uid == owner_uid) {
        return Ok(());
    }
    let api: Api<K> = Api::namespaced(ctx.client.clone(), namespace);
    let result = api.delete(name, &DeleteParams::background()).await;
    ctx.metrics
        .write(K::kind(&()).as_ref(), "delete", result.is_ok());
    match result {
        Ok(_) => {}
        Err(kube::Error::Api(status)) if status.code == 404 => return Ok(()),
        Err(source) => {
            return Err(Error {
                verb: "delete",
                kind: K::kind(&()).into_owned(),
                namespace: namespace.to_owned(),
                name: name.to_owned(),
                source,
            });
        }
    }
    applied
        .changes
        .push((Change::Deleted, live.object_ref(&())));
    Ok(())
}

/// Hash of an object's serialized form (field order is fixed by the types).
fn content_hash<K: Serialize>(object: &K) -> String {
    let bytes = serde_json::to_vec(object).unwrap_or_default();
    Sha256::digest(&bytes)
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// True when every field set in `wanted` has the same value in `live`. Fields only in `live`
/// (defaults filled in by the apiserver, status, fields of other managers) do not matter.
pub fn contains(live: &Value, wanted: &Value) -> bool {
    match (live, wanted) {
        (Value::Object(live), Value::Object(wanted)) => wanted
            .iter()
            .all(|(key, w)| live.get(key).is_some_and(|l| contains(l, w))),
        (Value::Array(live), Value::Array(wanted)) => {
            live.len() == wanted.len() && live.iter().zip(wanted).all(|(l, w)| contains(l, w))
        }
        (live, wanted) => live == wanted,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn live_objects_with_defaults_still_contain_what_we_set() {
        let wanted = json!({"spec": {"replicas": 2, "ports": [{"port": 8080}]}});
        let live = json!({"spec": {"replicas": 2, "ports": [{"port": 8080, "protocol": "TCP"}], "strategy": {}}, "status": {}});
        assert!(contains(&live, &wanted));
    }

    #[test]
    fn an_edited_or_removed_field_is_a_difference() {
        let wanted = json!({"spec": {"replicas": 2, "ports": [{"port": 8080}]}});
        assert!(!contains(
            &json!({"spec": {"replicas": 5, "ports": [{"port": 8080}]}}),
            &wanted
        ));
        assert!(!contains(
            &json!({"spec": {"ports": [{"port": 8080}]}}),
            &wanted
        ));
        assert!(!contains(
            &json!({"spec": {"replicas": 2, "ports": []}}),
            &wanted
        ));
        assert!(!contains(
            &json!({"spec": {"replicas": 2, "ports": [{"port": 8080}, {"port": 9090}]}}),
            &wanted
        ));
    }

    #[test]
    fn the_applied_hash_follows_content() {
        let a = json!({"a": 1});
        assert_eq!(content_hash(&a), content_hash(&json!({"a": 1})));
        assert_ne!(content_hash(&a), content_hash(&json!({"a": 2})));
    }
}
