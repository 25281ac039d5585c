//! `PostgresMcpBinding` v1alpha1: one object that gives AI agents safe, read-only access to a
//! PostgreSQL database through an MCP server.
//!
//! Every `///` comment here becomes the schema description that `kubectl explain` prints, so it
//! is written for the person filling in the YAML. Validation that the apiserver can do (schema
//! bounds and CEL rules) lives here too, so an invalid binding is rejected at `kubectl apply`
//! with the field named, before the operator ever sees it.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ResourceRequirements, Toleration};
use k8s_openapi::api::networking::v1::NetworkPolicyPeer;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Desired state of a binding: the database, the server's database identity, the tables it may
/// read, the MCP server, and the optional Azure AI Foundry connection. The operator creates the
/// database principal and its SELECT grants, the workload identity, the MCP server Deployment and
/// Service, and the Foundry connection, and reports progress in status.conditions.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "pgmcp.dev",
    version = "v1alpha1",
    kind = "PostgresMcpBinding",
    namespaced,
    shortname = "pgmcp",
    shortname = "pmb",
    category = "pgmcp",
    status = "PostgresMcpBindingStatus",
    derive = "PartialEq",
    doc = "A PostgresMcpBinding gives AI agents read-only access to one PostgreSQL database through an MCP (Model Context Protocol) server.",
    // Raw JSON form: the structured form repeats `type_ = "string"`, which clippy's
    // duplicated_attributes lint rejects.
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].reason"}"#,
    printcolumn = r#"{"name":"Endpoint","type":"string","jsonPath":".status.endpoint"}"#,
    printcolumn = r#"{"name":"URL","type":"string","priority":1,"jsonPath":".status.connect.url"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    // Children are named <binding>-mcp, and a Service name must be a DNS-1035 label. No
    // fieldPath: the apiserver accepts only paths inside the schema, and metadata has none.
    validation = Rule::new("self.metadata.name.size() <= 59 && self.metadata.name.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$')")
        .message("metadata.name must be at most 59 lower-case letters, digits or '-', starting with a letter: it names the MCP server's Service (<name>-mcp)")
)]
#[x_kube(
    validation = Rule::new("!has(self.identity.entra) || has(self.postgres.admin.entra)")
        .message("identity.entra requires postgres.admin.entra: only a Microsoft Entra administrator can create Entra principals (pgaadauth_create_principal)")
        .field_path(".postgres.admin"),
    validation = Rule::new("!(has(self.identity.entra) || has(self.postgres.admin.entra)) || self.postgres.sslMode in ['require', 'verify-full']")
        .message("sslMode must be require or verify-full when Entra tokens are used: the token is sent as the password")
        .field_path(".postgres.sslMode"),
    validation = Rule::new("!has(self.access.callers) || size(self.access.callers) == 0 || has(self.server.auth.entra)")
        .message("access.callers requires server.auth.entra: caller classes are matched on the claims of the caller's verified Entra token")
        .field_path(".server.auth"),
    validation = Rule::new("!has(self.foundry) || has(self.server.auth.entra)")
        .message("foundry requires server.auth.entra: Foundry calls the MCP server with Entra tokens of the project's managed identity")
        .field_path(".server.auth"),
    validation = Rule::new("!has(self.foundry) || (has(self.server.publicUrl) && self.server.publicUrl.startsWith('https://'))")
        .message("foundry requires server.publicUrl, an https:// URL that Azure AI Foundry can reach: it becomes the connection target")
        .field_path(".server.publicUrl"),
)]
#[serde(rename_all = "camelCase")]
pub struct PostgresMcpBindingSpec {
    /// The PostgreSQL server and database to expose, and how the operator connects to it as an
    /// administrator to create the principal and its grants.
    pub postgres: PostgresSpec,
    /// How the MCP server authenticates to PostgreSQL: exactly one of `entra` (Azure Database for
    /// PostgreSQL with AKS workload identity, no secret anywhere) or `password` (any PostgreSQL;
    /// the operator creates a LOGIN role with a generated password kept in a Secret).
    pub identity: IdentitySpec,
    /// Which schemas and tables the agent may read. Only SELECT is ever granted.
    pub access: AccessSpec,
    /// The MCP server the operator deploys: replicas, result limits, caller authentication and
    /// pod settings.
    pub server: ServerSpec,
    /// Optional Azure AI Foundry project connection, so Foundry agents can use the server as a
    /// tool. Requires server.auth.entra and server.publicUrl.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub foundry: Option<FoundrySpec>,
}

/// Where the database is and how the operator reaches it as an administrator.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PostgresSpec {
    /// Host name or IP address of the PostgreSQL server, without scheme or port, for example
    /// contoso.postgres.database.azure.com. Immutable: the principal lives on this server.
    #[schemars(length(min = 1, max = 253))]
    #[x_kube(
        validation = Rule::new("self.matches('^[A-Za-z0-9]([-A-Za-z0-9.]*[A-Za-z0-9])?$') || self.matches('^[0-9a-fA-F:]+$')")
            .message("host must be a host name or IP address, without scheme, port or path"),
        validation = crate::rules::immutable("host", "the principal lives on this server; create a new binding for another server")
    )]
    pub host: String,
    /// TCP port of the PostgreSQL server. Immutable, like host.
    #[serde(default = "default_port")]
    #[schemars(range(min = 1, max = 65535))]
    #[x_kube(validation = crate::rules::immutable("port", "the principal lives on this server; create a new binding for another server"))]
    pub port: i32,
    /// The database the agent reads. Changing it moves the grants: they are made in the new
    /// database, then revoked in the old one.
    #[schemars(length(min = 1, max = 63))]
    pub database: String,
    /// TLS mode for every connection (operator and MCP server): disable, prefer, require or
    /// verify-full. Must be require or verify-full when Entra tokens are used.
    #[serde(default)]
    pub ssl_mode: SslMode,
    /// How the operator connects as an administrator: exactly one of `entra` or
    /// `passwordSecretRef`.
    pub admin: AdminSpec,
}

fn default_port() -> i32 {
    5432
}

/// TLS mode, with libpq's meaning.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum SslMode {
    /// Plain TCP. Only for a database on the same trusted network.
    Disable,
    /// TLS when the server offers it.
    Prefer,
    /// TLS, without verifying the server certificate.
    #[default]
    Require,
    /// TLS with the server certificate and host name verified.
    VerifyFull,
}

impl SslMode {
    /// The value as libpq spells it (`verify-full`).
    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyFull => "verify-full",
        }
    }
}

/// Credentials of the operator's administrative connection.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(validation = crate::rules::exactly_one(
    "entra",
    "passwordSecretRef",
    "set exactly one of admin.entra (the operator's own workload identity) or admin.passwordSecretRef"
))]
#[serde(rename_all = "camelCase")]
pub struct AdminSpec {
    /// The operator connects with its own workload-identity token as a Microsoft Entra
    /// administrator of the server (Azure Database for PostgreSQL).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entra: Option<AdminEntra>,
    /// The operator connects with a user name and password read from a Secret in the binding's
    /// namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_secret_ref: Option<SecretKeyRef>,
    /// Database the operator connects to for creating the principal (Azure runs
    /// pgaadauth_create_principal there). Grants are always made in postgres.database.
    #[serde(default = "default_admin_database")]
    #[schemars(length(min = 1, max = 63))]
    pub database: String,
}

fn default_admin_database() -> String {
    "postgres".to_owned()
}

/// The operator's own Entra identity as a PostgreSQL administrator.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AdminEntra {
    /// PostgreSQL role name of the Entra administrator the operator's identity is registered as
    /// (the display name given when the administrator was added to the server).
    #[schemars(length(min = 1, max = 63))]
    pub user: String,
}

/// A user name and password in a Secret of the binding's namespace.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// Name of the Secret.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Key of the user name in the Secret.
    #[serde(default = "default_username_key")]
    #[schemars(length(min = 1, max = 253))]
    pub username_key: String,
    /// Key of the password in the Secret.
    #[serde(default = "default_password_key")]
    #[schemars(length(min = 1, max = 253))]
    pub password_key: String,
}

fn default_username_key() -> String {
    "username".to_owned()
}

fn default_password_key() -> String {
    "password".to_owned()
}

/// The database identity of the MCP server.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(
    validation = crate::rules::exactly_one(
        "entra",
        "password",
        "set exactly one of identity.entra (Azure, workload identity) or identity.password (any PostgreSQL)"
    ),
    validation = Rule::new("has(self.entra) == has(oldSelf.entra)")
        .message("the identity mode cannot change between entra and password: create a new binding instead")
        .reason(Reason::FieldValueForbidden),
)]
#[serde(rename_all = "camelCase")]
pub struct IdentitySpec {
    /// The MCP server signs in to Azure Database for PostgreSQL as a user-assigned managed
    /// identity through AKS workload identity. No secret is stored anywhere.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entra: Option<EntraIdentity>,
    /// The MCP server signs in with a password the operator generates and keeps in a Secret owned
    /// by the binding. For PostgreSQL servers without Entra ID.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<PasswordIdentity>,
}

/// A user-assigned managed identity used through AKS workload identity.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct EntraIdentity {
    /// Client id of the user-assigned managed identity.
    #[schemars(length(max = 36))]
    #[x_kube(validation = crate::rules::guid("clientId"))]
    pub client_id: String,
    /// Entra tenant id of the managed identity.
    #[schemars(length(max = 36))]
    #[x_kube(validation = crate::rules::guid("tenantId"))]
    pub tenant_id: String,
    /// PostgreSQL role name of the principal, usually the managed identity's display name.
    /// Immutable: the role is created once and its grants are tied to it.
    #[schemars(length(min = 1, max = 63))]
    #[x_kube(
        validation = crate::rules::creatable_role("principalName"),
        validation = crate::rules::immutable("principalName", "create a new binding to use another principal")
    )]
    pub principal_name: String,
    /// Object (principal) id of the managed identity. When set the principal is created with
    /// pgaadauth_create_principal_with_oid, which does not depend on the display name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 36))]
    #[x_kube(
        validation = crate::rules::guid("objectId"),
        validation = crate::rules::immutable("objectId", "create a new binding to use another principal")
    )]
    pub object_id: Option<String>,
    /// When set, the operator creates the federated identity credential that lets the MCP
    /// server's ServiceAccount sign in as this managed identity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub federated_credential: Option<FederatedCredentialSpec>,
}

/// The federated identity credential on the managed identity (created through ARM).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct FederatedCredentialSpec {
    /// ARM id of the user-assigned managed identity:
    /// /subscriptions/<guid>/resourceGroups/<group>/providers/Microsoft.ManagedIdentity/userAssignedIdentities/<name>.
    #[schemars(length(max = 512))]
    #[x_kube(validation = crate::rules::managed_identity_id())]
    pub identity_resource_id: String,
    /// OIDC issuer URL of the AKS cluster (az aks show --query oidcIssuerProfile.issuerUrl).
    /// Defaults to the operator's --oidc-issuer setting.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 512))]
    #[x_kube(validation = crate::rules::https_url("issuer"))]
    pub issuer: Option<String>,
    /// Name of the federated credential. Defaults to <namespace>_<binding name>, with the
    /// binding name's dots as underscores (cut to 120 characters with a hash of the full name
    /// when longer). Changing it replaces the credential: the new one is created, then the old
    /// one deleted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 120))]
    #[x_kube(validation = Rule::new("self.matches('^[A-Za-z0-9][-A-Za-z0-9_]{2,119}$')")
        .message("name must be 3 to 120 letters, digits, '-' or '_', starting with a letter or digit"))]
    pub name: Option<String>,
}

/// A PostgreSQL LOGIN role with a generated password.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PasswordIdentity {
    /// Name of the LOGIN role the operator creates. Immutable.
    #[schemars(length(min = 1, max = 63))]
    #[x_kube(
        validation = crate::rules::creatable_role("roleName"),
        validation = crate::rules::immutable("roleName", "create a new binding to use another role")
    )]
    pub role_name: String,
    /// Name of the Secret (owned by the binding) that receives the generated password.
    /// Defaults to <binding name>-postgres.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    #[x_kube(validation = Rule::new("self.matches('^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$')")
        .message("secretName must be a DNS subdomain: lower-case letters, digits, '-' and '.'"))]
    pub secret_name: Option<String>,
}

/// What the agent may read.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("(has(self.grants) && size(self.grants) > 0) || (has(self.callers) && size(self.callers) > 0)")
        .message("grants must not be empty: list the schemas and tables to grant, or define caller classes in callers")
        .field_path(".grants")
        .reason(Reason::FieldValueRequired),
)]
pub struct AccessSpec {
    /// Schemas and tables to grant SELECT on; one entry per schema. With callers, these are the
    /// grants of every caller that matches no caller class (the default class); leave them out
    /// to refuse such callers (403).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["schema".to_owned()]))]
    pub grants: Vec<Grant>,
    /// Also make tables created later readable (ALTER DEFAULT PRIVILEGES), in the schemas granted
    /// with tables: ["*"]. Explicit table lists are never widened.
    #[serde(default = "default_true")]
    pub default_privileges: bool,
    /// What happens to the principal and its grants when the binding is deleted: Delete revokes
    /// the grants and drops the role, Orphan leaves both in place.
    #[serde(default)]
    pub deletion_policy: DeletionPolicy,
    /// SECURITY DEFINER functions agents may call. Such a function runs with the rights of its
    /// owner, not of the binding's role, and PostgreSQL lets PUBLIC execute every new function,
    /// so one call can read tables this binding never granted. The MCP server refuses calls to
    /// every SECURITY DEFINER function outside pg_catalog that is not listed here, and the
    /// ReadOnlyVerified condition names each one the role can execute (reason
    /// ReadsBeyondGrants) until it is listed or its EXECUTE privilege revoked. List only
    /// functions whose every overload is safe for agents to call. At most 64.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["schema".to_owned(), "name".to_owned()]))]
    pub functions: Vec<AllowedFunction>,
    /// Caller classes: who may read what, decided per request from the caller's verified Entra
    /// token (server.auth.entra is required). The first class whose match fits the caller
    /// wins; each class has its own PostgreSQL role (NOLOGIN, named
    /// <principal>__<class>) holding exactly its grants, and every statement of the caller
    /// runs as that role (SET LOCAL ROLE), with the caller's verified claims readable by
    /// row-level security policies as current_setting('pgmcp.caller', true) (JSON: oid, tid,
    /// appid, roles, groups, name, preferred_username, class). The MCP server's own role is a
    /// member of every class role without inheriting its privileges, so a statement that does
    /// not switch role reads nothing of a class (on PostgreSQL 14 and 15, where only a whole
    /// role can be NOINHERIT, the operator makes the server's role NOINHERIT: it then inherits
    /// no role's privileges, only its own grants count). A caller that matches no class is
    /// refused with 403 unless grants is set, which then acts as the default class. Removing a
    /// class revokes its role's grants and drops the role. At most 16.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["name".to_owned()]))]
    pub callers: Vec<CallerClass>,
    /// Let the MCP server see catalog changes with one small query, however large the schema:
    /// the operator installs pgmcp's catalog tracker in the database when it is missing (schema
    /// pgmcp: one table, and two event triggers that record each DDL transaction, see
    /// crds/src/catalog_tracker.sql) and grants the principal read access to it. It needs an
    /// admin that may create event triggers (a superuser, or a managed service's admin role where
    /// it allows them); otherwise status.catalogTracker says why and discovery stays exact by
    /// comparing catalog fingerprints, which read the catalog tables on every discovery call.
    /// The tracker is removed with the last binding that uses it. Default true.
    #[serde(default = "default_true")]
    pub catalog_tracker: bool,
}

/// A class of callers and what it may read.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CallerClass {
    /// The class's name: a DNS label of at most 20 characters. It becomes part of the class's
    /// PostgreSQL role name and of the audit log.
    #[schemars(length(min = 1, max = 20))]
    #[x_kube(validation = Rule::new("self.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$')")
        .message("name must be a DNS label: lower-case letters, digits and '-', starting with a letter"))]
    pub name: String,
    /// Which callers belong to the class: a caller matches when its token carries any of the
    /// listed values.
    #[serde(rename = "match")]
    pub matches: CallerMatch,
    /// Schemas and tables the class may read (SELECT); one entry per schema. At most 16: the
    /// apiserver bounds the cost of the table rules by how many tables 16 classes could list.
    #[schemars(length(min = 1, max = 16))]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["schema".to_owned()]))]
    pub grants: Vec<Grant>,
    /// Also make tables created later readable by the class (ALTER DEFAULT PRIVILEGES), in its
    /// schemas granted with tables: ["*"].
    #[serde(default = "default_true")]
    pub default_privileges: bool,
    /// SECURITY DEFINER functions callers of this class may call (as access.functions). At
    /// most 64.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["schema".to_owned(), "name".to_owned()]))]
    pub functions: Vec<AllowedFunction>,
}

/// Values of a caller's verified Entra token that place it in a class; any one of them is
/// enough.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("(has(self.appRoles) ? size(self.appRoles) : 0) + (has(self.groups) ? size(self.groups) : 0) + (has(self.objectIds) ? size(self.objectIds) : 0) + (has(self.appIds) ? size(self.appIds) : 0) > 0")
        .message("match must list at least one of appRoles, groups, objectIds or appIds: a class no caller can match grants nothing")
        .reason(Reason::FieldValueRequired),
)]
pub struct CallerMatch {
    /// App roles of the MCP server's app registration (the token's roles claim), such as
    /// Sales.Read: how app-only callers (a Foundry project's managed identity) are told apart.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(min = 1, max = 120)))]
    pub app_roles: Vec<String>,
    /// Object ids of Entra security groups (the token's groups claim; the app registration
    /// must emit it, and a user in more than 200 groups gets no groups claim at all).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(min = 36, max = 36)))]
    #[x_kube(validation = Rule::new("self.all(id, id.matches('^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$'))")
        .message("groups must be group object ids (GUIDs)"))]
    pub groups: Vec<String>,
    /// Object ids of users, managed identities or service principals (the token's oid claim).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(min = 36, max = 36)))]
    #[x_kube(validation = Rule::new("self.all(id, id.matches('^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$'))")
        .message("objectIds must be object ids (GUIDs)"))]
    pub object_ids: Vec<String>,
    /// Client ids of calling applications (the token's azp claim, appid in v1 tokens).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(min = 36, max = 36)))]
    #[x_kube(validation = Rule::new("self.all(id, id.matches('^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$'))")
        .message("appIds must be application (client) ids (GUIDs)"))]
    pub app_ids: Vec<String>,
}

/// A function the MCP server may call even though it is SECURITY DEFINER: every overload of
/// the name in the schema.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AllowedFunction {
    /// The function's schema, as PostgreSQL stores it (unquoted names are lower case).
    #[schemars(length(min = 1, max = 63))]
    #[x_kube(validation = Rule::new("!self.startsWith('pg_') && self != 'information_schema'")
        .message("schema must not be a system schema (pg_* or information_schema): calls to functions there are never refused, so listing one allows nothing"))]
    pub schema: String,
    /// The function's name alone, as PostgreSQL stores it (unquoted names are lower case),
    /// without schema or argument list: every overload of the name is allowed.
    #[schemars(length(min = 1, max = 63))]
    #[x_kube(validation = Rule::new("!self.contains('(') && !self.contains(')') && !self.contains('.')")
        .message("name is the function's name alone: put the schema in schema, and leave out the argument list (every overload of the name is allowed)"))]
    pub name: String,
}

fn default_true() -> bool {
    true
}

/// Read access to tables of one schema.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Grant {
    /// The schema.
    #[schemars(length(min = 1, max = 63))]
    #[x_kube(validation = Rule::new("!self.startsWith('pg_') && self != 'information_schema'")
        .message("system schemas (pg_* and information_schema) cannot be granted"))]
    pub schema: String,
    /// ["*"] for every table and view in the schema, or a list of unqualified table and view
    /// names. "*" cannot be mixed with names.
    #[schemars(length(max = 1000), inner(length(min = 1, max = 63)))]
    #[x_kube(
        merge_strategy = ListMerge::Set,
        validation = Rule::new("size(self) > 0")
            .message("tables must not be empty: list table names, or use [\"*\"] for every table in the schema")
            .reason(Reason::FieldValueRequired),
        validation = Rule::new("!self.exists(t, t == '*') || size(self) == 1")
            .message("\"*\" must be the only entry of tables: it already means every table in the schema"),
        validation = Rule::new("self.all(t, t == '*' || !t.contains('.'))")
            .message("table names are unqualified: put the schema in grants[].schema, not in the table name"),
    )]
    pub tables: Vec<String>,
    /// Privileges to grant. pgmcp is read-only: SELECT is the only privilege allowed.
    #[serde(default = "default_privileges")]
    #[schemars(length(min = 1, max = 8), inner(length(max = 32)))]
    #[x_kube(validation = Rule::new("self.all(p, p == 'SELECT')")
        .message("only SELECT can be granted: pgmcp gives agents read-only access"))]
    pub privileges: Vec<String>,
}

fn default_privileges() -> Vec<String> {
    vec!["SELECT".to_owned()]
}

/// What happens to external state when the binding (or its foundry section) is deleted.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DeletionPolicy {
    /// Remove it.
    #[default]
    Delete,
    /// Leave it in place.
    Orphan,
}

impl DeletionPolicy {
    /// Whether this is the default, [`DeletionPolicy::Delete`].
    pub fn is_delete(&self) -> bool {
        *self == DeletionPolicy::Delete
    }
}

/// The MCP server Deployment.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ServerSpec {
    /// Number of MCP server pods. The server is stateless, so replicas need no session affinity.
    #[serde(default = "default_replicas")]
    #[schemars(range(min = 0, max = 20))]
    pub replicas: i32,
    /// Caps applied to every query, reported to the agent with each result.
    #[serde(default)]
    pub limits: ServerLimits,
    /// How callers authenticate to the MCP server: exactly one of `entra` or `none`.
    pub auth: ServerAuth,
    /// The URL agents outside the cluster use to reach the MCP endpoint (your Ingress or
    /// gateway), for example https://mcp.contoso.com/agents/sales/mcp. Its host is allowed in the
    /// Host header check, and it is the target of the Foundry connection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 2048))]
    #[x_kube(validation = Rule::new("isURL(self) && (self.startsWith('https://') || self.startsWith('http://'))")
        .message("publicUrl must be an absolute http:// or https:// URL"))]
    pub public_url: Option<String>,
    /// Container image of the MCP server. Defaults to the image the operator was released with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 512))]
    pub image: Option<String>,
    /// CPU and memory requests and limits of the server container. Defaults are set by the
    /// operator.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Node labels the server pods must be scheduled on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_selector: Option<BTreeMap<String, String>>,
    /// Tolerations of the server pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tolerations: Option<Vec<Toleration>>,
    /// Extra annotations on the server pods (for example for a service mesh).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_annotations: Option<BTreeMap<String, String>>,
    /// When set, a NetworkPolicy admits traffic to the server pods on the MCP port only, from
    /// the listed peers. Omit it to create no NetworkPolicy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_policy: Option<NetworkPolicySpec>,
    /// How tool results present database data to the model.
    #[serde(default)]
    pub results: ResultsSpec,
    /// What the audit event of each tool call records of the caller's SQL.
    #[serde(default)]
    pub audit: AuditSpec,
    /// OpenTelemetry export of the MCP server's traces and logs (OTLP over HTTP, protobuf).
    /// Omit it to export nothing. The server's pods always carry OTEL_SERVICE_NAME=pgmcp-server
    /// and the resource attributes k8s.namespace.name and pgmcp.binding.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub telemetry: Option<TelemetrySpec>,
}

/// Ingress allowed to the MCP server pods.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct NetworkPolicySpec {
    /// Who may connect to the MCP port (pod selectors, namespace selectors or IP blocks, as in
    /// a NetworkPolicy ingress rule). Empty: any source, but still only the MCP port.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub from: Vec<NetworkPolicyPeer>,
}

fn default_replicas() -> i32 {
    1
}

/// Result and time caps of the MCP server.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ServerLimits {
    /// Largest number of rows one tool call returns (1 to 100000); longer results are cut and
    /// marked truncated.
    #[serde(default = "default_max_rows")]
    #[x_kube(validation = Rule::new("self >= 1 && self <= 100000")
        .message("maxRows must be between 1 and 100000"))]
    pub max_rows: i32,
    /// Largest result size of one tool call, as a Kubernetes quantity (1Ki to 64Mi).
    #[serde(default = "default_max_bytes")]
    #[schemars(length(min = 1, max = 16))]
    #[x_kube(validation = Rule::new("isQuantity(self) && quantity(self).compareTo(quantity('1Ki')) >= 0 && quantity(self).compareTo(quantity('64Mi')) <= 0")
        .message("maxBytes must be a quantity between 1Ki and 64Mi, such as 1Mi"))]
    pub max_bytes: String,
    /// Statement timeout of every query, as a duration (for example 15s, 1m30s); at most 10m.
    #[serde(default = "default_statement_timeout")]
    #[schemars(length(min = 2, max = 16))]
    #[x_kube(validation = Rule::new("self.matches('^([0-9]+(ms|s|m|h))+$') && duration(self) >= duration('1ms') && duration(self) <= duration('10m')")
        .message("statementTimeout must be a duration between 1ms and 10m, such as 15s or 1m30s"))]
    pub statement_timeout: String,
    /// Largest text of one discovery answer (list_tables, search_objects, list_relationships,
    /// list_schemas, describe_table), as a Kubernetes quantity (4Ki to 1Mi). Longer listings
    /// are paged: the answer says how many exist and gives a cursor for the next page, so a
    /// model never receives more than this in one answer, however large the schema.
    #[serde(default = "default_discovery_max_bytes")]
    #[schemars(length(min = 1, max = 16))]
    #[x_kube(validation = Rule::new("isQuantity(self) && quantity(self).compareTo(quantity('4Ki')) >= 0 && quantity(self).compareTo(quantity('1Mi')) <= 0")
        .message("discoveryMaxBytes must be a quantity between 4Ki and 1Mi, such as 16Ki"))]
    pub discovery_max_bytes: String,
}

impl Default for ServerLimits {
    fn default() -> Self {
        Self {
            max_rows: default_max_rows(),
            max_bytes: default_max_bytes(),
            statement_timeout: default_statement_timeout(),
            discovery_max_bytes: default_discovery_max_bytes(),
        }
    }
}

fn default_discovery_max_bytes() -> String {
    "16Ki".to_owned()
}

fn default_max_rows() -> i32 {
    1000
}

fn default_max_bytes() -> String {
    "1Mi".to_owned()
}

fn default_statement_timeout() -> String {
    "15s".to_owned()
}

/// How tool results present database data to the model.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ResultsSpec {
    /// Wrap the database data in the text of each tool result between two copies of a random
    /// boundary, new for every answer, with a sentence telling the model that what lies between
    /// them is data and that instructions inside it must not be followed. structuredContent is
    /// never wrapped. Keep it on: rows are written by people, and any cell (a support ticket,
    /// a product review, a customer's name) can carry instructions aimed at the agent that
    /// reads it. Turn it off only for clients that parse the text themselves and never hand it
    /// to a model.
    #[serde(default = "default_true")]
    pub untrusted_data_framing: bool,
}

impl Default for ResultsSpec {
    fn default() -> Self {
        Self {
            untrusted_data_framing: true,
        }
    }
}

/// What the audit event of each tool call records.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AuditSpec {
    /// How the caller's SQL appears in the audit event of each tool call and in its trace
    /// span: full (the default) records the statement as the caller sent it; redacted records
    /// it with every literal replaced by ? (comments dropped, layout normalised), so values
    /// typed into a query (an e-mail address, an account number) stay out of the logs;
    /// fingerprint records only 16 hex digits identifying the redacted statement, enough to
    /// count and correlate queries without their text.
    #[serde(default)]
    pub statements: AuditStatements,
}

/// The server's configuration names the same modes, so the binding's value is passed on as is.
pub use crate::config::AuditStatements;

/// OpenTelemetry export of the MCP server (OTLP/HTTP with protobuf), given to the server
/// as the standard OTEL_* environment variables.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TelemetrySpec {
    /// Base URL of an OTLP/HTTP receiver, such as an OpenTelemetry Collector:
    /// http://otel-collector.observability.svc:4318. The server sends traces to
    /// <otlpEndpoint>/v1/traces and logs to <otlpEndpoint>/v1/logs
    /// (OTEL_EXPORTER_OTLP_ENDPOINT).
    #[schemars(length(min = 1, max = 2048))]
    #[x_kube(validation = Rule::new("isURL(self) && (self.startsWith('https://') || self.startsWith('http://')) && url(self).getHostname() != '' && !self.contains('?') && !self.contains('#')")
        .message("otlpEndpoint must be an absolute http:// or https:// URL with a host and no query or fragment, such as http://otel-collector.observability.svc:4318 (the server appends /v1/traces and /v1/logs)"))]
    pub otlp_endpoint: String,
    /// A key of a Secret in the binding's namespace whose value is sent as the headers of
    /// every export request, in the OTEL_EXPORTER_OTLP_HEADERS format: comma-separated
    /// name=value pairs, such as Authorization=Bearer%20<token> (values percent-encoded). The
    /// binding stalls, naming the Secret, until it exists with that key. A changed value
    /// reaches the server when its pods next restart.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub headers_secret_ref: Option<SecretValueRef>,
    /// Percentage (0 to 100) of traces recorded, chosen at random per trace
    /// (OTEL_TRACES_SAMPLER parentbased_traceidratio with OTEL_TRACES_SAMPLER_ARG
    /// samplingPercent/100; at 100, parentbased_always_on). Parent-based: a span whose parent
    /// trace context was already sampled, or not, keeps that decision. Logs are not sampled.
    /// Default 100.
    #[serde(default = "default_sampling_percent")]
    #[schemars(range(min = 0, max = 100))]
    pub sampling_percent: i32,
    /// Extra OpenTelemetry resource attributes of the server's traces and logs, such as
    /// deployment.environment.name: production (added to OTEL_RESOURCE_ATTRIBUTES,
    /// percent-encoded). At most 16; keys are at most 128 letters, digits, '.', '_' or '-',
    /// values at most 256 characters. service.name, k8s.namespace.name and pgmcp.binding are
    /// set by the operator and cannot be given here.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend(
        "maxProperties" = 16,
        "additionalProperties" = {"type": "string", "maxLength": 256}
    ))]
    #[x_kube(
        validation = Rule::new("self.all(k, size(k) <= 128 && k.matches('^[A-Za-z0-9_][-A-Za-z0-9._]*$'))")
            .message("resourceAttributes keys must be 1 to 128 letters, digits, '.', '_' or '-', such as deployment.environment.name"),
        validation = Rule::new("self.all(k, !(k in ['service.name', 'k8s.namespace.name', 'pgmcp.binding']))")
            .message("resourceAttributes cannot set service.name, k8s.namespace.name or pgmcp.binding: the operator sets them"),
    )]
    pub resource_attributes: BTreeMap<String, String>,
}

fn default_sampling_percent() -> i32 {
    100
}

/// One key of a Secret in the binding's namespace.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SecretValueRef {
    /// Name of the Secret.
    #[schemars(length(min = 1, max = 253))]
    #[x_kube(validation = Rule::new("self.matches('^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$')")
        .message("name must be a Secret name: lower-case letters, digits, '-' and '.'"))]
    pub name: String,
    /// The key in the Secret.
    #[schemars(length(min = 1, max = 253))]
    #[x_kube(validation = Rule::new("self.matches('^[-._a-zA-Z0-9]+$')")
        .message("key must be a Secret key: letters, digits, '-', '_' and '.'"))]
    pub key: String,
}

/// Caller authentication of the MCP server.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(validation = crate::rules::exactly_one(
    "entra",
    "none",
    "set exactly one of auth.entra (Entra ID tokens) or auth.none (development only)"
))]
#[serde(rename_all = "camelCase")]
pub struct ServerAuth {
    /// Callers present Entra ID access tokens (Authorization: Bearer) for the server's app
    /// registration, carrying one of requiredRoles.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entra: Option<ServerEntraAuth>,
    /// No caller authentication. Anyone who can reach the Service can read the granted tables:
    /// only for development, and only with acknowledgeInsecure: true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub none: Option<NoAuth>,
}

/// Entra ID access-token validation of callers.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ServerEntraAuth {
    /// Entra tenant that issues the callers' tokens.
    #[schemars(length(max = 36))]
    #[x_kube(validation = crate::rules::guid("tenantId"))]
    pub tenant_id: String,
    /// Client id of the MCP server's app registration that callers request tokens for; tokens
    /// with audience <clientId> or api://<clientId> are accepted.
    #[schemars(length(min = 1, max = 256))]
    #[x_kube(validation = Rule::new("self.matches('^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$') || self.startsWith('api://')")
        .message("audience must be the app registration's client id (a GUID) or its api:// application id URI"))]
    pub audience: String,
    /// App roles a token must carry (any one of them), for example MCP.Read.
    #[schemars(length(min = 1, max = 16), inner(length(min = 1, max = 120)))]
    pub required_roles: Vec<String>,
    /// When set, only callers with one of these object ids (the oid claim) are accepted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256), inner(length(max = 36)))]
    #[x_kube(validation = Rule::new("self.all(id, id.matches('^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$'))")
        .message("allowedCallerObjectIds must be GUIDs (the oid claim of the callers)"))]
    pub allowed_caller_object_ids: Option<Vec<String>>,
    /// Entra authority host, for sovereign clouds. Defaults to https://login.microsoftonline.com.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256))]
    #[x_kube(validation = crate::rules::https_url("authorityHost"))]
    pub authority_host: Option<String>,
}

/// Explicitly unauthenticated access.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(validation = Rule::new("has(self.acknowledgeInsecure) && self.acknowledgeInsecure")
    .message("auth.none lets anyone who can reach the server read the granted tables: set acknowledgeInsecure: true to accept this (development only), or configure auth.entra")
    .field_path(".acknowledgeInsecure"))]
#[serde(rename_all = "camelCase")]
pub struct NoAuth {
    /// Must be true: you accept that the server has no caller authentication.
    #[serde(default)]
    pub acknowledge_insecure: bool,
}

/// The Azure AI Foundry project connection.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct FoundrySpec {
    /// ARM id of the Foundry project:
    /// /subscriptions/<guid>/resourceGroups/<group>/providers/Microsoft.CognitiveServices/accounts/<account>/projects/<project>.
    #[schemars(length(max = 512))]
    #[x_kube(validation = crate::rules::foundry_project_id())]
    pub project_resource_id: String,
    /// Name of the connection in the project (3 to 33 letters, digits, '-' or '_'). Immutable.
    #[schemars(length(max = 33))]
    #[x_kube(
        validation = Rule::new("self.matches('^[A-Za-z0-9][-A-Za-z0-9_]{2,32}$')")
            .message("connectionName must be 3 to 33 letters, digits, '-' or '_', starting with a letter or digit"),
        validation = crate::rules::immutable("connectionName", "remove the foundry section and add it again to rename the connection")
    )]
    pub connection_name: String,
    /// What happens to the connection when the binding or this section is deleted.
    #[serde(default)]
    pub deletion_policy: DeletionPolicy,
    /// Also give the project's system-assigned managed identity the server app's role (the
    /// first of server.auth.entra.requiredRoles) through Microsoft Graph (appRoleAssignedTo),
    /// so Foundry's tokens for the server carry it. Off by default: the operator's identity
    /// then needs the Microsoft Graph application permissions AppRoleAssignment.ReadWrite.All
    /// and Application.Read.All (what Graph documents for appRoleAssignedTo). The assignment
    /// is removed with the connection (deletionPolicy).
    #[serde(default)]
    pub assign_app_role: bool,
}

/// Observed state, written by the operator only.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PostgresMcpBindingStatus {
    /// The metadata.generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Ready, Reconciling and Stalled (kstatus), and one condition per reconcile step:
    /// IdentityReady, DatabaseReady, ReadOnlyVerified, ServerAvailable, FoundryConnectionReady.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".to_owned()]))]
    pub conditions: Vec<Condition>,
    /// In-cluster URL of the MCP endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// What an agent or MCP client needs to use the server, present while the binding is
    /// Ready: the URL, the token callers request, the Foundry connection and the tool names.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect: Option<ConnectStatus>,
    /// The database principal the MCP server uses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub principal: Option<PrincipalStatus>,
    /// The grants as last compared with the database catalog.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grants: Option<GrantsStatus>,
    /// Each caller class (access.callers): its role and its grants as last compared with the
    /// database catalog.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["name".to_owned()]))]
    pub callers: Vec<CallerClassStatus>,
    /// pgmcp's catalog tracker in the database (spec.access.catalogTracker).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub catalog_tracker: Option<CatalogTrackerStatus>,
    /// The federated identity credential the operator manages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub federated_credential: Option<FederatedCredentialStatus>,
    /// The Azure AI Foundry connection the operator manages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub foundry: Option<FoundryStatus>,
    /// Everything the operator created outside the cluster for this binding, and where,
    /// recorded before it is created. What is recorded but no longer asked for is removed; the
    /// finalizer removes what is recorded, whatever the spec says by then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inventory: Option<Inventory>,
}

/// How to reach and call the binding's MCP server (Streamable HTTP).
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ConnectStatus {
    /// The MCP endpoint to give clients: server.publicUrl, or the in-cluster URL when that is
    /// not set.
    pub url: String,
    /// The Microsoft Entra audience of the tokens callers send (server.auth.entra.audience):
    /// the Audience of a Foundry connection made by hand.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audience: Option<String>,
    /// The scope a caller requests its token for, <audience>/.default, for example with
    /// `az account get-access-token --scope`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_scope: Option<String>,
    /// App roles of the server's app registration; a caller's token needs one of them
    /// (server.auth.entra.requiredRoles).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub app_roles: Vec<String>,
    /// Name of the Azure AI Foundry project connection (foundry.connectionName).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub foundry_connection: Option<String>,
    /// Full ARM id of that connection: the project_connection_id of an agent's MCP tool.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub foundry_connection_id: Option<String>,
    /// The tools the server offers, for an agent's allowed_tools.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tools: Vec<String>,
}

/// What the operator created outside the cluster for one binding.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Inventory {
    /// The PostgreSQL role the MCP server signs in as.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<RoleRecord>,
    /// Azure Resource Manager resources: the federated identity credential and the Azure AI
    /// Foundry connection.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub azure_resources: Vec<AzureResourceRecord>,
    /// Microsoft Graph app role assignments (foundry.assignAppRole).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub app_role_assignments: Vec<AppRoleAssignmentRecord>,
    /// The administrator Secret (postgres.admin.passwordSecretRef) this binding keeps from
    /// deletion with the finalizer pgmcp.dev/secret-in-use until its cleanup no longer needs
    /// it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin_secret: Option<String>,
}

impl Inventory {
    /// Nothing recorded.
    pub fn is_empty(&self) -> bool {
        self.role.is_none()
            && self.azure_resources.is_empty()
            && self.app_role_assignments.is_empty()
            && self.admin_secret.is_none()
    }
}

/// A PostgreSQL role the operator created (or found marked as this binding's).
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct RoleRecord {
    /// Role name.
    pub name: String,
    /// pg_roles.oid of the role once it exists: a role dropped and made again by someone else
    /// has another oid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oid: Option<i64>,
    /// host:port of the PostgreSQL server.
    pub server: String,
    /// The databases it may hold grants in: spec.postgres.database, and an earlier one until
    /// its grants there are revoked.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub databases: Vec<String>,
    /// Orphan when the role is to be left in place on removal.
    #[serde(default, skip_serializing_if = "DeletionPolicy::is_delete")]
    pub deletion_policy: DeletionPolicy,
    /// The NOLOGIN roles of the caller classes (access.callers), on the same server and in the
    /// same databases: a class no longer asked for has its role's grants revoked and the role
    /// dropped; removal drops them all, before the role itself.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub class_roles: Vec<ClassRoleRecord>,
}

/// The role of one caller class.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ClassRoleRecord {
    /// The class (access.callers[].name).
    pub class: String,
    /// Role name.
    pub name: String,
    /// pg_roles.oid of the role once it exists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oid: Option<i64>,
}

/// Kinds of Azure Resource Manager resources the operator creates.
#[derive(
    Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord,
)]
pub enum AzureResourceKind {
    /// Microsoft.ManagedIdentity/userAssignedIdentities/federatedIdentityCredentials.
    FederatedIdentityCredential,
    /// Microsoft.CognitiveServices/accounts/projects/connections.
    FoundryConnection,
}

/// An Azure Resource Manager resource the operator created.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct AzureResourceRecord {
    /// What it is.
    pub kind: AzureResourceKind,
    /// Full ARM resource id.
    pub id: String,
    /// The api-version it was written with (and is deleted with).
    pub api_version: String,
    /// Orphan when the resource is to be left in place on removal.
    #[serde(default, skip_serializing_if = "DeletionPolicy::is_delete")]
    pub deletion_policy: DeletionPolicy,
}

/// A Microsoft Graph app role assignment the operator created.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct AppRoleAssignmentRecord {
    /// Graph's id of the assignment; empty until Graph has answered the creation.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub id: String,
    /// Object id of the service principal whose app role is assigned (the MCP server's app).
    pub resource_id: String,
    /// Object id of the principal holding it (the Foundry project's managed identity).
    pub principal_id: String,
    /// Id of the app role.
    pub app_role_id: String,
    /// Orphan when the assignment is to be left in place on removal.
    #[serde(default, skip_serializing_if = "DeletionPolicy::is_delete")]
    pub deletion_policy: DeletionPolicy,
}

/// The database principal.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PrincipalStatus {
    /// PostgreSQL role name.
    pub name: String,
    /// Entra or Password.
    pub kind: PrincipalKind,
}

/// How the principal signs in.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq)]
pub enum PrincipalKind {
    /// A Microsoft Entra principal created with pgaadauth_create_principal.
    Entra,
    /// A LOGIN role with a generated password.
    Password,
}

/// pgmcp's catalog tracker in the binding's database (spec.access.catalogTracker).
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CatalogTrackerStatus {
    /// Whether the MCP server sees catalog changes through the tracker (one small query per
    /// discovery call) rather than by comparing catalog fingerprints.
    pub in_use: bool,
    /// Why it is not in use, when it is not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// Summary of the granted privileges.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct GrantsStatus {
    /// Number of tables and views the principal can read.
    pub tables: i32,
    /// Hash of the granted privileges as found in the catalog; changes when grants change.
    pub fingerprint: String,
    /// When drift was last repaired.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_repair_time: Option<Time>,
    /// How many times drift between the spec and the catalog was repaired.
    #[serde(default)]
    pub repairs: i64,
}

/// One caller class as the database holds it.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CallerClassStatus {
    /// The class (access.callers[].name).
    pub name: String,
    /// The class's PostgreSQL role.
    pub role: String,
    /// Its grants as last compared with the catalog.
    pub grants: GrantsStatus,
}

/// The federated identity credential.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct FederatedCredentialStatus {
    /// ARM id of the credential.
    pub id: String,
    /// The subject it trusts: system:serviceaccount:<namespace>:<serviceaccount>.
    pub subject: String,
}

/// The Foundry project connection.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct FoundryStatus {
    /// ARM id of the connection.
    pub connection_id: String,
}

/// The CustomResourceDefinition as installed (`crds/`, the chart, `manifests/install.yaml`).
///
/// Doc comments are wrapped at 100 columns in the source; `kubectl explain` wraps again, so
/// line breaks inside a paragraph are joined here (paragraph breaks are kept).
pub fn crd() -> Result<CustomResourceDefinition, RenderError> {
    fn unwrap_descriptions(node: &mut serde_json::Value) {
        match node {
            serde_json::Value::Object(map) => {
                for (key, value) in map.iter_mut() {
                    match value {
                        serde_json::Value::String(text) if key == "description" => {
                            *text = unwrap_paragraphs(text);
                        }
                        other => unwrap_descriptions(other),
                    }
                }
            }
            serde_json::Value::Array(items) => items.iter_mut().for_each(unwrap_descriptions),
            _ => {}
        }
    }
    let crd = <PostgresMcpBinding as kube::CustomResourceExt>::crd();
    let mut value = serde_json::to_value(&crd)?;
    unwrap_descriptions(&mut value);
    Ok(serde_json::from_value(value)?)
}

/// Failure to render the CRD (a bug in the types, never bad input).
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error("failed to convert the CRD to JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("failed to write the CRD as YAML: {0}")]
    Yaml(#[from] serde_saphyr::ser::Error),
}

fn unwrap_paragraphs(text: &str) -> String {
    text.split("\n\n")
        .map(|paragraph| {
            paragraph
                .split('\n')
                .map(str::trim)
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect::<Vec<_>>()
        .join("\n\n")
}

/// [`crd`] as the YAML document that is committed and installed.
pub fn crd_yaml() -> Result<String, RenderError> {
    let body = serde_saphyr::to_string(&crd()?)?;
    Ok(format!(
        "# Generated by `make generate` (crdgen) from crds/src/v1alpha1.rs. Do not edit.\n{body}"
    ))
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use serde_json::Value;

    use super::*;

    fn repo_file(path: &str) -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("..")
            .join(path)
    }

    fn schema() -> Value {
        let crd = crd().unwrap();
        let version = &crd.spec.versions[0];
        serde_json::to_value(&version.schema.as_ref().unwrap().open_api_v3_schema).unwrap()
    }

    /// Walks every property of the schema, calling `f(path, property)`.
    fn walk(path: &str, node: &Value, f: &mut dyn FnMut(&str, &Value)) {
        if let Some(props) = node.get("properties").and_then(Value::as_object) {
            for (name, prop) in props {
                let path = format!("{path}.{name}");
                f(&path, prop);
                walk(&path, prop, f);
            }
        }
        if let Some(items) = node.get("items") {
            walk(&format!("{path}[]"), items, f);
        }
    }

    #[test]
    fn descriptions_join_wrapped_lines_but_keep_paragraphs() {
        assert_eq!(unwrap_paragraphs("one\n  two\n\nthree"), "one two\n\nthree");
        let spec = &schema()["properties"]["spec"]["description"];
        assert!(!spec.as_str().unwrap().contains('\n'), "{spec}");
    }

    #[test]
    fn committed_crd_yaml_matches_the_rust_types() {
        let committed =
            std::fs::read_to_string(repo_file("crds/pgmcp.dev_postgresmcpbindings.yaml")).unwrap();
        assert!(
            committed == crd_yaml().unwrap(),
            "crds/pgmcp.dev_postgresmcpbindings.yaml is stale: run `make generate`"
        );
    }

    #[test]
    fn every_spec_and_status_field_is_documented_for_kubectl_explain() {
        let mut undocumented = Vec::new();
        for root in ["spec", "status"] {
            let node = &schema()["properties"][root];
            walk(root, node, &mut |path, prop| {
                // Kubernetes' own types (resources, tolerations) bring their own descriptions.
                let ours = !path.contains(".resources.")
                    && !path.contains(".tolerations[].")
                    && !path.contains(".conditions[].");
                if ours
                    && prop
                        .get("description")
                        .and_then(Value::as_str)
                        .is_none_or(str::is_empty)
                {
                    undocumented.push(path.to_owned());
                }
            });
        }
        assert!(
            undocumented.is_empty(),
            "fields without a /// doc comment: {undocumented:?}"
        );
    }

    #[test]
    fn schema_is_structural_enough_for_cel_cost_estimation() {
        // Every string or list a CEL rule looks at must be bounded, or the apiserver rejects
        // the CRD for exceeding the rule cost budget.
        let mut unbounded = Vec::new();
        walk(
            "spec",
            &schema()["properties"]["spec"],
            &mut |path, prop| {
                let has_rules = prop.get("x-kubernetes-validations").is_some();
                let bounded = match prop.get("type").and_then(Value::as_str) {
                    Some("string") => prop.get("maxLength").is_some() || prop.get("enum").is_some(),
                    Some("array") => prop.get("maxItems").is_some(),
                    _ => true,
                };
                if has_rules && !bounded {
                    unbounded.push(path.to_owned());
                }
            },
        );
        assert!(
            unbounded.is_empty(),
            "unbounded fields with CEL rules: {unbounded:?}"
        );
    }

    #[test]
    fn printer_columns_are_ready_reason_endpoint_age_and_the_url_with_wide() {
        let crd = crd().unwrap();
        let columns: Vec<(String, i32)> = crd.spec.versions[0]
            .additional_printer_columns
            .iter()
            .flatten()
            .map(|c| (c.name.clone(), c.priority.unwrap_or(0)))
            .collect();
        let expected = [
            ("Ready", 0),
            ("Reason", 0),
            ("Endpoint", 0),
            ("URL", 1),
            ("Age", 0),
        ];
        assert_eq!(
            columns,
            expected.map(|(name, priority)| (name.to_owned(), priority))
        );
        assert_eq!(
            crd.spec.names.short_names,
            Some(vec!["pgmcp".to_owned(), "pmb".to_owned()])
        );
        assert!(
            crd.spec.versions[0]
                .subresources
                .as_ref()
                .unwrap()
                .status
                .is_some()
        );
    }

    #[test]
    fn every_example_deserializes_into_the_rust_types() {
        let dir = repo_file("manifests/examples");
        let mut seen = 0;
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_none_or(|e| e != "yaml") {
                continue; // the SQL that goes with an example
            }
            let text = std::fs::read_to_string(&path).unwrap();
            let binding: PostgresMcpBinding =
                serde_saphyr::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            let access = &binding.spec.access;
            assert!(
                !access.grants.is_empty() || !access.callers.is_empty(),
                "{}",
                path.display()
            );
            seen += 1;
        }
        assert!(seen >= 4, "at least four examples");
    }

    #[test]
    fn omitted_fields_take_the_documented_defaults() {
        let binding: PostgresMcpBinding = serde_saphyr::from_str(
            "apiVersion: pgmcp.dev/v1alpha1
kind: PostgresMcpBinding
metadata: { name: minimal }
spec:
  postgres: { host: db, database: app, admin: { passwordSecretRef: { name: pg-admin } } }
  identity: { password: { roleName: app_mcp } }
  access: { grants: [ { schema: public, tables: ['*'] } ] }
  server: { auth: { none: { acknowledgeInsecure: true } } }
",
        )
        .unwrap();
        let spec = binding.spec;
        assert_eq!(spec.postgres.port, 5432);
        assert_eq!(spec.postgres.ssl_mode, SslMode::Require);
        assert_eq!(spec.postgres.admin.database, "postgres");
        let secret = spec.postgres.admin.password_secret_ref.unwrap();
        assert_eq!(
            (secret.username_key.as_str(), secret.password_key.as_str()),
            ("username", "password")
        );
        assert_eq!(spec.access.grants[0].privileges, ["SELECT"]);
        assert!(spec.access.default_privileges);
        assert!(spec.access.functions.is_empty());
        assert_eq!(spec.access.deletion_policy, DeletionPolicy::Delete);
        assert_eq!(spec.server.replicas, 1);
        assert_eq!(
            spec.server.limits,
            ServerLimits {
                max_rows: 1000,
                max_bytes: "1Mi".into(),
                statement_timeout: "15s".into(),
                discovery_max_bytes: "16Ki".into(),
            }
        );
        assert!(spec.server.results.untrusted_data_framing);
        assert_eq!(spec.server.audit.statements, AuditStatements::Full);
        assert!(spec.server.telemetry.is_none());
        assert!(spec.foundry.is_none());
    }

    #[test]
    fn telemetry_takes_its_defaults_and_audit_modes_are_lower_case() {
        let server: ServerSpec = serde_json::from_value(serde_json::json!({
            "auth": {"none": {"acknowledgeInsecure": true}},
            "audit": {"statements": "fingerprint"},
            "results": {},
            "telemetry": {"otlpEndpoint": "http://otel-collector:4318"}
        }))
        .unwrap();
        let telemetry = server.telemetry.unwrap();
        assert_eq!(telemetry.sampling_percent, 100);
        assert!(telemetry.headers_secret_ref.is_none());
        assert!(telemetry.resource_attributes.is_empty());
        assert!(server.results.untrusted_data_framing);
        assert_eq!(server.audit.statements.as_str(), "fingerprint");
        let statements = &schema()["properties"]["spec"]["properties"]["server"]["properties"]["audit"]
            ["properties"]["statements"];
        assert_eq!(
            statements["enum"],
            serde_json::json!(["full", "redacted", "fingerprint"])
        );
        let attributes = &schema()["properties"]["spec"]["properties"]["server"]["properties"]["telemetry"]
            ["properties"]["resourceAttributes"];
        assert_eq!(attributes["maxProperties"], 16);
        assert_eq!(attributes["additionalProperties"]["maxLength"], 256);
    }
}
