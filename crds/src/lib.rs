//! The pgmcp API: the `PostgresMcpBinding` custom resource and the names every component shares.
//!
//! This crate is the single import surface for the operator and the tests. It holds types and
//! constants only: no tokio, no `kube::Client`, no I/O. The Kubernetes types sit behind the `crd`
//! feature (on by default) so the MCP server can use the shared constants without depending on
//! kube.

pub mod config;

#[cfg(feature = "crd")]
pub mod v1alpha1;

#[cfg(feature = "crd")]
pub mod reference;

#[cfg(feature = "crd")]
mod rules;

/// API group of every pgmcp resource.
pub const GROUP: &str = "pgmcp.dev";
/// The served and stored API version.
pub const VERSION: &str = "v1alpha1";
/// Kind of the binding resource.
pub const KIND: &str = "PostgresMcpBinding";
/// Name of the CustomResourceDefinition object (`<plural>.<group>`).
pub const CRD_NAME: &str = "postgresmcpbindings.pgmcp.dev";
/// Field manager for every server-side apply the operator makes.
pub const FIELD_MANAGER: &str = "pgmcp-operator";
/// Finalizer guarding the cleanup of state outside the apiserver (grants, ARM resources).
pub const FINALIZER: &str = "pgmcp.dev/cleanup";
/// Finalizer on an administrator Secret (`postgres.admin.passwordSecretRef`) while a binding
/// may still need it to clean up, as Kubernetes protects a PersistentVolumeClaim in use: a
/// namespace deletion removes the Secret only after the bindings that name it are gone.
pub const SECRET_IN_USE_FINALIZER: &str = "pgmcp.dev/secret-in-use";

/// Well-known label keys put on every object the operator creates.
pub mod labels {
    pub const NAME: &str = "app.kubernetes.io/name";
    pub const INSTANCE: &str = "app.kubernetes.io/instance";
    pub const COMPONENT: &str = "app.kubernetes.io/component";
    pub const MANAGED_BY: &str = "app.kubernetes.io/managed-by";
    pub const PART_OF: &str = "app.kubernetes.io/part-of";
}

/// Names defined by Azure workload identity (azure-workload-identity webhook).
pub mod workload_identity {
    /// ServiceAccount annotation: client id of the user-assigned managed identity.
    pub const CLIENT_ID_ANNOTATION: &str = "azure.workload.identity/client-id";
    /// ServiceAccount annotation: Entra tenant of that identity.
    pub const TENANT_ID_ANNOTATION: &str = "azure.workload.identity/tenant-id";
    /// Pod label that makes the webhook inject the federated token and `AZURE_*` env.
    pub const USE_LABEL: &str = "azure.workload.identity/use";
    /// Audience of the projected ServiceAccount token exchanged with Entra.
    pub const TOKEN_AUDIENCE: &str = "api://AzureADTokenExchange";
}

/// Condition types reported in `status.conditions` (kstatus-compatible).
pub mod conditions {
    /// Everything below is true and the server answers.
    pub const READY: &str = "Ready";
    /// The operator is working towards the desired state.
    pub const RECONCILING: &str = "Reconciling";
    /// Progress needs a change from the user (invalid spec, missing secret, denied permission).
    pub const STALLED: &str = "Stalled";
    /// ServiceAccount and federated credential are in place.
    pub const IDENTITY_READY: &str = "IdentityReady";
    /// The database principal exists and its grants match the catalog.
    pub const DATABASE_READY: &str = "DatabaseReady";
    /// The principal was probed and can only read what the binding grants: reason `ReadOnly`,
    /// else `CanWrite` (a way to write or act on the server) or `ReadsBeyondGrants` (a way to
    /// read more than the grants, such as a SECURITY DEFINER function).
    pub const READ_ONLY_VERIFIED: &str = "ReadOnlyVerified";
    /// The MCP server Deployment is available.
    pub const SERVER_AVAILABLE: &str = "ServerAvailable";
    /// The Azure AI Foundry project connection matches the spec.
    pub const FOUNDRY_CONNECTION_READY: &str = "FoundryConnectionReady";
}
