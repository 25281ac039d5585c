//! Cleanup: what the finalizer runs before a binding goes away. Children inside the cluster
//! carry owner references and are removed by Kubernetes garbage collection; this removes what
//! the binding's record (`status.inventory`, [`super::record`]) says exists outside it, in
//! order: the Foundry connection (agents stop calling first), the app role assignment, the
//! database principal and grants, the federated credential (the identity goes last), and at the
//! end the binding's hold on its admin Secret.
//!
//! Nothing here validates the spec: a binding whose Secret, issuer or any other reference is
//! gone is still cleaned up from its record, with the admin credentials (the Secret it keeps
//! from deletion, [`super::protect`], or the operator's Entra token). Each step tolerates state
//! that is already gone and drops what it removed from the record at once, so a retry resumes
//! where it stopped. A failing step is reported in the binding's conditions and retried with
//! backoff; the binding stays until cleanup succeeds.

use kube::ResourceExt as _;
use pgmcp_crds::v1alpha1::PostgresMcpBinding;

use super::azure::Part;
use super::record::Record;
use super::{Context, azure, database, fetch, protect};

/// External state a binding can own, in the order it is removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum External {
    FoundryConnection,
    AppRole,
    Database,
    FederatedCredential,
    AdminSecret,
}

/// The removal order.
pub const ORDER: [External; 5] = [
    External::FoundryConnection,
    External::AppRole,
    External::Database,
    External::FederatedCredential,
    External::AdminSecret,
];

/// A step that could not remove its state (transient: retried with backoff).
#[derive(Debug, thiserror::Error)]
#[error("failed to remove the {step:?} of binding {binding}: {cause}")]
pub struct Error {
    pub step: External,
    pub binding: String,
    pub cause: StepError,
}

/// What stopped a step: the error of the module that does the work, shown as it is.
#[derive(Debug, thiserror::Error)]
pub enum StepError {
    /// Reading the record of a binding that kept none.
    #[error(transparent)]
    Record(Box<super::Error>),
    #[error(transparent)]
    Azure(#[from] azure::Error),
    #[error(transparent)]
    Fetch(#[from] fetch::Error),
    #[error(transparent)]
    Database(#[from] database::Error),
    #[error(transparent)]
    Protect(#[from] protect::Error),
}

/// Runs every step in [`ORDER`] against the binding's record; stops at the first failure.
pub async fn cleanup(ctx: &Context, binding: &PostgresMcpBinding) -> Result<(), Error> {
    let key = format!(
        "{}/{}",
        binding.namespace().unwrap_or_default(),
        binding.name_any()
    );
    let fail = |step: External| {
        let binding = key.clone();
        move |cause: StepError| Error {
            step,
            binding: binding.clone(),
            cause,
        }
    };
    // A binding written by an operator that kept no record: what the spec names is what exists.
    let mut record = super::load_record(ctx, binding)
        .await
        .map_err(|e| fail(External::FoundryConnection)(StepError::Record(Box::new(e))))?;
    for step in ORDER {
        let result = match step {
            External::FoundryConnection => azure::remove(ctx, &mut record, Part::FoundryConnection)
                .await
                .map_err(StepError::from),
            External::AppRole => azure::remove(ctx, &mut record, Part::AppRole)
                .await
                .map_err(StepError::from),
            External::Database => remove_database(ctx, binding, &mut record).await,
            External::FederatedCredential => {
                azure::remove(ctx, &mut record, Part::FederatedCredential)
                    .await
                    .map_err(StepError::from)
            }
            External::AdminSecret => protect::release(ctx, binding, &mut record)
                .await
                .map_err(StepError::from),
        };
        result.map_err(fail(step))?;
        tracing::info!(binding = %key, step = ?step, "cleanup step done");
    }
    Ok(())
}

async fn remove_database(
    ctx: &Context,
    binding: &PostgresMcpBinding,
    record: &mut Record,
) -> Result<(), StepError> {
    if record.get().role.is_none() {
        return Ok(());
    }
    let inputs = fetch::fetch(&ctx.client, binding).await?;
    database::remove(ctx, binding, record, inputs.admin_secret.as_ref()).await?;
    Ok(())
}
