//! `tools/call` over Streamable HTTP without rmcp's per-request machinery.
//!
//! rmcp serves every POST through a session worker or a freshly spawned service, parses the
//! body into its full message model, serializes it again to check the SEP-2243 headers, and
//! hands the request through several tasks and channels: most of a call's CPU time, for a
//! request whose answer is one JSON object. This handler answers the plain, well-formed
//! `tools/call` requests itself — the same checks, the same tool code
//! ([`PgMcpServer::call`]), the same result shape — and passes everything else, untouched, to
//! rmcp: other methods, batches, notifications, browser requests (`Origin`), `_meta` it does
//! not know, `Mcp-Param-*` headers, arguments that do not parse, anything it is unsure of. Its
//! rules are narrower than rmcp's, never wider: a request it declines is one rmcp answers (or
//! refuses) as before.
//!
//! Answers are `application/json`, which the Streamable HTTP transport lets a server choose
//! for any request and every client must accept; rmcp answers session requests as an SSE
//! stream of one event.

use std::borrow::Cow;

use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use rmcp::model::{Extensions, RequestId, ServerJsonRpcMessage};
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::http::MAX_REQUEST_BYTES;
use crate::server::{Outcome, PgMcpServer, ToolCall};

/// The stateless revision: no session, the version in every request's `_meta`.
const STATELESS: &str = "2026-07-28";
/// Revisions whose requests carry a session id from `initialize`.
const SESSION_REVISIONS: [&str; 3] = ["2025-03-26", "2025-06-18", "2025-11-25"];

/// A JSON-RPC `tools/call` request, nothing more: an unknown field anywhere declines it.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Call<'a> {
    #[serde(borrow)]
    jsonrpc: Cow<'a, str>,
    id: Id<'a>,
    #[serde(borrow)]
    method: Cow<'a, str>,
    #[serde(borrow)]
    params: Params<'a>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Id<'a> {
    Number(i64),
    #[serde(borrow)]
    Text(Cow<'a, str>),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Params<'a> {
    #[serde(borrow)]
    name: Cow<'a, str>,
    #[serde(borrow, default)]
    arguments: Option<&'a RawValue>,
    #[serde(rename = "_meta", default)]
    meta: Option<Meta<'a>>,
}

/// `_meta` of a 2026-07-28 request: exactly the three keys that revision requires, well formed
/// (only the version is used; the others must be there).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Meta<'a> {
    #[serde(rename = "io.modelcontextprotocol/protocolVersion", borrow)]
    protocol_version: Cow<'a, str>,
    #[serde(rename = "io.modelcontextprotocol/clientInfo", borrow)]
    _client_info: ClientInfo<'a>,
    #[serde(rename = "io.modelcontextprotocol/clientCapabilities")]
    _client_capabilities: serde_json::Map<String, serde_json::Value>,
}

#[derive(Deserialize)]
struct ClientInfo<'a> {
    #[serde(rename = "name", borrow)]
    _name: Cow<'a, str>,
    #[serde(rename = "version", borrow)]
    _version: Cow<'a, str>,
}

/// How the request is addressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Revision {
    /// 2025-xx: inside a session (any replica accepts any session id, see
    /// [`crate::sessions`]); results without `resultType`.
    Session,
    /// 2026-07-28: stateless.
    Stateless,
}

/// Answers `request` when it is a plain `tools/call`, or gives it back for rmcp.
pub async fn answer(
    server: &PgMcpServer,
    host_allowed: impl Fn(&str) -> bool,
    request: Request,
) -> Result<Response, Request> {
    let Some(revision) = eligible_headers(request.headers(), host_allowed) else {
        return Err(request);
    };
    let (parts, body) = request.into_parts();
    // Content-Length was checked; the limit holds the body to it.
    let bytes = match axum::body::to_bytes(body, MAX_REQUEST_BYTES).await {
        Ok(bytes) => bytes,
        Err(err) => {
            return Ok((
                StatusCode::BAD_REQUEST,
                format!("Bad Request: failed to read the body: {err}"),
            )
                .into_response());
        }
    };
    let Some((id, call)) = parse(&bytes, revision, &parts.headers) else {
        return Err(Request::from_parts(parts, Body::from(bytes)));
    };
    let mut extensions = Extensions::new();
    extensions.insert(parts);
    let body = match server.answer(call, &extensions).await {
        Ok(outcome) => reply(&id, &outcome, revision),
        Err(error) => serde_json::to_vec(&ServerJsonRpcMessage::error(error, Some(id))),
    };
    Ok(match body {
        Ok(body) => (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            body,
        )
            .into_response(),
        Err(err) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("failed to encode the answer: {err}"),
        )
            .into_response(),
    })
}

/// The JSON-RPC response carrying `outcome`, as rmcp shapes a `CallToolResult` for the
/// revision (`resultType` only from 2026-07-28 on), written without building it as a value
/// first: the result's JSON goes in verbatim as `structuredContent` and, escaped, as text.
pub(crate) fn reply(
    id: &RequestId,
    outcome: &Outcome,
    revision: Revision,
) -> serde_json::Result<Vec<u8>> {
    let (text, structured) = match outcome {
        Outcome::Result(json) => (json.as_str(), Some(json.as_str())),
        Outcome::ToolError(text) => (text.as_str(), None),
    };
    let mut out = Vec::with_capacity(text.len() * 2 + 160);
    out.extend_from_slice(br#"{"jsonrpc":"2.0","id":"#);
    serde_json::to_writer(&mut out, id)?;
    out.extend_from_slice(br#","result":{"#);
    if revision == Revision::Stateless {
        out.extend_from_slice(br#""resultType":"complete","#);
    }
    out.extend_from_slice(br#""content":[{"type":"text","text":"#);
    write_json_string(text, &mut out)?;
    out.extend_from_slice(b"}]");
    if let Some(json) = structured {
        out.extend_from_slice(br#","structuredContent":"#);
        out.extend_from_slice(json.as_bytes());
    }
    out.extend_from_slice(if structured.is_some() {
        br#","isError":false}}"#
    } else {
        br#","isError":true}}"#
    });
    Ok(out)
}

/// `text` as a JSON string. A tool result's JSON (compact serde_json output) holds no control
/// characters, so only `"` and `\` need escaping: found with memchr instead of byte by byte.
fn write_json_string(text: &str, out: &mut Vec<u8>) -> serde_json::Result<()> {
    if text.bytes().any(|b| b < 0x20) {
        return serde_json::to_writer(out, text);
    }
    out.push(b'"');
    let mut rest = text.as_bytes();
    while let Some(at) = memchr::memchr2(b'"', b'\\', rest) {
        out.extend_from_slice(&rest[..at]);
        out.push(b'\\');
        out.push(rest[at]);
        rest = &rest[at + 1..];
    }
    out.extend_from_slice(rest);
    out.push(b'"');
    Ok(())
}

/// The revision a request's headers select, when they are all ones this handler answers:
/// an allowed `Host`, no `Origin`, both media types accepted, a JSON body of known size, and
/// either a session id (2025 revisions) or the 2026-07-28 version with its routing headers.
fn eligible_headers(headers: &HeaderMap, host_allowed: impl Fn(&str) -> bool) -> Option<Revision> {
    let text = |name: header::HeaderName| -> Option<&str> {
        let mut values = headers.get_all(name).iter();
        let value = values.next()?.to_str().ok()?;
        values.next().is_none().then_some(value)
    };
    if headers.contains_key(header::ORIGIN) || !host_allowed(text(header::HOST)?) {
        return None;
    }
    if !accepts_json_and_sse(text(header::ACCEPT)?) {
        return None;
    }
    let content_type = text(header::CONTENT_TYPE)?;
    let essence = content_type.split(';').next().unwrap_or_default().trim();
    if !essence.eq_ignore_ascii_case("application/json") {
        return None;
    }
    let length: usize = text(header::CONTENT_LENGTH)?.parse().ok()?;
    if length > MAX_REQUEST_BYTES {
        return None;
    }
    if headers
        .keys()
        .any(|name| name.as_str().starts_with("mcp-param-"))
    {
        return None;
    }
    let version = headers
        .get("mcp-protocol-version")
        .map(|v| v.to_str().ok())
        .unwrap_or(Some(SESSION_REVISIONS[0]))?;
    match headers.get("mcp-session-id") {
        Some(session) => {
            uuid::Uuid::try_parse_ascii(session.as_bytes()).ok()?;
            SESSION_REVISIONS
                .contains(&version)
                .then_some(Revision::Session)
        }
        None => (version == STATELESS).then_some(Revision::Stateless),
    }
}

/// `Accept` lists both `application/json` and `text/event-stream`, without quality values
/// (which rmcp weighs; such requests go to it).
fn accepts_json_and_sse(accept: &str) -> bool {
    if accept.contains(';') {
        return false;
    }
    let mut json = false;
    let mut sse = false;
    for media in accept.split(',').map(str::trim) {
        json |= media.eq_ignore_ascii_case("application/json");
        sse |= media.eq_ignore_ascii_case("text/event-stream");
    }
    json && sse
}

/// The request id and the parsed call, when `body` is a `tools/call` this handler answers.
pub(crate) fn parse(
    body: &[u8],
    revision: Revision,
    headers: &HeaderMap,
) -> Option<(RequestId, ToolCall)> {
    let call: Call<'_> = serde_json::from_slice(body).ok()?;
    if call.jsonrpc != "2.0" || call.method != "tools/call" {
        return None;
    }
    let header = |name: &str| -> Option<Option<&str>> {
        let mut values = headers.get_all(name).iter();
        match values.next() {
            None => Some(None),
            Some(value) => match values.next() {
                None => value.to_str().ok().map(Some),
                Some(_) => None,
            },
        }
    };
    let method = header("mcp-method")?;
    let name = header("mcp-name")?;
    match revision {
        Revision::Session => {
            // rmcp ignores the routing headers before 2026-07-28; a contradicting one goes to
            // rmcp all the same.
            if call.params.meta.is_some()
                || method.is_some_and(|m| m != "tools/call")
                || name.is_some_and(|n| n != call.params.name)
            {
                return None;
            }
        }
        Revision::Stateless => {
            let meta = call.params.meta.as_ref()?;
            if meta.protocol_version != STATELESS
                || method != Some("tools/call")
                || name != Some(&*call.params.name)
            {
                return None;
            }
        }
    }
    let arguments = call.params.arguments.map_or("{}", RawValue::get);
    let tool = ToolCall::parse(&call.params.name, arguments)?;
    let id = match call.id {
        Id::Number(n) => RequestId::Number(n),
        Id::Text(text) => RequestId::String(text.into_owned().into()),
    };
    Some((id, tool))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                header::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        map
    }

    const SESSION: &str = "6f1c2f8e-8a4e-4c1b-9a59-0c7f0b1c2d3e";

    fn base(extra: &[(&str, &str)]) -> HeaderMap {
        let mut pairs = vec![
            ("host", "127.0.0.1:8080"),
            ("accept", "application/json, text/event-stream"),
            ("content-type", "application/json"),
            ("content-length", "100"),
        ];
        pairs.extend_from_slice(extra);
        headers(&pairs)
    }

    fn loopback(host: &str) -> bool {
        host.starts_with("127.0.0.1")
    }

    #[test]
    fn session_and_stateless_requests_are_told_apart_by_their_headers() {
        let session = base(&[
            ("mcp-session-id", SESSION),
            ("mcp-protocol-version", "2025-11-25"),
        ]);
        assert_eq!(
            eligible_headers(&session, loopback),
            Some(Revision::Session)
        );
        let no_version = base(&[("mcp-session-id", SESSION)]);
        assert_eq!(
            eligible_headers(&no_version, loopback),
            Some(Revision::Session)
        );
        let stateless = base(&[("mcp-protocol-version", "2026-07-28")]);
        assert_eq!(
            eligible_headers(&stateless, loopback),
            Some(Revision::Stateless)
        );
    }

    #[test]
    fn anything_unusual_in_the_headers_goes_to_rmcp() {
        for extra in [
            vec![
                ("origin", "http://127.0.0.1:8080"),
                ("mcp-session-id", SESSION),
            ],
            vec![("mcp-session-id", "not-a-uuid")],
            vec![
                ("mcp-session-id", SESSION),
                ("mcp-protocol-version", "2026-07-28"),
            ],
            vec![("mcp-protocol-version", "2025-11-25")],
            vec![
                ("mcp-protocol-version", "1999-01-01"),
                ("mcp-session-id", SESSION),
            ],
            vec![("mcp-session-id", SESSION), ("mcp-param-region", "eu")],
        ] {
            assert_eq!(eligible_headers(&base(&extra), loopback), None, "{extra:?}");
        }
        let foreign_host = headers(&[
            ("host", "evil.example"),
            ("accept", "application/json, text/event-stream"),
            ("content-type", "application/json"),
            ("content-length", "10"),
            ("mcp-session-id", SESSION),
        ]);
        assert_eq!(eligible_headers(&foreign_host, loopback), None);
        let weighted = headers(&[
            ("host", "127.0.0.1"),
            ("accept", "application/json, text/event-stream;q=0"),
            ("content-type", "application/json"),
            ("content-length", "10"),
            ("mcp-session-id", SESSION),
        ]);
        assert_eq!(eligible_headers(&weighted, loopback), None);
        let chunked = headers(&[
            ("host", "127.0.0.1"),
            ("accept", "application/json, text/event-stream"),
            ("content-type", "application/json"),
            ("mcp-session-id", SESSION),
        ]);
        assert_eq!(
            eligible_headers(&chunked, loopback),
            None,
            "no Content-Length"
        );
        let large = base(&[("mcp-session-id", SESSION), ("content-length", "99999999")]);
        assert_eq!(eligible_headers(&large, loopback), None);
    }

    fn stateless_body(name: &str, arguments: &str) -> String {
        format!(
            r#"{{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{{"name":"{name}","arguments":{arguments},"_meta":{{"io.modelcontextprotocol/protocolVersion":"2026-07-28","io.modelcontextprotocol/clientInfo":{{"name":"c","version":"1"}},"io.modelcontextprotocol/clientCapabilities":{{}}}}}}}}"#
        )
    }

    #[test]
    fn plain_tool_calls_are_parsed_and_everything_else_declined() {
        let routed = headers(&[("mcp-method", "tools/call"), ("mcp-name", "query")]);
        let body = stateless_body("query", r#"{"sql":"SELECT 1"}"#);
        let (id, call) = parse(body.as_bytes(), Revision::Stateless, &routed).unwrap();
        assert_eq!(id, RequestId::Number(7));
        assert!(matches!(call, ToolCall::Query(args) if args.sql == "SELECT 1"));

        // Stateless without routing headers, or with ones that contradict the body.
        assert!(parse(body.as_bytes(), Revision::Stateless, &HeaderMap::new()).is_none());
        let wrong = headers(&[("mcp-method", "tools/call"), ("mcp-name", "explain")]);
        assert!(parse(body.as_bytes(), Revision::Stateless, &wrong).is_none());
        // Arguments that are not an object, do not fit, or name no tool.
        for (name, arguments) in [
            ("query", r#"["SELECT 1"]"#),
            ("query", r#"{"sql":1}"#),
            ("drop_table", r#"{}"#),
        ] {
            let routed = headers(&[("mcp-method", "tools/call"), ("mcp-name", name)]);
            let body = stateless_body(name, arguments);
            assert!(
                parse(body.as_bytes(), Revision::Stateless, &routed).is_none(),
                "{name} {arguments}"
            );
        }

        let session = r#"{"jsonrpc":"2.0","id":"a","method":"tools/call","params":{"name":"list_tables","arguments":{}}}"#;
        let (id, call) = parse(session.as_bytes(), Revision::Session, &HeaderMap::new()).unwrap();
        assert_eq!(id, RequestId::String("a".into()));
        assert!(matches!(call, ToolCall::ListTables(_)));
        for declined in [
            // Other methods, notifications, batches, extra fields, _meta in a session.
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/list","params":{"name":"query"}}"#,
            r#"{"jsonrpc":"2.0","method":"tools/call","params":{"name":"query","arguments":{}}}"#,
            r#"[{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"list_tables"}}]"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"list_tables","task":{}}}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"list_tables","_meta":{"progressToken":1}}}"#,
            r#"{"jsonrpc":"1.0","id":1,"method":"tools/call","params":{"name":"list_tables"}}"#,
            r#"{"jsonrpc":"2.0","id":1.5,"method":"tools/call","params":{"name":"list_tables"}}"#,
            r#"not json"#,
        ] {
            assert!(
                parse(declined.as_bytes(), Revision::Session, &HeaderMap::new()).is_none(),
                "{declined}"
            );
        }
    }

    /// What rmcp's handler and transport would send for the same outcome.
    fn rmcp_reply(id: &RequestId, outcome: &Outcome, revision: Revision) -> serde_json::Value {
        use rmcp::model::{JsonRpcMessage, ServerResult};
        let mut result =
            ServerResult::CallToolResult(outcome.clone().into_call_tool_result().unwrap());
        match revision {
            Revision::Stateless => result.fill_missing_cache_hints(),
            Revision::Session => {
                result.strip_result_type_for_legacy_peer();
                result.strip_non_object_output_for_legacy_peer();
            }
        }
        let message: ServerJsonRpcMessage = JsonRpcMessage::response(result, id.clone());
        serde_json::to_value(message).unwrap()
    }

    #[test]
    fn replies_are_what_rmcp_sends_for_the_same_result() {
        let outcomes = [
            Outcome::Result(
                r#"{"columns":[{"name":"x","type":"int4"}],"rows":[[1],["a \"b\" \u00e9"]],"truncated":false}"#
                    .to_owned(),
            ),
            Outcome::ToolError("refused: only SELECT \"statements\"\n".to_owned()),
        ];
        for outcome in &outcomes {
            for revision in [Revision::Session, Revision::Stateless] {
                for id in [RequestId::Number(3), RequestId::String("x-1".into())] {
                    let ours: serde_json::Value =
                        serde_json::from_slice(&reply(&id, outcome, revision).unwrap()).unwrap();
                    assert_eq!(
                        ours,
                        rmcp_reply(&id, outcome, revision),
                        "{outcome:?} {revision:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn quality_values_and_missing_media_types_are_declined() {
        assert!(accepts_json_and_sse("application/json, text/event-stream"));
        assert!(accepts_json_and_sse("text/event-stream,application/json"));
        assert!(!accepts_json_and_sse("application/json"));
        assert!(!accepts_json_and_sse(
            "application/json;q=1, text/event-stream"
        ));
        assert!(!accepts_json_and_sse("*/*"));
    }
}
