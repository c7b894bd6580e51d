"""status, ping: what the agent is doing and whether it is healthy."""

from __future__ import annotations

import os
from typing import Any

from agentd.access import Role
from agentd.commands import Call, command
from agentd.lifecycle import SERVING
from agentd.runtime import Runtime


@command("ping", role=Role.READ, when_stopping=True, when_not_ready=True)
async def ping(runtime: Runtime, call: Call) -> dict[str, Any]:
    return {"pong": True, "state": str(runtime.lifecycle.state)}


@command("status", role=Role.READ, when_stopping=True, when_not_ready=True)
async def status(runtime: Runtime, call: Call) -> dict[str, Any]:
    stats = runtime.lifecycle.statistics()
    healthy = runtime.health.healthy and stats.state in SERVING
    return {
        "state": str(stats.state),
        "state_reason": stats.reason,
        "healthy": healthy,
        "agent_id": runtime.agent_id,
        "session_id": runtime.session_id,
        "pid": os.getpid(),
        "version": runtime.version,
        "profile": runtime.config.profile,
        "uptime_s": round(runtime.uptime_s, 3),
        "started_at": runtime.started_wall,
        "socket": str(runtime.paths.socket),
        "store": {"path": str(runtime.paths.database), "size_bytes": runtime.store_size_bytes()},
        "in_flight": stats.in_flight,
        "components": runtime.health.snapshot(),
        "alerts": runtime.alerts.snapshot(),
        "failing": dict(runtime.lifecycle.failing()),
        "lifetime": runtime.metrics.lifetime_totals(),
    }
