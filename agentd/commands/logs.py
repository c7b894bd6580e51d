"""logs: the daemon's recent log records, and (follow) the new ones as they come.

Records come from the in-memory ring (log.ring_size records). With `follow`,
the backlog is sent as `log` events, then each new matching record, until
the client goes away or the daemon stops (then the final reply ends the
stream).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from typing import Any

from agentd.access import Role
from agentd.commands import Audit, Call, CommandSet
from agentd.commands.args import optional, optional_or_none
from agentd.errors import BadRequest
from agentd.lifecycle import State
from agentd.runtime import Runtime
from agentd.telemetry.logs import LogEntry, matches, select

SPECS = CommandSet()
command = SPECS.command


@dataclass(frozen=True)
class LogQuery:
    lines: int
    min_level: int
    since: float | None
    request_id: str | None

    def backlog(self, entries: list[LogEntry]) -> list[LogEntry]:
        chosen = list(
            select(entries, min_level=self.min_level, since=self.since, request_id=self.request_id)
        )
        return chosen[-self.lines :] if self.lines else []

    def matches(self, entry: LogEntry) -> bool:
        return matches(entry, min_level=self.min_level, since=None, request_id=self.request_id)


def parse_query(args: dict[str, Any]) -> LogQuery:
    lines = optional(args, "lines", int, 100)
    if lines < 0:
        raise BadRequest("argument 'lines' must not be negative")
    return LogQuery(
        lines=lines,
        min_level=_level(optional(args, "level", str, "DEBUG")),
        since=optional_or_none(args, "since", float),
        request_id=optional_or_none(args, "request_id", str),
    )


def _level(name: str) -> int:
    level = logging.getLevelNamesMapping().get(name.upper())
    if level is None:
        raise BadRequest(f"unknown log level {name!r} (DEBUG, INFO, WARNING, ERROR, CRITICAL)")
    return level


# long_running: the server cancels a follow when its client hangs up.
@command(
    "logs",
    role=Role.READ,
    args=("lines", "level", "since", "request_id", "follow"),
    audit=Audit.READ,
    when_stopping=True,
    when_not_ready=True,
    long_running=True,
)
async def logs(runtime: Runtime, call: Call) -> dict[str, Any]:
    query = parse_query(call.args)
    if not optional(call.args, "follow", bool, False):
        records = query.backlog(runtime.logs.ring.entries())
        return {"records": [entry.as_dict() for entry in records]}
    return await _follow(runtime, call, query)


async def _follow(runtime: Runtime, call: Call, query: LogQuery) -> dict[str, Any]:
    ring = runtime.logs.ring
    queue = ring.subscribe()  # before reading the backlog, so no record falls between
    stopping = asyncio.ensure_future(runtime.lifecycle.wait_for(State.STOPPING, State.STOPPED))
    try:
        await _stream(call, query.backlog(ring.entries()), query, queue, stopping)
    except ConnectionError:
        return {"followed": True, "ended": "client left"}  # nobody reads this: it is gone
    finally:
        ring.unsubscribe(queue)
        stopping.cancel()
    return {"followed": True, "ended": "agentd is stopping"}


async def _stream(
    call: Call,
    backlog: list[LogEntry],
    query: LogQuery,
    queue: asyncio.Queue[LogEntry],
    stopping: asyncio.Future[Any],
) -> None:
    # Records logged between subscribe() and entries() are in both: send them once.
    # `backlog` keeps those entries alive, so their ids stay unique meanwhile.
    sent = {id(entry) for entry in backlog}
    for old in backlog:
        await call.emit("log", {"record": old.as_dict()})
    while (entry := await _next(queue, stopping)) is not None:
        if id(entry) not in sent and query.matches(entry):
            await call.emit("log", {"record": entry.as_dict()})


async def _next(queue: asyncio.Queue[LogEntry], stopping: asyncio.Future[Any]) -> LogEntry | None:
    """The next record, or None once the daemon stops and the queue is empty."""
    if not queue.empty():
        return queue.get_nowait()
    if stopping.done():
        return None
    getter = asyncio.ensure_future(queue.get())
    await asyncio.wait({getter, stopping}, return_when=asyncio.FIRST_COMPLETED)
    if getter.done():
        return getter.result()
    getter.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await getter
    return None
