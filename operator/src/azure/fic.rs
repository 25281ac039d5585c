//! The federated identity credential of a binding's user-assigned managed identity: it lets
//! the server's ServiceAccount (`system:serviceaccount:<ns>:<sa>`, tokens from the cluster's
//! OIDC issuer with audience `api://AzureADTokenExchange`) act as that identity.
//!
//! `PUT {identityResourceId}/federatedIdentityCredentials/{name}?api-version=2023-01-31` with
//! `{"properties":{"issuer","subject","audiences"}}`, only when what ARM holds differs.
//! Pure naming and body functions plus the ARM calls; no Kubernetes here.

use serde_json::{Value, json};

use super::AzureSettings;
use super::arm::{ArmClient, Error, ResourceKind};

/// The one audience workload identity federation uses.
pub const AUDIENCE: &str = pgmcp_identity::TOKEN_EXCHANGE_AUDIENCE;
/// ARM's limits on a federated identity credential's name.
pub const NAME_MIN: usize = 3;
pub const NAME_MAX: usize = 120;

pub const KIND: ResourceKind = ResourceKind {
    noun: "federated identity credential",
    get_op: "fic_get",
    put_op: "fic_put",
    delete_op: "fic_delete",
    poll_op: "fic_poll",
};

/// What the credential must say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Desired {
    /// `/subscriptions/…/providers/Microsoft.ManagedIdentity/userAssignedIdentities/<name>`.
    pub identity_resource_id: String,
    /// The credential's name: `spec…federatedCredential.name`, else [`name_for`].
    pub name: String,
    /// The cluster's OIDC issuer, exactly as it appears in the tokens' `iss`.
    pub issuer: String,
    /// `system:serviceaccount:<namespace>:<serviceaccount>` ([`subject`]).
    pub subject: String,
}

/// The subject of a ServiceAccount's tokens.
pub fn subject(namespace: &str, service_account: &str) -> String {
    format!("system:serviceaccount:{namespace}:{service_account}")
}

/// The credential name for binding `namespace/binding`: `<namespace>_<binding>` with the
/// binding's dots as underscores. Kubernetes names use neither `_` nor uppercase, and
/// namespaces no dots, so distinct bindings get distinct names (no `-` join that would make
/// `a-b/c` and `a/b-c` collide). Past 120 characters the name is cut and ends in a hash of the
/// full `namespace/binding`, so it stays unique and stable.
pub fn name_for(namespace: &str, binding: &str) -> String {
    let sanitize = |s: &str| -> String {
        s.chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .collect()
    };
    let mut name = format!("{}_{}", sanitize(namespace), sanitize(binding));
    if !name.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        name.insert(0, 'b');
    }
    while name.len() < NAME_MIN {
        name.push('_');
    }
    if name.len() <= NAME_MAX {
        return name;
    }
    let digest = {
        use sha2::Digest as _;
        let hash = sha2::Sha256::digest(format!("{namespace}/{binding}").as_bytes());
        hash.iter()
            .take(8)
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    };
    // All ASCII by now: byte slicing is char slicing.
    name.truncate(NAME_MAX - digest.len() - 1);
    format!("{name}-{digest}")
}

/// Whether ARM accepts `name`: 3–120 characters, letters, digits, `-` and `_`, starting with a
/// letter or digit.
pub fn is_valid_name(name: &str) -> bool {
    (NAME_MIN..=NAME_MAX).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// The credential's ARM id.
pub fn resource_id(identity_resource_id: &str, name: &str) -> String {
    format!(
        "{}/federatedIdentityCredentials/{name}",
        identity_resource_id.trim_end_matches('/')
    )
}

/// The PUT body.
pub fn body(desired: &Desired) -> Value {
    json!({
        "properties": {
            "issuer": desired.issuer,
            "subject": desired.subject,
            "audiences": [AUDIENCE],
        }
    })
}

/// Whether the credential ARM returned says what `desired` says (issuer and subject exactly,
/// audiences as a set).
fn matches(observed: &Value, desired: &Desired) -> bool {
    let properties = &observed["properties"];
    let mut audiences: Vec<&str> = properties["audiences"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    audiences.sort_unstable();
    audiences.dedup();
    properties["issuer"].as_str() == Some(desired.issuer.as_str())
        && properties["subject"].as_str() == Some(desired.subject.as_str())
        && audiences == [AUDIENCE]
}

pub use super::{ensure, observe, write};

impl super::Resource for Desired {
    const KIND: ResourceKind = KIND;

    fn id(&self) -> String {
        resource_id(&self.identity_resource_id, &self.name)
    }

    fn api_version(settings: &AzureSettings) -> &str {
        &settings.fic_api_version
    }

    fn body(&self) -> Value {
        body(self)
    }

    fn matches(&self, observed: &Value) -> bool {
        matches(observed, self)
    }
}

/// Deletes the credential; `Ok` when it is already gone.
pub async fn delete(arm: &ArmClient, identity_resource_id: &str, name: &str) -> Result<(), Error> {
    let id = resource_id(identity_resource_id, name);
    arm.delete(&KIND, &id, &arm.settings().fic_api_version)
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn desired() -> Desired {
        Desired {
            identity_resource_id: "/subscriptions/s/resourceGroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/sales-mcp".into(),
            name: name_for("agents", "sales"),
            issuer: "https://oidc.prod-aks.azure.com/tenant/issuer/".into(),
            subject: subject("agents", "sales-mcp"),
        }
    }

    #[test]
    fn body_is_the_documented_put_body() {
        assert_eq!(
            body(&desired()),
            json!({"properties": {
                "issuer": "https://oidc.prod-aks.azure.com/tenant/issuer/",
                "subject": "system:serviceaccount:agents:sales-mcp",
                "audiences": ["api://AzureADTokenExchange"],
            }})
        );
        assert_eq!(
            resource_id(&desired().identity_resource_id, "agents_sales"),
            "/subscriptions/s/resourceGroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/sales-mcp/federatedIdentityCredentials/agents_sales"
        );
    }

    #[test]
    fn names_are_deterministic_distinct_and_within_arm_limits() {
        assert_eq!(name_for("agents", "sales"), "agents_sales");
        assert_eq!(name_for("agents", "sales.eu"), "agents_sales_eu");
        assert_ne!(name_for("a-b", "c"), name_for("a", "b-c"));
        assert_eq!(name_for("a", "b"), "a_b");
        let long_ns = "n".repeat(63);
        let long_binding = format!("{}.x", "b".repeat(250));
        let long = name_for(&long_ns, &long_binding);
        assert_eq!(long.len(), NAME_MAX);
        assert_eq!(long, name_for(&long_ns, &long_binding));
        assert_ne!(long, name_for(&long_ns, &format!("{}.y", "b".repeat(250))));
        for name in [
            name_for("agents", "sales"),
            name_for("a", "b"),
            long,
            name_for("-weird", "Ünïcode"),
        ] {
            assert!(is_valid_name(&name), "{name}");
        }
        for bad in ["ab", "_ab", "-ab", "a.b.c", "a b", &"a".repeat(121)] {
            assert!(!is_valid_name(bad), "{bad}");
        }
    }

    #[test]
    fn only_issuer_subject_and_audiences_matter() {
        let d = desired();
        let mut observed = json!({
            "id": "/x",
            "name": d.name,
            "type": "Microsoft.ManagedIdentity/userAssignedIdentities/federatedIdentityCredentials",
            "systemData": {"createdAt": "2025-01-01T00:00:00Z"},
            "properties": {
                "issuer": d.issuer, "subject": d.subject,
                "audiences": ["api://AzureADTokenExchange"],
            }
        });
        assert!(matches(&observed, &d));
        observed["properties"]["issuer"] = json!("https://other/");
        assert!(!matches(&observed, &d));
        observed["properties"]["issuer"] = json!(d.issuer);
        observed["properties"]["audiences"] = json!(["api://AzureADTokenExchange", "other"]);
        assert!(!matches(&observed, &d));
        observed["properties"]["audiences"] = json!([]);
        assert!(!matches(&observed, &d));
        observed["properties"]["audiences"] = json!(["api://AzureADTokenExchange"]);
        observed["properties"]["subject"] = json!("system:serviceaccount:agents:other");
        assert!(!matches(&observed, &d));
    }
}
