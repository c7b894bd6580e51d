"""metrics, health: what the agent has done and whether its parts work."""

from __future__ import annotations

from typing import Any, Final

from agentd.access import Role
from agentd.commands import Audit, Call, CommandSet
from agentd.commands.args import optional
from agentd.errors import BadRequest
from agentd.lifecycle import SERVING
from agentd.runtime import Runtime
from agentd.telemetry import prometheus

SPECS = CommandSet()
command = SPECS.command

FORMATS: Final = ("json", "prometheus")
# `health` refreshes a stale Gemini key check, but answers within this even if Gemini hangs.
KEY_CHECK_WAIT_S: Final = 3.0


@command(
    "metrics",
    role=Role.READ,
    args=("format",),
    audit=Audit.PROBE,
    when_stopping=True,
    when_not_ready=True,
)
async def metrics(runtime: Runtime, call: Call) -> dict[str, Any]:
    """The JSON snapshot (a readable summary plus every metric), or the Prometheus text."""
    fmt = optional(call.args, "format", str, "json")
    if fmt not in FORMATS:
        raise BadRequest(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    instruments = runtime.metrics
    instruments.refresh(runtime.readings())
    if fmt == "prometheus":
        text = prometheus.render(instruments.registry)
        return {"format": fmt, "content_type": prometheus.CONTENT_TYPE, "text": text}
    return {
        "format": fmt,
        "summary": instruments.summary(),
        "metrics": instruments.registry.snapshot(),
    }


@command("health", role=Role.READ, audit=Audit.PROBE, when_stopping=True, when_not_ready=True)
async def health(runtime: Runtime, call: Call) -> dict[str, Any]:
    """Healthy means: no component failed and the agent answers (READY or PROCESSING)."""
    await runtime.gemini_health.refresh(KEY_CHECK_WAIT_S)
    stats = runtime.lifecycle.statistics()
    return {
        "healthy": runtime.health.healthy and stats.state in SERVING,
        "state": str(stats.state),
        "state_reason": stats.reason,
        "components": runtime.health.snapshot(),
        "failing": runtime.lifecycle.failing(),
        "alerts": runtime.alerts.snapshot(),
    }
