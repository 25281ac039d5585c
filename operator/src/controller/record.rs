//! The binding's record of what exists outside the cluster because of it: `status.inventory`
//! (the role, each ARM resource, each Graph app role assignment, the admin Secret it protects).
//!
//! Steps write the record *before* they create something (once the service has answered a read,
//! so an unreachable service or a missing identity never leaves a record of nothing), and
//! complete it afterwards (the role's oid, the assignment's id). Convergence removes what is
//! recorded but no longer asked for, and the finalizer removes what is recorded: neither needs
//! the spec to be valid, or even to name the object any more.
//!
//! The record has a field manager of its own ([`MANAGER`]) on the status subresource, so the
//! status write of the conditions (`status.rs`) and the record never take fields from each
//! other. Every binding gets a record, empty at first, before this operator writes anything
//! else about it; so a status without one was written by an operator that kept no record
//! ([`Record::is_legacy`]), and what its spec names is taken to exist.

use kube::ResourceExt as _;
use kube::api::{Api, Patch, PatchParams};
use pgmcp_crds::v1alpha1::{Inventory, PostgresMcpBinding};
use serde_json::json;

use super::Context;

/// Field manager of `status.inventory`.
pub const MANAGER: &str = "pgmcp-operator-inventory";

/// Writing the record failed (transient: retried with backoff, and nothing is created until it
/// succeeds).
#[derive(Debug, thiserror::Error)]
#[error("failed to record what exists for binding {binding} in its status: {source}")]
pub struct Error {
    binding: String,
    #[source]
    source: kube::Error,
}

/// The inventory as this reconcile knows it, and as the apiserver last stored it.
#[derive(Debug, Clone)]
pub struct Record {
    namespace: String,
    name: String,
    current: Inventory,
    saved: Option<Inventory>,
    legacy: bool,
}

impl Record {
    /// The binding's record as stored.
    pub fn load(binding: &PostgresMcpBinding) -> Self {
        let status = binding.status.as_ref();
        let saved = status.and_then(|s| s.inventory.clone());
        Self {
            namespace: binding.namespace().unwrap_or_default(),
            name: binding.name_any(),
            current: saved.clone().unwrap_or_default(),
            // An operator reconciled it (observedGeneration) but wrote no record: one that
            // predates the record. A new binding has no status yet.
            legacy: saved.is_none() && status.is_some_and(|s| s.observed_generation.is_some()),
            saved,
        }
    }

    /// An operator that kept no record reconciled this binding: what exists must be taken from
    /// its spec.
    pub fn is_legacy(&self) -> bool {
        self.legacy
    }

    /// Nothing was ever saved: the record starts now.
    pub fn is_new(&self) -> bool {
        self.saved.is_none()
    }

    pub fn get(&self) -> &Inventory {
        &self.current
    }

    /// Changes are kept in memory until [`Record::save`].
    pub fn get_mut(&mut self) -> &mut Inventory {
        &mut self.current
    }

    /// Writes the record when it differs from what the apiserver holds.
    pub async fn save(&mut self, ctx: &Context) -> Result<(), Error> {
        if self.saved.as_ref() == Some(&self.current) {
            return Ok(());
        }
        let api: Api<PostgresMcpBinding> = Api::namespaced(ctx.client.clone(), &self.namespace);
        // The two lists are sent even when empty: an applied `inventory: {}` would be dropped by
        // server-side apply, and a status without the record reads as one from an operator that
        // kept none.
        let mut inventory = json!(self.current);
        for list in ["azureResources", "appRoleAssignments"] {
            if inventory.get(list).is_none() {
                inventory[list] = json!([]);
            }
        }
        let patch = json!({
            "apiVersion": format!("{}/{}", pgmcp_crds::GROUP, pgmcp_crds::VERSION),
            "kind": pgmcp_crds::KIND,
            "status": {"inventory": inventory},
        });
        let result = api
            .patch_status(
                &self.name,
                &PatchParams::apply(MANAGER).force(),
                &Patch::Apply(&patch),
            )
            .await;
        ctx.metrics
            .write(pgmcp_crds::KIND, "inventory", result.is_ok());
        result.map_err(|source| Error {
            binding: format!("{}/{}", self.namespace, self.name),
            source,
        })?;
        self.saved = Some(self.current.clone());
        self.legacy = false;
        Ok(())
    }
}
