//! An Azure Resource Manager stand-in for tests, over HTTPS with a test CA, behaving like ARM
//! for the resources pgmcp manages:
//!
//! - **Authentication** as ARM does it: a bearer token the Entra fake issued for ARM, its RS256
//!   signature checked against the Entra fake's JWKS (fetched over HTTPS, refreshed on an
//!   unknown kid), audience the fake's own endpoint — as the Resource Manager of a cloud
//!   other than the public one accepts tokens for itself only, so a client must derive its
//!   scope from the endpoint it calls —, issuer and tenant of the fake's directory, expiry. Refusals are ARM's 401 bodies
//!   (`AuthenticationFailed`, `InvalidAuthenticationToken`, `InvalidAuthenticationTokenAudience`,
//!   `InvalidAuthenticationTokenTenant`, `ExpiredAuthenticationToken`) with `WWW-Authenticate`.
//! - **Authorization** from a role assignment table (principal object id, scope, [`Role`]);
//!   otherwise 403 `AuthorizationFailed` naming the action and scope, checked before existence
//!   as ARM does.
//! - **Resources**: user-assigned identities (created by the test with [`ArmFake::add_identity`],
//!   which also registers them in the Entra fake), their federated identity credentials
//!   (`Microsoft.ManagedIdentity`, GET/PUT/DELETE, list), Foundry projects
//!   ([`ArmFake::add_project`]) and their connections (`Microsoft.CognitiveServices`). Every
//!   change to an identity's credentials is pushed to the Entra fake, so token exchanges start
//!   and stop working exactly when ARM says the credential exists.
//! - **api-versions**: exactly those the two resource providers serve for these types
//!   ([`FIC_API_VERSIONS`], [`CONNECTION_API_VERSIONS`], taken from azure-rest-api-specs);
//!   any other is 400 `NoRegisteredProviderFound`.
//! - **Validation** like the resource providers: names, required properties, audiences,
//!   duplicate issuer/subject, the 20-credential limit; 400 with `error.code`/`error.message`;
//!   404 `ResourceNotFound`, `ParentResourceNotFound`, `ResourceGroupNotFound`. A connection's
//!   `category` and `authType` are extensible enums in the spec: known values are stored in their
//!   canonical spelling (with the `group` derived from the category), others as sent.
//! - **DELETE** of a credential or connection that does not exist is `204 No Content`, as the
//!   specs declare (200 or 204); a missing parent or resource group is still 404.
//! - **Concurrent credential writes**: a PUT/DELETE of a credential while another write to a
//!   credential of the same identity is under way (held, long-running) is ARM's `409
//!   ConcurrentFederatedIdentityCredentialsWritesForSingleManagedIdentity`; tests can also ask
//!   for it outright ([`ArmFake::conflict_concurrent_fic_writes`]).
//! - **Faults**: queued 429 (with `Retry-After`), 500 and 503 answers, a fixed latency, and
//!   long-running writes (201 + `Azure-AsyncOperation`, or 202 + `Location`) that take effect
//!   only when the operation completes.
//! - **Observation**: every request is recorded (method, path, status) so tests can assert
//!   "no PUT when unchanged".
//!
//! The fake runs on the tokio runtime of the test that started it.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use anyhow::Context as _;

use crate::tls_listener::HttpsServer;
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Value, json};

use crate::entra::{App, EntraFake, FederatedCredential, TOKEN_EXCHANGE_AUDIENCE};

/// The audiences the public cloud's ARM accepts in a token.
pub const ARM_AUDIENCES: [&str; 4] = [
    "https://management.core.windows.net/",
    "https://management.core.windows.net",
    "https://management.azure.com/",
    "https://management.azure.com",
];

/// The audiences the fake accepts: its own endpoint, as the Resource Manager of a cloud other
/// than the public one (`https://management.usgovcloudapi.net`, …) accepts tokens for itself
/// only. A client that asked Entra for the public cloud's scope is refused with ARM's
/// `InvalidAuthenticationTokenAudience`.
fn audiences(url: &str) -> Vec<String> {
    let url = url.trim_end_matches('/');
    vec![url.to_owned(), format!("{url}/")]
}
/// api-versions `Microsoft.ManagedIdentity` serves for `federatedIdentityCredentials`: every
/// version folder of azure-rest-api-specs
/// `specification/msi/resource-manager/Microsoft.ManagedIdentity/ManagedIdentity/{stable,preview}/`
/// whose `ManagedIdentity.json` has `…/userAssignedIdentities/{resourceName}/federatedIdentityCredentials`
/// (the older 2015-08-31-preview, 2018-11-30 and 2021-09-30-preview have none).
pub const FIC_API_VERSIONS: [&str; 8] = [
    "2022-01-31-preview",
    "2023-01-31",
    "2023-07-31-preview",
    "2024-11-30",
    "2025-01-31-preview",
    "2025-05-31-preview",
    "2026-04-30",
    "2026-05-31",
];
/// api-versions `Microsoft.CognitiveServices` serves for `accounts/projects/connections`: the
/// tags of azure-rest-api-specs
/// `specification/cognitiveservices/resource-manager/Microsoft.CognitiveServices/CognitiveServices/readme.md`
/// from the first with projects (2025-04-01-preview) on, each of whose `cognitiveservices.json`
/// has `…/accounts/{accountName}/projects/{projectName}/connections/{connectionName}`.
pub const CONNECTION_API_VERSIONS: [&str; 15] = [
    "2025-04-01-preview",
    "2025-06-01",
    "2025-07-01-preview",
    "2025-09-01",
    "2025-10-01-preview",
    "2025-12-01",
    "2026-01-15-preview",
    "2026-03-01",
    "2026-03-15-preview",
    "2026-05-01",
    "2026-05-15-preview",
    "2026-07-01",
    "2026-07-15-preview",
    "2026-09-01",
    "2026-09-15-preview",
];
/// The known values of `ConnectionCategory` (azure-rest-api-specs
/// `…/Microsoft.CognitiveServices/CognitiveServices/models.tsp`, `union ConnectionCategory`), with
/// the read-only `group` the fake derives for each. The union includes `string`: an extensible
/// enum, so a category not listed here is stored as sent (see [`validate_connection`]). The
/// service does not publish its category-to-group mapping; this one follows the names of
/// `union ConnectionGroup` and keeps what pgmcp relies on (`RemoteTool` is `GenericProtocol`).
const CATEGORIES: &[(&str, &str)] = &[
    ("ADLSGen2", "Azure"),
    ("AIServices", "AzureAI"),
    ("AmazonMws", "ServicesAndApps"),
    ("AmazonRdsForOracle", "Database"),
    ("AmazonRdsForSqlServer", "Database"),
    ("AmazonRedshift", "Database"),
    ("AmazonS3Compatible", "File"),
    ("ApiKey", "GenericProtocol"),
    ("ApiManagement", "Azure"),
    ("AppConfig", "Azure"),
    ("AppInsights", "Azure"),
    ("AzureBlob", "Azure"),
    ("AzureContainerAppEnvironment", "Azure"),
    ("AzureDataExplorer", "Azure"),
    ("AzureDatabricksDeltaLake", "Azure"),
    ("AzureKeyVault", "Azure"),
    ("AzureMariaDb", "Database"),
    ("AzureMySqlDb", "Database"),
    ("AzureOneLake", "Azure"),
    ("AzureOpenAI", "AzureAI"),
    ("AzurePostgresDb", "Database"),
    ("AzureSqlDb", "Database"),
    ("AzureSqlMi", "Database"),
    ("AzureStorageAccount", "Azure"),
    ("AzureSynapseAnalytics", "Azure"),
    ("AzureTableStorage", "Azure"),
    ("BingLLMSearch", "AzureAI"),
    ("Cassandra", "NoSQL"),
    ("CognitiveSearch", "AzureAI"),
    ("CognitiveService", "AzureAI"),
    ("Concur", "ServicesAndApps"),
    ("ContainerRegistry", "Azure"),
    ("CosmosDb", "NoSQL"),
    ("CosmosDbMongoDbApi", "NoSQL"),
    ("Couchbase", "NoSQL"),
    ("CustomKeys", "GenericProtocol"),
    ("Databricks", "Azure"),
    ("Db2", "Database"),
    ("Drill", "Database"),
    ("Dynamics", "ServicesAndApps"),
    ("DynamicsAx", "ServicesAndApps"),
    ("DynamicsCrm", "ServicesAndApps"),
    ("Elasticsearch", "NoSQL"),
    ("Eloqua", "ServicesAndApps"),
    ("FileServer", "File"),
    ("FtpServer", "File"),
    ("GenericContainerRegistry", "GenericProtocol"),
    ("GenericHttp", "GenericProtocol"),
    ("GenericRest", "GenericProtocol"),
    ("Git", "File"),
    ("GoogleAdWords", "ServicesAndApps"),
    ("GoogleBigQuery", "Database"),
    ("GoogleCloudStorage", "File"),
    ("Greenplum", "Database"),
    ("GroundingWithBingSearch", "AzureAI"),
    ("GroundingWithCustomSearch", "AzureAI"),
    ("Hbase", "NoSQL"),
    ("Hdfs", "File"),
    ("Hive", "Database"),
    ("Hubspot", "ServicesAndApps"),
    ("Impala", "Database"),
    ("Informix", "Database"),
    ("Jira", "ServicesAndApps"),
    ("Magento", "ServicesAndApps"),
    ("ManagedOnlineEndpoint", "AzureAI"),
    ("MariaDb", "Database"),
    ("Marketo", "ServicesAndApps"),
    ("MicrosoftAccess", "Database"),
    ("MicrosoftFabric", "Azure"),
    ("ModelGateway", "AzureAI"),
    ("MongoDbAtlas", "NoSQL"),
    ("MongoDbV2", "NoSQL"),
    ("MySql", "Database"),
    ("Netezza", "Database"),
    ("ODataRest", "GenericProtocol"),
    ("Odbc", "GenericProtocol"),
    ("Office365", "ServicesAndApps"),
    ("OpenAI", "AzureAI"),
    ("OpenAPI", "GenericProtocol"),
    ("Oracle", "Database"),
    ("OracleCloudStorage", "File"),
    ("OracleServiceCloud", "ServicesAndApps"),
    ("PayPal", "ServicesAndApps"),
    ("Phoenix", "Database"),
    ("Pinecone", "NoSQL"),
    ("PostgreSql", "Database"),
    ("PowerPlatformEnvironment", "ServicesAndApps"),
    ("Presto", "Database"),
    ("PythonFeed", "GenericProtocol"),
    ("QuickBooks", "ServicesAndApps"),
    ("Redis", "NoSQL"),
    ("RemoteA2A", "GenericProtocol"),
    ("RemoteTool", "GenericProtocol"),
    ("Responsys", "ServicesAndApps"),
    ("S3", "File"),
    ("Salesforce", "ServicesAndApps"),
    ("SalesforceMarketingCloud", "ServicesAndApps"),
    ("SalesforceServiceCloud", "ServicesAndApps"),
    ("SapBw", "Database"),
    ("SapCloudForCustomer", "ServicesAndApps"),
    ("SapEcc", "ServicesAndApps"),
    ("SapHana", "Database"),
    ("SapOpenHub", "Database"),
    ("SapTable", "Database"),
    ("Serp", "AzureAI"),
    ("Serverless", "AzureAI"),
    ("ServiceNow", "ServicesAndApps"),
    ("Sftp", "File"),
    ("SharePointOnlineList", "ServicesAndApps"),
    ("Sharepoint", "ServicesAndApps"),
    ("Shopify", "ServicesAndApps"),
    ("Snowflake", "Database"),
    ("Spark", "Database"),
    ("SqlServer", "Database"),
    ("Square", "ServicesAndApps"),
    ("Sybase", "Database"),
    ("Teradata", "Database"),
    ("Vertica", "Database"),
    ("WebTable", "ServicesAndApps"),
    ("Xero", "ServicesAndApps"),
    ("Zoho", "ServicesAndApps"),
];
/// `group` of a category the fake does not know (`ConnectionGroup` is extensible too).
const DEFAULT_GROUP: &str = "ServicesAndApps";
/// The known values of `ConnectionAuthType` (same models.tsp, `union ConnectionAuthType`, which
/// includes `string`: extensible, so other values are stored as sent).
const AUTH_TYPES: &[&str] = &[
    "AAD",
    "AccessKey",
    "AccountKey",
    "AccountManagedIdentity",
    "AgentUserImpersonation",
    "AgenticIdentityToken",
    "AgenticUser",
    "ApiKey",
    "CustomKeys",
    "DelegatedSAS",
    "ManagedIdentity",
    "None",
    "OAuth2",
    "PAT",
    "ProjectManagedIdentity",
    "SAS",
    "ServicePrincipal",
    "UserEntraToken",
    "UsernamePassword",
];
/// Federated identity credentials one identity may have.
const MAX_FICS_PER_IDENTITY: usize = 20;
const LOCATION: &str = "westeurope";

/// What a role assignment allows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// `*/read`.
    Reader,
    /// Everything.
    Contributor,
}

/// A fault answered instead of the real response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// 429 `TooManyRequests` with `Retry-After: <seconds>`.
    Throttle { retry_after_secs: u64 },
    /// 500 `InternalServerError`.
    ServerError,
    /// 503 `ServiceUnavailable`, with `Retry-After` when given.
    Unavailable { retry_after_secs: Option<u64> },
    /// No answer at all (until the client gives up): a request timeout.
    Hang,
}

/// How long-running writes are announced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LroStyle {
    /// PUT: 201 + `Azure-AsyncOperation`; DELETE: 202 + `Azure-AsyncOperation` + `Location`.
    AsyncOperation,
    /// PUT and DELETE: 202 + `Location`.
    Location,
}

/// Long-running writes: every PUT/DELETE of a credential or connection becomes an operation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LongRunning {
    pub style: LroStyle,
    /// Polls answered "in progress" before the operation ends.
    pub polls: u32,
    /// `Retry-After` on the write and on each in-progress poll.
    pub retry_after_secs: u64,
    /// End the operation `Failed` with this code and message instead of applying the write.
    pub fail: Option<(String, String)>,
}

/// One request the fake answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    pub path: String,
    pub status: u16,
}

struct Identity {
    id: String,
    client_id: String,
    principal_id: String,
}

/// A write that takes effect now, or when its operation completes.
#[derive(Clone)]
enum Commit {
    PutFic {
        identity: String,
        key: String,
        resource: Value,
    },
    DeleteFic {
        identity: String,
        key: String,
    },
    PutConnection {
        key: String,
        resource: Value,
    },
    DeleteConnection {
        key: String,
    },
}

struct Operation {
    polls_left: u32,
    retry_after_secs: u64,
    fail: Option<(String, String)>,
    commit: Option<Commit>,
    done: Option<Result<(), (String, String)>>,
    /// The identity whose credential this operation writes: busy until the operation ends.
    fic_identity: Option<String>,
}

struct Inner {
    url: String,
    tenant: String,
    entra: Arc<EntraFake>,
    roles: Vec<(String, String, Role)>,
    resource_groups: Vec<String>,
    /// Keys are lower-case resource ids (ARM ids are case-insensitive).
    identities: BTreeMap<String, Identity>,
    fics: BTreeMap<String, Value>,
    accounts: Vec<String>,
    /// Lower-case id -> (id, principal id of its system-assigned identity).
    projects: BTreeMap<String, (String, String)>,
    connections: BTreeMap<String, Value>,
    faults: VecDeque<(Option<Method>, Fault)>,
    /// Answered to every request until cleared (an outage, unlike the counted `faults`).
    outage: Option<Fault>,
    /// PUTs whose path contains this (lower case) are applied but not answered until released.
    hold: Option<String>,
    latency: Duration,
    long_running: Option<LongRunning>,
    operations: HashMap<String, Operation>,
    /// Writes of an identity's federated credentials under way (lower-case identity id -> how
    /// many): another write to that identity meanwhile is ARM's concurrent-writes 409.
    fic_writes: HashMap<String, usize>,
    /// The next this many PUT/DELETEs of federated credentials answer the concurrent-writes 409.
    fic_conflicts: usize,
    next_id: u64,
    requests: Vec<Request>,
    jwks: HashMap<String, JwkSet>,
}

type Shared = Arc<Mutex<Inner>>;

fn lock(shared: &Shared) -> MutexGuard<'_, Inner> {
    shared
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[derive(Clone)]
struct AppState {
    shared: Shared,
    /// Held PUTs wait until this turns false.
    holding: tokio::sync::watch::Receiver<bool>,
    /// Reaches the Entra fake (trusting its CA) for the JWKS.
    http: reqwest::Client,
    entra_url: String,
    /// The fake's own endpoint: the audience its tokens must carry.
    url: String,
}

/// Marks an answer to a synchronous credential write: its identity stays busy until the answer
/// is sent ([`FicWriteGuard`]).
#[derive(Clone)]
struct FicWriteInFlight(String);

/// Ends a credential write's busy time when its answer is sent or the request is abandoned.
struct FicWriteGuard {
    shared: Shared,
    identity: String,
}

impl Drop for FicWriteGuard {
    fn drop(&mut self) {
        end_fic_write(&mut lock(&self.shared), &self.identity);
    }
}

fn start_fic_write(inner: &mut Inner, identity: &str) {
    *inner.fic_writes.entry(identity.to_owned()).or_default() += 1;
}

fn end_fic_write(inner: &mut Inner, identity: &str) {
    if let Some(n) = inner.fic_writes.get_mut(identity) {
        *n = n.saturating_sub(1);
        if *n == 0 {
            inner.fic_writes.remove(identity);
        }
    }
}

/// A running ARM fake. Dropping it stops the server.
pub struct ArmFake {
    server: HttpsServer,
    inner: Shared,
    holding: tokio::sync::watch::Sender<bool>,
}

impl std::fmt::Debug for ArmFake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ArmFake")
            .field("url", &self.server.url)
            .finish_non_exhaustive()
    }
}

impl ArmFake {
    /// Starts the fake on a free loopback port with a new test CA. Every subscription belongs to
    /// `tenant` of `entra`, which issues the tokens the fake accepts and learns the federated
    /// credentials the fake stores.
    pub async fn start(entra: Arc<EntraFake>, tenant: &str) -> anyhow::Result<Self> {
        let bound = HttpsServer::bind("arm").await?;
        let url = bound.url.clone();
        let entra_ca = std::fs::read(entra.ca_cert())?;
        let http = reqwest::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(&entra_ca)?)
            .timeout(Duration::from_secs(10))
            .build()?;
        let entra_url = entra.url().to_owned();
        // A cloud of its own: Entra issues tokens for this endpoint, and only those are accepted.
        entra.add_resource(&url);
        let inner: Shared = Arc::new(Mutex::new(Inner {
            url: url.clone(),
            tenant: tenant.to_owned(),
            entra,
            roles: Vec::new(),
            resource_groups: Vec::new(),
            identities: BTreeMap::new(),
            fics: BTreeMap::new(),
            accounts: Vec::new(),
            projects: BTreeMap::new(),
            connections: BTreeMap::new(),
            faults: VecDeque::new(),
            outage: None,
            hold: None,
            latency: Duration::ZERO,
            long_running: None,
            operations: HashMap::new(),
            fic_writes: HashMap::new(),
            fic_conflicts: 0,
            next_id: 0,
            requests: Vec::new(),
            jwks: HashMap::new(),
        }));
        let (holding, holding_rx) = tokio::sync::watch::channel(false);
        let state = AppState {
            shared: inner.clone(),
            holding: holding_rx,
            http,
            entra_url,
            url: url.clone(),
        };
        let app = Router::new().fallback(handle).with_state(state);
        Ok(Self {
            server: bound.serve(app)?,
            inner,
            holding,
        })
    }

    /// The ARM endpoint: `https://127.0.0.1:<port>` (on a test node, its address).
    pub fn url(&self) -> &str {
        &self.server.url
    }

    /// The token scope for this endpoint: `<url>/.default`.
    pub fn scope(&self) -> String {
        format!("{}/.default", self.server.url.trim_end_matches('/'))
    }

    /// PEM of the CA that signed the fake's certificate.
    pub fn ca_cert(&self) -> &Path {
        &self.server.ca_cert
    }

    /// Grants `role` at `scope` (a resource id or prefix: subscription, resource group,
    /// resource) to the principal with object id `principal` (the `oid` of its tokens).
    pub fn assign_role(&self, principal: &str, scope: &str, role: Role) {
        lock(&self.inner).roles.push((
            principal.to_owned(),
            scope.trim_end_matches('/').to_ascii_lowercase(),
            role,
        ));
    }

    /// Creates a user-assigned managed identity (and its resource group) and registers it in
    /// the Entra fake's tenant (which must exist) as app `client_id` with object id
    /// `principal_id`. From now on the fake owns that app's federated credentials.
    pub fn add_identity(
        &self,
        resource_id: &str,
        client_id: &str,
        principal_id: &str,
    ) -> anyhow::Result<()> {
        let parsed = parse(resource_id);
        anyhow::ensure!(
            parsed.len() == 8
                && parsed[6].eq_ignore_ascii_case("userAssignedIdentities")
                && parsed[5].eq_ignore_ascii_case("Microsoft.ManagedIdentity"),
            "{resource_id} is not a user-assigned identity id"
        );
        let mut inner = lock(&self.inner);
        inner.add_resource_group(&parsed);
        inner.identities.insert(
            resource_id.to_ascii_lowercase(),
            Identity {
                id: resource_id.to_owned(),
                client_id: client_id.to_owned(),
                principal_id: principal_id.to_owned(),
            },
        );
        sync_entra(&inner, &resource_id.to_ascii_lowercase())
    }

    /// Creates a Foundry project (with its account and resource group):
    /// `/subscriptions/…/providers/Microsoft.CognitiveServices/accounts/<a>/projects/<p>`, with a
    /// system-assigned identity of a generated principal id ([`ArmFake::project_principal_id`]).
    pub fn add_project(&self, resource_id: &str) -> anyhow::Result<()> {
        let n = resource_id
            .bytes()
            .fold(0u64, |h, b| h.wrapping_mul(31).wrapping_add(u64::from(b)));
        let principal_id = format!(
            "{:08x}-0000-4000-8000-{:012x}",
            n >> 32,
            n & 0xffff_ffff_ffff
        );
        self.add_project_with_identity(resource_id, &principal_id)
    }

    /// The principal id of project `resource_id`'s system-assigned identity.
    pub fn project_principal_id(&self, resource_id: &str) -> Option<String> {
        lock(&self.inner)
            .projects
            .get(&resource_id.to_ascii_lowercase())
            .map(|(_, principal)| principal.clone())
    }

    /// [`ArmFake::add_project`] whose system-assigned identity has object id `principal_id`.
    pub fn add_project_with_identity(
        &self,
        resource_id: &str,
        principal_id: &str,
    ) -> anyhow::Result<()> {
        let parsed = parse(resource_id);
        anyhow::ensure!(
            parsed.len() == 10
                && parsed[5].eq_ignore_ascii_case("Microsoft.CognitiveServices")
                && parsed[6].eq_ignore_ascii_case("accounts")
                && parsed[8].eq_ignore_ascii_case("projects"),
            "{resource_id} is not a Foundry project id"
        );
        let mut inner = lock(&self.inner);
        inner.add_resource_group(&parsed);
        let account = format!("/{}", parsed[..8].join("/")).to_ascii_lowercase();
        if !inner.accounts.contains(&account) {
            inner.accounts.push(account);
        }
        inner.projects.insert(
            resource_id.to_ascii_lowercase(),
            (resource_id.to_owned(), principal_id.to_owned()),
        );
        Ok(())
    }

    /// A stored federated credential or connection, as GET would return it.
    pub fn resource(&self, resource_id: &str) -> Option<Value> {
        let inner = lock(&self.inner);
        let key = resource_id.to_ascii_lowercase();
        inner
            .fics
            .get(&key)
            .or_else(|| inner.connections.get(&key))
            .cloned()
    }

    /// Ids of the credentials and connections under `parent` (an identity or a project).
    pub fn resources_under(&self, parent: &str) -> Vec<String> {
        let prefix = format!("{}/", parent.to_ascii_lowercase());
        let inner = lock(&self.inner);
        inner
            .fics
            .keys()
            .chain(inner.connections.keys())
            .filter(|key| key.starts_with(&prefix))
            .cloned()
            .collect()
    }

    /// Answers the next `times` requests (of `method`, or of any method) with `fault`.
    pub fn inject(&self, method: Option<Method>, fault: Fault, times: usize) {
        let mut inner = lock(&self.inner);
        for _ in 0..times {
            inner.faults.push_back((method.clone(), fault.clone()));
        }
    }

    /// Answers every request with `fault` until called again with `None`: ARM throttling,
    /// failing or not answering for a while.
    pub fn set_outage(&self, fault: Option<Fault>) {
        lock(&self.inner).outage = fault;
    }

    /// The next successful PUT whose path contains `fragment` (case-insensitive) takes effect
    /// but is not answered until [`ArmFake::release`]: the caller can be stopped between ARM's
    /// write and its own bookkeeping.
    pub fn hold_put(&self, fragment: &str) {
        lock(&self.inner).hold = Some(fragment.to_ascii_lowercase());
        self.holding.send_replace(true);
    }

    /// Answers the held PUT (if any) and holds no more.
    pub fn release(&self) {
        lock(&self.inner).hold = None;
        self.holding.send_replace(false);
    }

    /// Delays every answer by `latency`.
    pub fn set_latency(&self, latency: Duration) {
        lock(&self.inner).latency = latency;
    }

    /// Makes PUT and DELETE of credentials and connections long-running (or not, with `None`).
    pub fn set_long_running(&self, long_running: Option<LongRunning>) {
        lock(&self.inner).long_running = long_running;
    }

    /// Answers the next `times` PUTs and DELETEs of federated identity credentials with ARM's
    /// `409 ConcurrentFederatedIdentityCredentialsWritesForSingleManagedIdentity`, as if another
    /// client were writing a credential of the same identity at that moment. (Writes that really
    /// overlap, e.g. one held by [`ArmFake::hold_put`] or a long-running one, get it anyway.)
    pub fn conflict_concurrent_fic_writes(&self, times: usize) {
        lock(&self.inner).fic_conflicts = times;
    }

    /// Every request answered so far.
    pub fn requests(&self) -> Vec<Request> {
        lock(&self.inner).requests.clone()
    }

    /// How many `method` requests went to `path` (case-insensitive, without the query).
    pub fn count(&self, method: &str, path: &str) -> usize {
        lock(&self.inner)
            .requests
            .iter()
            .filter(|r| r.method.eq_ignore_ascii_case(method) && r.path.eq_ignore_ascii_case(path))
            .count()
    }

    /// How many requests had a path containing `fragment` (case-insensitive).
    pub fn count_matching(&self, method: &str, fragment: &str) -> usize {
        let fragment = fragment.to_ascii_lowercase();
        lock(&self.inner)
            .requests
            .iter()
            .filter(|r| {
                r.method.eq_ignore_ascii_case(method)
                    && r.path.to_ascii_lowercase().contains(&fragment)
            })
            .count()
    }

    /// Forgets the requests recorded so far.
    pub fn clear_requests(&self) {
        lock(&self.inner).requests.clear();
    }
}

/// Path segments of a resource id or request path, without empty ones at the ends.
fn parse(path: &str) -> Vec<&str> {
    path.trim_matches('/').split('/').collect()
}

/// `/subscriptions/<s>/resourcegroups/<rg>` in lower case.
fn resource_group_key(segments: &[&str]) -> String {
    format!("/{}", segments[..4.min(segments.len())].join("/")).to_ascii_lowercase()
}

impl Inner {
    /// Creates the resource group of a resource id's segments, if it is new.
    fn add_resource_group(&mut self, segments: &[&str]) {
        let rg = resource_group_key(segments);
        if !self.resource_groups.contains(&rg) {
            self.resource_groups.push(rg);
        }
    }
}

/// Pushes identity `key`'s credentials to the Entra fake.
fn sync_entra(inner: &Inner, key: &str) -> anyhow::Result<()> {
    let identity = inner
        .identities
        .get(key)
        .with_context(|| format!("no identity {key}"))?;
    let prefix = format!("{key}/federatedidentitycredentials/");
    let federated_credentials = inner
        .fics
        .iter()
        .filter(|(k, _)| k.starts_with(&prefix))
        .map(|(_, fic)| FederatedCredential {
            issuer: fic["properties"]["issuer"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
            subject: fic["properties"]["subject"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
            audiences: fic["properties"]["audiences"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|v| v.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default(),
        })
        .collect();
    inner.entra.register_app(
        &inner.tenant,
        App {
            client_id: identity.client_id.clone(),
            object_id: identity.principal_id.clone(),
            display_name: identity
                .id
                .rsplit('/')
                .next()
                .unwrap_or_default()
                .to_owned(),
            access_token_version: 1,
            federated_credentials,
            ..App::default()
        },
    )
}

fn apply(inner: &mut Inner, commit: Commit) {
    let identity = match commit {
        Commit::PutFic {
            identity,
            key,
            resource,
        } => {
            inner.fics.insert(key, resource);
            Some(identity)
        }
        Commit::DeleteFic { identity, key } => {
            inner.fics.remove(&key);
            Some(identity)
        }
        Commit::PutConnection { key, resource } => {
            inner.connections.insert(key, resource);
            None
        }
        Commit::DeleteConnection { key } => {
            inner.connections.remove(&key);
            None
        }
    };
    if let Some(identity) = identity
        && let Err(err) = sync_entra(inner, &identity)
    {
        eprintln!("the ARM fake could not update the Entra fake: {err:#}");
    }
}

/// The RBAC action verb of a request on a child resource: read, write or delete.
fn rbac_action(method: &Method) -> Option<&'static str> {
    match *method {
        Method::GET => Some("read"),
        Method::PUT => Some("write"),
        Method::DELETE => Some("delete"),
        _ => None,
    }
}

fn method_not_allowed() -> Response {
    arm_error(
        StatusCode::METHOD_NOT_ALLOWED,
        "MethodNotAllowed",
        "The requested method is not allowed.",
    )
}

fn arm_error(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        axum::Json(json!({"error": {"code": code, "message": message}})),
    )
        .into_response()
}

fn bad_request(code: &str, message: &str) -> Response {
    arm_error(StatusCode::BAD_REQUEST, code, message)
}

/// Who called, from a verified token.
struct Caller {
    object_id: String,
    app_id: String,
}

async fn handle(
    State(state): State<AppState>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let latency = lock(&state.shared).latency;
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    let mut response = answer(&state, &method, &uri, &headers, &body).await;
    // No await since `answer` marked the identity busy: the guard always ends it.
    let _fic_write =
        response
            .extensions_mut()
            .remove::<FicWriteInFlight>()
            .map(|FicWriteInFlight(identity)| FicWriteGuard {
                shared: state.shared.clone(),
                identity,
            });
    let held = {
        let mut inner = lock(&state.shared);
        inner.next_id += 1;
        let request_id = format!("00000000-0000-4000-8000-{:012x}", inner.next_id);
        if let Ok(value) = HeaderValue::from_str(&request_id) {
            response
                .headers_mut()
                .insert("x-ms-request-id", value.clone());
            response
                .headers_mut()
                .insert("x-ms-correlation-request-id", value);
        }
        inner.requests.push(Request {
            method: method.to_string(),
            path: uri.path().to_owned(),
            status: response.status().as_u16(),
        });
        method == Method::PUT
            && response.status().is_success()
            && inner
                .hold
                .as_ref()
                .is_some_and(|f| uri.path().to_ascii_lowercase().contains(f.as_str()))
    };
    if held {
        let mut holding = state.holding.clone();
        let _ = holding.wait_for(|holding| !holding).await;
    }
    response
}

async fn answer(
    state: &AppState,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: &Bytes,
) -> Response {
    let caller = match authenticate(state, headers).await {
        Ok(caller) => caller,
        Err(response) => return response,
    };
    let api_version = uri.query().and_then(|q| {
        q.split('&')
            .filter_map(|pair| pair.split_once('='))
            .find(|(k, _)| k.eq_ignore_ascii_case("api-version"))
            .map(|(_, v)| v.to_owned())
    });
    let Some(api_version) = api_version else {
        return bad_request(
            "MissingApiVersionParameter",
            "The api-version query parameter (?api-version=) is required for all requests.",
        );
    };
    let fault = {
        let mut inner = lock(&state.shared);
        let fault = inner.outage.clone().or_else(|| {
            inner
                .faults
                .iter()
                .position(|(m, _)| m.as_ref().is_none_or(|m| m == method))
                .and_then(|i| inner.faults.remove(i))
                .map(|(_, fault)| fault)
        });
        if fault == Some(Fault::Hang) {
            // Recorded now: the client gives up before there is an answer.
            inner.requests.push(Request {
                method: method.to_string(),
                path: uri.path().to_owned(),
                status: 0,
            });
        }
        fault
    };
    if let Some(fault) = fault {
        return fault_response(&fault).await;
    }
    let mut inner = lock(&state.shared);
    let segments = parse(uri.path());
    let lower: Vec<String> = segments.iter().map(|s| s.to_ascii_lowercase()).collect();
    let l: Vec<&str> = lower.iter().map(String::as_str).collect();
    match l.as_slice() {
        ["subscriptions", _, "providers", _, "locations", _, kind, _]
            if *kind == "operationstatuses" || *kind == "operationresults" =>
        {
            poll(&mut inner, segments[7], *kind == "operationresults")
        }
        [
            "subscriptions",
            _,
            "resourcegroups",
            _,
            "providers",
            "microsoft.managedidentity",
            "userassignedidentities",
            ..,
        ] => managed_identity(&mut inner, &caller, method, &segments, &api_version, body),
        [
            "subscriptions",
            _,
            "resourcegroups",
            _,
            "providers",
            "microsoft.cognitiveservices",
            "accounts",
            _,
            "projects",
            ..,
        ] => cognitive_services(&mut inner, &caller, method, &segments, &api_version, body),
        _ => arm_error(
            StatusCode::NOT_FOUND,
            "InvalidResourceType",
            &format!(
                "The resource type could not be found for the path '{}' and api version '{api_version}'.",
                uri.path()
            ),
        ),
    }
}

async fn fault_response(fault: &Fault) -> Response {
    match fault {
        Fault::Hang => {
            // Answered only after any client has given up (and dropped the connection, which
            // cancels this handler).
            tokio::time::sleep(Duration::from_secs(600)).await;
            arm_error(
                StatusCode::GATEWAY_TIMEOUT,
                "GatewayTimeout",
                "The gateway did not receive a response within the specified time period.",
            )
        }
        Fault::Throttle { retry_after_secs } => {
            let mut response = arm_error(
                StatusCode::TOO_MANY_REQUESTS,
                "TooManyRequests",
                "The request is being throttled as the limit has been reached for operation type - Write_ObservationWindow_00:01:00. For more information, see - https://aka.ms/srpthrottlinglimits",
            );
            response
                .headers_mut()
                .insert("retry-after", HeaderValue::from(*retry_after_secs));
            response
        }
        Fault::ServerError => arm_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalServerError",
            "Encountered internal server error. Diagnostic information: fault injected by the test.",
        ),
        Fault::Unavailable { retry_after_secs } => {
            let mut response = arm_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "ServiceUnavailable",
                "The service is temporarily unavailable. Please try again later.",
            );
            if let Some(secs) = retry_after_secs {
                response
                    .headers_mut()
                    .insert("retry-after", HeaderValue::from(*secs));
            }
            response
        }
    }
}

/// ARM's 401, with `WWW-Authenticate` as ARM sends it.
fn unauthorized(state: &AppState, tenant: &str, code: &str, message: &str) -> Response {
    let mut response = arm_error(StatusCode::UNAUTHORIZED, code, message);
    let challenge = format!(
        "Bearer authorization_uri=\"{}/{tenant}\", error=\"invalid_token\", error_description=\"{}\"",
        state.entra_url,
        message.replace('"', "'")
    );
    if let Ok(value) = HeaderValue::from_str(&challenge) {
        response.headers_mut().insert("www-authenticate", value);
    }
    response
}

async fn authenticate(state: &AppState, headers: &HeaderMap) -> Result<Caller, Response> {
    let tenant = lock(&state.shared).tenant.clone();
    let Some(header) = headers.get("authorization") else {
        return Err(unauthorized(
            state,
            &tenant,
            "AuthenticationFailed",
            "Authentication failed. The 'Authorization' header is missing.",
        ));
    };
    let token = header
        .to_str()
        .ok()
        .and_then(|h| h.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim().to_owned());
    let Some(token) = token else {
        return Err(unauthorized(
            state,
            &tenant,
            "AuthenticationFailed",
            "Authentication failed. The 'Authorization' header is provided in an invalid format.",
        ));
    };
    let invalid = || {
        unauthorized(
            state,
            &tenant,
            "InvalidAuthenticationToken",
            "The access token is invalid.",
        )
    };
    let header = jsonwebtoken::decode_header(&token).map_err(|_| invalid())?;
    let unverified = jsonwebtoken::dangerous::insecure_decode::<Value>(&token)
        .map_err(|_| invalid())?
        .claims;
    let issuer = unverified["iss"].as_str().unwrap_or_default().to_owned();
    if unverified["tid"].as_str() != Some(tenant.as_str()) {
        return Err(unauthorized(
            state,
            &tenant,
            "InvalidAuthenticationTokenTenant",
            &format!(
                "The access token is from the wrong issuer '{issuer}'. It must match the tenant 'https://sts.windows.net/{tenant}/' associated with this subscription. Please use the authority (URL) 'https://login.windows.net/{tenant}' to get the token."
            ),
        ));
    }
    let kid = header.kid.clone().unwrap_or_default();
    let jwk = match jwks(state, &tenant, &kid, false).await {
        Some(jwk) => Some(jwk),
        None => jwks(state, &tenant, &kid, true).await,
    };
    let signature = || {
        unauthorized(
            state,
            &tenant,
            "InvalidAuthenticationToken",
            "The access token has an invalid signature.",
        )
    };
    let jwk = jwk.ok_or_else(signature)?;
    let key = DecodingKey::from_jwk(&jwk).map_err(|_| signature())?;
    let mut validation = Validation::new(Algorithm::RS256);
    let audiences = audiences(&state.url);
    validation.set_audience(&audiences);
    validation.set_issuer(&[
        EntraFake::issuer_v1(&tenant),
        format!("{}/{tenant}/v2.0", state.entra_url),
    ]);
    validation.leeway = 300;
    let claims = match jsonwebtoken::decode::<Value>(&token, &key, &validation) {
        Ok(data) => data.claims,
        Err(err) => {
            use jsonwebtoken::errors::ErrorKind;
            return Err(match err.kind() {
                ErrorKind::InvalidAudience => unauthorized(
                    state,
                    &tenant,
                    "InvalidAuthenticationTokenAudience",
                    &format!(
                        "The access token has been obtained for wrong audience or resource '{}'. It should exactly match with one of the allowed audiences '{}'.",
                        unverified["aud"].as_str().unwrap_or_default(),
                        audiences.join("','")
                    ),
                ),
                ErrorKind::ExpiredSignature => unauthorized(
                    state,
                    &tenant,
                    "ExpiredAuthenticationToken",
                    "The access token expiry UTC time is earlier than current UTC time.",
                ),
                ErrorKind::InvalidSignature => signature(),
                _ => invalid(),
            });
        }
    };
    let text = |name: &str| claims[name].as_str().unwrap_or_default().to_owned();
    Ok(Caller {
        object_id: text("oid"),
        app_id: if claims["appid"].is_string() {
            text("appid")
        } else {
            text("azp")
        },
    })
}

/// The JWK `kid` of `tenant`, from the cache or (with `refresh`) fetched again.
async fn jwks(
    state: &AppState,
    tenant: &str,
    kid: &str,
    refresh: bool,
) -> Option<jsonwebtoken::jwk::Jwk> {
    if !refresh {
        return lock(&state.shared)
            .jwks
            .get(tenant)
            .and_then(|set| set.find(kid).cloned());
    }
    let url = format!("{}/{tenant}/discovery/keys", state.entra_url);
    let set: JwkSet = state
        .http
        .get(url)
        .send()
        .await
        .ok()?
        .error_for_status()
        .ok()?
        .json()
        .await
        .ok()?;
    let jwk = set.find(kid).cloned();
    lock(&state.shared).jwks.insert(tenant.to_owned(), set);
    jwk
}

/// 403 unless a role assignment of the caller covers `resource_id` for `action`.
fn authorize(inner: &Inner, caller: &Caller, resource_id: &str, action: &str) -> Option<Response> {
    let target = resource_id.to_ascii_lowercase();
    let write = !action.ends_with("/read");
    let allowed = inner.roles.iter().any(|(principal, scope, role)| {
        principal == &caller.object_id
            && (target == *scope || target.starts_with(&format!("{scope}/")))
            && (*role == Role::Contributor || !write)
    });
    (!allowed).then(|| {
        arm_error(
            StatusCode::FORBIDDEN,
            "AuthorizationFailed",
            &format!(
                "The client '{}' with object id '{}' does not have authorization to perform action '{action}' over scope '{resource_id}' or the scope is invalid. If access was recently granted, please refresh your credentials.",
                caller.app_id, caller.object_id
            ),
        )
    })
}

fn unsupported_api_version(api_version: &str, kind: &str, supported: &[&str]) -> Response {
    bad_request(
        "NoRegisteredProviderFound",
        &format!(
            "No registered resource provider found for location '{LOCATION}' and API version '{api_version}' for type '{kind}'. The supported api-versions are '{}'. The supported locations are '{LOCATION}'.",
            supported.join(", ")
        ),
    )
}

fn not_found(type_path: &str, resource_group: &str) -> Response {
    arm_error(
        StatusCode::NOT_FOUND,
        "ResourceNotFound",
        &format!(
            "The Resource '{type_path}' under resource group '{resource_group}' was not found. For more details please go to https://aka.ms/ARMResourceNotFoundFix"
        ),
    )
}

/// What `Microsoft.ManagedIdentity` answers to a credential write while another write to a
/// credential of the same identity is under way (message as ARM sends it, with the identity's id
/// in lower case).
fn concurrent_fic_writes(identity_key: &str) -> Response {
    arm_error(
        StatusCode::CONFLICT,
        "ConcurrentFederatedIdentityCredentialsWritesForSingleManagedIdentity",
        &format!(
            "Too many Federated Identity Credentials are written concurrently for the managed identity '{identity_key}'. Concurrent Federated Identity Credentials writes under the same managed identity are not supported."
        ),
    )
}

fn parent_not_found(parent: &str) -> Response {
    arm_error(
        StatusCode::NOT_FOUND,
        "ParentResourceNotFound",
        &format!(
            "Can not perform requested operation on nested resource. Parent resource '{parent}' not found."
        ),
    )
}

fn resource_group_not_found(segments: &[&str]) -> Response {
    arm_error(
        StatusCode::NOT_FOUND,
        "ResourceGroupNotFound",
        &format!("Resource group '{}' could not be found.", segments[3]),
    )
}

/// The JSON object in a PUT body, or ARM's 400.
// A handler helper's natural error is the response to send.
#[allow(clippy::result_large_err)]
fn json_body(body: &Bytes) -> Result<serde_json::Map<String, Value>, Response> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(object)) => Ok(object),
        Ok(_) => Err(bad_request(
            "InvalidRequestContent",
            "The request content was invalid and could not be deserialized: the body must be a JSON object.",
        )),
        Err(err) => Err(bad_request(
            "InvalidRequestContent",
            &format!("The request content was invalid and could not be deserialized: '{err}'."),
        )),
    }
}

fn managed_identity(
    inner: &mut Inner,
    caller: &Caller,
    method: &Method,
    segments: &[&str],
    api_version: &str,
    body: &Bytes,
) -> Response {
    let id = format!("/{}", segments.join("/"));
    let key = id.to_ascii_lowercase();
    let identity_key =
        format!("/{}", segments[..8.min(segments.len())].join("/")).to_ascii_lowercase();
    match segments.len() {
        // The identity itself (read only here).
        8 => {
            if let Some(denied) = authorize(
                inner,
                caller,
                &id,
                "Microsoft.ManagedIdentity/userAssignedIdentities/read",
            ) {
                return denied;
            }
            if method != Method::GET {
                return arm_error(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "MethodNotAllowed",
                    "The fake manages identities through ArmFake::add_identity.",
                );
            }
            match inner.identities.get(&key) {
                Some(identity) => axum::Json(json!({
                    "id": identity.id,
                    "name": segments[7],
                    "type": "Microsoft.ManagedIdentity/userAssignedIdentities",
                    "location": LOCATION,
                    "properties": {
                        "tenantId": inner.tenant,
                        "principalId": identity.principal_id,
                        "clientId": identity.client_id,
                    }
                }))
                .into_response(),
                None if !inner
                    .resource_groups
                    .contains(&resource_group_key(segments)) =>
                {
                    resource_group_not_found(segments)
                }
                None => not_found(
                    &format!(
                        "Microsoft.ManagedIdentity/userAssignedIdentities/{}",
                        segments[7]
                    ),
                    segments[3],
                ),
            }
        }
        9 | 10 if segments[8].eq_ignore_ascii_case("federatedIdentityCredentials") => {
            let Some(action) = rbac_action(method) else {
                return method_not_allowed();
            };
            if let Some(denied) = authorize(
                inner,
                caller,
                &id,
                &format!(
                    "Microsoft.ManagedIdentity/userAssignedIdentities/federatedIdentityCredentials/{action}"
                ),
            ) {
                return denied;
            }
            if !FIC_API_VERSIONS.contains(&api_version) {
                return unsupported_api_version(
                    api_version,
                    "userAssignedIdentities/federatedIdentityCredentials",
                    &FIC_API_VERSIONS,
                );
            }
            if !inner
                .resource_groups
                .contains(&resource_group_key(segments))
            {
                return resource_group_not_found(segments);
            }
            if !inner.identities.contains_key(&identity_key) {
                return parent_not_found(segments[7]);
            }
            if segments.len() == 9 {
                if *method != Method::GET {
                    return arm_error(
                        StatusCode::METHOD_NOT_ALLOWED,
                        "MethodNotAllowed",
                        "The requested method is not allowed.",
                    );
                }
                let prefix = format!("{identity_key}/federatedidentitycredentials/");
                let value: Vec<Value> = inner
                    .fics
                    .iter()
                    .filter(|(k, _)| k.starts_with(&prefix))
                    .map(|(_, v)| v.clone())
                    .collect();
                return axum::Json(json!({"value": value})).into_response();
            }
            let name = segments[9];
            let type_path = format!(
                "Microsoft.ManagedIdentity/userAssignedIdentities/{}/federatedIdentityCredentials/{name}",
                segments[7]
            );
            if *method != Method::GET {
                if inner.fic_writes.contains_key(&identity_key) {
                    return concurrent_fic_writes(&identity_key);
                }
                if inner.fic_conflicts > 0 {
                    inner.fic_conflicts -= 1;
                    return concurrent_fic_writes(&identity_key);
                }
            }
            match *method {
                Method::GET => match inner.fics.get(&key) {
                    Some(fic) => axum::Json(fic.clone()).into_response(),
                    None => not_found(&type_path, segments[3]),
                },
                Method::DELETE => {
                    // `FederatedIdentityCredentials_Delete` answers 200 or 204 (azure-rest-api-specs
                    // FederatedIdentityCredential.tsp: `ArmResourceDeleteSync`; examples
                    // FederatedIdentityCredentialDelete.json): 204 when there was nothing to delete.
                    if !inner.fics.contains_key(&key) {
                        return StatusCode::NO_CONTENT.into_response();
                    }
                    write(
                        inner,
                        segments,
                        "Microsoft.ManagedIdentity",
                        api_version,
                        Commit::DeleteFic {
                            identity: identity_key,
                            key,
                        },
                        Value::Null,
                        false,
                    )
                }
                _ => {
                    let resource = match validate_fic(inner, &identity_key, &key, &id, name, body) {
                        Ok(resource) => resource,
                        Err(response) => return response,
                    };
                    let existed = inner.fics.contains_key(&key);
                    write(
                        inner,
                        segments,
                        "Microsoft.ManagedIdentity",
                        api_version,
                        Commit::PutFic {
                            identity: identity_key,
                            key,
                            resource: resource.clone(),
                        },
                        resource,
                        existed,
                    )
                }
            }
        }
        _ => arm_error(
            StatusCode::NOT_FOUND,
            "InvalidResourceType",
            &format!(
                "The resource type '{}' could not be found in the namespace 'Microsoft.ManagedIdentity' for api version '{api_version}'.",
                segments.get(8).unwrap_or(&"")
            ),
        ),
    }
}

/// The federated credential a PUT asks for, validated like `Microsoft.ManagedIdentity`.
// A handler helper's natural error is the response to send.
#[allow(clippy::result_large_err)]
fn validate_fic(
    inner: &Inner,
    identity_key: &str,
    key: &str,
    id: &str,
    name: &str,
    body: &Bytes,
) -> Result<Value, Response> {
    let valid_name = (3..=120).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if !valid_name {
        return Err(bad_request(
            "BadRequest",
            &format!(
                "Invalid federated identity credential name '{name}'. The name must be 3 to 120 characters long, start with a letter or number, and contain only letters, numbers, hyphens and underscores."
            ),
        ));
    }
    let object = json_body(body)?;
    let Some(Value::Object(properties)) = object.get("properties") else {
        return Err(bad_request(
            "BadRequest",
            "The request body must contain 'properties' with 'issuer', 'subject' and 'audiences'.",
        ));
    };
    let text = |field: &str| properties.get(field).and_then(Value::as_str).unwrap_or("");
    let issuer = text("issuer");
    if issuer.is_empty() {
        return Err(bad_request(
            "BadRequest",
            "The 'issuer' property of the federated identity credential is required.",
        ));
    }
    if !issuer.starts_with("https://") {
        return Err(bad_request(
            "BadRequest",
            &format!("The issuer '{issuer}' is not a valid URL: it must start with https://."),
        ));
    }
    let subject = text("subject");
    if subject.is_empty() {
        return Err(bad_request(
            "BadRequest",
            "The 'subject' property of the federated identity credential is required.",
        ));
    }
    let audiences: Vec<&str> = properties
        .get("audiences")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    if audiences != [TOKEN_EXCHANGE_AUDIENCE] {
        return Err(bad_request(
            "BadRequest",
            &format!(
                "Invalid audiences {audiences:?}: a federated identity credential of a managed identity must have exactly one audience, '{TOKEN_EXCHANGE_AUDIENCE}'."
            ),
        ));
    }
    let prefix = format!("{identity_key}/federatedidentitycredentials/");
    let siblings: Vec<(&String, &Value)> = inner
        .fics
        .iter()
        .filter(|(k, _)| k.starts_with(&prefix) && k.as_str() != key)
        .collect();
    if let Some((_, other)) = siblings.iter().find(|(_, v)| {
        v["properties"]["issuer"] == json!(issuer) && v["properties"]["subject"] == json!(subject)
    }) {
        return Err(bad_request(
            "BadRequest",
            &format!(
                "A federated identity credential with issuer '{issuer}' and subject '{subject}' already exists on this identity: '{}'.",
                other["name"].as_str().unwrap_or_default()
            ),
        ));
    }
    if !inner.fics.contains_key(key) && siblings.len() >= MAX_FICS_PER_IDENTITY {
        return Err(bad_request(
            "BadRequest",
            &format!(
                "A managed identity can have at most {MAX_FICS_PER_IDENTITY} federated identity credentials."
            ),
        ));
    }
    Ok(json!({
        "id": id,
        "name": name,
        "type": "Microsoft.ManagedIdentity/userAssignedIdentities/federatedIdentityCredentials",
        "properties": {
            "issuer": issuer,
            "subject": subject,
            "audiences": audiences,
        },
        "systemData": {"lastModifiedAt": jiff::Timestamp::now().to_string()},
    }))
}

fn cognitive_services(
    inner: &mut Inner,
    caller: &Caller,
    method: &Method,
    segments: &[&str],
    api_version: &str,
    body: &Bytes,
) -> Response {
    let id = format!("/{}", segments.join("/"));
    let key = id.to_ascii_lowercase();
    let project_key =
        format!("/{}", segments[..10.min(segments.len())].join("/")).to_ascii_lowercase();
    let account_key = format!("/{}", segments[..8].join("/")).to_ascii_lowercase();
    match segments.len() {
        10 => {
            if let Some(denied) = authorize(
                inner,
                caller,
                &id,
                "Microsoft.CognitiveServices/accounts/projects/read",
            ) {
                return denied;
            }
            match inner.projects.get(&key) {
                Some((project, principal_id)) if *method == Method::GET => axum::Json(json!({
                    "id": project,
                    "identity": {
                        "type": "SystemAssigned",
                        "principalId": principal_id,
                        "tenantId": inner.tenant,
                    },
                    "name": segments[9],
                    "type": "Microsoft.CognitiveServices/accounts/projects",
                    "location": LOCATION,
                    "properties": {"provisioningState": "Succeeded"},
                }))
                .into_response(),
                Some(_) => arm_error(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "MethodNotAllowed",
                    "The fake manages projects through ArmFake::add_project.",
                ),
                None => not_found(
                    &format!(
                        "Microsoft.CognitiveServices/accounts/{}/projects/{}",
                        segments[7], segments[9]
                    ),
                    segments[3],
                ),
            }
        }
        12 if segments[10].eq_ignore_ascii_case("connections") => {
            let Some(action) = rbac_action(method) else {
                return method_not_allowed();
            };
            if let Some(denied) = authorize(
                inner,
                caller,
                &id,
                &format!("Microsoft.CognitiveServices/accounts/projects/connections/{action}"),
            ) {
                return denied;
            }
            if !CONNECTION_API_VERSIONS.contains(&api_version) {
                return unsupported_api_version(
                    api_version,
                    "accounts/projects/connections",
                    &CONNECTION_API_VERSIONS,
                );
            }
            if !inner
                .resource_groups
                .contains(&resource_group_key(segments))
            {
                return resource_group_not_found(segments);
            }
            if !inner.accounts.contains(&account_key) {
                return parent_not_found(segments[7]);
            }
            if !inner.projects.contains_key(&project_key) {
                return parent_not_found(&format!("{}/{}", segments[7], segments[9]));
            }
            let name = segments[11];
            let type_path = format!(
                "Microsoft.CognitiveServices/accounts/{}/projects/{}/connections/{name}",
                segments[7], segments[9]
            );
            match *method {
                Method::GET => match inner.connections.get(&key) {
                    Some(connection) => axum::Json(connection.clone()).into_response(),
                    None => not_found(&type_path, segments[3]),
                },
                Method::DELETE => {
                    // `ProjectConnections_Delete` is `DeleteSync` (azure-rest-api-specs
                    // ConnectionPropertiesV2BasicResource.tsp): 200, or 204 when there was nothing
                    // to delete.
                    if !inner.connections.contains_key(&key) {
                        return StatusCode::NO_CONTENT.into_response();
                    }
                    write(
                        inner,
                        segments,
                        "Microsoft.CognitiveServices",
                        api_version,
                        Commit::DeleteConnection { key },
                        Value::Null,
                        false,
                    )
                }
                _ => {
                    let project_id = inner
                        .projects
                        .get(&project_key)
                        .map(|(id, _)| id.clone())
                        .unwrap_or_default();
                    let resource = match validate_connection(&id, name, &project_id, body) {
                        Ok(resource) => resource,
                        Err(response) => return response,
                    };
                    let existed = inner.connections.contains_key(&key);
                    write(
                        inner,
                        segments,
                        "Microsoft.CognitiveServices",
                        api_version,
                        Commit::PutConnection {
                            key,
                            resource: resource.clone(),
                        },
                        resource,
                        existed,
                    )
                }
            }
        }
        _ => arm_error(
            StatusCode::NOT_FOUND,
            "InvalidResourceType",
            &format!(
                "The resource type could not be found in the namespace 'Microsoft.CognitiveServices' for api version '{api_version}'."
            ),
        ),
    }
}

/// The connection a PUT asks for, validated like `Microsoft.CognitiveServices`.
// A handler helper's natural error is the response to send.
#[allow(clippy::result_large_err)]
fn validate_connection(
    id: &str,
    name: &str,
    project_id: &str,
    body: &Bytes,
) -> Result<Value, Response> {
    let invalid = |message: String| bad_request("ValidationError", &message);
    let valid_name = (3..=33).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if !valid_name {
        return Err(invalid(format!(
            "The connection name '{name}' is invalid: it must match ^[a-zA-Z0-9][a-zA-Z0-9_-]{{2,32}}$."
        )));
    }
    let object = json_body(body)?;
    let Some(Value::Object(properties)) = object.get("properties") else {
        return Err(invalid("The field 'properties' is required.".to_owned()));
    };
    let mut properties = properties.clone();
    let text = |field: &str| {
        properties
            .get(field)
            .and_then(Value::as_str)
            .map(str::to_owned)
    };
    let Some(category) = text("category") else {
        return Err(invalid("The field 'category' is required.".to_owned()));
    };
    // Both enums are extensible (a TypeSpec union with `string`): a known value is stored in its
    // canonical spelling, any other value as sent.
    let (category, group) = CATEGORIES
        .iter()
        .find(|(c, _)| c.eq_ignore_ascii_case(&category))
        .map_or((category, DEFAULT_GROUP), |(c, g)| ((*c).to_owned(), *g));
    let Some(auth_type) = text("authType") else {
        return Err(invalid("The field 'authType' is required.".to_owned()));
    };
    let auth_type = AUTH_TYPES
        .iter()
        .find(|a| a.eq_ignore_ascii_case(&auth_type))
        .map_or(auth_type, |a| (*a).to_owned());
    if text("target").is_none_or(|t| t.is_empty()) {
        return Err(invalid("The field 'target' is required.".to_owned()));
    }
    if auth_type == "ProjectManagedIdentity" && text("audience").is_none_or(|a| a.is_empty()) {
        return Err(invalid(
            "The field 'audience' is required for authType 'ProjectManagedIdentity'.".to_owned(),
        ));
    }
    for flag in ["isSharedToAll", "useWorkspaceManagedIdentity"] {
        if properties.get(flag).is_some_and(|v| !v.is_boolean()) {
            return Err(invalid(format!("The field '{flag}' must be a boolean.")));
        }
    }
    if properties
        .get("sharedUserList")
        .is_some_and(|v| !v.as_array().is_some_and(|a| a.iter().all(Value::is_string)))
    {
        return Err(invalid(
            "The field 'sharedUserList' must be a list of strings.".to_owned(),
        ));
    }
    if properties.get("metadata").is_some_and(|v| {
        !v.as_object()
            .is_some_and(|m| m.values().all(Value::is_string))
    }) {
        return Err(invalid(
            "The field 'metadata' must be an object of strings.".to_owned(),
        ));
    }
    // What the resource provider adds or derives; secrets are never returned.
    properties.insert("category".to_owned(), json!(category));
    properties.insert("authType".to_owned(), json!(auth_type));
    properties.insert("group".to_owned(), json!(group));
    properties.insert("createdByWorkspaceArmId".to_owned(), json!(project_id));
    properties.insert("peRequirement".to_owned(), json!("NotRequired"));
    properties.insert("peStatus".to_owned(), json!("NotApplicable"));
    properties.remove("credentials");
    Ok(json!({
        "id": id,
        "name": name,
        "type": "Microsoft.CognitiveServices/accounts/projects/connections",
        "properties": properties,
    }))
}

/// Applies a validated write now, or starts a long-running operation that applies it.
fn write(
    inner: &mut Inner,
    segments: &[&str],
    namespace: &str,
    api_version: &str,
    commit: Commit,
    resource: Value,
    existed: bool,
) -> Response {
    let delete = matches!(
        commit,
        Commit::DeleteFic { .. } | Commit::DeleteConnection { .. }
    );
    let fic_identity = match &commit {
        Commit::PutFic { identity, .. } | Commit::DeleteFic { identity, .. } => {
            Some(identity.clone())
        }
        _ => None,
    };
    if let Some(identity) = &fic_identity {
        start_fic_write(inner, identity);
    }
    let Some(lro) = inner.long_running.clone() else {
        apply(inner, commit);
        let mut response = match (delete, existed) {
            (true, _) => StatusCode::OK.into_response(),
            (false, true) => axum::Json(resource).into_response(),
            (false, false) => (StatusCode::CREATED, axum::Json(resource)).into_response(),
        };
        if let Some(identity) = fic_identity {
            response.extensions_mut().insert(FicWriteInFlight(identity));
        }
        return response;
    };
    inner.next_id += 1;
    let operation = format!(
        "{:08x}-0000-4000-8000-{:012x}",
        inner.next_id, inner.next_id
    );
    let base = format!(
        "{}/subscriptions/{}/providers/{namespace}/locations/{LOCATION}",
        inner.url, segments[1]
    );
    let status_url = format!("{base}/operationStatuses/{operation}?api-version={api_version}");
    let result_url = format!("{base}/operationResults/{operation}?api-version={api_version}");
    inner.operations.insert(
        operation,
        Operation {
            polls_left: lro.polls,
            retry_after_secs: lro.retry_after_secs,
            fail: lro.fail.clone(),
            commit: Some(commit),
            done: None,
            fic_identity,
        },
    );
    let mut response = match (lro.style, delete) {
        (LroStyle::AsyncOperation, false) => {
            let mut body = resource;
            body["properties"]["provisioningState"] = json!("Accepted");
            (StatusCode::CREATED, axum::Json(body)).into_response()
        }
        _ => StatusCode::ACCEPTED.into_response(),
    };
    let headers = response.headers_mut();
    if lro.style == LroStyle::AsyncOperation
        && let Ok(value) = HeaderValue::from_str(&status_url)
    {
        headers.insert("azure-asyncoperation", value);
    }
    if (lro.style == LroStyle::Location || delete)
        && let Ok(value) = HeaderValue::from_str(&result_url)
    {
        headers.insert("location", value);
    }
    headers.insert("retry-after", HeaderValue::from(lro.retry_after_secs));
    response
}

/// A poll of an operation: in progress while polls remain, then the write is applied (or the
/// operation fails).
fn poll(inner: &mut Inner, operation: &str, location: bool) -> Response {
    let Some(op) = inner.operations.get_mut(operation) else {
        return arm_error(
            StatusCode::NOT_FOUND,
            "OperationNotFound",
            &format!("The operation '{operation}' could not be found."),
        );
    };
    let retry_after = op.retry_after_secs;
    if op.done.is_none() {
        if op.polls_left > 0 {
            op.polls_left -= 1;
            let mut response = if location {
                StatusCode::ACCEPTED.into_response()
            } else {
                axum::Json(json!({"name": operation, "status": "InProgress"})).into_response()
            };
            response
                .headers_mut()
                .insert("retry-after", HeaderValue::from(retry_after));
            return response;
        }
        let commit = op.commit.take();
        let fic_identity = op.fic_identity.take();
        op.done = Some(match op.fail.clone() {
            Some(failure) => Err(failure),
            None => Ok(()),
        });
        if op.fail.is_none()
            && let Some(commit) = commit
        {
            apply(inner, commit);
        }
        if let Some(identity) = fic_identity {
            end_fic_write(inner, &identity);
        }
    }
    let Some(op) = inner.operations.get(operation) else {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    };
    match (&op.done, location) {
        (Some(Ok(())), false) => {
            axum::Json(json!({"name": operation, "status": "Succeeded"})).into_response()
        }
        (Some(Ok(())), true) => StatusCode::NO_CONTENT.into_response(),
        (Some(Err((code, message))), false) => axum::Json(json!({
            "name": operation,
            "status": "Failed",
            "error": {"code": code, "message": message},
        }))
        .into_response(),
        (Some(Err((code, message))), true) => bad_request(code, message),
        (None, _) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

/// An ARM token for tests, from the Entra fake with a client secret (client credentials), so
/// tests of the ARM client need no ServiceAccount token.
#[derive(Debug)]
pub struct ClientSecretSource {
    http: reqwest::Client,
    authority: String,
    tenant: String,
    client_id: String,
    secret: String,
}

impl ClientSecretSource {
    pub fn new(
        entra: &EntraFake,
        tenant: &str,
        client_id: &str,
        secret: &str,
    ) -> anyhow::Result<Self> {
        let ca = std::fs::read(entra.ca_cert())?;
        Ok(Self {
            http: reqwest::Client::builder()
                .add_root_certificate(reqwest::Certificate::from_pem(&ca)?)
                .build()?,
            authority: entra.url().to_owned(),
            tenant: tenant.to_owned(),
            client_id: client_id.to_owned(),
            secret: secret.to_owned(),
        })
    }
}

#[async_trait::async_trait]
impl pgmcp_identity::TokenSource for ClientSecretSource {
    async fn fetch(&self, scope: &str) -> pgmcp_identity::Result<pgmcp_identity::AccessToken> {
        let fail = |reason: String, rejected: bool| pgmcp_identity::Error::Token {
            scope: scope.to_owned(),
            identity: self.identity(),
            reason,
            rejected,
        };
        let response = self
            .http
            .post(format!(
                "{}/{}/oauth2/v2.0/token",
                self.authority, self.tenant
            ))
            .form(&[
                ("grant_type", "client_credentials"),
                ("client_id", self.client_id.as_str()),
                ("client_secret", self.secret.as_str()),
                ("scope", scope),
            ])
            .send()
            .await
            .map_err(|e| fail(e.to_string(), false))?;
        let status = response.status();
        let body: Value = response
            .json()
            .await
            .map_err(|e| fail(e.to_string(), false))?;
        if !status.is_success() {
            return Err(fail(
                body["error_description"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
                status.is_client_error(),
            ));
        }
        let token = body["access_token"].as_str().unwrap_or_default();
        let expires_in = body["expires_in"].as_u64().unwrap_or(0);
        Ok(pgmcp_identity::AccessToken::new(
            token,
            SystemTime::now() + Duration::from_secs(expires_in),
        ))
    }

    fn identity(&self) -> String {
        format!(
            "client id {} in tenant {} (client secret)",
            self.client_id, self.tenant
        )
    }
}
