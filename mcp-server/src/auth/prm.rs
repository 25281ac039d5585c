//! OAuth 2.0 Protected Resource Metadata (RFC 9728) for `/mcp`: which authorization server
//! (the Entra tenant) issues tokens for this server, and how to present them. Served at
//! `/.well-known/oauth-protected-resource` and at the path-suffixed form RFC 9728 §3.1 derives
//! from the resource URL (`/.well-known/oauth-protected-resource/mcp`).

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};

use crate::http::AppState;

/// Path of the metadata (also served with any suffix).
pub const WELL_KNOWN: &str = "/.well-known/oauth-protected-resource";

/// The metadata URL of `resource`: the well-known path inserted between host and path.
pub fn metadata_url(resource: &str) -> String {
    let (scheme, rest) = resource.split_once("://").unwrap_or(("http", resource));
    let (host, path) = match rest.find('/') {
        Some(i) => (&rest[..i], rest[i..].trim_end_matches('/')),
        None => (rest, ""),
    };
    format!("{scheme}://{host}{WELL_KNOWN}{path}")
}

/// `GET /.well-known/oauth-protected-resource[/…]`: the metadata, or 404 when the server does
/// not authenticate callers (there is no protected resource to describe).
pub async fn metadata(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let Some(validator) = &state.auth.validator else {
        return (
            StatusCode::NOT_FOUND,
            "this server does not require caller authentication",
        )
            .into_response();
    };
    let Some(resource) = state.auth.resource(&headers) else {
        return (
            StatusCode::FORBIDDEN,
            "Forbidden: Host header is not allowed",
        )
            .into_response();
    };
    axum::Json(serde_json::json!({
        "resource": resource,
        "authorization_servers": [validator.authorization_server()],
        "bearer_methods_supported": ["header"],
        "scopes_supported": [validator.config().token_scope()],
        "resource_name": "pgmcp read-only PostgreSQL MCP server",
    }))
    .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_metadata_url_inserts_the_well_known_path_before_the_resource_path() {
        assert_eq!(
            metadata_url("https://mcp.contoso.com/agents/sales/mcp"),
            "https://mcp.contoso.com/.well-known/oauth-protected-resource/agents/sales/mcp"
        );
        assert_eq!(
            metadata_url("http://127.0.0.1:8080/mcp"),
            "http://127.0.0.1:8080/.well-known/oauth-protected-resource/mcp"
        );
        assert_eq!(
            metadata_url("https://mcp.contoso.com"),
            "https://mcp.contoso.com/.well-known/oauth-protected-resource"
        );
    }
}
