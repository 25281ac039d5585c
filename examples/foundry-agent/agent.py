#!/usr/bin/env python3
"""An Azure AI Foundry agent that reads a PostgreSQL database through a pgmcp binding.

It reads the binding's status.connect with kubectl, builds the agent's MCP tool from it
(server_url, project_connection_id, allowed_tools), creates a version of a prompt agent with
pgmcp's recommended instructions (instructions.md), and asks it the seed questions.

    pip install -r requirements.txt
    az login
    python agent.py --binding sales --namespace agents \\
        --project-endpoint https://contoso-ai.services.ai.azure.com/api/projects/sales-agents \\
        --model gpt-4.1-mini

--dry-run calls no Azure service: it prints, as JSON, the request the SDK would send to create
the agent (method, URL and body), so the tool can be checked before a project exists.
docs/agents.md explains each value and the portal path.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import re
import subprocess
import sys
import time

from azure.ai.projects import AIProjectClient
from azure.ai.projects.models import AgentDefinition, MCPTool, PromptAgentDefinition

HERE = pathlib.Path(__file__).resolve().parent

# The questions of the Azure guide this replaces, and one that needs a join.
SEED_QUESTIONS = [
    "List all tables.",
    "What are the top 5 products by quantity sold?",
    "What is the relationship between orders and customers?",
]


class BindingNotReady(Exception):
    """The binding cannot be used yet; the message says why."""


def binding_status(name: str, namespace: str, kubectl: str) -> dict:
    """The binding as `kubectl get -o json` returns it."""
    result = subprocess.run(
        [kubectl, "get", "postgresmcpbinding", name, "--namespace", namespace, "-o", "json"],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise BindingNotReady(f"kubectl get postgresmcpbinding {name} -n {namespace}: "
                              f"{result.stderr.strip()}")
    return json.loads(result.stdout)


def connect_of(binding: dict) -> dict:
    """status.connect, or why the binding cannot be used by a Foundry agent."""
    meta = binding.get("metadata", {})
    where = f"{meta.get('namespace')}/{meta.get('name')}"
    status = binding.get("status") or {}
    connect = status.get("connect")
    if not connect:
        ready = next((c for c in status.get("conditions", []) if c.get("type") == "Ready"), None)
        why = f"{ready.get('reason')}: {ready.get('message')}" if ready else "no status yet"
        raise BindingNotReady(f"binding {where} is not Ready ({why})")
    if not connect.get("foundryConnectionId"):
        raise BindingNotReady(
            f"binding {where} has no Azure AI Foundry connection: add spec.foundry "
            "(projectResourceId, connectionName) so the agent can authenticate to the server"
        )
    return connect


def mcp_tool(label: str, connect: dict, require_approval: str) -> MCPTool:
    """The agent's MCP tool, every value from the binding's status."""
    return MCPTool(
        server_label=label,
        server_url=connect["url"],
        # The connection holds the authentication: the project's managed identity requests a
        # token for the server's audience (status.connect.audience).
        project_connection_id=connect["foundryConnectionId"],
        allowed_tools=list(connect["tools"]),
        require_approval=require_approval,
    )


def server_label(binding_name: str) -> str:
    """A label of letters, digits and underscores, from the binding's name."""
    return re.sub(r"[^A-Za-z0-9_]", "_", binding_name)


def definition(model: str, tool: MCPTool) -> PromptAgentDefinition:
    instructions = (HERE / "instructions.md").read_text().format(label=tool.server_label)
    return PromptAgentDefinition(model=model, instructions=instructions, tools=[tool])


class _Captured(Exception):
    """Raised by the dry-run transport with the request it was given."""

    def __init__(self, request):
        super().__init__("captured")
        self.request = request


class _CaptureTransport:
    """An azure-core transport that sends nothing: it hands the request back."""

    def __enter__(self):
        return self

    def __exit__(self, *args):
        pass

    def open(self):
        pass

    def close(self):
        pass

    def send(self, request, **kwargs):
        raise _Captured(request)


class _DryRunCredential:
    """A TokenCredential for the dry run (no token is ever sent anywhere)."""

    def get_token(self, *scopes, **kwargs):
        from azure.core.credentials import AccessToken

        return AccessToken("dry-run", int(time.time()) + 3600)


def dry_run(endpoint: str, agent_name: str, agent: PromptAgentDefinition) -> dict:
    """The request AIProjectClient.agents.create_version would send, through the SDK's own
    serialization and pipeline."""
    client = AIProjectClient(endpoint, _DryRunCredential(), transport=_CaptureTransport())
    try:
        client.agents.create_version(agent_name, definition=agent)
    except _Captured as captured:
        request = captured.request
        body = json.loads(request.body or request.content)
        # What the service reads back: the SDK's own models, from the body alone.
        read = AgentDefinition._deserialize(body["definition"], [])  # pylint: disable=protected-access
        if not isinstance(read, PromptAgentDefinition) or [type(t) for t in read.tools] != [MCPTool]:
            raise RuntimeError(f"the body does not read back as a prompt agent with an MCP tool: {body}")
        if dict(read.tools[0]) != dict(agent.tools[0]):
            raise RuntimeError(f"the MCP tool changed on the way: {dict(read.tools[0])}")
        return {"method": request.method, "url": request.url, "body": body}
    raise RuntimeError("the SDK sent no request")


def run(endpoint: str, agent_name: str, agent: PromptAgentDefinition, questions, keep: bool):
    """Creates the agent version and asks each question in a conversation of its own."""
    from azure.identity import DefaultAzureCredential

    with DefaultAzureCredential() as credential, AIProjectClient(endpoint, credential) as project:
        version = project.agents.create_version(agent_name, definition=agent)
        print(f"agent {version.name} version {version.version}", file=sys.stderr)
        try:
            with project.get_openai_client() as openai:
                for question in questions:
                    response = openai.responses.create(
                        input=question,
                        extra_body={
                            "agent_reference": {"name": version.name, "type": "agent_reference"}
                        },
                    )
                    print(f"\n> {question}\n{response.output_text}")
        finally:
            if not keep:
                project.agents.delete_version(version.name, version.version)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--binding", required=True, help="the PostgresMcpBinding's name")
    parser.add_argument("--namespace", "-n", default="default")
    parser.add_argument("--kubectl", default="kubectl", help="kubectl to run (KUBECONFIG applies)")
    parser.add_argument("--project-endpoint", required=True,
                        help="https://<account>.services.ai.azure.com/api/projects/<project>")
    parser.add_argument("--model", default="gpt-4.1-mini", help="a model deployment's name")
    parser.add_argument("--agent-name", help="default: <binding>-postgres")
    parser.add_argument("--require-approval", choices=["never", "always"], default="never",
                        help="every pgmcp tool is read-only, so the default lets the agent call "
                        "them without asking")
    parser.add_argument("--question", action="append", help="ask this instead (repeatable)")
    parser.add_argument("--keep", action="store_true", help="keep the agent version afterwards")
    parser.add_argument("--dry-run", action="store_true",
                        help="print the create-agent request instead of calling Azure")
    args = parser.parse_args(argv)

    try:
        connect = connect_of(binding_status(args.binding, args.namespace, args.kubectl))
    except BindingNotReady as err:
        print(f"agent.py: {err}", file=sys.stderr)
        return 2
    tool = mcp_tool(server_label(args.binding), connect, args.require_approval)
    agent = definition(args.model, tool)
    agent_name = args.agent_name or f"{args.binding}-postgres"
    if args.dry_run:
        print(json.dumps(dry_run(args.project_endpoint, agent_name, agent), indent=2))
        return 0
    run(args.project_endpoint, agent_name, agent, args.question or SEED_QUESTIONS, args.keep)
    return 0


if __name__ == "__main__":
    sys.exit(main())
