//! Cleanup: what the finalizer runs before a binding goes away. Children inside the cluster
//! carry owner references and are removed by Kubernetes garbage collection; this removes the
//! state outside it, in order: the Foundry connection (agents stop calling first), then the
//! database principal and grants, then the federated credential (the identity goes last).
//!
//! Each step tolerates state that is already gone. A failing step is reported in the binding's
//! conditions and retried with backoff; the binding stays until cleanup succeeds.

use kube::ResourceExt as _;
use pgmcp_crds::v1alpha1::{DeletionPolicy, PostgresMcpBinding};

use super::{Context, fetch, validate};

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
    /// Removed (or found already gone).
    Removed,
    /// Left in place: the binding's deletionPolicy is Orphan.
    Orphaned,
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

    async fn remove(self, ctx: &Context, binding: &PostgresMcpBinding) -> Result<Removal, Error> {
        let fail = |message: String| Error {
            step: self,
            binding: format!(
                "{}/{}",
                binding.namespace().unwrap_or_default(),
                binding.name_any()
            ),
            message,
        };
        match self {
            External::Database => {
                if binding.spec.access.deletion_policy == DeletionPolicy::Orphan {
                    return Ok(Removal::Orphaned);
                }
                let inputs = fetch::fetch(&ctx.client, binding)
                    .await
                    .map_err(|e| fail(e.to_string()))?;
                let valid = validate::validate(binding, &inputs).map_err(|e| {
                    fail(format!(
                        "{e}; restore it, or set spec.access.deletionPolicy: Orphan to keep the role"
                    ))
                })?;
                super::database::remove(ctx, &valid, inputs.admin_secret.as_ref())
                    .await
                    .map_err(|e| fail(e.to_string()))?;
                Ok(Removal::Removed)
            }
            External::FoundryConnection => match super::azure::remove_foundry(ctx, binding).await {
                Ok(true) => Ok(Removal::Removed),
                Ok(false) => Ok(Removal::Orphaned),
                Err(e) => Err(fail(e.to_string())),
            },
            External::FederatedCredential => {
                match super::azure::remove_federated_credential(ctx, binding).await {
                    Ok(true) => Ok(Removal::Removed),
                    Ok(false) => Ok(Removal::Orphaned),
                    Err(e) => Err(fail(e.to_string())),
                }
            }
        }
    }
}

/// Runs every step in [`ORDER`]; stops at the first failure.
pub async fn cleanup(ctx: &Context, binding: &PostgresMcpBinding) -> Result<(), Error> {
    for step in ORDER {
        if !step.requested(binding) {
            continue;
        }
        let removal = step.remove(ctx, binding).await?;
        tracing::info!(
            binding = %format!("{}/{}", binding.namespace().unwrap_or_default(), binding.name_any()),
            step = ?step,
            removal = ?removal,
            "cleanup step done"
        );
    }
    Ok(())
}
