"""The load generator: N persistent connections, closed loop, run as its own process.

    python -m bench.loadgen --socket PATH --connections 32 --cmd status --duration 5 --warmup 1
    python -m bench.loadgen --socket PATH --connections 32 --cmd chat --count 2000 \
        --session-per-connection [--chats-per-session 10]

Each connection sends one request, waits for its reply (event frames are
skipped), and sends the next at once (or after ``--interval`` seconds, for a
paced client). It speaks the wire protocol with asyncio *protocols*, not
streams, and decodes only what it must, so one core drives far more load than
the daemon can serve. Prints one JSON document: counts, error codes,
requests/s, latency percentiles, and its own CPU time (to show it was not the
bottleneck).

    --duration: send until the time is up; only requests sent after --warmup count
    --count:    send exactly this many requests in all (shared by the connections)
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import resource
import struct
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import msgpack

HEADER = struct.Struct(">I")


@dataclass
class Plan:
    cmd: str
    args: dict[str, Any]
    duration_s: float | None
    count: int | None
    warmup_s: float
    interval_s: float
    session_per_connection: bool
    chats_per_session: int  # a new session after this many requests; 0: one for the whole run
    message_prefix: str


@dataclass
class Tally:
    """What all connections saw; latencies only of measured requests."""

    latencies_ms: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    events: int = 0
    sent: int = 0
    first_sent: float | None = None
    last_reply: float = 0.0


class Connection(asyncio.Protocol):
    def __init__(self, plan: Plan, tally: Tally, clock: Clock, index: int) -> None:
        self._plan = plan
        self._tally = tally
        self._clock = clock
        self._index = index
        self._buffer = bytearray()
        self._transport: asyncio.Transport | None = None
        self._sent_at = 0.0
        self._measured = False
        self._ids = 0
        self._session: str | None = None
        self._in_session = 0  # requests sent in the current session
        self._pending = ""  # the command awaiting its reply
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        self._send_next()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_exception(ConnectionError(f"connection {self._index} lost: {exc}"))

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        while len(self._buffer) >= HEADER.size:
            (length,) = HEADER.unpack_from(self._buffer)
            if len(self._buffer) < HEADER.size + length:
                return
            body = bytes(self._buffer[HEADER.size:HEADER.size + length])
            del self._buffer[:HEADER.size + length]
            self._on_message(msgpack.unpackb(body, raw=False))

    def _on_message(self, message: dict[str, Any]) -> None:
        if "event" in message:
            self._tally.events += 1
            return
        now = time.perf_counter()
        if self._pending == "session_new":
            self._session = message["result"]["session"]["id"]
            self._send_next()
            return
        self._in_session += 1
        if self._plan.chats_per_session and self._in_session >= self._plan.chats_per_session:
            self._session, self._in_session = None, 0
        if message.get("ok"):
            if self._measured:
                self._tally.latencies_ms.append((now - self._sent_at) * 1000)
                self._tally.last_reply = now
        else:
            self._tally.errors[str(message.get("error", {}).get("code"))] += 1
            if self._measured:
                self._tally.last_reply = now
        self._schedule_next(now)

    def _schedule_next(self, now: float) -> None:
        if self._plan.interval_s <= 0:
            self._send_next()
            return
        delay = max(0.0, self._sent_at + self._plan.interval_s - now)
        asyncio.get_running_loop().call_later(delay, self._send_next)

    def _send_next(self) -> None:
        if not self._clock.may_send(self._tally):
            self.done.set_result(None)
            assert self._transport is not None
            self._transport.close()
            return
        if self._plan.session_per_connection and self._session is None:
            self._send("session_new", {})
            return
        args = dict(self._plan.args)
        if self._plan.cmd == "chat":
            args["message"] = f"{self._plan.message_prefix} {self._index}-{self._ids}"
        if self._session is not None:
            args["session"] = self._session
        self._measured = self._clock.measuring()
        self._send(self._plan.cmd, args)
        self._tally.sent += 1
        if self._measured and self._tally.first_sent is None:
            self._tally.first_sent = self._sent_at

    def _send(self, cmd: str, args: dict[str, Any]) -> None:
        assert self._transport is not None
        self._pending = cmd
        self._ids += 1
        body = msgpack.packb({"v": 1, "id": self._ids, "cmd": cmd, "args": args}, use_bin_type=True)
        self._sent_at = time.perf_counter()
        self._transport.write(HEADER.pack(len(body)) + body)


class Clock:
    """When to stop sending, and which requests count."""

    def __init__(self, plan: Plan) -> None:
        self._plan = plan
        self.started = time.perf_counter()
        self.measure_from = self.started + plan.warmup_s
        self.end = self.measure_from + plan.duration_s if plan.duration_s is not None else None

    def may_send(self, tally: Tally) -> bool:
        if self._plan.count is not None:
            return tally.sent < self._plan.count
        assert self.end is not None
        return time.perf_counter() < self.end

    def measuring(self) -> bool:
        return time.perf_counter() >= self.measure_from


async def drive(socket_path: str, connections: int, plan: Plan) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    tally = Tally()
    clock = Clock(plan)
    protocols = []
    for index in range(connections):
        _transport, protocol = await loop.create_unix_connection(
            functools.partial(Connection, plan, tally, clock, index), socket_path
        )
        protocols.append(protocol)
    await asyncio.gather(*(p.done for p in protocols))
    return summarize(tally, connections, plan)


def summarize(tally: Tally, connections: int, plan: Plan) -> dict[str, Any]:
    latencies = sorted(tally.latencies_ms)
    elapsed = tally.last_reply - tally.first_sent if tally.first_sent is not None else 0.0
    usage = resource.getrusage(resource.RUSAGE_SELF)

    def pct(q: float) -> float | None:
        """Linearly interpolated, as bench.harness.percentile."""
        if not latencies:
            return None
        position = (len(latencies) - 1) * q / 100
        low = int(position)
        high = min(low + 1, len(latencies) - 1)
        return round(latencies[low] + (latencies[high] - latencies[low]) * (position - low), 3)

    return {
        "cmd": plan.cmd, "connections": connections, "ok": len(latencies),
        "errors": dict(tally.errors), "events": tally.events, "sent": tally.sent,
        "elapsed_s": round(elapsed, 4), "rate": len(latencies) / elapsed if elapsed > 0 else 0.0,
        "latency_ms": {"p50": pct(50), "p90": pct(90), "p99": pct(99),
                       "max": round(latencies[-1], 3) if latencies else None,
                       "mean": round(sum(latencies) / len(latencies), 3) if latencies else None},
        "client_cpu_s": round(usage.ru_utime + usage.ru_stime, 3),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--socket", required=True)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--cmd", default="status")
    parser.add_argument("--args", default="{}", help="JSON map of request arguments")
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--duration", type=float)
    group.add_argument("--count", type=int)
    parser.add_argument("--warmup", type=float, default=0.0, help="seconds not measured (--duration)")
    parser.add_argument("--interval", type=float, default=0.0, help="seconds between request starts")
    parser.add_argument("--session-per-connection", action="store_true",
                        help="each connection creates its own session first (session_new)")
    parser.add_argument("--chats-per-session", type=int, default=0,
                        help="with --session-per-connection: a new session after this many")
    parser.add_argument("--message", default="bench prompt", help="chat message prefix")
    args = parser.parse_args(argv)
    plan = Plan(args.cmd, json.loads(args.args), args.duration, args.count, args.warmup,
                args.interval, args.session_per_connection, args.chats_per_session, args.message)
    result = asyncio.run(drive(args.socket, args.connections, plan))
    json.dump(result, sys.stdout)


if __name__ == "__main__":
    main()
