//! Fetch: reads the objects a binding refers to. Reads only, no writes; a missing object is
//! not an error here (validate decides what it means).

use k8s_openapi::api::core::v1::Secret;
use kube::{Api, Client};
use pgmcp_crds::v1alpha1::PostgresMcpBinding;

/// What a binding refers to, as found in the apiserver.
#[derive(Debug, Clone, Default)]
pub struct Inputs {
    /// The administrator's Secret (`spec.postgres.admin.passwordSecretRef`), if it exists.
    pub admin_secret: Option<Secret>,
}

/// Reading from the apiserver failed (transient: retried with backoff).
#[derive(Debug, thiserror::Error)]
#[error("failed to read secret {namespace}/{name}: {source}")]
pub struct Error {
    namespace: String,
    name: String,
    #[source]
    source: kube::Error,
}

pub async fn fetch(client: &Client, binding: &PostgresMcpBinding) -> Result<Inputs, Error> {
    let namespace = binding.metadata.namespace.clone().unwrap_or_default();
    let mut inputs = Inputs::default();
    if let Some(reference) = &binding.spec.postgres.admin.password_secret_ref {
        let secrets: Api<Secret> = Api::namespaced(client.clone(), &namespace);
        inputs.admin_secret = secrets
            .get_opt(&reference.name)
            .await
            .map_err(|source| Error {
                namespace: namespace.clone(),
                name: reference.name.clone(),
                source,
            })?;
    }
    Ok(inputs)
}
