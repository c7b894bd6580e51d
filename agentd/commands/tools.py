"""tools: the configured tool servers (state, tools, last error) and each tool's policy."""

from __future__ import annotations

from typing import Any

from agentd.access import Role
from agentd.commands import Audit, Call, CommandSet
from agentd.runtime import Runtime

SPECS = CommandSet()
command = SPECS.command


@command("tools", role=Role.READ, audit=Audit.READ)
def tools(runtime: Runtime, call: Call) -> dict[str, Any]:
    servers = runtime.tools.snapshot() if runtime.tools is not None else []
    settings = runtime.config.tools
    return {
        "servers": servers,
        "max_steps": settings.max_steps,
        "call_timeout_s": settings.call_timeout_s,
        "max_result_bytes": settings.max_result_bytes,
        "approval_timeout_s": settings.approval_timeout_s,
    }
