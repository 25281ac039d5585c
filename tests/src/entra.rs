//! A Microsoft Entra ID stand-in for tests, over HTTPS with a test CA, behaving like Entra for
//! the flows pgmcp uses:
//!
//! - OIDC discovery (v2 `/{tenant}/v2.0/.well-known/openid-configuration`, v1
//!   `/{tenant}/.well-known/openid-configuration`) and JWKS (`/{tenant}/discovery/v2.0/keys`,
//!   `/{tenant}/discovery/keys`) per tenant, each tenant with its own RSA signing keys.
//! - The token endpoint `/{tenant}/oauth2/v2.0/token`, `grant_type=client_credentials`, with a
//!   client secret or with a client assertion
//!   (`urn:ietf:params:oauth:client-assertion-type:jwt-bearer`) — workload identity federation:
//!   the assertion is accepted only when a federated credential registered for the client id
//!   matches its `iss`, `sub` and `aud`, and its signature verifies against the JWKS of its
//!   issuer, fetched by OIDC discovery from the real test apiserver. Refusals use Entra's JSON
//!   error format and today's AADSTS codes: HTTP 401 `invalid_client` with AADSTS700211 (no
//!   credential for the issuer), AADSTS700213 (none for the subject), AADSTS7002138 (the
//!   subject matches only ignoring case) or AADSTS700212 (none for the audience).
//! - Users and delegated tokens: `grant_type=password` (resource owner password credentials,
//!   the same token endpoint) for a user added with [`EntraFake::add_user`], through a
//!   registered public client app. The token is what a signed-in user's client (VS Code) gets:
//!   `scp`, the user's `oid`, `name`, `preferred_username` (v2) or `upn` (v1), the client in
//!   `azp`/`appid`, the app roles assigned to the user, and — when the resource app emits
//!   them (`groupMembershipClaims`) — `groups`, or past 200 groups Entra's overage indicator
//!   (`_claim_names`/`_claim_sources`) instead. A wrong password is AADSTS50126.
//! - Propagation ([`EntraFake::set_propagation_delay`]): Entra refuses a new federated
//!   credential for a while after it was created, with AADSTS700213 as if it did not exist.
//! - Access tokens like Entra's: RS256 JWTs, v1 (`https://sts.windows.net/{tenant}/`, the
//!   default for app registrations, `appid`) or v2 (`{authority}/{tenant}/v2.0`, `azp`), with the
//!   app roles assigned to the caller. It also signs arbitrary caller tokens for inbound tests.
//!
//! Clients trust it the standard way: point `SSL_CERT_FILE` at [`EntraFake::ca_cert`] and
//! `AZURE_AUTHORITY_HOST` (or the server's authority host) at [`EntraFake::url`].
//!
//! The fake runs on the tokio runtime of the test that started it; use a multi-threaded runtime
//! when the test blocks a thread (a child process waited for synchronously).

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context as _;

use crate::tls_listener::HttpsServer;
use axum::Router;
use axum::extract::{Form, Path as UrlPath, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine as _;
use jsonwebtoken::jwk::{AlgorithmParameters, Jwk, JwkSet, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde_json::{Value, json};

/// Audience of ServiceAccount tokens exchanged through workload identity federation.
pub const TOKEN_EXCHANGE_AUDIENCE: &str = "api://AzureADTokenExchange";
/// Azure Database for PostgreSQL, a first-party resource every tenant knows.
pub const POSTGRES_RESOURCE: &str = "https://ossrdbms-aad.database.windows.net";
/// Azure Resource Manager.
pub const ARM_RESOURCE: &str = "https://management.azure.com";
/// Microsoft Graph.
pub const GRAPH_RESOURCE: &str = "https://graph.microsoft.com";
const ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// A federated identity credential of an app (or user-assigned managed identity).
#[derive(Clone, Debug)]
pub struct FederatedCredential {
    pub issuer: String,
    pub subject: String,
    pub audiences: Vec<String>,
}

/// An app registration or managed identity in a tenant.
#[derive(Clone, Debug, Default)]
pub struct App {
    pub client_id: String,
    /// Object id of its service principal (the `oid` of the tokens it gets).
    pub object_id: String,
    pub display_name: String,
    /// Accepted client secret, if any.
    pub secret: Option<String>,
    /// Version of the access tokens issued *for* this app as a resource (Entra's
    /// `accessTokenAcceptedVersion`; 1 unless the manifest says 2).
    pub access_token_version: u8,
    pub federated_credentials: Vec<FederatedCredential>,
    /// Tokens for this app as a resource carry the user's security groups (the manifest's
    /// `groupMembershipClaims: "SecurityGroup"`).
    pub group_membership_claims: bool,
}

/// A user of a tenant.
#[derive(Clone, Debug, Default)]
pub struct User {
    pub object_id: String,
    /// Sign-in name, `alice@contoso.com`.
    pub user_principal_name: String,
    pub display_name: String,
    pub password: String,
    /// Object ids of the security groups the user is in.
    pub groups: Vec<String>,
}

/// Most groups Entra lists in a JWT before it names a source instead (the overage claim).
pub const MAX_TOKEN_GROUPS: usize = 200;

/// One access token the fake issued.
#[derive(Clone, Debug)]
pub struct Issued {
    pub tenant: String,
    pub client_id: String,
    /// The resource (`aud`), e.g. [`POSTGRES_RESOURCE`].
    pub resource: String,
    pub access_token: String,
    pub expires_at: SystemTime,
    /// The client assertion it was exchanged for (workload identity), verbatim.
    pub assertion: Option<String>,
}

/// Called for every issued token before the response is sent: what a resource server (Azure
/// Database for PostgreSQL) learns about tokens it will be shown.
pub type IssueHook =
    Arc<dyn Fn(Issued) -> futures::future::BoxFuture<'static, ()> + Send + Sync + 'static>;

struct SigningKey {
    kid: String,
    public_pem: String,
    encoding: EncodingKey,
    jwk: Jwk,
    published: bool,
}

#[derive(Default)]
struct Tenant {
    keys: Vec<SigningKey>,
    /// The kid new tokens are signed with.
    current: String,
    apps: HashMap<String, App>,
    /// Users by lower-case user principal name.
    users: HashMap<String, User>,
    /// (resource client id, principal client id or user object id) -> app roles.
    role_assignments: HashMap<(String, String), Vec<String>>,
    key_fetches: usize,
    /// When each federated credential, (client id, issuer, subject), was first seen.
    credentials_created: HashMap<(String, String, String), Instant>,
}

impl Tenant {
    /// Records the creation of `app`'s credentials not seen before, and forgets those it no
    /// longer has (created again later, they propagate again).
    fn track_credentials(&mut self, app: &App) {
        let now = Instant::now();
        let keys: Vec<(String, String, String)> = app
            .federated_credentials
            .iter()
            .map(|f| (app.client_id.clone(), f.issuer.clone(), f.subject.clone()))
            .collect();
        self.credentials_created
            .retain(|key, _| key.0 != app.client_id || keys.contains(key));
        for key in keys {
            self.credentials_created.entry(key).or_insert(now);
        }
    }
}

struct Inner {
    url: String,
    tenants: HashMap<String, Tenant>,
    /// OIDC issuers whose JWKS the fake may fetch, with the client that reaches them.
    issuers: HashMap<String, kube::Client>,
    token_lifetime: Duration,
    /// How long after its creation a federated credential is still refused.
    propagation: Duration,
    outage: bool,
    issued: Vec<Issued>,
    hook: Option<IssueHook>,
    /// First-party resources besides the public cloud's ([`EntraFake::add_resource`]).
    resources: Vec<String>,
}

type Shared = Arc<Mutex<Inner>>;

fn lock(shared: &Shared) -> MutexGuard<'_, Inner> {
    shared
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A running fake Entra. Dropping it stops the server.
pub struct EntraFake {
    server: HttpsServer,
    inner: Shared,
}

impl std::fmt::Debug for EntraFake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EntraFake")
            .field("url", &self.server.url)
            .finish_non_exhaustive()
    }
}

impl EntraFake {
    /// Starts the fake on a free loopback port with a new test CA.
    pub async fn start() -> anyhow::Result<Self> {
        let bound = HttpsServer::bind("entra").await?;
        let url = bound.url.clone();
        let inner: Shared = Arc::new(Mutex::new(Inner {
            url: url.clone(),
            tenants: HashMap::new(),
            issuers: HashMap::new(),
            token_lifetime: Duration::from_secs(3599),
            propagation: Duration::ZERO,
            outage: false,
            issued: Vec::new(),
            hook: None,
            resources: Vec::new(),
        }));
        let app = Router::new()
            .route(
                "/{tenant}/v2.0/.well-known/openid-configuration",
                get(discovery_v2),
            )
            .route(
                "/{tenant}/.well-known/openid-configuration",
                get(discovery_v1),
            )
            .route("/{tenant}/discovery/v2.0/keys", get(keys))
            .route("/{tenant}/discovery/keys", get(keys))
            .route("/{tenant}/oauth2/v2.0/token", post(token))
            .with_state(inner.clone());
        Ok(Self {
            server: bound.serve(app)?,
            inner,
        })
    }

    /// The authority host: `https://127.0.0.1:<port>` (on a test node, its address).
    pub fn url(&self) -> &str {
        &self.server.url
    }

    /// PEM of the CA that signed the fake's certificate (for `SSL_CERT_FILE`).
    pub fn ca_cert(&self) -> &Path {
        &self.server.ca_cert
    }

    /// The v2 issuer of `tenant`.
    pub fn issuer_v2(&self, tenant: &str) -> String {
        format!("{}/{tenant}/v2.0", self.server.url)
    }

    /// The v1 issuer of `tenant`, as Entra names it.
    pub fn issuer_v1(tenant: &str) -> String {
        format!("https://sts.windows.net/{tenant}/")
    }

    /// Creates `tenant` with one published signing key.
    pub fn add_tenant(&self, tenant: &str) -> anyhow::Result<()> {
        let key = signing_key()?;
        let mut inner = lock(&self.inner);
        let t = inner.tenants.entry(tenant.to_owned()).or_default();
        t.current = key.kid.clone();
        t.keys.push(key);
        Ok(())
    }

    /// Registers an app (or managed identity) in `tenant`.
    pub fn register_app(&self, tenant: &str, app: App) -> anyhow::Result<()> {
        let mut inner = lock(&self.inner);
        let t = inner
            .tenants
            .get_mut(tenant)
            .with_context(|| format!("no tenant {tenant}"))?;
        t.track_credentials(&app);
        t.apps.insert(app.client_id.clone(), app);
        Ok(())
    }

    /// Adds a user to `tenant`.
    pub fn add_user(&self, tenant: &str, user: User) -> anyhow::Result<()> {
        let mut inner = lock(&self.inner);
        let t = inner
            .tenants
            .get_mut(tenant)
            .with_context(|| format!("no tenant {tenant}"))?;
        t.users
            .insert(user.user_principal_name.to_ascii_lowercase(), user);
        Ok(())
    }

    /// Adds a federated identity credential to app `client_id`.
    pub fn add_federated_credential(
        &self,
        tenant: &str,
        client_id: &str,
        credential: FederatedCredential,
    ) -> anyhow::Result<()> {
        let mut inner = lock(&self.inner);
        let t = inner
            .tenants
            .get_mut(tenant)
            .with_context(|| format!("no tenant {tenant}"))?;
        let app = t
            .apps
            .get_mut(client_id)
            .with_context(|| format!("no app {client_id} in tenant {tenant}"))?;
        app.federated_credentials.push(credential);
        let app = app.clone();
        t.track_credentials(&app);
        Ok(())
    }

    /// Assigns app role `role` of app `resource` to the service principal of app `principal`
    /// (a client id), or to a user (its object id).
    pub fn assign_app_role(&self, tenant: &str, resource: &str, principal: &str, role: &str) {
        let mut inner = lock(&self.inner);
        if let Some(t) = inner.tenants.get_mut(tenant) {
            t.role_assignments
                .entry((resource.to_owned(), principal.to_owned()))
                .or_default()
                .push(role.to_owned());
        }
    }

    /// Takes back app role `role` of app `resource` from app `principal`.
    pub fn unassign_app_role(&self, tenant: &str, resource: &str, principal: &str, role: &str) {
        let mut inner = lock(&self.inner);
        if let Some(roles) = inner.tenants.get_mut(tenant).and_then(|t| {
            t.role_assignments
                .get_mut(&(resource.to_owned(), principal.to_owned()))
        }) {
            roles.retain(|r| r != role);
        }
    }

    /// The client id of the app whose service principal has object id `object_id`.
    pub fn client_id_of(&self, tenant: &str, object_id: &str) -> Option<String> {
        let inner = lock(&self.inner);
        inner
            .tenants
            .get(tenant)?
            .apps
            .values()
            .find(|a| a.object_id.eq_ignore_ascii_case(object_id))
            .map(|a| a.client_id.clone())
    }

    /// Trusts `issuer` (an OIDC issuer such as the test apiserver) for client assertions;
    /// its discovery document and JWKS are fetched through `client`, as Entra fetches them.
    pub fn trust_issuer(&self, issuer: &str, client: kube::Client) {
        lock(&self.inner).issuers.insert(issuer.to_owned(), client);
    }

    /// Entra refuses a new federated credential for a while after it was created: the
    /// credential has to reach every Entra replica, and until it has, exchanges that it would
    /// match get HTTP 401 `invalid_client` with AADSTS700213, as if it did not exist (seen for
    /// minutes after `az identity federated-credential create`). With this set, every federated
    /// credential (added here, registered with an app, or written through the ARM fake) is
    /// refused so for `delay` after it first appeared. Default: accepted at once.
    pub fn set_propagation_delay(&self, delay: Duration) {
        lock(&self.inner).propagation = delay;
    }

    /// Lifetime of the access tokens issued from now on (default 3599 s, as Entra).
    /// Makes `resource` (a service's endpoint, such as the ARM or Graph fake's URL) a
    /// first-party resource every tenant knows, as a sovereign cloud's Entra knows that cloud's
    /// Resource Manager and Graph: tokens for `{resource}/.default` carry `aud: resource`.
    pub fn add_resource(&self, resource: &str) {
        lock(&self.inner)
            .resources
            .push(resource.trim_end_matches('/').to_owned());
    }

    pub fn set_token_lifetime(&self, lifetime: Duration) {
        lock(&self.inner).token_lifetime = lifetime;
    }

    /// While on, Entra is down: token requests fail with 503 `temporarily_unavailable`, and
    /// OpenID discovery and the signing keys with a bare 503.
    pub fn set_outage(&self, on: bool) {
        lock(&self.inner).outage = on;
    }

    /// Runs `hook` for every issued token before the client gets it.
    /// Makes every PostgreSQL token the fake issues to one of the `(client id, role)` pairs the
    /// password of that role, valid until the token expires (`VALID UNTIL`): PostgreSQL then
    /// accepts exactly the current token, as Azure Database for PostgreSQL accepts any unexpired
    /// Entra token of the identity.
    pub fn accept_postgres_tokens_as_password(
        &self,
        admin: Arc<tokio_postgres::Client>,
        identities: &[(&str, &str)],
    ) {
        let identities: HashMap<String, String> = identities
            .iter()
            .map(|(client, role)| ((*client).to_owned(), (*role).to_owned()))
            .collect();
        self.on_token_issued(Arc::new(move |issued: Issued| {
            let admin = admin.clone();
            let role = identities.get(&issued.client_id).cloned();
            Box::pin(async move {
                let Some(role) = role.filter(|_| issued.resource == POSTGRES_RESOURCE) else {
                    return;
                };
                let Ok(until) = jiff::Timestamp::try_from(issued.expires_at) else {
                    return;
                };
                let statement = format!(
                    "ALTER ROLE {} PASSWORD {} VALID UNTIL '{until}'",
                    postgres_protocol::escape::escape_identifier(&role),
                    postgres_protocol::escape::escape_literal(&issued.access_token)
                );
                if let Err(err) = admin.batch_execute(&statement).await {
                    eprintln!("the Entra fake could not set the password of {role}: {err}");
                }
            })
        }));
    }

    pub fn on_token_issued(&self, hook: IssueHook) {
        lock(&self.inner).hook = Some(hook);
    }

    /// Every token issued so far.
    pub fn issued(&self) -> Vec<Issued> {
        lock(&self.inner).issued.clone()
    }

    /// How often the JWKS of `tenant` was fetched.
    pub fn key_fetches(&self, tenant: &str) -> usize {
        lock(&self.inner)
            .tenants
            .get(tenant)
            .map_or(0, |t| t.key_fetches)
    }

    /// A new signing key for `tenant`, not published yet (a rotation in preparation). Returns
    /// its kid.
    pub fn new_unpublished_key(&self, tenant: &str) -> anyhow::Result<String> {
        let mut key = signing_key()?;
        key.published = false;
        let kid = key.kid.clone();
        let mut inner = lock(&self.inner);
        inner
            .tenants
            .get_mut(tenant)
            .with_context(|| format!("no tenant {tenant}"))?
            .keys
            .push(key);
        Ok(kid)
    }

    /// Publishes key `kid` in the tenant's JWKS and signs new tokens with it (key rotation).
    pub fn rotate_to(&self, tenant: &str, kid: &str) -> anyhow::Result<()> {
        let mut inner = lock(&self.inner);
        let t = inner
            .tenants
            .get_mut(tenant)
            .with_context(|| format!("no tenant {tenant}"))?;
        let key = t
            .keys
            .iter_mut()
            .find(|k| k.kid == kid)
            .with_context(|| format!("no key {kid}"))?;
        key.published = true;
        t.current = kid.to_owned();
        Ok(())
    }

    /// Signs `claims` with the tenant's current key (RS256, with its kid).
    pub fn sign(&self, tenant: &str, claims: &Value) -> anyhow::Result<String> {
        let kid = lock(&self.inner)
            .tenants
            .get(tenant)
            .map(|t| t.current.clone())
            .with_context(|| format!("no tenant {tenant}"))?;
        self.sign_with(tenant, &kid, claims)
    }

    /// Signs `claims` with key `kid` of `tenant`, published or not.
    pub fn sign_with(&self, tenant: &str, kid: &str, claims: &Value) -> anyhow::Result<String> {
        let inner = lock(&self.inner);
        let key = inner
            .tenants
            .get(tenant)
            .and_then(|t| t.keys.iter().find(|k| k.kid == kid))
            .with_context(|| format!("no key {kid} in tenant {tenant}"))?;
        sign(key, claims)
    }

    /// The current public key of `tenant` as PEM, which anyone can know: the secret of the
    /// "HS256 with the public key as secret" algorithm-confusion attack.
    pub fn public_key_pem(&self, tenant: &str) -> anyhow::Result<String> {
        let inner = lock(&self.inner);
        let t = inner
            .tenants
            .get(tenant)
            .with_context(|| format!("no tenant {tenant}"))?;
        let key = t
            .keys
            .iter()
            .find(|k| k.kid == t.current)
            .context("no current key")?;
        Ok(key.public_pem.clone())
    }

    /// Claims of an app-only access token as Entra issues it for `audience`: v1 (issuer
    /// `https://sts.windows.net/{tenant}/`, `appid`) or v2 (`{authority}/{tenant}/v2.0`, `azp`),
    /// valid for an hour.
    pub fn app_token_claims(
        &self,
        tenant: &str,
        version: u8,
        audience: &str,
        roles: &[&str],
        caller_oid: &str,
        caller_app_id: &str,
    ) -> Value {
        let now = unix_now();
        let mut claims = json!({
            "aud": audience,
            "iat": now,
            "nbf": now,
            "exp": now + 3600,
            "oid": caller_oid,
            "sub": caller_oid,
            "tid": tenant,
            "roles": roles,
            "idtyp": "app",
        });
        if version == 2 {
            claims["iss"] = json!(self.issuer_v2(tenant));
            claims["azp"] = json!(caller_app_id);
            claims["azpacr"] = json!("1");
            claims["ver"] = json!("2.0");
        } else {
            claims["iss"] = json!(Self::issuer_v1(tenant));
            claims["appid"] = json!(caller_app_id);
            claims["appidacr"] = json!("1");
            claims["ver"] = json!("1.0");
        }
        claims
    }
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

fn signing_key() -> anyhow::Result<SigningKey> {
    let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256)?;
    let encoding = EncodingKey::from_rsa_pem(pair.serialize_pem().as_bytes())?;
    let mut jwk = Jwk::from_encoding_key(&encoding, Algorithm::RS256)?;
    let kid = {
        let AlgorithmParameters::RSA(rsa) = &jwk.algorithm else {
            anyhow::bail!("not an RSA key");
        };
        // Like Entra: the kid is a short base64url fingerprint.
        let n = rsa.n.as_bytes();
        let mut digest = 0u64;
        for (i, b) in n.iter().enumerate() {
            digest = digest.rotate_left(5) ^ u64::from(*b) ^ (i as u64);
        }
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(digest.to_be_bytes())
    };
    jwk.common.key_id = Some(kid.clone());
    jwk.common.public_key_use = Some(PublicKeyUse::Signature);
    jwk.common.key_algorithm = Some(KeyAlgorithm::RS256);
    Ok(SigningKey {
        kid,
        public_pem: pair.public_key_pem(),
        encoding,
        jwk,
        published: true,
    })
}

fn sign(key: &SigningKey, claims: &Value) -> anyhow::Result<String> {
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some(key.kid.clone());
    header.typ = Some("JWT".to_owned());
    Ok(jsonwebtoken::encode(&header, claims, &key.encoding)?)
}

/// `claims` signed with `t`'s current key, or the 500 Entra would answer.
#[allow(clippy::result_large_err)] // the response as sent, as the token endpoint's refusals
fn sign_current(t: &Tenant, claims: &Value) -> Result<String, Response> {
    let failed = |message: &str| {
        aad_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            0,
            message,
        )
    };
    let key = t
        .keys
        .iter()
        .find(|k| k.kid == t.current)
        .ok_or_else(|| failed("no signing key"))?;
    sign(key, claims).map_err(|e| failed(&format!("signing failed: {e}")))
}

/// An Entra-style error: `AADSTSnnnn: message` plus trace ids, as JSON.
fn aad_error(status: StatusCode, error: &str, code: u32, message: &str) -> Response {
    let trace = random_id();
    let correlation = random_id();
    let timestamp = jiff::Timestamp::now()
        .strftime("%Y-%m-%d %H:%M:%SZ")
        .to_string();
    // Entra separated these with CR LF until about 2024 and uses spaces now. (azure_identity 1.0
    // reads error_description as a borrowed string, so it cannot parse the escaped older form.)
    let description = if code == 0 {
        format!("{message} Trace ID: {trace} Correlation ID: {correlation} Timestamp: {timestamp}")
    } else {
        format!(
            "AADSTS{code}: {message} Trace ID: {trace} Correlation ID: {correlation} Timestamp: {timestamp}"
        )
    };
    let codes: Vec<u32> = if code == 0 { Vec::new() } else { vec![code] };
    (
        status,
        axum::Json(json!({
            "error": error,
            "error_description": description,
            "error_codes": codes,
            "timestamp": timestamp,
            "trace_id": trace,
            "correlation_id": correlation,
            "error_uri": format!("https://login.microsoftonline.com/error?code={code}"),
        })),
    )
        .into_response()
}

fn random_id() -> String {
    let hex = crate::postgres::random_password().unwrap_or_else(|_| "0".repeat(36));
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

fn tenant_not_found(tenant: &str) -> Response {
    aad_error(
        StatusCode::BAD_REQUEST,
        "invalid_request",
        90002,
        &format!(
            "Tenant '{tenant}' not found. Check to make sure you have the correct tenant ID and are signing into the correct cloud."
        ),
    )
}

fn unavailable() -> Response {
    (StatusCode::SERVICE_UNAVAILABLE, "Service Unavailable").into_response()
}

async fn discovery_v2(State(inner): State<Shared>, UrlPath(tenant): UrlPath<String>) -> Response {
    let inner = lock(&inner);
    if inner.outage {
        return unavailable();
    }
    if !inner.tenants.contains_key(&tenant) {
        return tenant_not_found(&tenant);
    }
    let base = format!("{}/{tenant}", inner.url);
    axum::Json(json!({
        "issuer": format!("{base}/v2.0"),
        "jwks_uri": format!("{base}/discovery/v2.0/keys"),
        "token_endpoint": format!("{base}/oauth2/v2.0/token"),
        "authorization_endpoint": format!("{base}/oauth2/v2.0/authorize"),
        "token_endpoint_auth_methods_supported": ["client_secret_post", "private_key_jwt", "client_secret_basic"],
        "id_token_signing_alg_values_supported": ["RS256"],
        "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
        "subject_types_supported": ["pairwise"],
        "scopes_supported": ["openid", "profile", "email", "offline_access"],
    }))
    .into_response()
}

async fn discovery_v1(State(inner): State<Shared>, UrlPath(tenant): UrlPath<String>) -> Response {
    let inner = lock(&inner);
    if inner.outage {
        return unavailable();
    }
    if !inner.tenants.contains_key(&tenant) {
        return tenant_not_found(&tenant);
    }
    let base = format!("{}/{tenant}", inner.url);
    axum::Json(json!({
        "issuer": EntraFake::issuer_v1(&tenant),
        "jwks_uri": format!("{base}/discovery/keys"),
        "token_endpoint": format!("{base}/oauth2/token"),
        "authorization_endpoint": format!("{base}/oauth2/authorize"),
        "token_endpoint_auth_methods_supported": ["client_secret_post", "private_key_jwt", "client_secret_basic"],
        "id_token_signing_alg_values_supported": ["RS256"],
        "response_types_supported": ["code", "id_token", "code id_token", "token id_token", "token"],
        "subject_types_supported": ["pairwise"],
    }))
    .into_response()
}

async fn keys(State(inner): State<Shared>, UrlPath(tenant): UrlPath<String>) -> Response {
    let mut inner = lock(&inner);
    let outage = inner.outage;
    let Some(t) = inner.tenants.get_mut(&tenant) else {
        return tenant_not_found(&tenant);
    };
    t.key_fetches += 1;
    if outage {
        return unavailable();
    }
    let keys: Vec<Jwk> = t
        .keys
        .iter()
        .filter(|k| k.published)
        .map(|k| k.jwk.clone())
        .collect();
    axum::Json(JwkSet { keys }).into_response()
}

/// The claims of a client assertion the fake reads before checking anything.
#[derive(serde::Deserialize)]
struct AssertionClaims {
    iss: String,
    sub: String,
    #[serde(deserialize_with = "one_or_many")]
    aud: Vec<String>,
}

fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(serde::Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match serde::Deserialize::deserialize(d)? {
        OneOrMany::One(s) => vec![s],
        OneOrMany::Many(v) => v,
    })
}

/// The JWKS of OIDC issuer `issuer`, by discovery through `client`.
async fn issuer_keys(client: &kube::Client, issuer: &str) -> anyhow::Result<JwkSet> {
    let discovery = client
        .request_text(http::Request::get("/.well-known/openid-configuration").body(Vec::new())?)
        .await
        .context("OIDC discovery")?;
    let discovery: Value = serde_json::from_str(&discovery)?;
    anyhow::ensure!(
        discovery["issuer"] == json!(issuer),
        "the discovery document names issuer {}",
        discovery["issuer"]
    );
    let jwks_uri = discovery["jwks_uri"]
        .as_str()
        .context("no jwks_uri in the discovery document")?;
    let path = jwks_uri
        .find("://")
        .and_then(|i| jwks_uri[i + 3..].find('/').map(|j| &jwks_uri[i + 3 + j..]))
        .context("jwks_uri has no path")?;
    let jwks = client
        .request_text(http::Request::get(path).body(Vec::new())?)
        .await
        .context("JWKS")?;
    Ok(serde_json::from_str(&jwks)?)
}

async fn token(
    State(shared): State<Shared>,
    UrlPath(tenant): UrlPath<String>,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    match exchange(&shared, &tenant, &form).await {
        Ok(issued) => {
            let hook = lock(&shared).hook.clone();
            if let Some(hook) = hook {
                hook(issued.clone()).await;
            }
            let expires_in = issued
                .expires_at
                .duration_since(SystemTime::now())
                .map(|d| d.as_secs())
                .unwrap_or(0)
                + 1;
            let body = json!({
                "token_type": "Bearer",
                "expires_in": expires_in,
                "ext_expires_in": expires_in,
                "access_token": issued.access_token,
            });
            lock(&shared).issued.push(issued);
            axum::Json(body).into_response()
        }
        Err(response) => response,
    }
}

/// The client-credentials grant: authenticates the client and issues a token.
async fn exchange(
    shared: &Shared,
    tenant: &str,
    form: &HashMap<String, String>,
) -> Result<Issued, Response> {
    let field = |name: &str| form.get(name).map(String::as_str).unwrap_or("");
    let (app, lifetime, issuer_client, propagating) = {
        let inner = lock(shared);
        if inner.outage {
            return Err(aad_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "temporarily_unavailable",
                0,
                "The service is temporarily unavailable (outage injected by the test).",
            ));
        }
        let Some(t) = inner.tenants.get(tenant) else {
            return Err(tenant_not_found(tenant));
        };
        if field("grant_type") == "password" {
            return password_grant(&inner, t, tenant, form);
        }
        if field("grant_type") != "client_credentials" {
            return Err(aad_error(
                StatusCode::BAD_REQUEST,
                "unsupported_grant_type",
                70003,
                &format!(
                    "The app requested an unsupported grant type '{}'.",
                    field("grant_type")
                ),
            ));
        }
        let client_id = field("client_id");
        if client_id.is_empty() {
            return Err(aad_error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                900144,
                "The request body must contain the following parameter: 'client_id'.",
            ));
        }
        let Some(app) = t.apps.get(client_id) else {
            return Err(aad_error(
                StatusCode::BAD_REQUEST,
                "unauthorized_client",
                700016,
                &format!(
                    "Application with identifier '{client_id}' was not found in the directory '{tenant}'. This can happen if the application has not been installed by the administrator of the tenant or consented to by any user in the tenant."
                ),
            ));
        };
        let issuer_client = form.get("client_assertion").and_then(|a| {
            jsonwebtoken::dangerous::insecure_decode::<AssertionClaims>(a)
                .ok()
                .and_then(|d| inner.issuers.get(&d.claims.iss).cloned())
        });
        let propagating: Vec<(String, String)> = t
            .credentials_created
            .iter()
            .filter(|((client, _, _), created)| {
                client == client_id && created.elapsed() < inner.propagation
            })
            .map(|((_, issuer, subject), _)| (issuer.clone(), subject.clone()))
            .collect();
        (
            app.clone(),
            inner.token_lifetime,
            issuer_client,
            propagating,
        )
    };

    let assertion = if let Some(secret) = form.get("client_secret") {
        if app.secret.as_deref() != Some(secret.as_str()) {
            return Err(aad_error(
                StatusCode::UNAUTHORIZED,
                "invalid_client",
                7000215,
                "Invalid client secret provided. Ensure the secret being sent in the request is the client secret value, not the client secret ID, for a secret added to app.",
            ));
        }
        None
    } else {
        let Some(assertion) = form.get("client_assertion") else {
            return Err(aad_error(
                StatusCode::BAD_REQUEST,
                "invalid_client",
                7000218,
                "The request body must contain the following parameter: 'client_assertion' or 'client_secret'.",
            ));
        };
        if field("client_assertion_type") != ASSERTION_TYPE {
            return Err(aad_error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                50027,
                "The client_assertion_type must be urn:ietf:params:oauth:client-assertion-type:jwt-bearer.",
            ));
        }
        verify_assertion(&app, &propagating, assertion, issuer_client).await?;
        Some(assertion.clone())
    };

    let scope = field("scope");
    let Some(resource) = scope.strip_suffix("/.default") else {
        return Err(aad_error(
            StatusCode::BAD_REQUEST,
            "invalid_scope",
            1002012,
            &format!(
                "The provided value for scope {scope} is not valid. Client credential flows must have a scope value with /.default suffixed to the resource identifier (application ID URI)."
            ),
        ));
    };
    let inner = lock(shared);
    let t = inner
        .tenants
        .get(tenant)
        .ok_or_else(|| tenant_not_found(tenant))?;
    let resource_app = t.apps.values().find(|a| {
        a.client_id == resource || resource.strip_prefix("api://") == Some(a.client_id.as_str())
    });
    if resource_app.is_none()
        && ![POSTGRES_RESOURCE, ARM_RESOURCE, GRAPH_RESOURCE].contains(&resource)
        && !inner.resources.iter().any(|r| r == resource)
    {
        return Err(aad_error(
            StatusCode::BAD_REQUEST,
            "invalid_resource",
            500011,
            &format!(
                "The resource principal named {resource} was not found in the tenant named {tenant}. This can happen if the application has not been installed by the administrator of the tenant or consented to by any user in the tenant."
            ),
        ));
    }
    let now = unix_now();
    let life = i64::try_from(lifetime.as_secs()).unwrap_or(3599);
    let version = resource_app.map_or(1, |a| a.access_token_version);
    let roles: Vec<String> = resource_app
        .and_then(|r| {
            t.role_assignments
                .get(&(r.client_id.clone(), app.client_id.clone()))
                .cloned()
        })
        .unwrap_or_default();
    let mut claims = json!({
        "aud": if version == 2 { resource_app.map_or(resource.to_owned(), |a| a.client_id.clone()) } else { resource.to_owned() },
        "iat": now,
        "nbf": now,
        "exp": now + life,
        "oid": app.object_id,
        "sub": app.object_id,
        "tid": tenant,
        "idtyp": "app",
    });
    if !roles.is_empty() {
        claims["roles"] = json!(roles);
    }
    if version == 2 {
        claims["iss"] = json!(format!("{}/{tenant}/v2.0", inner.url));
        claims["azp"] = json!(app.client_id);
        claims["ver"] = json!("2.0");
    } else {
        claims["iss"] = json!(EntraFake::issuer_v1(tenant));
        claims["appid"] = json!(app.client_id);
        claims["ver"] = json!("1.0");
    }
    let access_token = sign_current(t, &claims)?;
    Ok(Issued {
        tenant: tenant.to_owned(),
        client_id: app.client_id.clone(),
        resource: resource.to_owned(),
        access_token,
        expires_at: SystemTime::now() + lifetime,
        assertion,
    })
}

/// The resource owner password credentials grant: a user's delegated token for a public client.
/// Its refusal is the response as sent, like [`exchange`]'s (whose being async spares it the
/// lint).
#[allow(clippy::result_large_err)]
fn password_grant(
    inner: &Inner,
    t: &Tenant,
    tenant: &str,
    form: &HashMap<String, String>,
) -> Result<Issued, Response> {
    let field = |name: &str| form.get(name).map(String::as_str).unwrap_or("");
    let client_id = field("client_id");
    let Some(client) = t.apps.get(client_id) else {
        return Err(aad_error(
            StatusCode::BAD_REQUEST,
            "unauthorized_client",
            700016,
            &format!(
                "Application with identifier '{client_id}' was not found in the directory '{tenant}'."
            ),
        ));
    };
    let user = t
        .users
        .get(&field("username").to_ascii_lowercase())
        .filter(|u| u.password == field("password"))
        .ok_or_else(|| {
            aad_error(
                StatusCode::BAD_REQUEST,
                "invalid_grant",
                50126,
                "Error validating credentials due to invalid username or password.",
            )
        })?;
    // `api://<client id>/<scope>` or `<resource>/.default`.
    let scope = field("scope")
        .split(' ')
        .find(|s| !matches!(*s, "openid" | "profile" | "offline_access" | ""))
        .unwrap_or("");
    let (resource, scope_name) = scope.rsplit_once('/').unwrap_or((scope, ""));
    let Some(resource_app) = t.apps.values().find(|a| {
        a.client_id == resource || resource.strip_prefix("api://") == Some(a.client_id.as_str())
    }) else {
        return Err(aad_error(
            StatusCode::BAD_REQUEST,
            "invalid_resource",
            500011,
            &format!(
                "The resource principal named {resource} was not found in the tenant named {tenant}."
            ),
        ));
    };
    let now = unix_now();
    let life = i64::try_from(inner.token_lifetime.as_secs()).unwrap_or(3599);
    let version = resource_app.access_token_version;
    let scp = if scope_name == ".default" || scope_name.is_empty() {
        "user_impersonation"
    } else {
        scope_name
    };
    let mut claims = json!({
        "aud": if version == 2 { resource_app.client_id.clone() } else { resource.to_owned() },
        "iat": now,
        "nbf": now,
        "exp": now + life,
        "oid": user.object_id,
        "sub": user.object_id,
        "tid": tenant,
        "scp": scp,
        "name": user.display_name,
    });
    if let Some(roles) = t
        .role_assignments
        .get(&(resource_app.client_id.clone(), user.object_id.clone()))
        .filter(|r| !r.is_empty())
    {
        claims["roles"] = json!(roles);
    }
    if resource_app.group_membership_claims {
        if user.groups.len() > MAX_TOKEN_GROUPS {
            claims["_claim_names"] = json!({"groups": "src1"});
            claims["_claim_sources"] = json!({"src1": {"endpoint": format!(
                "https://graph.microsoft.com/v1.0/users/{}/getMemberObjects", user.object_id
            )}});
        } else {
            claims["groups"] = json!(user.groups);
        }
    }
    if version == 2 {
        claims["iss"] = json!(format!("{}/{tenant}/v2.0", inner.url));
        claims["azp"] = json!(client.client_id);
        claims["azpacr"] = json!("0");
        claims["preferred_username"] = json!(user.user_principal_name);
        claims["ver"] = json!("2.0");
    } else {
        claims["iss"] = json!(EntraFake::issuer_v1(tenant));
        claims["appid"] = json!(client.client_id);
        claims["appidacr"] = json!("0");
        claims["upn"] = json!(user.user_principal_name);
        claims["unique_name"] = json!(user.user_principal_name);
        claims["ver"] = json!("1.0");
    }
    let access_token = sign_current(t, &claims)?;
    Ok(Issued {
        tenant: tenant.to_owned(),
        client_id: client.client_id.clone(),
        resource: resource.to_owned(),
        access_token,
        expires_at: SystemTime::now() + inner.token_lifetime,
        assertion: None,
    })
}

/// Where Entra documents workload identity federation, as its refusals name it today.
const FEDERATION_DOCS: &str =
    "https://learn.microsoft.com/entra/workload-id/workload-identity-federation";

/// Entra's refusal of an assertion no federated credential matches: 401 `invalid_client`.
fn no_matching_credential(code: u32, message: String) -> Response {
    aad_error(StatusCode::UNAUTHORIZED, "invalid_client", code, &message)
}

/// Workload identity federation: a federated credential that matches the assertion's issuer,
/// subject and audience (compared as Entra does: case-sensitively, in that order) and is not
/// still `propagating` ((issuer, subject) pairs created too recently), then the issuer's
/// signature.
async fn verify_assertion(
    app: &App,
    propagating: &[(String, String)],
    assertion: &str,
    issuer_client: Option<kube::Client>,
) -> Result<(), Response> {
    let Ok(unverified) = jsonwebtoken::dangerous::insecure_decode::<AssertionClaims>(assertion)
    else {
        return Err(aad_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            50027,
            "JWT token is invalid or malformed.",
        ));
    };
    let claims = unverified.claims;
    let audience = claims.aud.first().cloned().unwrap_or_default();
    let (iss, sub) = (&claims.iss, &claims.sub);
    let for_issuer: Vec<&FederatedCredential> = app
        .federated_credentials
        .iter()
        .filter(|f| f.issuer == *iss)
        .collect();
    if for_issuer.is_empty() {
        return Err(no_matching_credential(
            700211,
            format!(
                "No matching federated identity record found for presented assertion issuer '{iss}'. Please check your federated identity credential Subject, Audience and Issuer against the presented assertion. {FEDERATION_DOCS}"
            ),
        ));
    }
    let subject_unknown = || {
        no_matching_credential(
            700213,
            format!(
                "No matching federated identity record found for presented assertion subject '{sub}'. Check your federated identity credential Subject, Audience and Issuer against the presented assertion. {FEDERATION_DOCS}"
            ),
        )
    };
    let for_subject: Vec<&FederatedCredential> = for_issuer
        .iter()
        .copied()
        .filter(|f| f.subject == *sub)
        .collect();
    if for_subject.is_empty() {
        if for_issuer
            .iter()
            .any(|f| f.subject.eq_ignore_ascii_case(sub))
        {
            return Err(no_matching_credential(
                7002138,
                format!(
                    "No matching federated identity record found for presented assertion subject '{sub}'. The subject matches with case-insensitive comparison, but not with case-sensitive comparison. Check your federated identity credential Subject, Audience and Issuer against the presented assertion. See documentation at: {FEDERATION_DOCS}. See breaking change notification and remediation at: https://learn.microsoft.com/en-us/entra/identity-platform/reference-breaking-changes#august-2024."
                ),
            ));
        }
        return Err(subject_unknown());
    }
    let Some(credential) = for_subject
        .iter()
        .find(|f| claims.aud.iter().any(|a| f.audiences.contains(a)))
    else {
        return Err(no_matching_credential(
            700212,
            format!(
                "No matching federated identity record found for presented assertion audience '{audience}'. Please check your federated identity credential Subject, Audience and Issuer against the presented assertion. {FEDERATION_DOCS}"
            ),
        ));
    };
    if propagating.contains(&(credential.issuer.clone(), credential.subject.clone())) {
        return Err(subject_unknown());
    }
    let Some(client) = issuer_client else {
        return Err(aad_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            50166,
            &format!(
                "Request to External OIDC endpoint failed. Issuer: '{}'.",
                claims.iss
            ),
        ));
    };
    let jwks = issuer_keys(&client, &claims.iss).await.map_err(|e| {
        aad_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            50166,
            &format!("Request to External OIDC endpoint failed: {e:#}"),
        )
    })?;
    let signature_error = || {
        aad_error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            700027,
            "Client assertion failed signature validation.",
        )
    };
    let header = jsonwebtoken::decode_header(assertion).map_err(|_| signature_error())?;
    let jwk = header
        .kid
        .as_deref()
        .and_then(|kid| jwks.find(kid))
        .ok_or_else(signature_error)?;
    let key = DecodingKey::from_jwk(jwk).map_err(|_| signature_error())?;
    let mut validation = Validation::new(Algorithm::RS256);
    validation.set_issuer(&[&credential.issuer]);
    validation.set_audience(&credential.audiences);
    validation.leeway = 0;
    jsonwebtoken::decode::<Value>(assertion, &key, &validation).map_err(|e| match e.kind() {
        jsonwebtoken::errors::ErrorKind::ExpiredSignature
        | jsonwebtoken::errors::ErrorKind::ImmatureSignature => aad_error(
            StatusCode::BAD_REQUEST,
            "invalid_client",
            700024,
            "Client assertion is not within its valid time range.",
        ),
        _ => signature_error(),
    })?;
    Ok(())
}

/// A ServiceAccount `name` in the test's namespace (created if missing) and a token for it with
/// the workload-identity audience, as the kubelet projects it.
pub async fn service_account_token(
    ns: &crate::TestNamespace,
    name: &str,
) -> anyhow::Result<String> {
    use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
    use k8s_openapi::api::core::v1::ServiceAccount;
    use kube::api::PostParams;
    let accounts = ns.api::<ServiceAccount>();
    if accounts.get_opt(name).await?.is_none() {
        let account: ServiceAccount = serde_json::from_value(json!({"metadata": {"name": name}}))?;
        accounts.create(&PostParams::default(), &account).await?;
    }
    let request = TokenRequest {
        spec: TokenRequestSpec {
            audiences: vec![TOKEN_EXCHANGE_AUDIENCE.to_owned()],
            expiration_seconds: Some(3600),
            ..TokenRequestSpec::default()
        },
        ..TokenRequest::default()
    };
    let issued = accounts
        .create_token_request(name, &PostParams::default(), &request)
        .await?;
    issued
        .status
        .map(|s| s.token)
        .context("TokenRequest returned no token")
}
