"""An MCP stdio server that misbehaves on request, for the tools fault tests.

    echo(text)      returns text (a secret in it shows the result scan)
    crash()         the process exits mid-call
    hang()          never answers
    big(megabytes)  returns that many MB of text
    "bad name!"     a tool whose name no function declaration may have

Run as `python tests/tools_fault_server.py`; built on the official SDK's MCPServer.
"""

from __future__ import annotations

import asyncio
import os

from mcp.server.mcpserver import MCPServer

server = MCPServer("faults")


@server.tool()
def echo(text: str) -> str:
    """Return the text given."""
    return text


@server.tool()
def crash() -> str:
    """Exit the process in the middle of the call."""
    os._exit(3)


@server.tool()
async def hang() -> str:
    """Never return."""
    await asyncio.Event().wait()
    return "unreachable"


@server.tool()
def big(megabytes: int) -> str:
    """Return `megabytes` MB of text."""
    return "x" * (megabytes * 1024 * 1024)


@server.tool(name="bad name!")
def bad_name() -> str:
    """A name Gemini would refuse (agentd must leave it out)."""
    return "never declared"


if __name__ == "__main__":
    server.run()
