//! The Azure AI Foundry project connection that makes a binding's MCP server a tool for the
//! project's agents: category `RemoteTool` (group `GenericProtocol`), authenticated with the
//! project's managed identity (`ProjectManagedIdentity`) for the server's Entra app, `target`
//! the server's public URL (body as in Azure-Samples/azure-postgres-mcp-demo, enum values from
//! azure-mgmt-cognitiveservices; the whole body is in the test
//! `body_is_a_remote_tool_with_the_project_identity`).
//!
//! `PUT {projectResourceId}/connections/{connectionName}?api-version=2025-04-01-preview`, only
//! when what ARM holds differs in a field we set. No Kubernetes here.

use serde_json::{Value, json};

use super::AzureSettings;
use super::arm::{ArmClient, Error, ResourceKind};

pub const CATEGORY: &str = "RemoteTool";
pub const GROUP: &str = "GenericProtocol";
pub const AUTH_TYPE: &str = "ProjectManagedIdentity";
/// `metadata.type` Foundry shows custom MCP servers with.
pub const METADATA_TYPE: &str = "custom_MCP";

pub const KIND: ResourceKind = ResourceKind {
    noun: "Foundry connection",
    get_op: "connection_get",
    put_op: "connection_put",
    delete_op: "connection_delete",
    poll_op: "connection_poll",
};

/// What the connection must say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Desired {
    /// `/subscriptions/…/providers/Microsoft.CognitiveServices/accounts/<acct>/projects/<proj>`.
    pub project_resource_id: String,
    pub connection_name: String,
    /// The client id of the MCP server's Entra app (`server.auth.entra.audience`).
    pub audience: String,
    /// `server.publicUrl`.
    pub target: String,
}

/// The connection's ARM id.
pub fn resource_id(project_resource_id: &str, connection_name: &str) -> String {
    format!(
        "{}/connections/{connection_name}",
        project_resource_id.trim_end_matches('/')
    )
}

/// The PUT body.
pub fn body(desired: &Desired) -> Value {
    json!({
        "properties": {
            "category": CATEGORY,
            "group": GROUP,
            "authType": AUTH_TYPE,
            "audience": desired.audience,
            "target": desired.target,
            "isSharedToAll": false,
            "sharedUserList": [],
            "useWorkspaceManagedIdentity": false,
            "metadata": {"type": METADATA_TYPE},
        }
    })
}

/// Whether the connection ARM returned says what we set. ARM adds fields
/// (`createdByWorkspaceArmId`, `peRequirement`, …) and may add metadata keys: those are not
/// ours. `group` is read-only (ARM derives it from the category), so it is sent but not
/// compared. Absent booleans and lists read as ARM's defaults (false, empty).
fn matches(observed: &Value, desired: &Desired) -> bool {
    let p = &observed["properties"];
    let text = |field: &str| p[field].as_str();
    let flag = |field: &str| p[field].as_bool().unwrap_or(false);
    let users_empty = match &p["sharedUserList"] {
        Value::Null => true,
        Value::Array(users) => users.is_empty(),
        _ => false,
    };
    text("category").is_some_and(|c| c.eq_ignore_ascii_case(CATEGORY))
        && text("authType").is_some_and(|a| a.eq_ignore_ascii_case(AUTH_TYPE))
        && text("audience") == Some(desired.audience.as_str())
        && text("target") == Some(desired.target.as_str())
        && !flag("isSharedToAll")
        && users_empty
        && !flag("useWorkspaceManagedIdentity")
        && p["metadata"]["type"].as_str() == Some(METADATA_TYPE)
}

pub use super::{ensure, observe, write};

impl super::Resource for Desired {
    const KIND: ResourceKind = KIND;

    fn id(&self) -> String {
        resource_id(&self.project_resource_id, &self.connection_name)
    }

    fn api_version(settings: &AzureSettings) -> &str {
        &settings.foundry_api_version
    }

    fn body(&self) -> Value {
        body(self)
    }

    fn matches(&self, observed: &Value) -> bool {
        matches(observed, self)
    }
}

/// Deletes the connection; `Ok` when it is already gone.
pub async fn delete(
    arm: &ArmClient,
    project_resource_id: &str,
    connection_name: &str,
) -> Result<(), Error> {
    let id = resource_id(project_resource_id, connection_name);
    arm.delete(&KIND, &id, &arm.settings().foundry_api_version)
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn desired() -> Desired {
        Desired {
            project_resource_id: "/subscriptions/s/resourceGroups/rg/providers/Microsoft.CognitiveServices/accounts/acct/projects/proj".into(),
            connection_name: "sales-postgres".into(),
            audience: "44444444-4444-4444-8444-444444444444".into(),
            target: "https://mcp.contoso.com/agents/sales/mcp".into(),
        }
    }

    #[test]
    fn body_is_a_remote_tool_with_the_project_identity() {
        assert_eq!(
            body(&desired()),
            json!({ "properties": {
                "category": "RemoteTool", "group": "GenericProtocol",
                "authType": "ProjectManagedIdentity",
                "audience": "44444444-4444-4444-8444-444444444444",
                "target": "https://mcp.contoso.com/agents/sales/mcp",
                "isSharedToAll": false, "sharedUserList": [], "useWorkspaceManagedIdentity": false,
                "metadata": { "type": "custom_MCP" } } })
        );
        assert_eq!(
            resource_id(&desired().project_resource_id, "sales-postgres"),
            "/subscriptions/s/resourceGroups/rg/providers/Microsoft.CognitiveServices/accounts/acct/projects/proj/connections/sales-postgres"
        );
    }

    #[test]
    fn fields_arm_adds_do_not_count_as_drift_but_ours_do() {
        let d = desired();
        let mut observed = body(&d);
        observed["id"] = json!("/x");
        let p = &mut observed["properties"];
        p["group"] = json!("ServicesAndApps");
        p["createdByWorkspaceArmId"] = json!("/subscriptions/s/…/projects/proj");
        p["peRequirement"] = json!("NotRequired");
        p["metadata"]["ApiVersion"] = json!("2025-04-01-preview");
        p.as_object_mut().unwrap().remove("sharedUserList");
        assert!(matches(&observed, &d));
        for (field, value) in [
            ("target", json!("https://old.contoso.com/mcp")),
            ("audience", json!("other")),
            ("category", json!("GenericHttp")),
            ("authType", json!("AAD")),
            ("isSharedToAll", json!(true)),
            ("sharedUserList", json!(["someone"])),
            ("useWorkspaceManagedIdentity", json!(true)),
            ("metadata", json!({"type": "other"})),
        ] {
            let mut changed = observed.clone();
            changed["properties"][field] = value;
            assert!(!matches(&changed, &d), "{field}");
        }
        let mut missing = observed.clone();
        missing["properties"]
            .as_object_mut()
            .unwrap()
            .remove("audience");
        assert!(!matches(&missing, &d));
    }
}
