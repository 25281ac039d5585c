//! The Azure resources a binding asks for, kept through Azure Resource Manager:
//! the federated identity credential that lets the server's ServiceAccount act as its managed
//! identity ([`fic`]) and the Azure AI Foundry project connection that points agents at the
//! server ([`foundry`]). [`arm`] is the client both use: the operator's own workload-identity
//! token, retries, long-running operations, ARM's error bodies, metrics.
//!
//! Optionally (`foundry.assignAppRole`), the Foundry project's managed identity is given the
//! server app's role through Microsoft Graph ([`app_role`] over the [`graph`] client); that
//! needs Graph application permissions for the operator. [`rest`] is what both clients share
//! (HTTP, token, error bodies, `Retry-After`, the retry loop); neither imports the other.
//!
//! Each resource is kept with GET → compare → PUT only when it differs, so a steady state costs
//! reads only; deletes treat "already gone" as done. Nothing here knows about Kubernetes objects:
//! the controller builds the `Desired` values and turns errors into conditions.

pub mod app_role;
pub mod arm;
pub mod fic;
pub mod foundry;
pub mod graph;
pub mod rest;

/// The public cloud's Resource Manager.
pub const DEFAULT_ARM_ENDPOINT: &str = "https://management.azure.com";
/// `Microsoft.ManagedIdentity` api-version for federated identity credentials.
pub const DEFAULT_FIC_API_VERSION: &str = "2023-01-31";
/// `Microsoft.CognitiveServices` api-version for Foundry project connections (the first that
/// knows the `RemoteTool` category and `ProjectManagedIdentity` auth type).
pub const DEFAULT_FOUNDRY_API_VERSION: &str = "2025-04-01-preview";

/// Where ARM is and which api-versions to speak.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AzureSettings {
    /// `https://management.azure.com`, or a sovereign cloud's (`https://management.usgovcloudapi.net`,
    /// `https://management.chinacloudapi.cn`); tests point it at the ARM fake.
    pub arm_endpoint: String,
    /// api-version of `…/federatedIdentityCredentials/{name}`.
    pub fic_api_version: String,
    /// api-version of `…/projects/{project}/connections/{name}`.
    pub foundry_api_version: String,
}

impl Default for AzureSettings {
    fn default() -> Self {
        Self {
            arm_endpoint: DEFAULT_ARM_ENDPOINT.to_owned(),
            fic_api_version: DEFAULT_FIC_API_VERSION.to_owned(),
            foundry_api_version: DEFAULT_FOUNDRY_API_VERSION.to_owned(),
        }
    }
}

/// An ARM resource the operator keeps ([`fic::Desired`], [`foundry::Desired`]): where it is,
/// what is written, and what in ARM's answer must match.
pub trait Resource {
    /// Its kind, for messages and metrics.
    const KIND: arm::ResourceKind;
    /// Its ARM id.
    fn id(&self) -> String;
    /// The api-version it is written with.
    fn api_version(settings: &AzureSettings) -> &str;
    /// The PUT body.
    fn body(&self) -> serde_json::Value;
    /// Whether the resource ARM returned says what this says (fields ARM adds do not count).
    fn matches(&self, observed: &serde_json::Value) -> bool;
}

/// Reads the resource and compares it with `desired`.
pub async fn observe<R: Resource>(
    arm: &arm::ArmClient,
    desired: &R,
) -> Result<Observed, arm::Error> {
    let api_version = R::api_version(arm.settings());
    arm.observe(&R::KIND, &desired.id(), api_version, |o| desired.matches(o))
        .await
}

/// Writes the resource (PUT); returns its ARM id.
pub async fn write<R: Resource>(
    arm: &arm::ArmClient,
    desired: &R,
    change: Change,
) -> Result<String, arm::Error> {
    let api_version = R::api_version(arm.settings());
    let id = arm
        .write(&R::KIND, &desired.id(), api_version, &desired.body())
        .await?;
    tracing::info!(resource = %id, ?change, kind = R::KIND.noun, "written");
    Ok(id)
}

/// Makes the resource say what `desired` says: GET, and PUT only when it is missing or differs.
/// Returns its ARM id and what changed.
pub async fn ensure<R: Resource>(
    arm: &arm::ArmClient,
    desired: &R,
) -> Result<(String, Change), arm::Error> {
    match observe(arm, desired).await? {
        Observed::InPlace(id) => Ok((id, Change::Unchanged)),
        Observed::Differs(change) => Ok((write(arm, desired, change).await?, change)),
    }
}

/// What ARM holds, compared with what it should hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Observed {
    /// The resource says what it should; its ARM id.
    InPlace(String),
    /// A write is needed: [`Change::Created`] or [`Change::Updated`].
    Differs(Change),
}

/// What an `ensure` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// ARM already held the desired state: nothing was written.
    Unchanged,
    Created,
    Updated,
}
