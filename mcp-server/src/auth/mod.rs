//! Caller authentication of `/mcp` (the MCP authorization spec, with Entra ID as the
//! authorization server): a bearer token in the `Authorization` header — never the query string —
//! validated by [`jwt::EntraValidator`]; `401` with `WWW-Authenticate: Bearer resource_metadata=…`
//! when it is missing or invalid, `403 insufficient_scope` when it lacks the app role; RFC 9728
//! metadata in [`prm`]. The caller's token stops here: the database connection uses the server's
//! own identity, never the caller's token.
//!
//! The validated [`Caller`] rides in the request's extensions to the tool handlers, which write
//! it to the audit log. Metrics get only bounded outcome labels, never caller ids.

pub mod jwt;
pub mod prm;

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::access::{Access, Class};
use crate::http::AppState;
use crate::metrics::AuthLabels;
use jwt::{EntraValidator, Rejection};

/// Who called, from a validated token. Every field is optional: Entra omits `name` for
/// applications, and v1/v2 tokens name the calling app differently (`appid`/`azp`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Caller {
    /// Object id of the calling user, managed identity or service principal.
    pub oid: Option<String>,
    /// Client id of the calling application.
    pub app_id: Option<String>,
    /// Display name, for users.
    pub name: Option<String>,
    /// The tenant that issued the token (`tid`).
    pub tenant_id: Option<String>,
    /// App roles of this server's app the caller holds (`roles`).
    pub roles: Vec<String>,
    /// Object ids of the caller's groups (`groups`, when the app registration emits it).
    pub groups: Vec<String>,
    /// The token names a source for the groups instead of listing them (a user in more
    /// groups than a token holds): `groups` is empty whatever the membership.
    pub groups_overage: bool,
    /// The signed-in user's name (`preferred_username`, `upn` in v1 tokens).
    pub preferred_username: Option<String>,
    /// The caller class it belongs to ([`crate::access`]), once resolved.
    pub class: Option<Arc<Class>>,
    /// The verified claims as the JSON its statements read from `pgmcp.caller`, set with the
    /// class when the binding has classes.
    pub claims: Option<Arc<str>>,
}

impl Caller {
    /// `self` placed in `class`; with per-caller access its statements carry the claims JSON:
    /// `oid`, `tid`, `appid`, `roles`, `groups`, `name`, `preferred_username` and `class` (the
    /// class's name, or null for the default class). Every value comes from the verified token.
    pub fn in_class(mut self, class: Arc<Class>) -> Self {
        if class.role.is_some() {
            let claims = serde_json::json!({
                "oid": self.oid,
                "tid": self.tenant_id,
                "appid": self.app_id,
                "roles": self.roles,
                "groups": self.groups,
                "name": self.name,
                "preferred_username": self.preferred_username,
                "class": class.name,
            });
            self.claims = Some(claims.to_string().into());
        }
        self.class = Some(class);
        self
    }

    /// The role and claims its statements run with, under per-caller access.
    pub fn identity(&self) -> Option<crate::db::Identity<'_>> {
        let role = self.class.as_ref()?.role.as_deref()?;
        Some(crate::db::Identity {
            role,
            claims: self.claims.as_deref().unwrap_or("{}"),
        })
    }

    /// The caller of an MCP request: set by [`require_token`] on HTTP, absent on stdio or
    /// without authentication.
    pub fn of(extensions: &rmcp::model::Extensions) -> Option<Caller> {
        extensions
            .get::<axum::http::request::Parts>()
            .and_then(|parts| parts.extensions.get::<Caller>())
            .cloned()
    }
}

/// How `/mcp` authenticates callers.
#[derive(Clone, Debug)]
pub struct Auth {
    /// `None`: no caller authentication (loopback or explicitly insecure).
    pub validator: Option<Arc<EntraValidator>>,
    /// The URL callers use for `/mcp`, when configured.
    pub public_url: Option<String>,
    /// Accepted `Host` values besides loopback (as for `/mcp` itself).
    pub allowed_hosts: Vec<String>,
    /// The caller classes a validated caller is placed in.
    pub access: Arc<Access>,
}

impl Auth {
    /// Whether `host` (a `Host` header) is loopback or configured.
    fn host_allowed(&self, host: &str) -> bool {
        let allowed: Vec<String> = crate::http::LOOPBACK_HOSTS
            .iter()
            .map(|h| (*h).to_owned())
            .chain(self.allowed_hosts.iter().cloned())
            .collect();
        crate::http::host_allowed(host, &allowed)
    }

    /// The resource (`…/mcp`) the request addressed: the configured public URL, or the URL
    /// built from an accepted `Host` header. `None` for a foreign `Host`.
    pub fn resource(&self, headers: &HeaderMap) -> Option<String> {
        if let Some(url) = &self.public_url {
            return Some(url.trim_end_matches('/').to_owned());
        }
        let host = headers.get(header::HOST)?.to_str().ok()?;
        if !self.host_allowed(host) {
            return None;
        }
        let https = headers
            .get("x-forwarded-proto")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.eq_ignore_ascii_case("https"));
        Some(format!(
            "{}://{host}/mcp",
            if https { "https" } else { "http" }
        ))
    }
}

/// The token of `Authorization: Bearer <token>`, if that is what the header holds.
fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// Middleware of `/mcp`: lets a request through with its [`Caller`] or answers the challenge.
pub async fn require_token(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Response {
    let Some(validator) = &state.auth.validator else {
        return next.run(request).await;
    };
    let Some(resource) = state.auth.resource(request.headers()) else {
        return (
            StatusCode::FORBIDDEN,
            "Forbidden: Host header is not allowed",
        )
            .into_response();
    };
    let outcome = match bearer(request.headers()) {
        None => Err(Rejection::Missing),
        Some(token) => validator.validate(token).await,
    }
    .and_then(|caller| match state.auth.access.resolve(&caller) {
        Ok(class) => Ok(caller.in_class(class)),
        Err(refused) => Err(Rejection::Forbidden {
            reason: refused.to_string(),
            label: "no_caller_class",
        }),
    });
    let label = match &outcome {
        Ok(_) => "ok",
        Err(rejection) => rejection.metric_label(),
    };
    state
        .metrics
        .auth_requests
        .get_or_create(&AuthLabels { outcome: label })
        .inc();
    match outcome {
        Ok(caller) => {
            request.extensions_mut().insert(caller);
            next.run(request).await
        }
        Err(rejection) => {
            tracing::info!(outcome = label, reason = %rejection, "request to /mcp refused");
            challenge(&resource, &rejection)
        }
    }
}

/// The 401/403/503 answer for `rejection`, with the RFC 6750 / RFC 9728 challenge.
fn challenge(resource: &str, rejection: &Rejection) -> Response {
    let metadata = prm::metadata_url(resource);
    let (status, code, description) = match rejection {
        Rejection::Missing => (StatusCode::UNAUTHORIZED, None, rejection.to_string()),
        Rejection::Invalid(reason) => (
            StatusCode::UNAUTHORIZED,
            Some("invalid_token"),
            reason.clone(),
        ),
        Rejection::Forbidden { reason, .. } => (
            StatusCode::FORBIDDEN,
            Some("insufficient_scope"),
            reason.clone(),
        ),
        Rejection::Unavailable(reason) => {
            let body = serde_json::json!({"error": "temporarily_unavailable", "error_description": reason});
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                [(header::RETRY_AFTER, HeaderValue::from_static("10"))],
                axum::Json(body),
            )
                .into_response();
        }
    };
    let quoted = |s: &str| s.replace(['"', '\\', '\r', '\n'], "");
    let mut value = String::from("Bearer ");
    if let Some(code) = code {
        value.push_str(&format!(
            "error=\"{code}\", error_description=\"{}\", ",
            quoted(&description)
        ));
    }
    value.push_str(&format!("resource_metadata=\"{}\"", quoted(&metadata)));
    let body = serde_json::json!({
        "error": code.unwrap_or("unauthorized"),
        "error_description": description,
    });
    match HeaderValue::from_str(&value) {
        Ok(challenge) => (
            status,
            [(header::WWW_AUTHENTICATE, challenge)],
            axum::Json(body),
        )
            .into_response(),
        Err(_) => (
            status,
            [(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"))],
            axum::Json(body),
        )
            .into_response(),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn auth(public_url: Option<&str>) -> Auth {
        Auth {
            validator: None,
            public_url: public_url.map(str::to_owned),
            allowed_hosts: vec!["sales-mcp.agents.svc".into(), "mcp.example.com:8443".into()],
            access: Arc::new(Access::plain(crate::scope::Scope::default())),
        }
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.insert(*k, v.parse().unwrap());
        }
        map
    }

    #[test]
    fn the_resource_comes_from_the_public_url_or_an_accepted_host() {
        assert_eq!(
            auth(Some("https://mcp.contoso.com/agents/sales/mcp/"))
                .resource(&headers(&[("host", "evil")])),
            Some("https://mcp.contoso.com/agents/sales/mcp".into())
        );
        let a = auth(None);
        assert_eq!(
            a.resource(&headers(&[("host", "127.0.0.1:8080")])),
            Some("http://127.0.0.1:8080/mcp".into())
        );
        assert_eq!(
            a.resource(&headers(&[
                ("host", "sales-mcp.agents.svc:8080"),
                ("x-forwarded-proto", "https")
            ])),
            Some("https://sales-mcp.agents.svc:8080/mcp".into())
        );
        assert!(
            a.resource(&headers(&[("host", "mcp.example.com:8443")]))
                .is_some()
        );
        assert_eq!(
            a.resource(&headers(&[("host", "mcp.example.com:80")])),
            None,
            "port must match"
        );
        assert_eq!(a.resource(&headers(&[("host", "attacker.example")])), None);
    }

    #[test]
    fn only_the_authorization_header_carries_the_token() {
        assert_eq!(
            bearer(&headers(&[("authorization", "Bearer abc.def.ghi")])),
            Some("abc.def.ghi")
        );
        assert_eq!(
            bearer(&headers(&[("authorization", "bearer  abc")])),
            Some("abc")
        );
        assert_eq!(bearer(&headers(&[("authorization", "Basic abc")])), None);
        assert_eq!(bearer(&headers(&[("authorization", "Bearer ")])), None);
        assert_eq!(bearer(&headers(&[])), None);
    }
}
