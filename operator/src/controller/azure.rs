//! The Azure step of a reconcile, through ARM and Microsoft Graph with the operator's own
//! workload identity: the federated identity credential that lets the server's ServiceAccount
//! use its managed identity (`IdentityReady`), the Azure AI Foundry project connection
//! (`FoundryConnectionReady`) and, with `foundry.assignAppRole`, the project identity's app
//! role on the server's Entra app (also `FoundryConnectionReady`).
//!
//! ```text
//! desired    what the spec asks for now (ids follow from the spec alone)
//! recorded   status.inventory: what was created, with its id and api-version
//! ensure     each desired object: read, compare, write only when it differs; recorded
//!            before the write
//! remove     what is recorded but no longer desired, once its replacement is in place
//!            (Foundry connection, then app role, then federated credential)
//! ```
//!
//! The finalizer's removal works from the record alone ([`remove`]).

use pgmcp_crds::v1alpha1::{
    AppRoleAssignmentRecord, AzureResourceKind, AzureResourceRecord, DeletionPolicy,
    PostgresMcpBinding, PostgresMcpBindingSpec,
};

use super::Context;
use super::build::child_name;
use super::record::{self, Record};
use super::validate::Valid;
use crate::azure::{Change, app_role, arm, fic, foundry, graph};

/// A resource the step made sure of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ensured {
    /// ARM id (for an app role assignment: Graph's assignment id).
    pub id: String,
    pub change: Change,
    /// What it is, for Events: "federated identity credential /subscriptions/…".
    pub what: String,
}

/// Which of the step's objects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    FederatedCredential,
    FoundryConnection,
    AppRole,
}

/// A recorded object the binding no longer asks for, and whether it could be removed.
#[derive(Debug)]
pub struct Removal {
    pub part: Part,
    /// What it was, for Events and conditions.
    pub what: String,
    pub result: Result<(), Error>,
}

/// What the Azure steps found; `None` where the binding asks for nothing.
#[derive(Debug, Default)]
pub struct Report {
    pub federated_credential: Option<Result<Ensured, Error>>,
    pub foundry: Option<Result<Ensured, Error>>,
    /// `foundry.assignAppRole`: the app role assignment (`id` is Graph's assignment id); run
    /// only once the connection is in place.
    pub app_role: Option<Result<Ensured, Error>>,
    /// Recorded objects removed (or not) because the binding no longer asks for them.
    pub removed: Vec<Removal>,
}

impl Report {
    pub fn errors(&self) -> impl Iterator<Item = &Error> {
        [&self.federated_credential, &self.foundry, &self.app_role]
            .into_iter()
            .filter_map(|r| r.as_ref()?.as_ref().err())
            .chain(self.removed.iter().filter_map(|r| r.result.as_ref().err()))
    }

    /// What the steps made sure of, in the order they ran.
    pub fn ensured(&self) -> impl Iterator<Item = &Ensured> {
        [&self.federated_credential, &self.foundry, &self.app_role]
            .into_iter()
            .filter_map(|r| r.as_ref()?.as_ref().ok())
    }

    /// The first failed removal of `part`, if any.
    pub fn removal_error(&self, part: Part) -> Option<(&str, &Error)> {
        self.removed
            .iter()
            .filter(|r| r.part == part)
            .find_map(|r| Some((r.what.as_str(), r.result.as_ref().err()?)))
    }

    /// Moves the errors out, the step's first.
    pub fn into_errors(self) -> impl Iterator<Item = Error> {
        [self.federated_credential, self.foundry, self.app_role]
            .into_iter()
            .filter_map(|r| r?.err())
            .chain(self.removed.into_iter().filter_map(|r| r.result.err()))
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
    #[error(transparent)]
    Record(#[from] record::Error),
}

impl Error {
    pub fn reason(&self) -> &'static str {
        match self {
            Error::NoWorkloadIdentity { .. } => "NoWorkloadIdentity",
            Error::NoOidcIssuer => "NoOidcIssuer",
            Error::Arm(e) => e.reason(),
            Error::AppRole(e) => e.reason(),
            Error::Record(_) => "StatusWriteFailed",
        }
    }

    pub fn needs_user(&self) -> bool {
        match self {
            Error::NoWorkloadIdentity { .. } | Error::NoOidcIssuer => true,
            Error::Arm(e) => e.needs_user(),
            Error::AppRole(e) => e.needs_user(),
            Error::Record(_) => false,
        }
    }
}

impl From<graph::Error> for Error {
    fn from(err: graph::Error) -> Self {
        Error::AppRole(err.into())
    }
}

/// The subject the server's ServiceAccount tokens carry.
pub fn subject(valid: &Valid) -> String {
    fic::subject(&valid.namespace, &child_name(&valid.name))
}

fn arm_client<'a>(ctx: &'a Context, resource: &str) -> Result<&'a arm::ArmClient, Error> {
    ctx.arm.as_ref().ok_or_else(|| Error::NoWorkloadIdentity {
        resource: resource.to_owned(),
    })
}

/// The ARM client and the Graph client.
fn graph_clients<'a>(
    ctx: &'a Context,
    resource: &str,
) -> Result<(&'a arm::ArmClient, &'a graph::GraphClient), Error> {
    let arm = arm_client(ctx, resource)?;
    let graph = ctx.graph.as_ref().ok_or(app_role::Error::NoGraphClient)?;
    Ok((arm, graph))
}

/// The credential's name and ARM id, from the spec alone.
fn fic_id(spec: &PostgresMcpBindingSpec, namespace: &str, name: &str) -> Option<String> {
    let fc = spec
        .identity
        .entra
        .as_ref()?
        .federated_credential
        .as_ref()?;
    let fic_name = fc
        .name
        .clone()
        .unwrap_or_else(|| fic::name_for(namespace, name));
    Some(fic::resource_id(&fc.identity_resource_id, &fic_name))
}

/// The connection's ARM id, from the spec alone.
fn connection_id(spec: &PostgresMcpBindingSpec) -> Option<String> {
    let foundry = spec.foundry.as_ref()?;
    Some(foundry::resource_id(
        &foundry.project_resource_id,
        &foundry.connection_name,
    ))
}

fn fic_desired(ctx: &Context, valid: &Valid) -> Option<Result<fic::Desired, Error>> {
    let spec = valid
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
fn app_role_desired(spec: &PostgresMcpBindingSpec) -> Option<Result<app_role::Desired, Error>> {
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

/// Records `entry`, replacing the record of the same resource (ARM ids are case-insensitive).
fn record_resource(record: &mut Record, entry: AzureResourceRecord) {
    let resources = &mut record.get_mut().azure_resources;
    match resources
        .iter_mut()
        .find(|r| r.id.eq_ignore_ascii_case(&entry.id))
    {
        Some(existing) => *existing = entry,
        None => resources.push(entry),
    }
}

/// Reads, compares and (recording it first) writes one ARM resource; `scope` names what the
/// operator needs rights on when it has no workload identity.
async fn ensure_resource<R: crate::azure::Resource>(
    ctx: &Context,
    record: &mut Record,
    kind: AzureResourceKind,
    desired: &R,
    policy: DeletionPolicy,
    scope: &str,
) -> Result<(String, Change), Error> {
    let arm = arm_client(ctx, scope)?;
    let entry = AzureResourceRecord {
        kind,
        id: desired.id(),
        api_version: R::api_version(arm.settings()).to_owned(),
        deletion_policy: policy,
    };
    match crate::azure::observe(arm, desired).await? {
        crate::azure::Observed::InPlace(id) => {
            record_resource(record, entry);
            Ok((id, Change::Unchanged))
        }
        crate::azure::Observed::Differs(change) => {
            record_resource(record, entry);
            record.save(ctx).await?;
            Ok((crate::azure::write(arm, desired, change).await?, change))
        }
    }
}

pub async fn reconcile(ctx: &Context, valid: &Valid, record: &mut Record) -> Report {
    let mut report = Report::default();
    let spec = &valid.spec;
    let desired_fic_id = fic_id(spec, &valid.namespace, &valid.name);
    let desired_connection_id = connection_id(spec);

    if let Some(desired) = fic_desired(ctx, valid) {
        // One identity may not hold two credentials for the same issuer and subject, and the
        // subject is the binding's own: a renamed credential replaces the old one on the same
        // identity, so the old one goes first (a credential on another identity goes after).
        if let Ok(desired) = &desired {
            let identity = format!("{}/", desired.identity_resource_id.to_ascii_lowercase());
            let same_identity: Vec<AzureResourceRecord> = stale_resources(
                record,
                AzureResourceKind::FederatedIdentityCredential,
                desired_fic_id.as_deref(),
            )
            .into_iter()
            .filter(|r| r.id.to_ascii_lowercase().starts_with(&identity))
            .collect();
            for entry in same_identity {
                let removal = remove_resource(ctx, record, &entry).await;
                report.removed.push(removal);
            }
        }
        let result = match desired {
            Err(err) => Err(err),
            Ok(desired) => {
                ensure_resource(
                    ctx,
                    record,
                    AzureResourceKind::FederatedIdentityCredential,
                    &desired,
                    spec.access.deletion_policy,
                    &desired.identity_resource_id,
                )
                .await
            }
        };
        report.federated_credential = Some(result.map(|(id, change)| Ensured {
            what: format!("federated identity credential {id}"),
            id,
            change,
        }));
    }
    if let (Some(desired), Some(foundry)) = (foundry_desired(valid), &spec.foundry) {
        let result = ensure_resource(
            ctx,
            record,
            AzureResourceKind::FoundryConnection,
            &desired,
            foundry.deletion_policy,
            &desired.project_resource_id,
        )
        .await;
        report.foundry = Some(result.map(|(id, change)| Ensured {
            what: format!("Azure AI Foundry connection {id}"),
            id,
            change,
        }));
    }
    let mut desired_assignment = None;
    if matches!(report.foundry, Some(Ok(_)))
        && let Some(desired) = app_role_desired(spec)
    {
        let policy = spec
            .foundry
            .as_ref()
            .map(|f| f.deletion_policy)
            .unwrap_or_default();
        let result = match desired {
            Err(err) => Err(err),
            Ok(desired) => {
                ensure_app_role(ctx, record, &desired, policy)
                    .await
                    .map(|(parts, ensured)| {
                        desired_assignment = Some(parts);
                        ensured
                    })
            }
        };
        report.app_role = Some(result);
    }

    // What is recorded but no longer asked for goes, once its replacement (if any) is in place:
    // a credential moved to another identity keeps the server signing in until the new one
    // exists.
    let settled = |result: &Option<Result<Ensured, Error>>| !matches!(result, Some(Err(_)));
    if settled(&report.foundry) {
        let stale = stale_resources(
            record,
            AzureResourceKind::FoundryConnection,
            desired_connection_id.as_deref(),
        );
        for entry in stale {
            let removal = remove_resource(ctx, record, &entry).await;
            report.removed.push(removal);
        }
    }
    // Without assignAppRole (or a foundry section) every recorded assignment is stale; with it,
    // only once the desired one is known and in place.
    let wants_app_role = spec.foundry.as_ref().is_some_and(|f| f.assign_app_role);
    if !wants_app_role || desired_assignment.is_some() {
        let stale: Vec<AppRoleAssignmentRecord> = record
            .get()
            .app_role_assignments
            .iter()
            .filter(|a| {
                desired_assignment
                    .as_ref()
                    .is_none_or(|parts| !same_assignment(a, parts))
            })
            .cloned()
            .collect();
        for entry in stale {
            let removal = remove_assignment(ctx, record, &entry).await;
            report.removed.push(removal);
        }
    }
    if settled(&report.federated_credential) {
        let stale = stale_resources(
            record,
            AzureResourceKind::FederatedIdentityCredential,
            desired_fic_id.as_deref(),
        );
        for entry in stale {
            let removal = remove_resource(ctx, record, &entry).await;
            report.removed.push(removal);
        }
    }
    report
}

/// Recorded resources of `kind` other than `desired`.
fn stale_resources(
    record: &Record,
    kind: AzureResourceKind,
    desired: Option<&str>,
) -> Vec<AzureResourceRecord> {
    record
        .get()
        .azure_resources
        .iter()
        .filter(|r| r.kind == kind && desired.is_none_or(|d| !r.id.eq_ignore_ascii_case(d)))
        .cloned()
        .collect()
}

fn same_assignment(entry: &AppRoleAssignmentRecord, parts: &app_role::Parts) -> bool {
    entry.resource_id.eq_ignore_ascii_case(&parts.resource_id)
        && entry.principal_id.eq_ignore_ascii_case(&parts.principal_id)
        && entry.app_role_id.eq_ignore_ascii_case(&parts.app_role_id)
}

/// Finds or creates the assignment `desired` describes, recording it before the creation and
/// its id after.
async fn ensure_app_role(
    ctx: &Context,
    record: &mut Record,
    desired: &app_role::Desired,
    policy: DeletionPolicy,
) -> Result<(app_role::Parts, Ensured), Error> {
    let (arm, graph) = graph_clients(ctx, &desired.project_resource_id)?;
    let Some(parts) = app_role::parts(arm, graph, desired, true).await? else {
        return Err(app_role::Error::NoProject {
            project: desired.project_resource_id.clone(),
        }
        .into());
    };
    let what = |id: &str| {
        format!(
            "app role {} of {} for the managed identity of Foundry project {} (assignment {id})",
            desired.role, desired.audience, desired.project_resource_id
        )
    };
    let mut entry = AppRoleAssignmentRecord {
        id: String::new(),
        resource_id: parts.resource_id.clone(),
        principal_id: parts.principal_id.clone(),
        app_role_id: parts.app_role_id.clone(),
        deletion_policy: policy,
    };
    let (id, change) = match app_role::find(graph, &parts).await? {
        Some(id) => (id, Change::Unchanged),
        None => {
            record_assignment(record, entry.clone());
            record.save(ctx).await?;
            (app_role::create(graph, &parts).await?, Change::Created)
        }
    };
    entry.id = id.clone();
    record_assignment(record, entry);
    Ok((
        parts,
        Ensured {
            what: what(&id),
            id,
            change,
        },
    ))
}

/// The parts of a recorded assignment.
fn recorded_parts(entry: &AppRoleAssignmentRecord) -> app_role::Parts {
    app_role::Parts {
        resource_id: entry.resource_id.clone(),
        app_role_id: entry.app_role_id.clone(),
        principal_id: entry.principal_id.clone(),
        what: format!(
            "app role assignment {} of role {} of service principal {} to {}",
            entry.id, entry.app_role_id, entry.resource_id, entry.principal_id
        ),
    }
}

/// Records `entry`, replacing the record of the same assignment.
fn record_assignment(record: &mut Record, entry: AppRoleAssignmentRecord) {
    let parts = recorded_parts(&entry);
    let assignments = &mut record.get_mut().app_role_assignments;
    match assignments.iter_mut().find(|a| same_assignment(a, &parts)) {
        Some(existing) => *existing = entry,
        None => assignments.push(entry),
    }
}

fn resource_noun(kind: AzureResourceKind) -> &'static str {
    match kind {
        AzureResourceKind::FederatedIdentityCredential => "federated identity credential",
        AzureResourceKind::FoundryConnection => "Azure AI Foundry connection",
    }
}

/// Deletes a recorded ARM resource (unless its policy is Orphan) and drops it from the record.
async fn remove_resource(
    ctx: &Context,
    record: &mut Record,
    entry: &AzureResourceRecord,
) -> Removal {
    let part = match entry.kind {
        AzureResourceKind::FederatedIdentityCredential => Part::FederatedCredential,
        AzureResourceKind::FoundryConnection => Part::FoundryConnection,
    };
    let orphaned = entry.deletion_policy == DeletionPolicy::Orphan;
    let what = format!(
        "{} {}{}",
        resource_noun(entry.kind),
        entry.id,
        if orphaned {
            " (left in place: deletionPolicy Orphan)"
        } else {
            ""
        }
    );
    let result = async {
        if !orphaned {
            let arm = arm_client(ctx, &entry.id)?;
            let kind = match entry.kind {
                AzureResourceKind::FederatedIdentityCredential => &fic::KIND,
                AzureResourceKind::FoundryConnection => &foundry::KIND,
            };
            let deleted = arm.delete(kind, &entry.id, &entry.api_version).await?;
            tracing::info!(resource = %entry.id, deleted, "{} removed", kind.noun);
        }
        record
            .get_mut()
            .azure_resources
            .retain(|r| !r.id.eq_ignore_ascii_case(&entry.id));
        record.save(ctx).await?;
        Ok(())
    }
    .await;
    Removal { part, what, result }
}

/// Deletes a recorded app role assignment (unless its policy is Orphan) and drops it from the
/// record. One recorded before Graph answered its creation has no id yet: it is looked up.
async fn remove_assignment(
    ctx: &Context,
    record: &mut Record,
    entry: &AppRoleAssignmentRecord,
) -> Removal {
    let parts = recorded_parts(entry);
    let orphaned = entry.deletion_policy == DeletionPolicy::Orphan;
    let what = format!(
        "{}{}",
        parts.what,
        if orphaned {
            " (left in place: deletionPolicy Orphan)"
        } else {
            ""
        }
    );
    let result = async {
        if !orphaned {
            let graph = ctx.graph.as_ref().ok_or(app_role::Error::NoGraphClient)?;
            let id = if entry.id.is_empty() {
                app_role::find(graph, &parts).await?
            } else {
                Some(entry.id.clone())
            };
            if let Some(id) = id {
                app_role::delete_by_id(graph, &entry.resource_id, &id).await?;
            }
        }
        record
            .get_mut()
            .app_role_assignments
            .retain(|a| !same_assignment(a, &parts));
        record.save(ctx).await?;
        Ok(())
    }
    .await;
    Removal {
        part: Part::AppRole,
        what,
        result,
    }
}

/// What a binding that predates the record has in Azure, as far as its spec tells: the
/// credential and connection it names, and (looked up in Graph) its app role assignment.
pub async fn adopt_legacy(
    ctx: &Context,
    binding: &PostgresMcpBinding,
    record: &mut Record,
) -> Result<(), Error> {
    let spec = &binding.spec;
    let namespace = binding.metadata.namespace.clone().unwrap_or_default();
    let name = binding.metadata.name.clone().unwrap_or_default();
    // Without the operator's workload identity nothing was ever created in Azure.
    let Some(arm) = &ctx.arm else {
        return Ok(());
    };
    let settings = arm.settings().clone();
    if let Some(id) = fic_id(spec, &namespace, &name) {
        record_resource(
            record,
            AzureResourceRecord {
                kind: AzureResourceKind::FederatedIdentityCredential,
                id,
                api_version: settings.fic_api_version.clone(),
                deletion_policy: spec.access.deletion_policy,
            },
        );
    }
    if let (Some(id), Some(foundry)) = (connection_id(spec), &spec.foundry) {
        record_resource(
            record,
            AzureResourceRecord {
                kind: AzureResourceKind::FoundryConnection,
                id,
                api_version: settings.foundry_api_version.clone(),
                deletion_policy: foundry.deletion_policy,
            },
        );
    }
    if let (Some(Ok(desired)), Some(_)) = (app_role_desired(spec), &ctx.graph) {
        let (arm, graph) = graph_clients(ctx, &desired.project_resource_id)?;
        if let Some(parts) = app_role::parts(arm, graph, &desired, false).await? {
            record_assignment(
                record,
                AppRoleAssignmentRecord {
                    id: String::new(),
                    resource_id: parts.resource_id,
                    principal_id: parts.principal_id,
                    app_role_id: parts.app_role_id,
                    deletion_policy: spec
                        .foundry
                        .as_ref()
                        .map(|f| f.deletion_policy)
                        .unwrap_or_default(),
                },
            );
        }
    }
    Ok(())
}

/// Removes every recorded object of `part` (the finalizer's steps).
pub async fn remove(ctx: &Context, record: &mut Record, part: Part) -> Result<(), Error> {
    match part {
        Part::FoundryConnection | Part::FederatedCredential => {
            let kind = match part {
                Part::FoundryConnection => AzureResourceKind::FoundryConnection,
                _ => AzureResourceKind::FederatedIdentityCredential,
            };
            for entry in stale_resources(record, kind, None) {
                remove_resource(ctx, record, &entry).await.result?;
            }
        }
        Part::AppRole => {
            for entry in record.get().app_role_assignments.clone() {
                remove_assignment(ctx, record, &entry).await.result?;
            }
        }
    }
    Ok(())
}
