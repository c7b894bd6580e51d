"""status, ping: what the agent is doing and whether it is healthy."""

from __future__ import annotations

from typing import Any

from agentd.access import Role
from agentd.commands import Audit, Call, CommandSet
from agentd.lifecycle import SERVING
from agentd.runtime import Runtime

SPECS = CommandSet()
command = SPECS.command


@command("ping", role=Role.READ, audit=Audit.PROBE, when_stopping=True, when_not_ready=True)
def ping(runtime: Runtime, call: Call) -> dict[str, Any]:
    """Also the daemon's size limits: agentctl checks a large prompt before sending it."""
    config = runtime.config
    return {
        "pong": True,
        "state": str(runtime.lifecycle.state),
        "limits": {
            "max_frame_bytes": config.daemon.max_frame_bytes,
            "max_prompt_bytes": config.chat.max_prompt_bytes,
        },
    }


@command("status", role=Role.READ, audit=Audit.PROBE, when_stopping=True, when_not_ready=True)
def status(runtime: Runtime, call: Call) -> dict[str, Any]:
    lifecycle = runtime.lifecycle
    state = lifecycle.state
    return {
        **runtime.identity,
        "state": str(state),
        "state_reason": lifecycle.reason,
        "healthy": runtime.health.healthy and state in SERVING,
        "session_id": runtime.current.get(call.peer.uid),  # the caller's own
        "uptime_s": round(runtime.uptime_s * 1000) / 1000,  # round(x, 3) costs 2.5x as much
        "store": {"path": runtime.store_path, "size_bytes": runtime.store_size_bytes()},
        "in_flight": lifecycle.in_flight,
        "components": runtime.health.snapshot(),
        "alerts": runtime.alerts.snapshot(),
        "failing": lifecycle.failing(),
        "lifetime": runtime.metrics.lifetime_totals(),
    }
