//! Bytes as a JSON-RPC message, through the path the server takes for `tools/call`: rmcp's
//! `ClientJsonRpcMessage`, then the arguments object through rmcp's `parse_json_object` (what
//! `Parameters<T>` does) into each tool's argument type. Nothing panics; arguments that parse
//! carry exactly what was sent; every error names a field of the tool's arguments.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pgmcp_server::tools::catalog::{
    DescribeTableArgs, ListDatabasesArgs, ListRelationshipsArgs, ListSchemasArgs, ListTablesArgs,
    SearchObjectsArgs, ServerInfoArgs,
};
use pgmcp_server::tools::sql::{ExplainArgs, QueryArgs};
use rmcp::handler::server::tool::parse_json_object;
use rmcp::model::{ClientJsonRpcMessage, ClientRequest, JsonObject};
use serde_json::Value;

/// Parses `arguments` as `T`; on error, the message must name one of `fields`.
fn parse<T: serde::de::DeserializeOwned>(arguments: &JsonObject, fields: &[&str]) -> Option<T> {
    match parse_json_object::<T>(arguments.clone()) {
        Ok(args) => Some(args),
        Err(error) => {
            let message = error.message.to_string();
            assert!(
                fields.iter().any(|f| {
                    message.contains(&format!("parameters: {f}: "))
                        || message.contains(&format!("field `{f}`"))
                }),
                "{message:?} names none of {fields:?} (arguments {arguments:?})"
            );
            None
        }
    }
}

fn string(arguments: &JsonObject, field: &str) -> Option<String> {
    match arguments.get(field) {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(other) => panic!("{field} parsed from {other:?}"),
    }
}

fn check(arguments: &JsonObject) {
    if let Some(args) = parse::<QueryArgs>(arguments, &["sql", "params", "max_rows"]) {
        assert_eq!(Some(args.sql), string(arguments, "sql"));
        let params = arguments.get("params").and_then(Value::as_array);
        assert_eq!(args.params.len(), params.map_or(0, Vec::len));
        let max_rows = arguments.get("max_rows").and_then(Value::as_u64);
        assert_eq!(args.max_rows.map(u64::from), max_rows);
    }
    if let Some(args) = parse::<ExplainArgs>(arguments, &["sql", "params", "analyze"]) {
        assert_eq!(Some(args.sql), string(arguments, "sql"));
        let analyze = arguments.get("analyze").and_then(Value::as_bool);
        assert_eq!(args.analyze, analyze.unwrap_or(false));
    }
    if let Some(args) = parse::<DescribeTableArgs>(arguments, &["table", "schema"]) {
        assert_eq!(Some(args.table), string(arguments, "table"));
        assert_eq!(args.schema, string(arguments, "schema"));
    }
    if let Some(args) = parse::<ListTablesArgs>(arguments, &["schema"]) {
        assert_eq!(args.schema, string(arguments, "schema"));
    }
    if let Some(args) = parse::<ListRelationshipsArgs>(arguments, &["schema", "table"]) {
        assert_eq!(args.schema, string(arguments, "schema"));
        assert_eq!(args.table, string(arguments, "table"));
    }
    if let Some(args) = parse::<SearchObjectsArgs>(arguments, &["pattern"]) {
        assert_eq!(Some(args.pattern), string(arguments, "pattern"));
    }
    // Tools without arguments take any object (unknown members are ignored).
    assert!(parse::<ListDatabasesArgs>(arguments, &[]).is_some());
    assert!(parse::<ListSchemasArgs>(arguments, &[]).is_some());
    assert!(parse::<ServerInfoArgs>(arguments, &[]).is_some());
}

fuzz_target!(|data: &[u8]| {
    // The whole request, as the transport hands it to rmcp.
    if let Ok(ClientJsonRpcMessage::Request(request)) =
        serde_json::from_slice::<ClientJsonRpcMessage>(data)
        && let ClientRequest::CallToolRequest(call) = request.request
    {
        check(&call.params.arguments.unwrap_or_default());
        return;
    }
    // Bare arguments objects reach the argument types far more often.
    if let Ok(Value::Object(arguments)) = serde_json::from_slice::<Value>(data) {
        check(&arguments);
    }
});
