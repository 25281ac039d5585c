//! Cleanup: what the finalizer runs before a binding goes away. Children inside the cluster
//! carry owner references and are removed by Kubernetes garbage collection; this removes the
//! state outside it, in order: the Foundry connection (agents stop calling first), then the
//! database principal and grants, then the federated credential (the identity goes last).
//!
//! Each step tolerates state that is already gone. A failing step is reported in the binding's
//! conditions and retried with backoff; the binding stays until cleanup succeeds.

use kube::ResourceExt as _;
use pgmcp_crds::v1alpha1::PostgresMcpBinding;

/// External state a binding can own, in the order it is removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum External {
    FoundryConnection,
    Database,
    FederatedCredential,
}

/// The removal order.
pub const ORDER: [External; 3] = [
    External::FoundryConnection,
    External::Database,
    External::FederatedCredential,
];

/// A step that could not remove its state (transient: retried with backoff).
#[derive(Debug, thiserror::Error)]
#[error("failed to remove the {step:?} of binding {binding}: {message}")]
pub struct Error {
    pub step: External,
    pub binding: String,
    pub message: String,
}

/// What a step did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Removal {
    /// The binding never had this state (not requested, or not managed by this version).
    NothingManaged,
}

impl External {
    /// Whether the binding asked for this state at all.
    pub fn requested(self, binding: &PostgresMcpBinding) -> bool {
        let spec = &binding.spec;
        match self {
            External::FoundryConnection => spec.foundry.is_some(),
            External::Database => true,
            External::FederatedCredential => spec
                .identity
                .entra
                .as_ref()
                .is_some_and(|e| e.federated_credential.is_some()),
        }
    }

    async fn remove(self, binding: &PostgresMcpBinding) -> Result<Removal, Error> {
        // This operator version creates none of this state, so there is nothing to remove;
        // the database and Azure steps fill these in.
        let _ = binding;
        Ok(Removal::NothingManaged)
    }
}

/// Runs every step in [`ORDER`]; stops at the first failure.
pub async fn cleanup(binding: &PostgresMcpBinding) -> Result<(), Error> {
    for step in ORDER {
        let removal = step.remove(binding).await?;
        tracing::info!(
            binding = %format!("{}/{}", binding.namespace().unwrap_or_default(), binding.name_any()),
            step = ?step,
            requested = step.requested(binding),
            removal = ?removal,
            "cleanup step done"
        );
    }
    Ok(())
}
