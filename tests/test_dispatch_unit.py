"""Dispatch and health verdicts in-process, in milliseconds: real components, a real
SQLCipher file in tmp, no daemon process (the wire is covered by test_ops_daemon)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest

from agentd.access import AccessPolicy, Peer, Role
from agentd.audit import rows as audit
from agentd.audit.rows import AuditQuery
from agentd.audit.settings import AuditSettings
from agentd.audit.writer import AuditWriter
from agentd.commands import Audit, Call, CommandSet
from agentd.commands.table import command_table
from agentd.dispatch import Dispatcher
from agentd.lifecycle import Lifecycle, State
from agentd.protocol import Request
from agentd.ratelimit import LimitSettings, RequestLimiter
from agentd.refusals import RefusalAudit
from agentd.secrets import Secret
from agentd.store.database import Database
from agentd.store.migrations import migrate
from agentd.telemetry.checks import Verdicts
from agentd.telemetry.health import HealthBoard, Level
from agentd.telemetry.instruments import Instruments
from agentd.telemetry.loop_lag import LoopLagMonitor

T = TypeVar("T")
KEY = Secret("5a" * 32)
ADMIN = Peer(pid=os.getpid(), uid=0, gid=0)
OTHER_UID = 4321

SPECS = CommandSet()
command = SPECS.command


@command("probe", role=Role.READ, audit=Audit.PROBE)
def probe(context: Any, call: Call) -> dict[str, Any]:
    return {"pong": True}


@command("touch", role=Role.READ, audit=Audit.CHANGE)
async def touch(context: Any, call: Call) -> dict[str, Any]:
    """Touches another user's session, as an admin may."""
    call.facts.session_id = "s-touched"
    call.facts.owner(call.peer, OTHER_UID)
    return {"touched": True}


@dataclass
class Context:
    """What these handlers work with (the daemon's is a Runtime)."""

    waiting: asyncio.Event


@command("hang", role=Role.READ, cost="chat", args=("session",))
async def hang(context: Context, call: Call) -> dict[str, Any]:
    """Records its session, then waits until cancelled (a chat whose client left)."""
    call.facts.session_id = "s-hanging"
    context.waiting.set()
    await asyncio.Event().wait()
    return {}


@command("stop_it", role=Role.ADMIN)
async def stop_it(context: Any, call: Call) -> dict[str, Any]:
    return {}


@dataclass
class Parts:
    dispatcher: Dispatcher
    context: Context
    db: Database
    metrics: Instruments
    writer: AuditWriter

    async def rows(self) -> dict[str, dict[str, Any]]:
        await self.writer.flush()
        found = await self.db.run(audit.recent, AuditQuery(limit=100))
        return {row["request_id"]: row for row in found}


def request(cmd: str, **args: Any) -> Request:
    return Request(id=1, cmd=cmd, args=args)


async def _no_events(kind: str, fields: dict[str, Any]) -> None:
    raise AssertionError("no events expected")


def run(scenario: Callable[[Parts], Coroutine[Any, Any, T]], tmp: Path, **policy: str) -> T:
    async def main() -> T:
        async with OpenParts(tmp, AuditSettings(**policy)) as p:
            return await scenario(p)

    return asyncio.run(main())


@pytest.fixture
def tmp(tmp_path: Path) -> Path:
    return tmp_path


def _policy() -> AccessPolicy:
    return AccessPolicy(frozenset({0}), frozenset(), frozenset(), frozenset())


class OpenParts:
    """Open the store and start the writer; close both on the way out."""

    def __init__(self, tmp: Path, policy: AuditSettings) -> None:
        self._tmp, self._policy = tmp, policy

    async def __aenter__(self) -> Parts:
        self._db = Database(self._tmp / "agentd.db", KEY)
        await self._db.open()
        await self._db.run(migrate)
        self._writer = AuditWriter(self._db)
        await self._writer.start()
        metrics = Instruments(prices={}, loop_lag=LoopLagMonitor())
        lifecycle = Lifecycle()
        lifecycle.transition(State.READY, "test")
        context = Context(asyncio.Event())
        dispatcher = Dispatcher(
            command_table([SPECS]),
            context,  # type: ignore[arg-type]  # the daemon's handlers get a Runtime
            access=_policy(),
            lifecycle=lifecycle,
            limiter=RequestLimiter(LimitSettings(enabled=False)),
            metrics=metrics,
            audit=self._writer,
            refusals=RefusalAudit(
                self._writer, metrics.refusals_aggregated, audited_each=10, interval_s=60.0
            ),
            policy=self._policy,
        )
        return Parts(dispatcher, context, self._db, metrics, self._writer)

    async def __aexit__(self, *exc: object) -> None:
        await self._writer.close()
        await self._db.close()


def test_a_probe_is_answered_at_once_counted_and_not_audited(tmp: Path) -> None:
    async def scenario(p: Parts) -> None:
        reply = p.dispatcher.answer_now(request("probe"), ADMIN)
        assert reply is not None and reply["result"]["pong"] is True
        assert reply["result"]["request_id"] not in await p.rows()
        assert p.metrics.unaudited.value(command="probe", uid="0") == 1

    run(scenario, tmp)


def test_a_probe_is_audited_when_its_class_is_set_to_metadata(tmp: Path) -> None:
    async def scenario(p: Parts) -> None:
        reply = p.dispatcher.answer_now(request("probe"), ADMIN)
        assert reply is not None
        assert reply["result"]["request_id"] in await p.rows()

    run(scenario, tmp, probe="metadata")


def test_the_row_carries_the_session_and_owner_the_handler_recorded(tmp: Path) -> None:
    async def scenario(p: Parts) -> None:
        reply = await p.dispatcher.handle(request("touch"), ADMIN, _no_events)
        row = (await p.rows())[reply["result"]["request_id"]]
        assert (row["session_id"], row["owner_uid"], row["outcome"]) == (
            "s-touched",
            OTHER_UID,
            "ok",
        )

    run(scenario, tmp)


def test_a_cancelled_request_is_audited_with_the_session_it_reached(tmp: Path) -> None:
    async def scenario(p: Parts) -> None:
        task = asyncio.create_task(p.dispatcher.handle(request("hang"), ADMIN, _no_events))
        await p.context.waiting.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        rows = [r for r in (await p.rows()).values() if r["command"] == "hang"]
        assert [(r["session_id"], r["error_code"]) for r in rows] == [("s-hanging", "CANCELLED")]

    run(scenario, tmp)


def test_a_refused_probe_is_audited_whatever_its_class(tmp: Path) -> None:
    async def scenario(p: Parts) -> None:
        reply = p.dispatcher.answer_now(request("probe", bogus=1), ADMIN)
        assert reply is not None and reply["error"]["code"] == "BAD_REQUEST"
        assert reply["error"]["request_id"] in await p.rows()

    run(scenario, tmp)


def test_the_spec_says_what_a_graceful_stop_waits_for() -> None:
    table = command_table([SPECS])
    assert table["hang"].drained and not table["touch"].drained
    assert table["hang"].audit is Audit.CHAT and table["stop_it"].audit is Audit.ADMIN


def test_the_daemon_table_classes_probes_and_changes() -> None:
    table = command_table()
    classes = {name: spec.audit for name, spec in table.items()}
    assert {n for n, c in classes.items() if c is Audit.PROBE} == {
        "ping",
        "status",
        "health",
        "metrics",
    }
    assert classes["session_delete"] is Audit.CHANGE and classes["history"] is Audit.READ
    assert [n for n, s in table.items() if s.drained] == ["chat"]


def test_a_command_declared_twice_is_refused() -> None:
    with pytest.raises(ValueError, match="declared twice"):
        command_table([SPECS, SPECS])


def test_a_failed_critical_component_puts_the_agent_in_error_and_back() -> None:
    lifecycle, board = Lifecycle(), HealthBoard()
    lifecycle.transition(State.READY, "test")
    verdicts = Verdicts(board, lifecycle)
    verdicts.report("disk", Level.FAILED, "0 bytes free")
    assert lifecycle.state is State.ERROR and board.get("disk") is not None
    verdicts.report("disk", Level.OK, "plenty")
    assert lifecycle.state is State.READY
