//! `foundry.assignAppRole`: the app role assignment that lets a Foundry project's managed
//! identity call the MCP server — the project's system-assigned identity gets the server app's
//! required role (`server.auth.entra.requiredRoles[0]`) through Microsoft Graph:
//!
//! 1. `GET /v1.0/servicePrincipals(appId='{audience}')?$select=id,appId,appRoles` (an `api://`
//!    audience that is not `api://<client id>` is looked up by `servicePrincipalNames`), and the
//!    app role whose `value` is the required role;
//! 2. ARM `GET {projectResourceId}` → `identity.principalId`;
//! 3. `GET /v1.0/servicePrincipals/{resource}/appRoleAssignedTo?$top=999`, every page (Graph
//!    pages the list; a service principal with many assignees has more than one), and only
//!    when no assignment of that role to that principal exists, `POST`
//!    `{principalId, resourceId, appRoleId}`.
//!
//! Removal deletes an assignment by its id (404 = done). No Kubernetes here.

use serde_json::{Value, json};

use super::Change;
use super::arm::{self, Action, ArmClient, ResourceKind};
use super::graph::{self, Call, GraphClient};

/// A Foundry project, read for its managed identity.
pub const PROJECT_KIND: ResourceKind = ResourceKind {
    noun: "Foundry project",
    get_op: "project_get",
    put_op: "project_put",
    delete_op: "project_delete",
    poll_op: "project_poll",
};

/// What the assignment must be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Desired {
    pub project_resource_id: String,
    /// `server.auth.entra.audience`: the server app's client id or `api://` URI.
    pub audience: String,
    /// The app role's `value`, e.g. `MCP.Read`.
    pub role: String,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Arm(#[from] arm::Error),
    #[error(transparent)]
    Graph(#[from] graph::Error),
    #[error(
        "the MCP server's app {audience} has no service principal in the tenant: create it (az ad sp create --id <client id>) so its app roles can be assigned"
    )]
    NoServicePrincipal { audience: String },
    #[error("Foundry project {project} does not exist")]
    NoProject { project: String },
    #[error(
        "Foundry project {project} has no system-assigned managed identity (identity.principalId): enable it, or assign the role yourself and set foundry.assignAppRole: false"
    )]
    NoProjectIdentity { project: String },
    #[error(
        "the MCP server's app {audience} defines no enabled app role {role} that applications can hold (it defines: {defined}); add it to the app registration or change server.auth.entra.requiredRoles"
    )]
    RoleNotDefined {
        audience: String,
        role: String,
        defined: String,
    },
    #[error(
        "foundry.assignAppRole needs server.auth.entra.requiredRoles to name the role to assign"
    )]
    NoRequiredRole,
    #[error(
        "foundry.assignAppRole needs Microsoft Graph, but the operator has no Graph client (it runs without a workload identity)"
    )]
    NoGraphClient,
    #[error("unexpected answer from Microsoft Graph about {what}: {message}")]
    InvalidResponse { what: String, message: String },
}

impl Error {
    pub fn reason(&self) -> &'static str {
        match self {
            Error::Arm(e) => e.reason(),
            Error::Graph(e) => e.reason(),
            Error::NoServicePrincipal { .. } => "GraphNotFound",
            Error::NoProject { .. } => "ArmNotFound",
            Error::NoProjectIdentity { .. } => "NoProjectIdentity",
            Error::RoleNotDefined { .. } => "AppRoleNotDefined",
            Error::NoRequiredRole => "NoRequiredRole",
            Error::NoGraphClient => "NoWorkloadIdentity",
            Error::InvalidResponse { .. } => "GraphInvalidResponse",
        }
    }

    pub fn needs_user(&self) -> bool {
        match self {
            Error::Arm(e) => e.needs_user(),
            Error::Graph(e) => e.needs_user(),
            Error::InvalidResponse { .. } => false,
            _ => true,
        }
    }
}

/// How to find the server app's service principal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Audience<'a> {
    /// By client id: the audience is a GUID, or `api://<GUID>`.
    AppId(&'a str),
    /// By one of its `servicePrincipalNames` (an application id URI such as `api://contoso-mcp`).
    Name(&'a str),
}

pub fn parse_audience(audience: &str) -> Audience<'_> {
    let audience = audience.trim().trim_end_matches('/');
    match audience.strip_prefix("api://") {
        None if is_guid(audience) => Audience::AppId(audience),
        Some(rest) if is_guid(rest) => Audience::AppId(rest),
        _ => Audience::Name(audience),
    }
}

/// `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx` in hex: what Graph object and app ids look like, and
/// all that is put in a request path.
pub fn is_guid(text: &str) -> bool {
    let groups: Vec<&str> = text.split('-').collect();
    groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(g, len)| g.len() == len && g.chars().all(|c| c.is_ascii_hexdigit()))
}

/// The id of the enabled app role with `value == role` that applications can hold.
pub fn pick_role(service_principal: &Value, role: &str) -> Option<String> {
    service_principal["appRoles"]
        .as_array()?
        .iter()
        .find(|r| {
            r["value"].as_str() == Some(role)
                && r["isEnabled"].as_bool().unwrap_or(true)
                && r["allowedMemberTypes"]
                    .as_array()
                    .is_none_or(|t| t.iter().any(|t| t.as_str() == Some("Application")))
        })
        .and_then(|r| r["id"].as_str())
        .map(str::to_owned)
}

/// The `value`s of the app roles a service principal defines, for messages.
fn role_values(service_principal: &Value) -> String {
    let values: Vec<&str> = service_principal["appRoles"]
        .as_array()
        .map(|roles| roles.iter().filter_map(|r| r["value"].as_str()).collect())
        .unwrap_or_default();
    if values.is_empty() {
        "none".to_owned()
    } else {
        values.join(", ")
    }
}

/// The POST body of `appRoleAssignedTo`.
pub fn body(principal_id: &str, resource_id: &str, app_role_id: &str) -> Value {
    json!({"principalId": principal_id, "resourceId": resource_id, "appRoleId": app_role_id})
}

/// The id of the assignment of `app_role_id` to `principal_id` among `appRoleAssignedTo` items.
pub fn find_assignment(items: &[Value], principal_id: &str, app_role_id: &str) -> Option<String> {
    items
        .iter()
        .find(|a| {
            a["principalId"]
                .as_str()
                .is_some_and(|p| p.eq_ignore_ascii_case(principal_id))
                && a["appRoleId"]
                    .as_str()
                    .is_some_and(|r| r.eq_ignore_ascii_case(app_role_id))
        })
        .and_then(|a| a["id"].as_str())
        .map(str::to_owned)
}

/// The project's system-assigned identity, from ARM's answer.
pub fn project_principal(project: &Value) -> Option<String> {
    project["identity"]["principalId"]
        .as_str()
        .filter(|p| is_guid(p))
        .map(str::to_owned)
}

/// The server app's service principal (`None` when Graph has none).
async fn service_principal(graph: &GraphClient, audience: &str) -> Result<Option<Value>, Error> {
    let what = format!("service principal of app {audience}");
    let call = Call {
        action: Action::Read,
        op: "graph_sp_get",
        what: &what,
    };
    let select = ("$select", "id,appId,appRoles");
    let found = match parse_audience(audience) {
        Audience::AppId(app_id) => {
            let url = graph.url(&format!("servicePrincipals(appId='{app_id}')"), &[select]);
            graph.get(call, &url).await?
        }
        Audience::Name(name) => {
            let filter = format!(
                "servicePrincipalNames/any(x:x eq '{}')",
                name.replace('\'', "''")
            );
            let url = graph.url("servicePrincipals", &[("$filter", &filter), select]);
            graph
                .list(call, &url)
                .await?
                .and_then(|list| list.into_iter().next())
        }
    };
    match found {
        Some(sp) if sp["id"].as_str().is_some_and(is_guid) => Ok(Some(sp)),
        Some(_) => Err(Error::InvalidResponse {
            what,
            message: "the service principal has no id".to_owned(),
        }),
        None => Ok(None),
    }
}

/// Everything an assignment is made of: Graph object ids.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parts {
    /// The server app's service principal.
    pub resource_id: String,
    pub app_role_id: String,
    /// The Foundry project's managed identity.
    pub principal_id: String,
    /// For messages: "app role MCP.Read of 4444… to the managed identity … of Foundry project …",
    /// or, for a recorded assignment, the ids.
    pub what: String,
}

/// The parts of `desired`, or `None` when one of them no longer exists (with `missing_is_error`,
/// an error naming it).
pub async fn parts(
    arm: &ArmClient,
    graph: &GraphClient,
    desired: &Desired,
    missing_is_error: bool,
) -> Result<Option<Parts>, Error> {
    let Some(sp) = service_principal(graph, &desired.audience).await? else {
        return if missing_is_error {
            Err(Error::NoServicePrincipal {
                audience: desired.audience.clone(),
            })
        } else {
            Ok(None)
        };
    };
    let resource_id = sp["id"].as_str().unwrap_or_default().to_owned();
    let Some(app_role_id) = pick_role(&sp, &desired.role) else {
        return if missing_is_error {
            Err(Error::RoleNotDefined {
                audience: desired.audience.clone(),
                role: desired.role.clone(),
                defined: role_values(&sp),
            })
        } else {
            Ok(None)
        };
    };
    let project = arm
        .get(
            &PROJECT_KIND,
            &desired.project_resource_id,
            &arm.settings().foundry_api_version,
        )
        .await?;
    let principal_id = match project.as_ref().map(project_principal) {
        Some(Some(principal)) => principal,
        _ if !missing_is_error => return Ok(None),
        None => {
            return Err(Error::NoProject {
                project: desired.project_resource_id.clone(),
            });
        }
        Some(None) => {
            return Err(Error::NoProjectIdentity {
                project: desired.project_resource_id.clone(),
            });
        }
    };
    Ok(Some(Parts {
        what: format!(
            "app role assignment of {} on {} to the managed identity {} of Foundry project {}",
            desired.role, desired.audience, principal_id, desired.project_resource_id
        ),
        resource_id,
        app_role_id,
        principal_id,
    }))
}

/// `servicePrincipals/{resource}/appRoleAssignedTo`.
fn assignments_path(resource_id: &str) -> String {
    format!("servicePrincipals/{resource_id}/appRoleAssignedTo")
}

/// The id of the assignment `parts` describes, read from every page of the service
/// principal's assignments.
pub async fn find(graph: &GraphClient, parts: &Parts) -> Result<Option<String>, Error> {
    let what = &parts.what;
    let call = Call {
        action: Action::Read,
        op: "graph_assignments_list",
        what,
    };
    let url = graph.url(&assignments_path(&parts.resource_id), &[("$top", "999")]);
    let list = graph.list(call, &url).await?.unwrap_or_default();
    Ok(find_assignment(
        &list,
        &parts.principal_id,
        &parts.app_role_id,
    ))
}

/// Creates the assignment; returns Graph's id of it.
pub async fn create(graph: &GraphClient, parts: &Parts) -> Result<String, Error> {
    let what = &parts.what;
    let call = Call {
        action: Action::CreateOrUpdate,
        op: "graph_assignment_post",
        what,
    };
    let stored = graph
        .post(
            call,
            &graph.url(&assignments_path(&parts.resource_id), &[]),
            &body(&parts.principal_id, &parts.resource_id, &parts.app_role_id),
        )
        .await?;
    let id = stored["id"]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| Error::InvalidResponse {
            what: what.clone(),
            message: "the created assignment has no id".to_owned(),
        })?;
    tracing::info!(assignment = %id, principal = %parts.principal_id, "app role assigned");
    Ok(id)
}

/// Deletes assignment `id` of service principal `resource_id`; `Ok(false)` when it was gone.
pub async fn delete_by_id(graph: &GraphClient, resource_id: &str, id: &str) -> Result<bool, Error> {
    let what = format!("app role assignment {id} of service principal {resource_id}");
    // Assignment ids are base64url and object ids GUIDs: keep the path to those alphabets.
    let base64url = |s: &str| {
        !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_'))
    };
    if !base64url(id) || !is_guid(resource_id) {
        return Err(Error::InvalidResponse {
            what,
            message: "the assignment id is not base64url or the service principal id not a GUID"
                .to_owned(),
        });
    }
    let call = Call {
        action: Action::Delete,
        op: "graph_assignment_delete",
        what: &what,
    };
    let deleted = graph
        .delete(
            call,
            &graph.url(&format!("{}/{id}", assignments_path(resource_id)), &[]),
        )
        .await?;
    tracing::info!(assignment = %id, deleted, "app role assignment removed");
    Ok(deleted)
}

/// Makes sure the project's identity holds the role: returns the assignment id and whether it
/// was created now.
pub async fn ensure(
    arm: &ArmClient,
    graph: &GraphClient,
    desired: &Desired,
) -> Result<(String, Change), Error> {
    let Some(parts) = parts(arm, graph, desired, true).await? else {
        return Err(Error::NoProject {
            project: desired.project_resource_id.clone(),
        });
    };
    if let Some(id) = find(graph, &parts).await? {
        return Ok((id, Change::Unchanged));
    }
    Ok((create(graph, &parts).await?, Change::Created))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    const APP: &str = "44444444-4444-4444-8444-444444444444";

    #[test]
    fn audiences_become_app_ids_or_names() {
        assert_eq!(parse_audience(APP), Audience::AppId(APP));
        assert_eq!(
            parse_audience(&format!("api://{APP}")),
            Audience::AppId(APP)
        );
        assert_eq!(
            parse_audience("api://contoso-mcp"),
            Audience::Name("api://contoso-mcp")
        );
        assert!(!is_guid("44444444-4444-4444-8444-44444444444"));
        assert!(!is_guid("4444444444444444844444444444444444"));
        assert!(!is_guid("44444444-4444-4444-8444-44444444444'"));
    }

    #[test]
    fn the_enabled_application_role_with_that_value_is_picked() {
        let sp = json!({"id": "r", "appRoles": [
            {"id": "u", "value": "MCP.Read", "isEnabled": true, "allowedMemberTypes": ["User"]},
            {"id": "off", "value": "MCP.Read", "isEnabled": false, "allowedMemberTypes": ["Application"]},
            {"id": "a", "value": "MCP.Read", "isEnabled": true, "allowedMemberTypes": ["User", "Application"]},
            {"id": "w", "value": "MCP.Write", "isEnabled": true, "allowedMemberTypes": ["Application"]},
        ]});
        assert_eq!(pick_role(&sp, "MCP.Read").as_deref(), Some("a"));
        assert_eq!(pick_role(&sp, "MCP.Admin"), None);
        assert_eq!(role_values(&sp), "MCP.Read, MCP.Read, MCP.Read, MCP.Write");
        assert_eq!(role_values(&json!({})), "none");
    }

    #[test]
    fn the_body_and_existing_assignments_use_graph_field_names() {
        assert_eq!(
            body("p", "r", "a"),
            json!({"principalId": "p", "resourceId": "r", "appRoleId": "a"})
        );
        let list = [
            json!({"id": "x1", "principalId": "P", "appRoleId": "other"}),
            json!({"id": "x2", "principalId": "P", "appRoleId": "A"}),
        ];
        assert_eq!(find_assignment(&list, "p", "a").as_deref(), Some("x2"));
        assert_eq!(find_assignment(&list, "q", "a"), None);
        assert_eq!(find_assignment(&[], "p", "a"), None);
    }

    #[test]
    fn the_project_identity_is_its_system_assigned_principal() {
        let p = "99999999-9999-4999-8999-999999999999";
        assert_eq!(
            project_principal(&json!({"identity": {"type": "SystemAssigned", "principalId": p}}))
                .as_deref(),
            Some(p)
        );
        assert_eq!(project_principal(&json!({"properties": {}})), None);
        assert_eq!(
            Error::NoProjectIdentity {
                project: "/subscriptions/s/…/projects/p".to_owned()
            }
            .reason(),
            "NoProjectIdentity"
        );
    }
}
