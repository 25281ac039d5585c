#!/usr/bin/env python3
"""A scriptable MCP client built on the official MCP Python SDK.

Drives a server through the SDK's own transports, so the pgmcp tests check
that a third-party client (not our code) can talk to our server.

Usage:
    mcp_client.py --url http://127.0.0.1:PORT/mcp [--bearer TOKEN] [--header 'Name: value'] [--sessions N]
    mcp_client.py --stdio -- COMMAND [ARGS...]

Reads a JSON script on stdin (empty stdin = no calls):
    {"calls": [{"tool": "name", "arguments": {...}, "follow": false}, ...]}
("follow": true repeats a call with cursor = the answer's nextCursor until it is null.)

Prints ONE JSON document on stdout:
    {"server":  {"name", "version", "protocolVersion"},
     "sessionId": "<Mcp-Session-Id or null>",
     "capabilities": {...server capabilities...},
     "tools":   [{"name", "title", "description", "inputSchema", "outputSchema", "annotations"}],
     "results": [{"tool", "isError", "structuredContent", "text", "content", "error",
                  "schemaErrors"}]}
With --sessions N (N > 1) the document is {"sessions": [<doc>, ...]} with one
such document per session, opened one after another against the same URL.

For every call the client sends tools/call and records the answer:
  * a CallToolResult -> isError from the result, text = all text content joined
    with "\n", content = the raw content blocks, structuredContent as sent,
    error = null;
  * a JSON-RPC error response -> isError = true, structuredContent = null,
    text = "", content = [], error = {"code", "message", "data"}. The run goes on (exit 0):
    an error response is a well-formed protocol answer the tests may expect.
Exit status: 0 when the server answered everything; 1 on a transport or
protocol failure (cannot connect, HTTP error status, malformed message,
structuredContent that does not match the tool's outputSchema, timeout), with
a one-line reason on stderr starting with "mcp_client: ". 2 on bad usage.

Besides the SDK's own check, every result's structuredContent is validated
against the tool's outputSchema with `jsonschema`'s Draft 2020-12 validator (the
schema itself checked first): schemaErrors lists what it found, [] when valid
(and null when the tool declares no outputSchema or the result has no
structuredContent).

The environment is passed through to a --stdio server unchanged; the
server's stderr goes to this process's stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from datetime import timedelta
from typing import Any

try:
    import anyio
    import httpx
    from mcp import ClientSession, McpError, StdioServerParameters
    from mcp.client.stdio import stdio_client
    from mcp.shared._httpx_utils import create_mcp_http_client
    import mcp.types as types
    from jsonschema import Draft202012Validator
    from jsonschema.exceptions import SchemaError
except ImportError as exc:  # pragma: no cover - depends on the environment
    print(
        f"mcp_client: cannot import the MCP Python SDK ({exc}); run "
        "tests/scripts/install-mcp-clients.sh and use the venv python it prints",
        file=sys.stderr,
    )
    sys.exit(1)

try:  # mcp >= 1.24 names it streamable_http_client; older releases streamablehttp_client
    from mcp.client.streamable_http import streamable_http_client as _new_http_client
except ImportError:  # pragma: no cover
    _new_http_client = None
    from mcp.client.streamable_http import streamablehttp_client as _old_http_client

CLIENT_INFO = types.Implementation(name="pgmcp-interop-client", version="1.0.0")


# "<status> <reason> from POST <url>: <body>" for every POST answered >= 400.
HTTP_ERRORS: list[str] = []


async def _record_http_error(response: httpx.Response) -> None:
    if response.status_code >= 400 and response.request.method == "POST":
        try:
            body = (await response.aread()).decode("utf-8", errors="replace").strip()
        except Exception:  # noqa: BLE001
            body = ""
        HTTP_ERRORS.append(
            f"{response.status_code} {response.reason_phrase} from POST {response.request.url}: {body[:300]}"
        )


class ClientFailure(Exception):
    """A transport or protocol failure: reported on stderr, exit 1."""


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Scriptable MCP client (official Python SDK).",
        epilog="Script on stdin: {\"calls\": [{\"tool\": \"name\", \"arguments\": {...}}]}",
    )
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("--url", help="Streamable HTTP endpoint, e.g. http://127.0.0.1:8080/mcp")
    target.add_argument("--stdio", action="store_true", help="spawn the server command given after --")
    p.add_argument(
        "--header",
        action="append",
        default=[],
        metavar="'Name: value'",
        help="extra HTTP header for every request (repeatable; HTTP only)",
    )
    p.add_argument(
        "--bearer",
        metavar="TOKEN",
        help="send 'Authorization: Bearer TOKEN' with every request (HTTP only), e.g. an Entra ID access token",
    )
    p.add_argument("--sessions", type=int, default=1, metavar="N", help="open N sessions in sequence (HTTP only)")
    p.add_argument(
        "--no-keepalive",
        action="store_true",
        help="open a new connection for every HTTP request (behind a round-robin proxy, "
        "consecutive requests of one session then reach different server replicas)",
    )
    p.add_argument("--timeout", type=float, default=30.0, metavar="SECONDS", help="per-request timeout (default 30)")
    p.add_argument("--script", metavar="FILE", help="read the script from FILE instead of stdin")
    p.add_argument("command", nargs=argparse.REMAINDER, help="-- COMMAND [ARGS...] for --stdio")
    args = p.parse_args(argv)

    command = args.command
    if command and command[0] == "--":
        command = command[1:]
    args.command = command
    if args.stdio and not command:
        p.error("--stdio needs the server command after --")
    if args.url and command:
        p.error("a server command is only allowed with --stdio")
    if args.sessions < 1:
        p.error("--sessions must be >= 1")
    if args.stdio and (args.header or args.bearer or args.sessions != 1):
        p.error("--header, --bearer and --sessions apply to --url only")
    headers: dict[str, str] = {}
    for h in args.header:
        name, sep, value = h.partition(":")
        if not sep or not name.strip():
            p.error(f"bad --header {h!r}: use 'Name: value'")
        headers[name.strip()] = value.strip()
    if args.bearer:
        headers["Authorization"] = f"Bearer {args.bearer}"
    args.headers = headers
    return args


def read_script(args: argparse.Namespace) -> list[dict[str, Any]]:
    if args.script:
        with open(args.script, encoding="utf-8") as f:
            raw = f.read()
    elif sys.stdin is None or sys.stdin.isatty():
        raw = ""
    else:
        raw = sys.stdin.read()
    if not raw.strip():
        return []
    try:
        doc = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise SystemExit(f"mcp_client: the script is not JSON: {exc}") from None
    calls = doc.get("calls", []) if isinstance(doc, dict) else None
    if not isinstance(calls, list):
        raise SystemExit('mcp_client: the script must be {"calls": [...]}')
    for i, call in enumerate(calls):
        if not isinstance(call, dict) or not isinstance(call.get("tool"), str):
            raise SystemExit(f"mcp_client: calls[{i}] needs a string 'tool'")
        if not isinstance(call.get("arguments", {}), dict):
            raise SystemExit(f"mcp_client: calls[{i}].arguments must be an object")
    return calls


def dump(model: Any) -> Any:
    if model is None:
        return None
    if hasattr(model, "model_dump"):
        return model.model_dump(mode="json", by_alias=True, exclude_none=True)
    return model


def schema_errors(tools: list[dict[str, Any]], name: str, structured: Any) -> list[str] | None:
    """What jsonschema's Draft 2020-12 validator finds wrong with `structured` against tool
    `name`'s outputSchema ([] when valid); None when there is nothing to validate."""
    schema = next((t["outputSchema"] for t in tools if t["name"] == name), None)
    if schema is None or structured is None:
        return None
    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as exc:
        return [f"the outputSchema is not a valid 2020-12 schema: {exc.message}"]
    validator = Draft202012Validator(schema)
    return [
        f"{'/'.join(str(p) for p in error.absolute_path) or '(root)'}: {error.message}"
        for error in validator.iter_errors(structured)
    ]


async def run_session(read, write, get_session_id, calls, timeout: float) -> dict[str, Any]:
    async with ClientSession(
        read,
        write,
        read_timeout_seconds=timedelta(seconds=timeout),
        client_info=CLIENT_INFO,
    ) as session:
        init = await session.initialize()

        tools: list[dict[str, Any]] = []
        cursor: str | None = None
        seen_cursors: set[str] = set()
        while True:
            params = types.PaginatedRequestParams(cursor=cursor) if cursor else None
            page = await session.list_tools(params=params)
            for t in page.tools:
                tools.append(
                    {
                        "name": t.name,
                        "title": t.title,
                        "description": t.description,
                        "inputSchema": t.inputSchema,
                        "outputSchema": t.outputSchema,
                        "annotations": dump(t.annotations),
                    }
                )
            cursor = page.nextCursor
            if not cursor:
                break
            if cursor in seen_cursors:
                raise ClientFailure(f"tools/list pagination loops on cursor {cursor!r}")
            seen_cursors.add(cursor)

        results: list[dict[str, Any]] = []
        pending = list(calls)
        pages = 0
        while pending:
            call = pending.pop(0)
            name = call["tool"]
            try:
                res = await session.call_tool(name, call.get("arguments", {}))
            except McpError as exc:
                err = exc.error
                results.append(
                    {
                        "tool": name,
                        "isError": True,
                        "structuredContent": None,
                        "text": "",
                        "content": [],
                        "error": {"code": err.code, "message": err.message, "data": err.data},
                        "schemaErrors": None,
                    }
                )
                continue
            except RuntimeError as exc:  # the SDK's outputSchema validation
                raise ClientFailure(f"tools/call {name}: {exc}") from exc
            text = "\n".join(c.text for c in res.content if isinstance(c, types.TextContent))
            results.append(
                {
                    "tool": name,
                    "isError": bool(res.isError),
                    "structuredContent": res.structuredContent,
                    "text": text,
                    "content": [dump(c) for c in res.content],
                    "error": None,
                    "schemaErrors": schema_errors(tools, name, res.structuredContent),
                }
            )
            # "follow": true walks a paged listing: the same call again with the answer's
            # nextCursor as cursor, until there is none.
            cursor = (res.structuredContent or {}).get("nextCursor") if call.get("follow") else None
            if cursor:
                pages += 1
                if pages > 10_000:
                    raise ClientFailure(f"{name}: more than 10,000 pages")
                pending.insert(0, {**call, "arguments": {**call.get("arguments", {}), "cursor": cursor}})

        return {
            "server": {
                "name": init.serverInfo.name,
                "version": init.serverInfo.version,
                "protocolVersion": str(init.protocolVersion),
            },
            "sessionId": get_session_id() if get_session_id else None,
            "capabilities": dump(init.capabilities),
            "instructions": init.instructions,
            "tools": tools,
            "results": results,
        }


async def run_http(url: str, headers: dict[str, str], calls, timeout: float, keepalive: bool = True) -> dict[str, Any]:
    http_timeout = httpx.Timeout(timeout, read=max(timeout, 60.0))
    if _new_http_client is not None:
        if keepalive:
            http = create_mcp_http_client(headers=headers or None, timeout=http_timeout)
        else:
            http = httpx.AsyncClient(
                headers=headers or None,
                timeout=http_timeout,
                follow_redirects=True,
                limits=httpx.Limits(max_keepalive_connections=0),
            )
        http.event_hooks["response"].append(_record_http_error)
        async with http:
            async with _new_http_client(url, http_client=http) as (read, write, get_sid):
                return await run_session(read, write, get_sid, calls, timeout)
    async with _old_http_client(url, headers=headers or None, timeout=timeout) as (read, write, get_sid):  # pragma: no cover
        return await run_session(read, write, get_sid, calls, timeout)


async def run_stdio(command: list[str], calls, timeout: float) -> dict[str, Any]:
    params = StdioServerParameters(command=command[0], args=command[1:], env=dict(os.environ))
    async with stdio_client(params, errlog=sys.stderr) as (read, write):
        return await run_session(read, write, None, calls, timeout)


def describe(exc: BaseException) -> str:
    """One line for the root cause, unwrapping anyio's exception groups."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        inner = [e for e in exc.exceptions if not isinstance(e, asyncio.CancelledError)]
        exc = (inner or list(exc.exceptions))[0]
    if isinstance(exc, ClientFailure):
        msg = str(exc)
    elif isinstance(exc, httpx.HTTPStatusError):
        msg = f"HTTP {exc.response.status_code} from {exc.request.method} {exc.request.url}"
    elif isinstance(exc, McpError):
        msg = f"JSON-RPC error {exc.error.code}: {exc.error.message}"
    elif isinstance(exc, TimeoutError):
        msg = "timed out waiting for the server"
    elif isinstance(exc, (anyio.BrokenResourceError, anyio.ClosedResourceError, anyio.EndOfStream)):
        msg = "the connection to the server closed (did the server process exit?)"
    elif isinstance(exc, httpx.TransportError):
        msg = f"cannot reach the server: {type(exc).__name__}: {exc}"
    else:
        msg = f"{type(exc).__name__}: {exc}" if str(exc) else repr(exc)
    if HTTP_ERRORS:
        # The SDK turns some HTTP answers into JSON-RPC errors (404 -> "Session
        # terminated"): name the last failed POST, which is the real cause.
        msg += f" [last HTTP error: {HTTP_ERRORS[-1]}]"
    return msg


async def main_async(args: argparse.Namespace, calls) -> dict[str, Any]:
    if args.stdio:
        return await run_stdio(args.command, calls, args.timeout)
    docs = []
    for _ in range(args.sessions):
        docs.append(await run_http(args.url, args.headers, calls, args.timeout, not args.no_keepalive))
    return docs[0] if args.sessions == 1 else {"sessions": docs}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    calls = read_script(args)
    try:
        doc = anyio.run(_bounded, args, calls)
    except KeyboardInterrupt:
        print("mcp_client: interrupted", file=sys.stderr)
        return 1
    except BaseException as exc:  # noqa: BLE001 - report any failure as one line
        if isinstance(exc, SystemExit):
            raise
        print("mcp_client: " + " ".join(describe(exc).split()), file=sys.stderr)
        return 1
    json.dump(doc, sys.stdout, indent=2, sort_keys=False)
    sys.stdout.write("\n")
    sys.stdout.flush()
    return 0


async def _bounded(args: argparse.Namespace, calls) -> dict[str, Any]:
    # An overall deadline, so a server that never answers cannot hang a test.
    overall = args.timeout * (3 + len(calls)) * args.sessions
    with anyio.fail_after(overall):
        return await main_async(args, calls)


if __name__ == "__main__":
    sys.exit(main())
