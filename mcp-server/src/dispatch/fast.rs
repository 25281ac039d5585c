//! The plain `tools/call` request and its answer, read and written without rmcp's message
//! model: most of a call's CPU time under rmcp went to parsing the body into its full model,
//! serializing it again to check the SEP-2243 headers, and passing it through several tasks and
//! channels, for a request whose answer is one JSON object.
//!
//! A request is plain when it is exactly a `tools/call` with an id, a name, arguments, and (in
//! the 2026-07-28 revision) the `_meta` that revision requires: an unknown field anywhere, a
//! `_meta` this module does not know (a progress token), or routing headers that contradict the
//! body make it not plain, and rmcp serves it. These rules are narrower than rmcp's, never
//! wider: a request declined here is one rmcp answers (or refuses) as before.

use std::borrow::Cow;

use axum::http::HeaderMap;
use rmcp::model::RequestId;
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::server::Outcome;
use crate::telemetry::MetaTrace;

/// The stateless revision: no session, the version in every request's `_meta`.
pub(crate) const STATELESS: &str = "2026-07-28";
/// Revisions whose requests carry a session id from `initialize`.
pub(crate) const SESSION_REVISIONS: [&str; 3] = ["2025-03-26", "2025-06-18", "2025-11-25"];

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
/// (only the version is used; the others must be there), and the W3C trace context.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Meta<'a> {
    #[serde(rename = "io.modelcontextprotocol/protocolVersion", borrow)]
    protocol_version: Cow<'a, str>,
    #[serde(rename = "io.modelcontextprotocol/clientInfo", borrow)]
    _client_info: ClientInfo<'a>,
    #[serde(rename = "io.modelcontextprotocol/clientCapabilities")]
    _client_capabilities: serde_json::Map<String, serde_json::Value>,
    /// W3C trace context (SEP-414).
    #[serde(borrow, default)]
    traceparent: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    tracestate: Option<Cow<'a, str>>,
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
pub enum Revision {
    /// 2025-xx: inside a session (any replica accepts any session id, see
    /// [`crate::sessions`]); results without `resultType`.
    Session,
    /// 2026-07-28: stateless.
    Stateless,
}

/// The JSON-RPC response carrying `outcome`, as rmcp shapes a `CallToolResult` for the
/// revision (`resultType` only from 2026-07-28 on), written without building it as a value
/// first: the result's JSON goes in verbatim as `structuredContent` and, escaped, as text.
pub(crate) fn reply(
    id: &RequestId,
    outcome: &Outcome,
    revision: Revision,
) -> serde_json::Result<Vec<u8>> {
    let text = outcome.text();
    let structured = outcome.structured();
    let mut out =
        Vec::with_capacity(text[2].len() * 2 + text[0].len() + text[1].len() + text[3].len() + 160);
    out.extend_from_slice(br#"{"jsonrpc":"2.0","id":"#);
    serde_json::to_writer(&mut out, id)?;
    out.extend_from_slice(br#","result":{"#);
    if revision == Revision::Stateless {
        out.extend_from_slice(br#""resultType":"complete","#);
    }
    out.extend_from_slice(br#""content":[{"type":"text","text":"#);
    write_json_string(&text, &mut out)?;
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

/// The pieces of `text`, joined, as one JSON string. A tool result's JSON (compact serde_json
/// output) holds no control characters, so only `"` and `\` need escaping: found with memchr
/// instead of byte by byte. Pieces with control characters (the frame's line breaks, an
/// error's) are escaped by serde_json.
fn write_json_string(text: &[&str], out: &mut Vec<u8>) -> serde_json::Result<()> {
    out.push(b'"');
    for piece in text {
        if piece.bytes().any(|b| b < 0x20) {
            let start = out.len();
            serde_json::to_writer(&mut *out, piece)?;
            // Without the quotes serde_json put around it.
            out.remove(start);
            out.pop();
            continue;
        }
        let mut rest = piece.as_bytes();
        while let Some(at) = memchr::memchr2(b'"', b'\\', rest) {
            out.extend_from_slice(&rest[..at]);
            out.push(b'\\');
            out.push(rest[at]);
            rest = &rest[at + 1..];
        }
        out.extend_from_slice(rest);
    }
    out.push(b'"');
    Ok(())
}

/// A plain `tools/call`: its id, and the tool's name and arguments, not parsed yet.
#[derive(Debug)]
pub(crate) struct PlainCall<'a> {
    pub id: RequestId,
    pub name: Cow<'a, str>,
    /// The text of a JSON object (`{}` when the request has none).
    pub arguments: &'a str,
    /// The trace context of `_meta`.
    pub trace: Option<MetaTrace>,
}

/// `body` as a plain `tools/call`, when it is one (`headers`: the HTTP request's, empty on
/// stdio).
pub(crate) fn parse<'a>(
    body: &'a [u8],
    revision: Revision,
    headers: &HeaderMap,
) -> Option<PlainCall<'a>> {
    let call: Call<'a> = serde_json::from_slice(body).ok()?;
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
    let id = match call.id {
        Id::Number(n) => RequestId::Number(n),
        Id::Text(text) => RequestId::String(text.into_owned().into()),
    };
    let trace = call.params.meta.as_ref().map(|meta| MetaTrace {
        traceparent: meta.traceparent.as_deref().map(str::to_owned),
        tracestate: meta.tracestate.as_deref().map(str::to_owned),
    });
    Some(PlainCall {
        id,
        name: call.params.name,
        arguments: call.params.arguments.map_or("{}", RawValue::get),
        trace,
    })
}

/// `notifications/cancelled` for request `requestId`.
#[derive(Deserialize)]
struct Cancelled<'a> {
    #[serde(borrow)]
    jsonrpc: Cow<'a, str>,
    #[serde(borrow)]
    method: Cow<'a, str>,
    params: CancelledParams<'a>,
}

#[derive(Deserialize)]
struct CancelledParams<'a> {
    #[serde(rename = "requestId", borrow)]
    request_id: Id<'a>,
}

/// The id of the request `body` cancels, when it is a `notifications/cancelled`.
pub(crate) fn cancelled(body: &[u8]) -> Option<RequestId> {
    let message: Cancelled<'_> = serde_json::from_slice(body).ok()?;
    if message.jsonrpc != "2.0" || message.method != "notifications/cancelled" {
        return None;
    }
    Some(match message.params.request_id {
        Id::Number(n) => RequestId::Number(n),
        Id::Text(text) => RequestId::String(text.into_owned().into()),
    })
}

/// `pairs` as request headers, for tests.
#[cfg(test)]
#[allow(clippy::unwrap_used)]
pub(crate) fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
    use axum::http::{HeaderValue, header};
    let mut map = HeaderMap::new();
    for (name, value) in pairs {
        map.append(
            header::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            HeaderValue::from_str(value).unwrap(),
        );
    }
    map
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::framing::Frame;

    fn stateless_body(name: &str, arguments: &str) -> String {
        format!(
            r#"{{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{{"name":"{name}","arguments":{arguments},"_meta":{{"io.modelcontextprotocol/protocolVersion":"2026-07-28","io.modelcontextprotocol/clientInfo":{{"name":"c","version":"1"}},"io.modelcontextprotocol/clientCapabilities":{{}}}}}}}}"#
        )
    }

    #[test]
    fn plain_tool_calls_are_parsed_and_everything_else_declined() {
        let routed = headers(&[("mcp-method", "tools/call"), ("mcp-name", "query")]);
        let body = stateless_body("query", r#"{"sql":"SELECT 1"}"#);
        let call = parse(body.as_bytes(), Revision::Stateless, &routed).unwrap();
        assert_eq!(call.id, RequestId::Number(7));
        assert_eq!(call.name, "query");
        assert_eq!(call.arguments, r#"{"sql":"SELECT 1"}"#);

        // Stateless without routing headers, or with ones that contradict the body.
        assert!(parse(body.as_bytes(), Revision::Stateless, &HeaderMap::new()).is_none());
        let wrong = headers(&[("mcp-method", "tools/call"), ("mcp-name", "explain")]);
        assert!(parse(body.as_bytes(), Revision::Stateless, &wrong).is_none());
        // Arguments that do not fit, or a name of no tool, are the tools' to answer.
        let routed = headers(&[("mcp-method", "tools/call"), ("mcp-name", "drop_table")]);
        let body = stateless_body("drop_table", r#"{"sql":1}"#);
        let call = parse(body.as_bytes(), Revision::Stateless, &routed).unwrap();
        assert_eq!(
            (&*call.name, call.arguments),
            ("drop_table", r#"{"sql":1}"#)
        );

        let session = r#"{"jsonrpc":"2.0","id":"a","method":"tools/call","params":{"name":"list_tables","arguments":{}}}"#;
        let call = parse(session.as_bytes(), Revision::Session, &HeaderMap::new()).unwrap();
        assert_eq!(call.id, RequestId::String("a".into()));
        assert_eq!((&*call.name, call.arguments), ("list_tables", "{}"));
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
        use rmcp::model::{JsonRpcMessage, ServerJsonRpcMessage, ServerResult};
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
        let json = r#"{"columns":[{"name":"x","type":"int4"}],"rows":[[1],["a \"b\" \u00e9"]],"truncated":false}"#;
        let error = "ERROR: invalid input syntax for type integer: \"x\"\n";
        let outcomes = [
            Outcome::result(json.to_owned()),
            Outcome::Result {
                json: json.to_owned(),
                frame: Some(Frame::around(json)),
                summary: None,
            },
            Outcome::Result {
                json: json.to_owned(),
                frame: Some(Frame::around(json)),
                summary: Some("3 tables; showing 1–2 with cursor \"e30\".\n".to_owned()),
            },
            Outcome::error("refused: only SELECT \"statements\"\n".to_owned()),
            Outcome::ToolError {
                text: error.to_owned(),
                frame: Some(Frame::around(error)),
            },
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
    fn cancellations_name_the_request() {
        assert_eq!(
            cancelled(br#"{"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":3,"reason":"user"}}"#),
            Some(RequestId::Number(3))
        );
        assert_eq!(
            cancelled(br#"{"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":"q-1"}}"#),
            Some(RequestId::String("q-1".into()))
        );
        for other in [
            r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#,
            r#"{"jsonrpc":"2.0","method":"notifications/cancelled","params":{}}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#,
        ] {
            assert_eq!(cancelled(other.as_bytes()), None, "{other}");
        }
    }
}
