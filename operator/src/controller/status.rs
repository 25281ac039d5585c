//! Status: turns the outcome of one reconcile into `status` (kstatus `Ready` / `Reconciling` /
//! `Stalled` plus one condition per step) and writes it only when it changed.
//!
//! [`compute`] is pure; [`update`] is the only write, and it is skipped when the computed status
//! equals the stored one (transition times are carried over while a condition keeps its status).

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::ResourceExt as _;
use kube::api::{Api, Patch, PatchParams};
use pgmcp_crds::conditions as ty;
use pgmcp_crds::v1alpha1::{
    CallerClassStatus, CatalogTrackerStatus, ConnectStatus, PostgresMcpBinding,
    PostgresMcpBindingStatus, PrincipalKind, PrincipalStatus,
};
use serde_json::json;

use super::Context;
use super::azure;
use super::build::{Desired, child_name};
use super::database;
use super::validate::{Identity, Valid};

/// What one reconcile found.
#[derive(Debug)]
pub enum Outcome<'a> {
    /// Children applied; the Deployment as last seen.
    Applied {
        valid: &'a Valid,
        desired: &'a Desired,
        deployment: Option<&'a Deployment>,
        database: &'a Result<database::Report, database::Error>,
        azure: &'a azure::Report,
    },
    /// The binding needs a change from the user (or an object it names).
    Stalled {
        reason: &'static str,
        message: String,
    },
    /// A transient failure; retried with backoff.
    Failed {
        reason: &'static str,
        message: String,
    },
}

/// One condition before timestamps.
#[derive(Debug, Clone, PartialEq)]
struct Step {
    type_: &'static str,
    status: &'static str,
    reason: &'static str,
    message: String,
}

impl Step {
    fn new(
        type_: &'static str,
        status: &'static str,
        reason: &'static str,
        message: String,
    ) -> Self {
        Step {
            type_,
            status,
            reason,
            message,
        }
    }
}

fn database_steps(
    valid: &Valid,
    database: &Result<database::Report, database::Error>,
) -> [Step; 2] {
    let role = valid.identity.role();
    let db = &valid.spec.postgres.database;
    match database {
        Err(err) => [
            Step::new(ty::DATABASE_READY, "False", err.reason(), err.to_string()),
            Step::new(
                ty::READ_ONLY_VERIFIED,
                "Unknown",
                "NotProbed",
                format!("role {role} could not be probed: {}", err.reason()),
            ),
        ],
        Ok(report) => {
            // What is missing, the classes' named with their class.
            let missing: Vec<String> = report
                .missing
                .iter()
                .cloned()
                .chain(report.callers.iter().flat_map(|class| {
                    class
                        .missing
                        .iter()
                        .map(move |m| format!("{m} (caller class {})", class.name))
                }))
                .collect();
            let ready = if missing.is_empty() {
                let classes = if report.callers.is_empty() {
                    String::new()
                } else {
                    let each: Vec<String> = report
                        .callers
                        .iter()
                        .map(|c| {
                            format!(
                                "{} tables as caller class {} (role {})",
                                c.grants.tables, c.name, c.role
                            )
                        })
                        .collect();
                    format!(", {}", each.join(", "))
                };
                Step::new(
                    ty::DATABASE_READY,
                    "True",
                    "GrantsMatch",
                    format!(
                        "role {role} can read {} tables in database {db}{classes}; its privileges match the spec{}",
                        report.grants.tables,
                        match &report.catalog_tracker {
                            Some(crate::database::Tracker::InUse) =>
                                "; the catalog tracker is in use".to_owned(),
                            Some(crate::database::Tracker::Unavailable(reason)) => {
                                format!("; the catalog tracker is not in use: {reason}")
                            }
                            None => String::new(),
                        }
                    ),
                )
            } else {
                Step::new(
                    ty::DATABASE_READY,
                    "False",
                    "NotFound",
                    format!(
                        "database {db} has no {}: the rest is granted, and these will be once they exist",
                        missing.join(", ")
                    ),
                )
            };
            let mut probed = vec![(role.to_owned(), &report.read_only)];
            probed.extend(report.callers.iter().map(|c| {
                (
                    format!("{} (caller class {})", c.role, c.name),
                    &c.read_only,
                )
            }));
            let read_only = read_only_step(db, &probed);
            [ready, read_only]
        }
    }
}

/// Longest list of findings a ReadOnlyVerified message carries: condition messages are capped
/// at 32 KiB, and a status that exceeds it is refused as a whole.
const MAX_FINDINGS_CHARS: usize = 8 * 1024;

/// ReadOnlyVerified over the binding's role and each caller class's (`probed`: each named as
/// the message names it, with what its probe found): `ReadOnly`, else `CanWrite` (any way to
/// write) or `ReadsBeyondGrants`, naming each role at fault and each finding with its fix.
fn read_only_step(db: &str, probed: &[(String, &crate::database::probe::Findings)]) -> Step {
    let faulty: Vec<&(String, &crate::database::probe::Findings)> =
        probed.iter().filter(|(_, f)| !f.is_read_only()).collect();
    if faulty.is_empty() {
        let temp = if probed.iter().any(|(_, f)| f.temp_through_public) {
            format!(
                "; it can create temporary tables through PUBLIC's default TEMPORARY privilege on database {db}, which the MCP server's read-only transactions refuse (REVOKE TEMPORARY ON DATABASE {db} FROM PUBLIC removes it)"
            )
        } else {
            String::new()
        };
        let roles = match probed {
            [(role, _)] => format!("role {role} can"),
            [(role, _), classes @ ..] => format!(
                "role {role} and the roles of its caller classes ({}) can each",
                classes
                    .iter()
                    .map(|(name, _)| name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            [] => "no role can".to_owned(),
        };
        return Step::new(
            ty::READ_ONLY_VERIFIED,
            "True",
            "ReadOnly",
            format!(
                "{roles} only read what the binding grants: no write privilege, no CREATE, no ownership, no privileged attribute or membership, no large object, no SECURITY DEFINER function outside spec.access.functions{temp}"
            ),
        );
    }
    let reason = if faulty.iter().all(|(_, f)| f.write.is_empty()) {
        "ReadsBeyondGrants"
    } else {
        "CanWrite"
    };
    let total: usize = faulty
        .iter()
        .map(|(_, f)| f.write.len() + f.beyond_grants.len())
        .sum();
    let mut shown = 0;
    let mut message = String::new();
    'roles: for (role, found) in &faulty {
        let what = if found.write.is_empty() {
            "can read beyond what the binding grants"
        } else {
            "can write"
        };
        if !message.is_empty() {
            message.push_str(". ");
        }
        message.push_str(&format!("role {role} {what}: it "));
        for (i, item) in found.write.iter().chain(&found.beyond_grants).enumerate() {
            if message.len() + item.len() > MAX_FINDINGS_CHARS {
                message.push_str(&format!("; and {} more findings", total - shown));
                break 'roles;
            }
            if i > 0 {
                message.push_str("; ");
            }
            message.push_str(item);
            shown += 1;
        }
    }
    Step::new(ty::READ_ONLY_VERIFIED, "False", reason, message)
}

fn steps(
    valid: &Valid,
    desired: &Desired,
    deployment: Option<&Deployment>,
    database: &Result<database::Report, database::Error>,
    azure: &azure::Report,
) -> Vec<Step> {
    let ns = &valid.namespace;
    let sa = child_name(&valid.name);
    let subject = format!("system:serviceaccount:{ns}:{sa}");
    let mut steps = Vec::new();

    steps.push(match &valid.identity {
        Identity::Password { secret_name, .. } => Step::new(
            ty::IDENTITY_READY,
            "True",
            "ServiceAccountReady",
            format!("ServiceAccount {ns}/{sa} is in place; the server signs in with the password in Secret {ns}/{secret_name}"),
        ),
        Identity::Entra { client_id, .. } => match &azure.federated_credential {
            None => Step::new(
                ty::IDENTITY_READY,
                "True",
                "WorkloadIdentityConfigured",
                format!("ServiceAccount {ns}/{sa} carries managed identity {client_id}; it needs a federated credential for subject {subject}"),
            ),
            Some(Err(err)) => Step::new(ty::IDENTITY_READY, "False", err.reason(), err.to_string()),
            Some(Ok(ensured)) if server_available(valid, desired, deployment).status == "True" => {
                Step::new(
                    ty::IDENTITY_READY,
                    "True",
                    "FederatedCredentialReady",
                    format!("federated credential {} trusts {subject}, and the server signs in with it", ensured.id),
                )
            }
            Some(Ok(ensured)) => Step::new(
                ty::IDENTITY_READY,
                "False",
                "FederatedCredentialPropagating",
                format!(
                    "federated credential {} trusts {subject}; Microsoft Entra ID can take a few minutes to accept it, and this turns True once the server signs in with it",
                    ensured.id
                ),
            ),
        },
    });

    // A credential the binding no longer asks for that could not be deleted (yet).
    if let Some((what, err)) = azure.removal_error(azure::Part::FederatedCredential)
        && let Some(step) = steps.last_mut()
    {
        *step = Step::new(
            ty::IDENTITY_READY,
            "False",
            err.reason(),
            format!("{what} is no longer asked for but could not be deleted: {err}"),
        );
    }

    steps.extend(database_steps(valid, database));
    steps.push(server_available(valid, desired, deployment));
    // A connection or app role assignment the binding no longer asks for that could not be
    // deleted keeps the condition (False) until it is, also without a foundry section.
    let stale = azure
        .removal_error(azure::Part::FoundryConnection)
        .or_else(|| azure.removal_error(azure::Part::AppRole));
    if let Some((what, err)) = stale {
        steps.push(Step::new(
            ty::FOUNDRY_CONNECTION_READY,
            "False",
            err.reason(),
            format!("{what} is no longer asked for but could not be deleted: {err}"),
        ));
    } else if let (Some(spec), Some(result)) = (&valid.spec.foundry, &azure.foundry) {
        // With assignAppRole, the connection is ready only once its identity holds the role.
        let role = match &azure.app_role {
            Some(Err(err)) => Err(err),
            Some(Ok(_)) => Ok(valid
                .spec
                .server
                .auth
                .entra
                .as_ref()
                .and_then(|e| e.required_roles.first().map(|r| (r, &e.audience)))
                .map(|(role, app)| {
                    format!("; the project's managed identity holds app role {role} of {app}")
                })
                .unwrap_or_default()),
            None => Ok(String::new()),
        };
        steps.push(match (result, role) {
            (Ok(ensured), Ok(role)) => Step::new(
                ty::FOUNDRY_CONNECTION_READY,
                "True",
                "Connected",
                format!(
                    "connection {} of project {} calls {}",
                    spec.connection_name,
                    spec.project_resource_id,
                    valid.spec.server.public_url.as_deref().unwrap_or_default()
                ) + &format!(" ({})", ensured.id)
                    + &role,
            ),
            (Ok(_), Err(err)) | (Err(err), _) => Step::new(
                ty::FOUNDRY_CONNECTION_READY,
                "False",
                err.reason(),
                err.to_string(),
            ),
        });
    }
    steps
}

fn server_available(valid: &Valid, desired: &Desired, deployment: Option<&Deployment>) -> Step {
    let name = format!("{}/{}", valid.namespace, child_name(&valid.name));
    let step =
        |status, reason, message: String| Step::new(ty::SERVER_AVAILABLE, status, reason, message);
    let wanted = valid.spec.server.replicas;
    if wanted == 0 {
        return step(
            "False",
            "ScaledToZero",
            format!("Deployment {name} has spec.server.replicas: 0"),
        );
    }
    let Some(deployment) = deployment else {
        return step(
            "False",
            "DeploymentMissing",
            format!("Deployment {name} does not exist yet"),
        );
    };
    let generation = deployment.metadata.generation;
    let status = deployment.status.clone().unwrap_or_default();
    if status.observed_generation < generation {
        return step(
            "False",
            "RolloutPending",
            format!("Deployment {name} has not yet seen its latest spec"),
        );
    }
    let available = status.available_replicas.unwrap_or(0);
    let condition = status
        .conditions
        .unwrap_or_default()
        .into_iter()
        .find(|c| c.type_ == "Available");
    match condition {
        Some(c) if c.status == "True" && available > 0 => step(
            "True",
            "Available",
            format!(
                "{available}/{wanted} replicas of Deployment {name} are available at {}",
                desired.endpoint
            ),
        ),
        _ => step(
            "False",
            "WaitingForPods",
            format!(
                "{available}/{wanted} replicas of Deployment {name} are available; see kubectl describe pods -n {} -l app.kubernetes.io/instance={}",
                valid.namespace, valid.name
            ),
        ),
    }
}

/// What a client needs to use the binding's server (`status.connect`, docs/agents.md).
fn connect(valid: &Valid, desired: &Desired, foundry_id: Option<&str>) -> ConnectStatus {
    let spec = &valid.spec;
    let entra = spec.server.auth.entra.as_ref();
    ConnectStatus {
        url: spec
            .server
            .public_url
            .clone()
            .unwrap_or_else(|| desired.endpoint.clone()),
        audience: entra.map(|e| e.audience.clone()),
        token_scope: entra.map(|e| pgmcp_crds::config::token_scope(&e.audience)),
        app_roles: entra.map(|e| e.required_roles.clone()).unwrap_or_default(),
        foundry_connection: spec.foundry.as_ref().map(|f| f.connection_name.clone()),
        foundry_connection_id: foundry_id.map(str::to_owned),
        tools: pgmcp_crds::config::TOOLS
            .iter()
            .map(|t| (*t).to_owned())
            .collect(),
    }
}

/// The Ready condition's message: how to use the server, in one sentence per step.
fn instructions(connect: &ConnectStatus) -> String {
    let mut message = format!("the MCP server answers at {}", connect.url);
    if let Some(scope) = &connect.token_scope {
        message.push_str(&format!(
            "; callers send a Microsoft Entra token for {scope} carrying the app role {}",
            connect.app_roles.join(" or ")
        ));
    } else {
        message.push_str("; callers need no token (server.auth.none)");
    }
    if let Some(name) = &connect.foundry_connection {
        message.push_str(&format!(
            "; Foundry agents use the project connection {name} (status.connect.foundryConnectionId)"
        ));
    }
    message.push_str("; status.connect has what a client needs");
    message
}

/// The status this reconcile should leave, from the stored one and the outcome.
pub fn compute(
    binding: &PostgresMcpBinding,
    outcome: &Outcome<'_>,
    now: &Time,
) -> PostgresMcpBindingStatus {
    let old = binding.status.clone().unwrap_or_default();
    let mut status = old.clone();
    // status.inventory is the record's, written under a field manager of its own
    // (controller/record.rs); this write neither sets nor compares it.
    status.inventory = None;
    status.observed_generation = binding.metadata.generation;
    let mut conditions: Vec<Step> = Vec::new();
    match outcome {
        Outcome::Applied {
            valid,
            desired,
            deployment,
            database,
            azure,
        } => {
            let steps = steps(valid, desired, *deployment, database, azure);
            let blocker = steps.iter().find(|s| s.status != "True").cloned();
            // A database refusal only the user can fix (a role someone else owns, no workload
            // identity) stalls the binding; the other steps still report.
            let stalled = database
                .as_ref()
                .err()
                .filter(|e| e.needs_user())
                .map(|e| (e.reason(), e.to_string()))
                .or_else(|| {
                    azure
                        .errors()
                        .find(|e| e.needs_user())
                        .map(|e| (e.reason(), e.to_string()))
                })
                .map(|(reason, message)| Step::new(ty::STALLED, "True", reason, message));
            // Used only when Ready, when a Foundry step has succeeded if there is one.
            let foundry_id = azure
                .foundry
                .as_ref()
                .and_then(|f| f.as_ref().ok())
                .map(|ensured| ensured.id.as_str());
            let connect = connect(valid, desired, foundry_id);
            match &blocker {
                None => {
                    conditions.push(Step::new(
                        ty::READY,
                        "True",
                        "Ready",
                        instructions(&connect),
                    ));
                    conditions.push(Step::new(ty::RECONCILING, "False", "Ready", String::new()));
                }
                Some(b) => {
                    conditions.push(Step::new(ty::READY, "False", b.reason, b.message.clone()));
                    // kstatus: a stalled object is not reconciling.
                    let (status, message) = match stalled {
                        Some(_) => ("False", String::new()),
                        None => ("True", b.message.clone()),
                    };
                    conditions.push(Step::new(ty::RECONCILING, status, b.reason, message));
                }
            }
            conditions.push(
                stalled.unwrap_or_else(|| {
                    Step::new(ty::STALLED, "False", "NotStalled", String::new())
                }),
            );
            conditions.extend(steps);
            status.endpoint = Some(desired.endpoint.clone());
            status.connect = blocker.is_none().then_some(connect);
            status.principal = Some(PrincipalStatus {
                name: valid.identity.role().to_owned(),
                kind: match valid.identity {
                    Identity::Entra { .. } => PrincipalKind::Entra,
                    Identity::Password { .. } => PrincipalKind::Password,
                },
            });
            if let Ok(report) = database {
                status.grants = Some(report.grants.clone());
                status.catalog_tracker = Some(match &report.catalog_tracker {
                    Some(crate::database::Tracker::InUse) => CatalogTrackerStatus {
                        in_use: true,
                        reason: None,
                    },
                    Some(crate::database::Tracker::Unavailable(reason)) => CatalogTrackerStatus {
                        in_use: false,
                        reason: Some(reason.clone()),
                    },
                    None => CatalogTrackerStatus {
                        in_use: false,
                        reason: Some("spec.access.catalogTracker is false".to_owned()),
                    },
                });
                status.callers = report
                    .callers
                    .iter()
                    .map(|c| CallerClassStatus {
                        name: c.name.clone(),
                        role: c.role.clone(),
                        grants: c.grants.clone(),
                    })
                    .collect();
            }
            match &azure.federated_credential {
                Some(Ok(ensured)) => {
                    status.federated_credential =
                        Some(pgmcp_crds::v1alpha1::FederatedCredentialStatus {
                            id: ensured.id.clone(),
                            subject: azure::subject(valid),
                        });
                }
                Some(Err(_)) => {}
                None => status.federated_credential = None,
            }
            match &azure.foundry {
                Some(Ok(ensured)) => {
                    status.foundry = Some(pgmcp_crds::v1alpha1::FoundryStatus {
                        connection_id: ensured.id.clone(),
                    });
                }
                Some(Err(_)) => {}
                None => status.foundry = None,
            }
        }
        Outcome::Stalled { reason, message } => {
            conditions.push(Step::new(ty::READY, "False", reason, message.clone()));
            conditions.push(Step::new(ty::RECONCILING, "False", reason, String::new()));
            conditions.push(Step::new(ty::STALLED, "True", reason, message.clone()));
        }
        Outcome::Failed { reason, message } => {
            conditions.push(Step::new(ty::READY, "False", reason, message.clone()));
            conditions.push(Step::new(ty::RECONCILING, "True", reason, message.clone()));
            conditions.push(Step::new(ty::STALLED, "False", "NotStalled", String::new()));
        }
    }
    // Step conditions not recomputed this time (a stalled or failed reconcile) keep their
    // last known value.
    let mut merged: Vec<Condition> = conditions
        .iter()
        .map(|step| condition(step, &old.conditions, binding.metadata.generation, now))
        .collect();
    for previous in &old.conditions {
        if !merged.iter().any(|c| c.type_ == previous.type_)
            && !matches!(outcome, Outcome::Applied { .. })
        {
            merged.push(previous.clone());
        }
    }
    status.conditions = merged;
    status
}

fn condition(step: &Step, old: &[Condition], generation: Option<i64>, now: &Time) -> Condition {
    let previous = old.iter().find(|c| c.type_ == step.type_);
    let last_transition_time = match previous {
        Some(p) if p.status == step.status => p.last_transition_time.clone(),
        _ => now.clone(),
    };
    Condition {
        type_: step.type_.to_owned(),
        status: step.status.to_owned(),
        reason: step.reason.to_owned(),
        message: step.message.clone(),
        observed_generation: generation,
        last_transition_time,
    }
}

/// Writes `status` when it differs from the stored one. Returns whether it wrote.
pub async fn update(
    ctx: &Context,
    binding: &PostgresMcpBinding,
    outcome: &Outcome<'_>,
) -> Result<bool, kube::Error> {
    let now =
        Time(jiff::Timestamp::from_second(jiff::Timestamp::now().as_second()).unwrap_or_default());
    let status = compute(binding, outcome, &now);
    let stored = binding.status.clone().map(|mut stored| {
        stored.inventory = None;
        stored
    });
    if stored.as_ref() == Some(&status) {
        return Ok(false);
    }
    let api: Api<PostgresMcpBinding> =
        Api::namespaced(ctx.client.clone(), &binding.namespace().unwrap_or_default());
    let patch = json!({
        "apiVersion": format!("{}/{}", pgmcp_crds::GROUP, pgmcp_crds::VERSION),
        "kind": pgmcp_crds::KIND,
        "status": status,
    });
    let result = api
        .patch_status(
            &binding.name_any(),
            &PatchParams::apply(pgmcp_crds::FIELD_MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await;
    ctx.metrics
        .write(pgmcp_crds::KIND, "status", result.is_ok());
    result.map(|_| true)
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    use super::*;
    use crate::controller::build::build;
    use crate::controller::fetch::Inputs;
    use crate::controller::tests::binding;
    use crate::controller::validate::validate;
    use crate::settings::Defaults;

    fn at(second: i64) -> Time {
        Time(jiff::Timestamp::from_second(second).unwrap())
    }

    fn deployment(available: i32, condition: &str) -> Deployment {
        serde_json::from_value(serde_json::json!({
            "metadata": {"generation": 1},
            "status": {
                "observedGeneration": 1,
                "availableReplicas": available,
                "conditions": [{"type": "Available", "status": condition}]
            }
        }))
        .unwrap()
    }

    fn granted() -> Result<database::Report, database::Error> {
        Ok(database::Report {
            principal: PrincipalStatus {
                name: "inventory-mcp".to_owned(),
                kind: PrincipalKind::Entra,
            },
            grants: pgmcp_crds::v1alpha1::GrantsStatus {
                tables: 3,
                fingerprint: "f".to_owned(),
                last_repair_time: None,
                repairs: 0,
            },
            missing: Vec::new(),
            read_only: Default::default(),
            changed: None,
            repaired: false,
            callers: Vec::new(),
            catalog_tracker: Some(crate::database::Tracker::InUse),
        })
    }

    /// The Entra example without Foundry, with two replicas.
    fn entra() -> PostgresMcpBinding {
        let mut b = binding("azure-entra.yaml");
        b.spec.server.replicas = 2;
        b
    }

    /// The status after a reconcile that applied `b` and saw `deployment`, at `second`.
    fn applied(
        b: &PostgresMcpBinding,
        deployment: &Deployment,
        database: &Result<database::Report, database::Error>,
        second: i64,
    ) -> PostgresMcpBindingStatus {
        applied_with(b, deployment, database, &azure::Report::default(), second)
    }

    /// [`applied`] with what the Azure steps reported.
    fn applied_with(
        b: &PostgresMcpBinding,
        deployment: &Deployment,
        database: &Result<database::Report, database::Error>,
        azure: &azure::Report,
        second: i64,
    ) -> PostgresMcpBindingStatus {
        let valid = validate(b, &Inputs::default()).unwrap();
        let defaults = Defaults {
            postgres_scope: None,
            server_image: "img".to_owned(),
            oidc_issuer: None,
            trust_bundle: None,
        };
        let desired = build(&valid, &defaults);
        let outcome = Outcome::Applied {
            valid: &valid,
            desired: &desired,
            deployment: Some(deployment),
            database,
            azure,
        };
        compute(b, &outcome, &at(second))
    }

    fn get<'a>(status: &'a PostgresMcpBindingStatus, type_: &str) -> &'a Condition {
        status.conditions.iter().find(|c| c.type_ == type_).unwrap()
    }

    #[test]
    fn ready_follows_server_availability() {
        let b = entra();
        let status = applied(&b, &deployment(0, "False"), &granted(), 100);
        assert_eq!(get(&status, "Ready").status, "False");
        assert_eq!(get(&status, "Ready").reason, "WaitingForPods");
        assert_eq!(get(&status, "Reconciling").status, "True");
        assert_eq!(get(&status, "Stalled").status, "False");
        assert_eq!(status.observed_generation, Some(1));
        assert_eq!(
            status.endpoint.as_deref(),
            Some("http://inventory-mcp.agents.svc:8080/mcp")
        );

        let b = PostgresMcpBinding {
            status: Some(status),
            ..b
        };
        let status = applied(&b, &deployment(2, "True"), &granted(), 200);
        let ready = get(&status, "Ready");
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("True", "Ready")
        );
        assert_eq!(ready.last_transition_time, at(200));
        assert_eq!(
            get(&status, "ServerAvailable").message,
            "2/2 replicas of Deployment agents/inventory-mcp are available at http://inventory-mcp.agents.svc:8080/mcp"
        );
        assert_eq!(get(&status, "Reconciling").status, "False");
        assert_eq!(get(&status, "DatabaseReady").reason, "GrantsMatch");
        assert_eq!(get(&status, "ReadOnlyVerified").status, "True");
        assert_eq!(status.grants.as_ref().unwrap().tables, 3);
        assert_eq!(
            get(&status, "IdentityReady").reason,
            "WorkloadIdentityConfigured"
        );
    }

    #[test]
    fn an_unchanged_outcome_computes_the_stored_status_so_nothing_is_written() {
        let b = entra();
        let first = applied(&b, &deployment(2, "True"), &granted(), 100);
        let b = PostgresMcpBinding {
            status: Some(first.clone()),
            ..b
        };
        // Later, nothing changed: the very same status, old transition times included.
        assert_eq!(applied(&b, &deployment(2, "True"), &granted(), 500), first);
    }

    #[test]
    fn a_stalled_binding_keeps_its_step_conditions_and_names_the_problem() {
        let b = entra();
        let ok = applied(&b, &deployment(2, "True"), &granted(), 100);
        let b = PostgresMcpBinding {
            status: Some(ok),
            metadata: ObjectMeta {
                generation: Some(2),
                ..b.metadata.clone()
            },
            ..b
        };
        let status = compute(
            &b,
            &Outcome::Stalled {
                reason: "SecretNotFound",
                message: "secret agents/pg-admin … does not exist".to_owned(),
            },
            &at(300),
        );
        let stalled = get(&status, "Stalled");
        assert_eq!(
            (stalled.status.as_str(), stalled.reason.as_str()),
            ("True", "SecretNotFound")
        );
        assert_eq!(stalled.last_transition_time, at(300));
        assert_eq!(get(&status, "Ready").reason, "SecretNotFound");
        assert_eq!(get(&status, "Reconciling").status, "False");
        assert_eq!(
            get(&status, "ServerAvailable").status,
            "True",
            "kept from before"
        );
        assert_eq!(status.observed_generation, Some(2));
    }

    #[test]
    fn a_role_conflict_stalls_and_is_not_reconciling() {
        let conflict = Err(database::Error::Sql(crate::database::Error::RoleConflict {
            role: "inventory-mcp".to_owned(),
            server: "db:5432".to_owned(),
            binding: "agents/inventory".to_owned(),
            owner: Some("agents/stock".to_owned()),
        }));
        let status = applied(&entra(), &deployment(2, "True"), &conflict, 100);
        assert_eq!(get(&status, "Stalled").reason, "RoleConflict");
        assert_eq!(get(&status, "Reconciling").status, "False");
        assert_eq!(get(&status, "Ready").reason, "RoleConflict");
        assert_eq!(get(&status, "ReadOnlyVerified").status, "Unknown");
    }

    #[test]
    fn azure_steps_report_propagation_and_refusals() {
        let mut b = binding("azure-entra-foundry.yaml");
        b.spec.server.replicas = 1;
        let azure = azure::Report {
            federated_credential: Some(Ok(azure::Ensured {
                id: "/subscriptions/s/…/federatedIdentityCredentials/agents-sales".to_owned(),
                change: crate::azure::Change::Created,
                what: "federated identity credential".to_owned(),
            })),
            foundry: Some(Err(azure::Error::NoWorkloadIdentity {
                resource: "/subscriptions/s/…/projects/p".to_owned(),
            })),
            app_role: None,
            removed: Vec::new(),
        };
        let waiting = deployment(0, "False");
        let status = applied_with(&b, &waiting, &granted(), &azure, 100);
        assert_eq!(
            get(&status, "IdentityReady").reason,
            "FederatedCredentialPropagating"
        );
        assert_eq!(
            get(&status, "FoundryConnectionReady").reason,
            "NoWorkloadIdentity"
        );
        assert_eq!(get(&status, "Stalled").reason, "NoWorkloadIdentity");
        assert_eq!(
            status.federated_credential.unwrap().subject,
            "system:serviceaccount:agents:sales-mcp"
        );
        assert!(status.foundry.is_none());

        // Once the server signs in, the credential is proven.
        let available = deployment(1, "True");
        let status = applied_with(&b, &available, &granted(), &azure, 200);
        assert_eq!(
            get(&status, "IdentityReady").reason,
            "FederatedCredentialReady"
        );
    }

    #[test]
    fn a_refused_app_role_assignment_makes_the_connection_not_ready_and_stalls() {
        let mut b = binding("azure-entra-foundry.yaml");
        b.spec.server.replicas = 1;
        let available = deployment(1, "True");
        let connected = || {
            Some(Ok(azure::Ensured {
                id: "/subscriptions/s/…/connections/c".to_owned(),
                change: crate::azure::Change::Unchanged,
                what: "Azure AI Foundry connection".to_owned(),
            }))
        };
        let refused = azure::Report {
            federated_credential: None,
            foundry: connected(),
            app_role: Some(Err(crate::azure::app_role::Error::Graph(
                crate::azure::graph::Error::Graph {
                    action: crate::azure::arm::Action::CreateOrUpdate,
                    what: "app role assignment".to_owned(),
                    status: 403,
                    code: "Authorization_RequestDenied".to_owned(),
                    message: "Insufficient privileges to complete the operation.".to_owned(),
                    retry_after: None,
                },
            )
            .into())),
            removed: Vec::new(),
        };
        let status = applied_with(&b, &available, &granted(), &refused, 100);
        let foundry = get(&status, "FoundryConnectionReady");
        assert_eq!(foundry.status, "False");
        assert_eq!(foundry.reason, "GraphAuthorizationRequestDenied");
        assert!(
            foundry.message.contains("Authorization_RequestDenied"),
            "{}",
            foundry.message
        );
        assert_eq!(
            get(&status, "Stalled").reason,
            "GraphAuthorizationRequestDenied"
        );

        let assigned = azure::Report {
            federated_credential: None,
            foundry: connected(),
            app_role: Some(Ok(azure::Ensured {
                id: "assignment".to_owned(),
                change: crate::azure::Change::Created,
                what: "app role assignment".to_owned(),
            })),
            removed: Vec::new(),
        };
        let status = applied_with(&b, &available, &granted(), &assigned, 200);
        let foundry = get(&status, "FoundryConnectionReady");
        assert_eq!(foundry.status, "True");
        assert!(
            foundry.message.contains("holds app role MCP.Read"),
            "{}",
            foundry.message
        );
    }

    #[test]
    fn a_ready_binding_says_how_to_use_it_and_a_binding_not_ready_does_not() {
        let mut b = binding("azure-entra-foundry.yaml");
        b.spec.server.replicas = 1;
        let connected = azure::Report {
            federated_credential: None,
            foundry: Some(Ok(azure::Ensured {
                id: "/subscriptions/s/…/projects/sales-agents/connections/sales-postgres"
                    .to_owned(),
                change: crate::azure::Change::Unchanged,
                what: "Azure AI Foundry connection".to_owned(),
            })),
            app_role: None,
            removed: Vec::new(),
        };
        let waiting = applied_with(&b, &deployment(0, "False"), &granted(), &connected, 100);
        assert_eq!(waiting.connect, None, "nothing to use before Ready");

        let ready = applied_with(&b, &deployment(1, "True"), &granted(), &connected, 200);
        assert_eq!(
            ready.connect,
            Some(ConnectStatus {
                url: "https://mcp.contoso.com/agents/sales/mcp".to_owned(),
                audience: Some("44444444-4444-4444-4444-444444444444".to_owned()),
                token_scope: Some("44444444-4444-4444-4444-444444444444/.default".to_owned()),
                app_roles: vec!["MCP.Read".to_owned()],
                foundry_connection: Some("sales-postgres".to_owned()),
                foundry_connection_id: Some(
                    "/subscriptions/s/…/projects/sales-agents/connections/sales-postgres"
                        .to_owned()
                ),
                tools: pgmcp_crds::config::TOOLS
                    .iter()
                    .map(|t| (*t).to_owned())
                    .collect(),
            })
        );
        assert_eq!(
            get(&ready, "Ready").message,
            "the MCP server answers at https://mcp.contoso.com/agents/sales/mcp; callers send a \
             Microsoft Entra token for 44444444-4444-4444-4444-444444444444/.default carrying \
             the app role MCP.Read; Foundry agents use the project connection sales-postgres \
             (status.connect.foundryConnectionId); status.connect has what a client needs"
        );

        // Without publicUrl or caller authentication: the in-cluster URL, and no token.
        let mut open = entra();
        open.spec.server.public_url = None;
        open.spec.server.auth = pgmcp_crds::v1alpha1::ServerAuth {
            entra: None,
            none: Some(pgmcp_crds::v1alpha1::NoAuth {
                acknowledge_insecure: true,
            }),
        };
        let status = applied(&open, &deployment(2, "True"), &granted(), 100);
        let connect = status.connect.clone().unwrap();
        assert_eq!(connect.url, "http://inventory-mcp.agents.svc:8080/mcp");
        assert_eq!((connect.audience, connect.token_scope), (None, None));
        assert!(
            get(&status, "Ready")
                .message
                .contains("callers need no token"),
        );
    }

    #[test]
    fn read_only_verified_names_each_finding_and_tells_writing_from_reading_beyond_grants() {
        let b = entra();
        let with = |findings: crate::database::probe::Findings| {
            let mut report = granted();
            if let Ok(report) = &mut report {
                report.read_only = findings;
            }
            let status = applied(&b, &deployment(2, "True"), &report, 100);
            get(&status, "ReadOnlyVerified").clone()
        };
        let only_public_temp = with(crate::database::probe::Findings {
            temp_through_public: true,
            ..Default::default()
        });
        assert_eq!(
            (
                only_public_temp.status.as_str(),
                only_public_temp.reason.as_str()
            ),
            ("True", "ReadOnly")
        );
        assert!(
            only_public_temp.message.contains(
                "it can create temporary tables through PUBLIC's default TEMPORARY privilege on database inventory, which the MCP server's read-only transactions refuse"
            ),
            "{}",
            only_public_temp.message
        );

        let definer =
            "can execute SECURITY DEFINER function public.f() through PUBLIC: …".to_owned();
        let beyond = with(crate::database::probe::Findings {
            beyond_grants: vec![definer.clone()],
            ..Default::default()
        });
        assert_eq!(
            (beyond.status.as_str(), beyond.reason.as_str()),
            ("False", "ReadsBeyondGrants")
        );
        assert_eq!(
            beyond.message,
            format!("role inventory-mcp can read beyond what the binding grants: it {definer}")
        );

        let write = with(crate::database::probe::Findings {
            write: vec!["has CREATE on schema hr through PUBLIC (…)".to_owned()],
            beyond_grants: vec![definer],
            temp_through_public: false,
        });
        assert_eq!(
            (write.status.as_str(), write.reason.as_str()),
            ("False", "CanWrite")
        );
        assert!(
            write.message.starts_with("role inventory-mcp can write: it has CREATE on schema hr through PUBLIC (…); can execute SECURITY DEFINER"),
            "{}",
            write.message
        );

        let flood = with(crate::database::probe::Findings {
            write: vec!["x".repeat(1000); 200],
            ..Default::default()
        });
        assert!(flood.message.len() < 10 * 1024, "{}", flood.message.len());
        assert!(
            flood.message.ends_with("; and 192 more findings"),
            "{}",
            &flood.message[flood.message.len() - 40..]
        );
    }

    #[test]
    fn caller_classes_are_reported_each_with_its_role_and_named_when_at_fault() {
        let mut b = entra();
        crate::controller::build::tests::with_callers(&mut b);
        let class = |name: &str, tables: i32| database::ClassReport {
            name: name.to_owned(),
            role: format!("inventory-mcp__{name}"),
            grants: pgmcp_crds::v1alpha1::GrantsStatus {
                tables,
                fingerprint: name.to_owned(),
                last_repair_time: None,
                repairs: 0,
            },
            missing: Vec::new(),
            read_only: Default::default(),
            changed: None,
            repaired: false,
            membership: Vec::new(),
        };
        let with = |edit: &dyn Fn(&mut database::Report)| {
            let mut report = granted();
            if let Ok(report) = &mut report {
                report.grants.tables = 0;
                report.callers = vec![class("support", 2), class("finance", 5)];
                edit(report);
            }
            applied(&b, &deployment(2, "True"), &report, 100)
        };

        let status = with(&|_| {});
        assert_eq!(
            status
                .callers
                .iter()
                .map(|c| (c.name.as_str(), c.role.as_str(), c.grants.tables))
                .collect::<Vec<_>>(),
            [
                ("support", "inventory-mcp__support", 2),
                ("finance", "inventory-mcp__finance", 5)
            ]
        );
        assert_eq!(
            get(&status, "DatabaseReady").message,
            "role inventory-mcp can read 0 tables in database inventory, 2 tables as caller class support (role inventory-mcp__support), 5 tables as caller class finance (role inventory-mcp__finance); its privileges match the spec; the catalog tracker is in use"
        );
        assert_eq!(
            status.catalog_tracker,
            Some(CatalogTrackerStatus {
                in_use: true,
                reason: None
            })
        );
        let verified = get(&status, "ReadOnlyVerified");
        assert_eq!(verified.status, "True");
        assert!(
            verified.message.starts_with("role inventory-mcp and the roles of its caller classes (inventory-mcp__support (caller class support), inventory-mcp__finance (caller class finance)) can each only read"),
            "{}",
            verified.message
        );

        let status = with(&|r| {
            r.callers[1].missing = vec!["schema sales".to_owned()];
            r.callers[1].read_only.write =
                vec!["has CREATE on schema sales through PUBLIC (…)".to_owned()];
        });
        let ready = get(&status, "DatabaseReady");
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("False", "NotFound")
        );
        assert_eq!(
            ready.message,
            "database inventory has no schema sales (caller class finance): the rest is granted, and these will be once they exist"
        );
        let verified = get(&status, "ReadOnlyVerified");
        assert_eq!(
            (verified.status.as_str(), verified.reason.as_str()),
            ("False", "CanWrite")
        );
        assert_eq!(
            verified.message,
            "role inventory-mcp__finance (caller class finance) can write: it has CREATE on schema sales through PUBLIC (…)"
        );

        // A class removed from the spec leaves status.callers.
        let status = with(&|r| r.callers.truncate(1));
        assert_eq!(status.callers.len(), 1);
    }

    #[test]
    fn zero_replicas_is_reported_as_such() {
        let mut b = entra();
        b.spec.server.replicas = 0;
        let status = applied(&b, &deployment(0, "True"), &granted(), 100);
        assert_eq!(get(&status, "ServerAvailable").reason, "ScaledToZero");
        assert_eq!(get(&status, "Ready").reason, "ScaledToZero");
    }
}
