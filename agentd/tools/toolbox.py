"""The configured tool servers, and one chat's view of them (its role, its approver).

`ToolServers` owns the supervised servers (servers.py). `ChatTools` is what
the loop (loop.py) sees for one chat: only the tools the peer's role may use,
each call decided by its server's policy:

    deny ──────────────────────────────▶ refused, never run
    allow ─────────────────────────────▶ run
    ask ── approver says yes / always ─▶ run ("always": the rest of the session)
        └─ no, no answer in time, peer gone, no approver at all ─▶ refused (fails closed)
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from agentd.providers.base import ToolCall, ToolSpec
from agentd.telemetry.health import HealthBoard, Level
from agentd.telemetry.metrics import Registry
from agentd.tools.approvals import Approver
from agentd.tools.loop import CallRecord, Decision
from agentd.tools.servers import McpServer, ServerGone, ServerState
from agentd.tools.settings import ToolSettings

logger = logging.getLogger(__name__)


APPROVED = frozenset({"yes", "always"})


class ToolServers:
    """Every enabled [[tools.servers]] entry, supervised; construct, then `start()` after READY."""

    def __init__(self, settings: ToolSettings, health: HealthBoard, registry: Registry) -> None:
        self.settings = settings
        self._health = health
        self.servers = tuple(
            McpServer(s, settings, on_change=self._report) for s in settings.servers if s.enabled
        )
        self._always: dict[str, set[str]] = {}  # session id -> tools approved for it
        self._calls = registry.counter(
            "tool_calls_total",
            "Tool calls the model asked for, by tool, decision and outcome.",
            ("tool", "decision", "outcome"),
        )
        registry.gauge(
            "tool_servers_running",
            "Configured tool servers now running.",
            callback=lambda: sum(s.state is ServerState.RUNNING for s in self.servers),
        )

    def _report(self) -> None:
        """The `tools` health component: degraded, never failed, while a server is down
        (a tool server that cannot start is a detail, not the daemon's failure)."""
        down = [s for s in self.servers if s.state is not ServerState.RUNNING]
        reason = "; ".join(
            f"{s.spec.name}: {s.state}" + (f" ({s.last_error})" if s.last_error else "")
            for s in down
        )
        self._health.report("tools", Level.DEGRADED if down else Level.OK, reason or "all running")

    def start(self) -> None:
        self._report()
        for server in self.servers:
            server.start()

    async def aclose(self) -> None:
        for server in self.servers:
            await server.aclose()

    def snapshot(self) -> list[dict[str, Any]]:
        return [server.snapshot() for server in self.servers]

    def for_chat(
        self,
        role: str,
        session_id: str,
        approver: Approver | None,
        on_record: Callable[[CallRecord], None],
    ) -> ChatTools:
        usable = tuple(s for s in self.servers if role in s.spec.roles)
        always = self._always.setdefault(session_id, set())

        def counted(record: CallRecord) -> None:
            # A name the model made up is not a label: it would grow the series unbounded.
            tool = record.call.name if record.decision.server else "(unknown)"
            self._calls.inc(tool=tool, decision=record.decision.verdict, outcome=record.outcome)
            on_record(record)

        return ChatTools(usable, self.settings, always, approver, counted)


class ChatTools:
    """One chat's tools: the loop's Toolbox."""

    def __init__(
        self,
        servers: tuple[McpServer, ...],
        settings: ToolSettings,
        always: set[str],
        approver: Approver | None,
        on_record: Callable[[CallRecord], None],
    ) -> None:
        self._servers = servers
        self._settings = settings
        self._always = always
        self._approver = approver
        self.recorded = on_record

    def specs(self) -> tuple[ToolSpec, ...]:
        """Running servers' tools but the denied ones; a name two servers share: the first's."""
        seen: dict[str, ToolSpec] = {}
        for server in self._servers:
            if server.state is not ServerState.RUNNING:
                continue
            for tool in server.tools:
                if server.spec.policy(tool.name) != "deny":
                    seen.setdefault(tool.name, tool)
        return tuple(seen.values())

    async def decide(self, call: ToolCall) -> Decision:
        server = self._owner(call.name)
        if server is None:
            return Decision(False, "", "unknown", "agentd", f"there is no tool named {call.name!r}")
        name = server.spec.name
        policy = server.spec.policy(call.name)
        if policy == "deny":
            return Decision(False, name, "deny", "policy", "this tool is denied by agentd's policy")
        if policy == "allow":
            return Decision(True, name, "allow", "policy")
        if call.name in self._always:
            return Decision(True, name, "always", "session")
        if self._approver is None:
            return Decision(
                False, name, "refused", "agentd", "the user could not be asked; the call was denied"
            )
        verdict = await self._approver(call, name)
        if verdict.answer == "always":
            self._always.add(call.name)
        if verdict.answer in APPROVED:
            return Decision(True, name, verdict.answer, verdict.decided_by)
        return Decision(
            False,
            name,
            verdict.answer,
            verdict.decided_by,
            f"the user did not allow it ({verdict.answer})",
        )

    async def execute(self, call: ToolCall, server: str, timeout_s: float) -> tuple[str, bool]:
        owner = next(s for s in self._servers if s.spec.name == server)
        try:
            return await owner.call(call.name, call.args or {}, timeout_s)
        except ServerGone as exc:
            return f"the tool server failed: {exc}", True

    def _owner(self, tool: str) -> McpServer | None:
        for server in self._servers:
            if server.state is ServerState.RUNNING and any(t.name == tool for t in server.tools):
                return server
        return None
