//! The Azure steps of one reconcile, through ARM with the operator's own workload identity: the
//! federated identity credential that lets the server's ServiceAccount use its managed identity
//! (`IdentityReady`), the Azure AI Foundry project connection (`FoundryConnectionReady`) and,
//! with `foundry.assignAppRole`, the project identity's app role on the server's Entra app
//! through Microsoft Graph (also `FoundryConnectionReady`). Each is read-compare-write, so an
//! unchanged binding issues no write.

use pgmcp_crds::v1alpha1::{DeletionPolicy, PostgresMcpBinding};

use super::Context;
use super::build::child_name;
use super::validate::Valid;
use crate::azure::{Change, app_role, arm, fic, foundry};

/// A resource the step made sure of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ensured {
    /// ARM id (for an app role assignment: Graph's assignment id).
    pub id: String,
    pub change: Change,
    /// What it is, for Events: "federated identity credential /subscriptions/…".
    pub what: String,
}

/// What the Azure steps found; `None` where the binding asks for nothing.
#[derive(Debug, Default)]
pub struct Report {
    pub federated_credential: Option<Result<Ensured, Error>>,
    pub foundry: Option<Result<Ensured, Error>>,
    /// `foundry.assignAppRole`: the app role assignment (`id` is Graph's assignment id); run
    /// only once the connection is in place.
    pub app_role: Option<Result<Ensured, Error>>,
}

impl Report {
    pub fn errors(&self) -> impl Iterator<Item = &Error> {
        [&self.federated_credential, &self.foundry, &self.app_role]
            .into_iter()
            .filter_map(|r| r.as_ref()?.as_ref().err())
    }

    /// What the steps made sure of, in the order they ran.
    pub fn ensured(&self) -> impl Iterator<Item = &Ensured> {
        [&self.federated_credential, &self.foundry, &self.app_role]
            .into_iter()
            .filter_map(|r| r.as_ref()?.as_ref().ok())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "creating Azure resources needs the operator's own workload identity, but AZURE_CLIENT_ID, AZURE_TENANT_ID and AZURE_FEDERATED_TOKEN_FILE are not set: give the operator's ServiceAccount a managed identity with rights on {resource}"
    )]
    NoWorkloadIdentity { resource: String },
    #[error(
        "spec.identity.entra.federatedCredential.issuer is not set and the operator has no --oidc-issuer: set either to the cluster's OIDC issuer URL (az aks show --query oidcIssuerProfile.issuerUrl)"
    )]
    NoOidcIssuer,
    #[error(transparent)]
    Arm(#[from] arm::Error),
    #[error(transparent)]
    AppRole(#[from] app_role::Error),
}

impl Error {
    pub fn reason(&self) -> &'static str {
        match self {
            Error::NoWorkloadIdentity { .. } => "NoWorkloadIdentity",
            Error::NoOidcIssuer => "NoOidcIssuer",
            Error::Arm(e) => e.reason(),
            Error::AppRole(e) => e.reason(),
        }
    }

    pub fn needs_user(&self) -> bool {
        match self {
            Error::NoWorkloadIdentity { .. } | Error::NoOidcIssuer => true,
            Error::Arm(e) => e.needs_user(),
            Error::AppRole(e) => e.needs_user(),
        }
    }
}

/// The subject the server's ServiceAccount tokens carry.
pub fn subject(valid: &Valid) -> String {
    format!(
        "system:serviceaccount:{}:{}",
        valid.namespace,
        child_name(&valid.name)
    )
}

fn arm_client<'a>(ctx: &'a Context, resource: &str) -> Result<&'a arm::ArmClient, Error> {
    ctx.arm.as_ref().ok_or_else(|| Error::NoWorkloadIdentity {
        resource: resource.to_owned(),
    })
}

fn fic_desired(
    ctx: &Context,
    binding: &PostgresMcpBinding,
    valid: &Valid,
) -> Option<Result<fic::Desired, Error>> {
    let spec = binding
        .spec
        .identity
        .entra
        .as_ref()?
        .federated_credential
        .as_ref()?;
    let issuer = spec
        .issuer
        .clone()
        .or_else(|| ctx.defaults.oidc_issuer.clone());
    Some(issuer.ok_or(Error::NoOidcIssuer).map(|issuer| {
        fic::Desired {
            identity_resource_id: spec.identity_resource_id.clone(),
            name: spec
                .name
                .clone()
                .unwrap_or_else(|| fic::name_for(&valid.namespace, &valid.name)),
            issuer,
            subject: subject(valid),
        }
    }))
}

fn foundry_desired(valid: &Valid) -> Option<foundry::Desired> {
    let spec = valid.spec.foundry.as_ref()?;
    Some(foundry::Desired {
        project_resource_id: spec.project_resource_id.clone(),
        connection_name: spec.connection_name.clone(),
        // CEL guarantees server.auth.entra and an https publicUrl when foundry is set.
        audience: valid
            .spec
            .server
            .auth
            .entra
            .as_ref()
            .map(|e| e.audience.clone())
            .unwrap_or_default(),
        target: valid.spec.server.public_url.clone().unwrap_or_default(),
    })
}

/// `foundry.assignAppRole`: which role of which app the project's identity must hold.
fn app_role_desired(
    spec: &pgmcp_crds::v1alpha1::PostgresMcpBindingSpec,
) -> Option<Result<app_role::Desired, Error>> {
    let foundry = spec.foundry.as_ref().filter(|f| f.assign_app_role)?;
    let entra = spec.server.auth.entra.as_ref();
    let role = entra.and_then(|e| e.required_roles.first());
    Some(match (entra, role) {
        (Some(entra), Some(role)) => Ok(app_role::Desired {
            project_resource_id: foundry.project_resource_id.clone(),
            audience: entra.audience.clone(),
            role: role.clone(),
        }),
        _ => Err(app_role::Error::NoRequiredRole.into()),
    })
}

/// The ARM client and the Graph client.
fn graph_clients<'a>(
    ctx: &'a Context,
    resource: &str,
) -> Result<(&'a arm::ArmClient, &'a crate::azure::graph::GraphClient), Error> {
    let arm = arm_client(ctx, resource)?;
    let graph = ctx.graph.as_ref().ok_or(app_role::Error::NoGraphClient)?;
    Ok((arm, graph))
}

pub async fn reconcile(ctx: &Context, binding: &PostgresMcpBinding, valid: &Valid) -> Report {
    let mut report = Report::default();
    if let Some(desired) = fic_desired(ctx, binding, valid) {
        report.federated_credential = Some(match desired {
            Err(err) => Err(err),
            Ok(desired) => match arm_client(ctx, &desired.identity_resource_id) {
                Err(err) => Err(err),
                Ok(arm) => fic::ensure(arm, &desired)
                    .await
                    .map(|(id, change)| Ensured {
                        what: format!("federated identity credential {id}"),
                        id,
                        change,
                    })
                    .map_err(Error::from),
            },
        });
    }
    if let Some(desired) = foundry_desired(valid) {
        report.foundry = Some(match arm_client(ctx, &desired.project_resource_id) {
            Err(err) => Err(err),
            Ok(arm) => foundry::ensure(arm, &desired)
                .await
                .map(|(id, change)| Ensured {
                    what: format!("Azure AI Foundry connection {id}"),
                    id,
                    change,
                })
                .map_err(Error::from),
        });
    }
    if matches!(report.foundry, Some(Ok(_)))
        && let Some(desired) = app_role_desired(&valid.spec)
    {
        let result = match desired {
            Err(err) => Err(err),
            Ok(desired) => match graph_clients(ctx, &desired.project_resource_id) {
                Err(err) => Err(err),
                Ok((arm, graph)) => app_role::ensure(arm, graph, &desired)
                    .await
                    .map(|(id, change)| Ensured {
                        what: format!(
                            "app role {} of {} for the managed identity of Foundry project {} (assignment {id})",
                            desired.role, desired.audience, desired.project_resource_id
                        ),
                        id,
                        change,
                    })
                    .map_err(Error::from),
            },
        };
        report.app_role = Some(result);
    }
    report
}

/// Deletes the Foundry connection (policy Delete). Gone already is fine.
pub async fn remove_foundry(ctx: &Context, binding: &PostgresMcpBinding) -> Result<bool, Error> {
    let Some(spec) = &binding.spec.foundry else {
        return Ok(false);
    };
    if spec.deletion_policy == DeletionPolicy::Orphan {
        return Ok(false);
    }
    // The role first: agents lose access before their connection disappears. Without a
    // required role nothing was ever assigned.
    if let Some(Ok(desired)) = app_role_desired(&binding.spec) {
        let (arm, graph) = graph_clients(ctx, &desired.project_resource_id)?;
        app_role::delete(arm, graph, &desired).await?;
    }
    let arm = arm_client(ctx, &spec.project_resource_id)?;
    foundry::delete(arm, &spec.project_resource_id, &spec.connection_name).await?;
    Ok(true)
}

/// Deletes the federated credential (unless access.deletionPolicy is Orphan). Gone already is
/// fine.
pub async fn remove_federated_credential(
    ctx: &Context,
    binding: &PostgresMcpBinding,
) -> Result<bool, Error> {
    let Some(spec) = binding
        .spec
        .identity
        .entra
        .as_ref()
        .and_then(|e| e.federated_credential.as_ref())
    else {
        return Ok(false);
    };
    if binding.spec.access.deletion_policy == DeletionPolicy::Orphan {
        return Ok(false);
    }
    let name = spec.name.clone().unwrap_or_else(|| {
        fic::name_for(
            &binding.metadata.namespace.clone().unwrap_or_default(),
            &binding.metadata.name.clone().unwrap_or_default(),
        )
    });
    let arm = arm_client(ctx, &spec.identity_resource_id)?;
    fic::delete(arm, &spec.identity_resource_id, &name).await?;
    Ok(true)
}
