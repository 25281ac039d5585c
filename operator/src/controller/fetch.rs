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
    /// The generated password Secret the binding owns (password mode), if it exists yet.
    pub password_secret: Option<Secret>,
    /// The Secret holding the OTLP export headers (`spec.server.telemetry.headersSecretRef`),
    /// if it exists. Read only to tell a missing one apart: its value reaches the server
    /// through the pod's environment, never through the operator.
    pub telemetry_headers_secret: Option<Secret>,
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
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &namespace);
    let get = |name: String| {
        let secrets = secrets.clone();
        let namespace = namespace.clone();
        async move {
            secrets.get_opt(&name).await.map_err(|source| Error {
                namespace,
                name,
                source,
            })
        }
    };
    let mut inputs = Inputs::default();
    if let Some(reference) = &binding.spec.postgres.admin.password_secret_ref {
        inputs.admin_secret = get(reference.name.clone()).await?;
    }
    if let Some(password) = &binding.spec.identity.password {
        let name = password.secret_name.clone().unwrap_or_else(|| {
            format!(
                "{}-postgres",
                binding.metadata.name.clone().unwrap_or_default()
            )
        });
        inputs.password_secret = get(name).await?;
    }
    let headers = binding
        .spec
        .server
        .telemetry
        .as_ref()
        .and_then(|t| t.headers_secret_ref.as_ref());
    if let Some(reference) = headers {
        inputs.telemetry_headers_secret = get(reference.name.clone()).await?;
    }
    Ok(inputs)
}
