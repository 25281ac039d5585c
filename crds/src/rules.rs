//! CEL validation rules shared by several fields of the CRD schema.
//!
//! Each function returns a `Rule` whose message names what is wrong and how to fix it; the
//! apiserver prefixes it with the field path (`spec.identity.entra.clientId: Invalid value: …`).
//! Patterns avoid backslashes (`[.]` instead of `\.`) so they read the same in Rust, CEL and YAML.

use kube::core::{Message, Reason, Rule};

/// RE2 pattern of a GUID, as Entra tenant, client and object ids are written.
const GUID: &str = "[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}";

/// Start of every ARM resource id: subscription and resource group (case-insensitive, as in ARM).
const ARM_PREFIX: &str = "(?i)^/subscriptions/[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}/resourcegroups/[-a-z0-9._()]{1,90}/providers/";

pub(crate) fn guid(field: &str) -> Rule {
    Rule::new(format!("self.matches('^{GUID}$')")).message(Message::Message(format!(
        "{field} must be a GUID such as 00000000-0000-0000-0000-000000000000"
    )))
}

pub(crate) fn immutable(field: &str, hint: &str) -> Rule {
    Rule::new("self == oldSelf")
        .message(Message::Message(format!("{field} is immutable: {hint}")))
        .reason(Reason::FieldValueForbidden)
}

/// Exactly one of two optional members of an object is set.
pub(crate) fn exactly_one(a: &str, b: &str, message: &str) -> Rule {
    Rule::new(format!(
        "(has(self.{a}) ? 1 : 0) + (has(self.{b}) ? 1 : 0) == 1"
    ))
    .message(message)
}

pub(crate) fn managed_identity_id() -> Rule {
    Rule::new(format!(
        "self.matches('{ARM_PREFIX}microsoft[.]managedidentity/userassignedidentities/[^/]+$')"
    ))
    .message(
        "identityResourceId must be the ARM id of a user-assigned managed identity: \
         /subscriptions/<guid>/resourceGroups/<group>/providers/Microsoft.ManagedIdentity/userAssignedIdentities/<name>",
    )
}

pub(crate) fn foundry_project_id() -> Rule {
    Rule::new(format!(
        "self.matches('{ARM_PREFIX}microsoft[.]cognitiveservices/accounts/[^/]+/projects/[^/]+$')"
    ))
    .message(
        "projectResourceId must be the ARM id of an Azure AI Foundry project: \
         /subscriptions/<guid>/resourceGroups/<group>/providers/Microsoft.CognitiveServices/accounts/<account>/projects/<project>",
    )
}

pub(crate) fn https_url(field: &str) -> Rule {
    Rule::new("isURL(self) && self.startsWith('https://')").message(Message::Message(format!(
        "{field} must be an absolute https:// URL"
    )))
}

/// A PostgreSQL role the operator may create: not reserved by PostgreSQL or Azure.
pub(crate) fn creatable_role(field: &str) -> Rule {
    Rule::new(
        "!self.startsWith('pg_') && !(self in ['postgres', 'public', 'azure_pg_admin', 'azure_superuser', 'azuresu', 'replication'])",
    )
    .message(Message::Message(format!(
        "{field} names a reserved role: names starting with pg_ and the built-in roles \
         postgres, public, azure_pg_admin, azure_superuser, azuresu and replication cannot be used"
    )))
}
