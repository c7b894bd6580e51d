"""stop: the same graceful shutdown as SIGTERM, asked for over the socket."""

from __future__ import annotations

import os
from typing import Any

from agentd.access import Role
from agentd.commands import Audit, Call, CommandSet
from agentd.runtime import Runtime

SPECS = CommandSet()
command = SPECS.command


@command("stop", role=Role.ADMIN, audit=Audit.ADMIN, when_stopping=True, when_not_ready=True)
async def stop(runtime: Runtime, call: Call) -> dict[str, Any]:
    runtime.request_stop(f"stop requested by uid {call.peer.uid}")
    return {"stopping": True, "pid": os.getpid(), "grace_s": runtime.config.daemon.shutdown_grace_s}
