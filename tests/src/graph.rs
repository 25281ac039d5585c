//! A Microsoft Graph stand-in for tests, over HTTPS with a test CA, for what pgmcp asks of
//! Graph: service principals with their app roles and `appRoleAssignedTo` (v1.0 wire format).
//!
//! - **Authentication** like Graph: a bearer token the Entra fake issued, RS256 against the
//!   tenant's current key, audience the fake's own endpoint, as a cloud's Graph accepts tokens
//!   for itself (`https://graph.microsoft.us`, …), or Graph's app id
//!   `00000003-0000-0000-c000-000000000000`), the fake directory's issuer and tenant, expiry;
//!   otherwise 401 `InvalidAuthenticationToken`.
//! - **Authorization** from the application permissions granted to the caller's object id
//!   ([`GraphFake::grant`]): reads need `Application.Read.All` (or `Directory.Read.All`),
//!   assignment writes `AppRoleAssignment.ReadWrite.All`; otherwise 403
//!   `Authorization_RequestDenied`.
//! - **Objects**: service principals ([`GraphFake::add_service_principal`]) found by id,
//!   `(appId='…')` or `$filter=servicePrincipalNames/any(x:x eq '…')`; app role assignments
//!   (list, POST with Graph's validation, DELETE; [`GraphFake::add_assignments`] adds many at
//!   once). Each assignment is mirrored in the Entra fake ([`EntraFake::assign_app_role`]), so
//!   tokens the principal gets for the app carry the role exactly while Graph holds the
//!   assignment.
//! - **Paging** like Graph's directory lists: `GET /v1.0/servicePrincipals?$filter=…` and
//!   `GET /v1.0/servicePrincipals/{id}/appRoleAssignedTo` answer at most `$top` items (default
//!   100, 1 to 999, else 400 `Request_UnsupportedQuery`), or fewer when the test caps the page
//!   size ([`GraphFake::set_max_page_size`], so a few objects span several pages). When more
//!   remain, the body has `@odata.nextLink`: the same URL on the fake's origin with the request's
//!   other query parameters and an opaque `$skiptoken` appended. A client gets everything only by
//!   GETting each nextLink as it is (same token, same permission checks) until a page has none.
//!   Items come in a stable order (by object id; assignments by creation) and the token names
//!   the last item served, so an item present throughout is served exactly once even when others
//!   are added or removed between pages. A token the fake did not issue is 400
//!   `Directory_ExpiredPageToken`.
//! - **Observation**: every request is recorded ([`GraphFake::count`]).

use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Value, json};

use crate::arm::Request;
use crate::entra::EntraFake;
use crate::tls_listener::HttpsServer;

/// Microsoft Graph's application id, also accepted as a token audience.
pub const GRAPH_APP_ID: &str = "00000003-0000-0000-c000-000000000000";
pub const APP_ROLE_ASSIGNMENT_READ_WRITE_ALL: &str = "AppRoleAssignment.ReadWrite.All";
pub const APPLICATION_READ_ALL: &str = "Application.Read.All";
/// Items on a page of a directory list when the request has no `$top`.
pub const DEFAULT_PAGE_SIZE: usize = 100;
/// The largest `$top` Graph accepts for directory lists.
pub const MAX_TOP: usize = 999;
/// What a `$skiptoken` starts with (decoded), like Graph's directory tokens (`RFNwdA…`).
const SKIPTOKEN_MAGIC: &[u8] = b"DSpt\x02";

/// An app role a service principal defines.
#[derive(Clone, Debug)]
pub struct AppRole {
    pub id: String,
    pub value: String,
}

#[derive(Clone, Debug)]
struct ServicePrincipal {
    id: String,
    app_id: String,
    names: Vec<String>,
    app_roles: Vec<AppRole>,
}

/// An app role assignment as Graph returns it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Assignment {
    pub id: String,
    pub principal_id: String,
    pub resource_id: String,
    pub app_role_id: String,
}

struct Inner {
    /// The fake's origin, for `@odata.nextLink`.
    url: String,
    tenant: String,
    entra: Arc<EntraFake>,
    service_principals: Vec<ServicePrincipal>,
    assignments: Vec<Assignment>,
    /// (object id, permission).
    permissions: Vec<(String, String)>,
    requests: Vec<Request>,
    next_id: u64,
    /// A cap on every page, below `$top` (a test setting, not Graph's).
    max_page_size: Option<usize>,
}

type Shared = Arc<Mutex<Inner>>;

fn lock(shared: &Shared) -> MutexGuard<'_, Inner> {
    shared
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A running Graph fake. Dropping it stops the server.
pub struct GraphFake {
    server: HttpsServer,
    inner: Shared,
}

impl std::fmt::Debug for GraphFake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GraphFake")
            .field("url", &self.server.url)
            .finish_non_exhaustive()
    }
}

impl GraphFake {
    /// Starts the fake on a free loopback port with a new test CA, for directory `tenant` of
    /// `entra`.
    pub async fn start(entra: Arc<EntraFake>, tenant: &str) -> anyhow::Result<Self> {
        let bound = HttpsServer::bind("graph").await?;
        // A cloud of its own: Entra issues tokens for this endpoint, and only those are accepted.
        entra.add_resource(&bound.url);
        let inner: Shared = Arc::new(Mutex::new(Inner {
            url: bound.url.clone(),
            tenant: tenant.to_owned(),
            entra,
            service_principals: Vec::new(),
            assignments: Vec::new(),
            permissions: Vec::new(),
            requests: Vec::new(),
            next_id: 0,
            max_page_size: None,
        }));
        let app = Router::new().fallback(handle).with_state(inner.clone());
        Ok(Self {
            server: bound.serve(app)?,
            inner,
        })
    }

    /// The Graph endpoint: `https://127.0.0.1:<port>` (on a test node, its address).
    pub fn url(&self) -> &str {
        &self.server.url
    }

    /// PEM of the CA that signed the fake's certificate.
    pub fn ca_cert(&self) -> &Path {
        &self.server.ca_cert
    }

    /// Adds the service principal (object id `object_id`) of app `app_id`, known also by
    /// `api://{app_id}`, defining `app_roles` (allowed for applications, enabled).
    pub fn add_service_principal(&self, app_id: &str, object_id: &str, app_roles: &[AppRole]) {
        lock(&self.inner).service_principals.push(ServicePrincipal {
            id: object_id.to_owned(),
            app_id: app_id.to_owned(),
            names: vec![app_id.to_owned(), format!("api://{app_id}")],
            app_roles: app_roles.to_vec(),
        });
    }

    /// Grants application permission `permission` (e.g. [`APP_ROLE_ASSIGNMENT_READ_WRITE_ALL`])
    /// to the principal with object id `object_id`.
    pub fn grant(&self, object_id: &str, permission: &str) {
        lock(&self.inner)
            .permissions
            .push((object_id.to_owned(), permission.to_owned()));
    }

    /// Takes every permission back from `object_id`.
    pub fn revoke_all(&self, object_id: &str) {
        lock(&self.inner)
            .permissions
            .retain(|(o, _)| o != object_id);
    }

    /// Serves at most `size` items on every page of a list, whatever `$top` asks (`None`: only
    /// `$top` and Graph's default count), so a test needs only a few objects for several pages.
    pub fn set_max_page_size(&self, size: Option<usize>) {
        lock(&self.inner).max_page_size = size.map(|n| n.max(1));
    }

    /// Assigns app role `app_role_id` of service principal `resource_sp` to `n` new service
    /// principals (created here, each of its own new app), as if other clients had been given the
    /// role before: assignments made later come after these in `appRoleAssignedTo`.
    pub fn add_assignments(
        &self,
        resource_sp: &str,
        app_role_id: &str,
        n: usize,
    ) -> anyhow::Result<Vec<Assignment>> {
        let mut inner = lock(&self.inner);
        let resource = inner
            .service_principals
            .iter()
            .find(|sp| sp.id == resource_sp)
            .cloned()
            .ok_or_else(|| anyhow::anyhow!("no service principal {resource_sp}"))?;
        let role = resource
            .app_roles
            .iter()
            .find(|r| r.id == app_role_id)
            .cloned()
            .ok_or_else(|| anyhow::anyhow!("{resource_sp} defines no app role {app_role_id}"))?;
        let mut added = Vec::with_capacity(n);
        for _ in 0..n {
            inner.next_id += 1;
            let serial = inner.next_id;
            let app_id = format!("{serial:08x}-a900-4000-8000-{serial:012x}");
            let principal = ServicePrincipal {
                id: format!("{serial:08x}-5e11-4000-8000-{serial:012x}"),
                names: vec![app_id.clone()],
                app_id,
                app_roles: Vec::new(),
            };
            let assignment = new_assignment(&mut inner, &principal.id, &resource.id, &role.id);
            inner.entra.assign_app_role(
                &inner.tenant,
                &resource.app_id,
                &principal.app_id,
                &role.value,
            );
            inner.service_principals.push(principal);
            inner.assignments.push(assignment.clone());
            added.push(assignment);
        }
        Ok(added)
    }

    /// The app role assignments Graph holds.
    pub fn assignments(&self) -> Vec<Assignment> {
        lock(&self.inner).assignments.clone()
    }

    /// How many `method` requests had a path containing `fragment` (case-insensitive).
    pub fn count(&self, method: &str, fragment: &str) -> usize {
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

    /// Every request answered so far.
    pub fn requests(&self) -> Vec<Request> {
        lock(&self.inner).requests.clone()
    }
}

/// Graph's error body.
fn graph_error(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        axum::Json(json!({"error": {
            "code": code,
            "message": message,
            "innerError": {"date": jiff::Timestamp::now().to_string(), "request-id": "00000000-0000-4000-8000-000000000000"}
        }})),
    )
        .into_response()
}

fn not_found(id: &str) -> Response {
    graph_error(
        StatusCode::NOT_FOUND,
        "Request_ResourceNotFound",
        &format!(
            "Resource '{id}' does not exist or one of its queried reference-property objects are not present."
        ),
    )
}

fn denied() -> Response {
    graph_error(
        StatusCode::FORBIDDEN,
        "Authorization_RequestDenied",
        "Insufficient privileges to complete the operation.",
    )
}

async fn handle(
    State(shared): State<Shared>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let response = answer(&shared, &method, &uri, &headers, &body);
    lock(&shared).requests.push(Request {
        method: method.to_string(),
        path: uri.path().to_owned(),
        status: response.status().as_u16(),
    });
    response
}

/// The caller's object id, from a valid Graph token; else the message of Graph's 401.
fn authenticate(inner: &Inner, headers: &HeaderMap) -> Result<String, &'static str> {
    let token = headers
        .get("authorization")
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim().to_owned())
        .ok_or("Access token is empty.")?;
    let failure = "Access token validation failure.";
    let pem = inner
        .entra
        .public_key_pem(&inner.tenant)
        .map_err(|_| failure)?;
    let key = DecodingKey::from_rsa_pem(pem.as_bytes()).map_err(|_| failure)?;
    let mut validation = Validation::new(Algorithm::RS256);
    // Graph of a cloud other than the public one accepts tokens for its own endpoint (and
    // Graph's application id), as the fake does for its URL.
    let url = inner.url.trim_end_matches('/');
    validation.set_audience(&[url, &format!("{url}/"), GRAPH_APP_ID]);
    validation.set_issuer(&[EntraFake::issuer_v1(&inner.tenant)]);
    validation.leeway = 300;
    let claims = jsonwebtoken::decode::<Value>(&token, &key, &validation)
        .map_err(|err| {
            use jsonwebtoken::errors::ErrorKind;
            match err.kind() {
                ErrorKind::InvalidAudience => "Access token validation failure. Invalid audience.",
                ErrorKind::ExpiredSignature => "Lifetime validation failed, the token is expired.",
                _ => failure,
            }
        })?
        .claims;
    if claims["tid"].as_str() != Some(inner.tenant.as_str()) {
        return Err("Access token validation failure. Invalid tenant.");
    }
    Ok(claims["oid"].as_str().unwrap_or_default().to_owned())
}

fn allowed(inner: &Inner, caller: &str, permissions: &[&str]) -> bool {
    inner
        .permissions
        .iter()
        .any(|(o, p)| o == caller && permissions.contains(&p.as_str()))
}

fn sp_json(sp: &ServicePrincipal) -> Value {
    json!({
        "id": sp.id,
        "appId": sp.app_id,
        "servicePrincipalNames": sp.names,
        "appRoles": sp.app_roles.iter().map(|r| json!({
            "id": r.id, "value": r.value, "isEnabled": true,
            "allowedMemberTypes": ["Application"],
            "displayName": r.value, "description": r.value, "origin": "Application",
        })).collect::<Vec<_>>(),
    })
}

fn assignment_json(inner: &Inner, a: &Assignment) -> Value {
    let name = |id: &str| {
        inner
            .service_principals
            .iter()
            .find(|sp| sp.id == id)
            .map(|sp| sp.app_id.clone())
            .unwrap_or_default()
    };
    json!({
        "id": a.id,
        "appRoleId": a.app_role_id,
        "principalId": a.principal_id,
        "principalType": "ServicePrincipal",
        "principalDisplayName": name(&a.principal_id),
        "resourceId": a.resource_id,
        "resourceDisplayName": name(&a.resource_id),
        "deletedDateTime": null,
    })
}

/// A new assignment's id: later assignments sort after earlier ones, as the lists order by id.
fn new_assignment(
    inner: &mut Inner,
    principal_id: &str,
    resource_id: &str,
    app_role_id: &str,
) -> Assignment {
    inner.next_id += 1;
    Assignment {
        id: format!(
            "Ab{:020}_x-{}",
            inner.next_id,
            principal_id.get(..4).unwrap_or(principal_id)
        ),
        principal_id: principal_id.to_owned(),
        resource_id: resource_id.to_owned(),
        app_role_id: app_role_id.to_owned(),
    }
}

fn skiptoken(last_id: &str) -> String {
    let mut raw = SKIPTOKEN_MAGIC.to_vec();
    raw.extend_from_slice(last_id.as_bytes());
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
}

/// The id of the last item on the page before, from a `$skiptoken`.
fn after_skiptoken(token: &str) -> Option<String> {
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token)
        .ok()?;
    let id = raw.strip_prefix(SKIPTOKEN_MAGIC)?;
    String::from_utf8(id.to_vec()).ok()
}

/// One page of a directory list (items keyed by object id), as Graph serves it: `$top` items at
/// most (or the test's cap), from after the item `$skiptoken` names, and `@odata.nextLink` when
/// more remain.
fn page(
    inner: &Inner,
    uri: &Uri,
    query: &[(String, String)],
    context: &str,
    mut items: Vec<(String, Value)>,
) -> Response {
    let param = |name: &str| {
        query
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    };
    let top = match param("$top") {
        None => DEFAULT_PAGE_SIZE,
        Some(value) => match value.parse::<usize>() {
            Ok(n) if (1..=MAX_TOP).contains(&n) => n,
            _ => {
                return graph_error(
                    StatusCode::BAD_REQUEST,
                    "Request_UnsupportedQuery",
                    &format!(
                        "Invalid page size specified: '{value}'. Must be between 1 and {MAX_TOP} inclusive."
                    ),
                );
            }
        },
    };
    let size = inner.max_page_size.map_or(top, |cap| top.min(cap));
    let after = match param("$skiptoken") {
        None => None,
        Some(token) => match after_skiptoken(token) {
            Some(id) => Some(id),
            None => {
                return graph_error(
                    StatusCode::BAD_REQUEST,
                    "Directory_ExpiredPageToken",
                    "The specified page token value has expired and can no longer be included in your request.",
                );
            }
        },
    };
    items.sort_by(|a, b| a.0.cmp(&b.0));
    let mut rest = items
        .into_iter()
        .filter(|(id, _)| after.as_ref().is_none_or(|after| id > after))
        .peekable();
    let value: Vec<(String, Value)> = rest.by_ref().take(size).collect();
    let mut body = json!({"@odata.context": context});
    if rest.peek().is_some()
        && let Some((last, _)) = value.last()
    {
        // The request's own query (as the client encoded it) without its token, plus the next.
        let mut next: Vec<&str> = uri
            .query()
            .unwrap_or_default()
            .split('&')
            .filter(|pair| {
                let key = pair.split_once('=').map_or(*pair, |(k, _)| k);
                !pair.is_empty()
                    && !key.eq_ignore_ascii_case("$skiptoken")
                    && !key.eq_ignore_ascii_case("%24skiptoken")
            })
            .collect();
        let token = format!("$skiptoken={}", skiptoken(last));
        next.push(&token);
        body["@odata.nextLink"] = json!(format!("{}{}?{}", inner.url, uri.path(), next.join("&")));
    }
    body["value"] = Value::Array(value.into_iter().map(|(_, v)| v).collect());
    axum::Json(body).into_response()
}

fn answer(
    shared: &Shared,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: &Bytes,
) -> Response {
    let mut inner = lock(shared);
    let caller = match authenticate(&inner, headers) {
        Ok(caller) => caller,
        Err(message) => {
            return graph_error(
                StatusCode::UNAUTHORIZED,
                "InvalidAuthenticationToken",
                message,
            );
        }
    };
    let path = uri.path();
    let Some(rest) = path.strip_prefix("/v1.0/servicePrincipals") else {
        return graph_error(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            &format!("Resource not found for the segment '{path}'."),
        );
    };
    let read = allowed(
        &inner,
        &caller,
        &[
            APPLICATION_READ_ALL,
            "Application.ReadWrite.All",
            "Directory.Read.All",
        ],
    );
    let write = allowed(&inner, &caller, &[APP_ROLE_ASSIGNMENT_READ_WRITE_ALL]);
    let query: Vec<(String, String)> = reqwest::Url::parse(&format!("https://graph{uri}"))
        .map(|u| u.query_pairs().into_owned().collect())
        .unwrap_or_default();

    // GET /servicePrincipals?$filter=servicePrincipalNames/any(x:x eq '…')
    if rest.is_empty() {
        if *method != Method::GET {
            return graph_error(
                StatusCode::METHOD_NOT_ALLOWED,
                "Request_BadRequest",
                "Only GET is faked.",
            );
        }
        if !read {
            return denied();
        }
        let filter = query
            .iter()
            .find(|(k, _)| k == "$filter")
            .map(|(_, v)| v.clone())
            .unwrap_or_default();
        let Some(name) = filter
            .strip_prefix("servicePrincipalNames/any(x:x eq '")
            .and_then(|r| r.strip_suffix("')"))
            .map(|n| n.replace("''", "'"))
        else {
            return graph_error(
                StatusCode::BAD_REQUEST,
                "Request_UnsupportedQuery",
                &format!("Unsupported or invalid query filter clause specified: {filter}"),
            );
        };
        let found: Vec<(String, Value)> = inner
            .service_principals
            .iter()
            .filter(|sp| sp.names.contains(&name))
            .map(|sp| (sp.id.clone(), sp_json(sp)))
            .collect();
        return page(
            &inner,
            uri,
            &query,
            "https://graph.microsoft.com/v1.0/$metadata#servicePrincipals",
            found,
        );
    }

    // /servicePrincipals(appId='…') or /servicePrincipals/{id}[/appRoleAssignedTo[/{id}]]
    let (sp, tail) = if let Some(key) = rest.strip_prefix("(appId='") {
        let Some((app_id, tail)) = key.split_once("')") else {
            return graph_error(StatusCode::BAD_REQUEST, "BadRequest", "Bad key syntax.");
        };
        (
            inner
                .service_principals
                .iter()
                .find(|s| s.app_id == app_id)
                .cloned(),
            tail.to_owned(),
        )
    } else if let Some(key) = rest.strip_prefix('/') {
        let (id, tail) = key
            .split_once('/')
            .map_or((key, String::new()), |(i, t)| (i, format!("/{t}")));
        (
            inner
                .service_principals
                .iter()
                .find(|s| s.id == id)
                .cloned(),
            tail,
        )
    } else {
        return graph_error(StatusCode::BAD_REQUEST, "BadRequest", "Bad path.");
    };
    if !read {
        return denied();
    }
    let Some(sp) = sp else {
        return not_found(rest.trim_start_matches('/'));
    };
    match (method.clone(), tail.as_str()) {
        (Method::GET, "") => axum::Json(sp_json(&sp)).into_response(),
        (Method::GET, "/appRoleAssignedTo") => {
            let value: Vec<(String, Value)> = inner
                .assignments
                .iter()
                .filter(|a| a.resource_id == sp.id)
                .map(|a| (a.id.clone(), assignment_json(&inner, a)))
                .collect();
            let context = format!(
                "https://graph.microsoft.com/v1.0/$metadata#servicePrincipals('{}')/appRoleAssignedTo",
                sp.id
            );
            page(&inner, uri, &query, &context, value)
        }
        (Method::POST, "/appRoleAssignedTo") => {
            if !write {
                return denied();
            }
            let Ok(request) = serde_json::from_slice::<Value>(body) else {
                return graph_error(
                    StatusCode::BAD_REQUEST,
                    "Request_BadRequest",
                    "Invalid request body.",
                );
            };
            let field = |name: &str| request[name].as_str().unwrap_or_default().to_owned();
            let (principal_id, resource_id, app_role_id) = (
                field("principalId"),
                field("resourceId"),
                field("appRoleId"),
            );
            if resource_id != sp.id {
                return graph_error(
                    StatusCode::BAD_REQUEST,
                    "Request_BadRequest",
                    "The resourceId in the body must be the service principal in the URL.",
                );
            }
            let Some(role) = sp.app_roles.iter().find(|r| r.id == app_role_id) else {
                return graph_error(
                    StatusCode::BAD_REQUEST,
                    "Request_BadRequest",
                    "Permission being assigned was not found on application",
                );
            };
            let Some(principal) = inner
                .service_principals
                .iter()
                .find(|s| s.id == principal_id)
                .cloned()
            else {
                return not_found(&principal_id);
            };
            if inner.assignments.iter().any(|a| {
                a.principal_id == principal_id
                    && a.resource_id == resource_id
                    && a.app_role_id == app_role_id
            }) {
                return graph_error(
                    StatusCode::BAD_REQUEST,
                    "Request_BadRequest",
                    "Permission being assigned already exists on the object",
                );
            }
            let assignment = new_assignment(&mut inner, &principal_id, &resource_id, &app_role_id);
            inner
                .entra
                .assign_app_role(&inner.tenant, &sp.app_id, &principal.app_id, &role.value);
            inner.assignments.push(assignment.clone());
            (
                StatusCode::CREATED,
                axum::Json(assignment_json(&inner, &assignment)),
            )
                .into_response()
        }
        (Method::DELETE, tail) if tail.starts_with("/appRoleAssignedTo/") => {
            if !write {
                return denied();
            }
            let id = &tail["/appRoleAssignedTo/".len()..];
            let Some(at) = inner
                .assignments
                .iter()
                .position(|a| a.id == id && a.resource_id == sp.id)
            else {
                return not_found(id);
            };
            let assignment = inner.assignments.remove(at);
            let role = sp.app_roles.iter().find(|r| r.id == assignment.app_role_id);
            let principal = inner
                .service_principals
                .iter()
                .find(|s| s.id == assignment.principal_id)
                .map(|s| s.app_id.clone());
            if let (Some(role), Some(principal)) = (role, principal) {
                inner
                    .entra
                    .unassign_app_role(&inner.tenant, &sp.app_id, &principal, &role.value);
            }
            StatusCode::NO_CONTENT.into_response()
        }
        _ => graph_error(
            StatusCode::METHOD_NOT_ALLOWED,
            "Request_BadRequest",
            &format!("{method} {path} is not supported by the fake."),
        ),
    }
}
