"""audit_verify: `audit verify` on a 1,000,000-row trail, incremental against full, and chat
latency while a full verify runs.

    1. build      agentd starts once (key, database), stops; 1,000,000 audit rows are
                  sealed by the writer's own code (rows.commit_rows) straight into its
                  SQLCipher file, in 50,000-row transactions (the socket would take hours)
    2. full       `audit verify --full` through the socket: every row (the floor)
    3. increment  stop; 1,000 more rows the same way; start; `audit verify`: only the
                  rows after the last verified one. Repeated; the median.
                  Target: ≤ 0.05 x the full verify
    4. chat       the load generator, 4 connections, 10-turn sessions, against the
                  instant fake Gemini: p99 with nothing else running (the floor), then
                  p99 while a full verify runs (started first, still running at the end).
                  Target: ≤ 2 x the floor
    5. prune      stop; retention's own batches (retention.prune_batch, 1,000 rows a
                  transaction) prune every row but the head: the longest batch is how
                  long a chat's commit could wait for the store thread; then a full
                  verify from the checkpoint must pass

The verify runs on a read connection and a thread of its own, so neither the
chats' commits nor their replies wait for it; what is left is the GIL it shares
with the event loop, handed over between batches.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from agentd.audit import rows
from agentd.audit.chain import format_ts
from agentd.audit.retention import BATCH_ROWS as PRUNE_BATCH_ROWS
from agentd.audit.retention import DAY_S, prune_batch
from agentd.audit.rows import AuditEvent
from agentd.audit.verify import verify
from agentd.secrets import Secret
from agentd.store.database import Database
from bench.harness import (
    PYTHON,
    BenchError,
    Daemon,
    Workdir,
    chat_environ,
    fake_gemini,
    median,
    run_json,
)
from bench.report import BenchResult, Figure, at_most

T = TypeVar("T")
SUMMARY = "audit verify after 1,000 new rows vs a full verify of 1M; chat p99 during a full verify"
VERIFY_STARTED = "audit verify: checking rows after seq"
WARMED_UP_LOG = "gemini client ready"  # the SDK's import, after READY, is not measured
BUILD_CHUNK = 50_000


@dataclass(frozen=True)
class Counts:
    trail: int
    new_rows: int
    increments: int
    chat_s: float


FULL = Counts(trail=1_000_000, new_rows=1_000, increments=3, chat_s=8.0)
QUICK = Counts(trail=100_000, new_rows=1_000, increments=2, chat_s=3.0)


def run(quick: bool) -> BenchResult:
    counts = QUICK if quick else FULL
    result = BenchResult("audit_verify")
    with Workdir() as workdir, fake_gemini() as fake:
        env, settings_note = chat_environ(workdir, fake.url)
        with Daemon(workdir, env) as daemon:
            daemon.start()
            daemon.stop()
            built_s = timed(lambda: append_rows(workdir, 0, counts.trail))
            start(daemon)
            full_s, full = timed_verify(daemon, full=True)
            increments = [incremental(workdir, daemon, counts, n) for n in range(counts.increments)]
            quiet = chat_p99(daemon, counts.chat_s)
            busy, verify_ran = chat_p99_during_verify(daemon, counts.chat_s)
            daemon.stop()
            batches = prune_everything(workdir)
    inc_s = median([s for s, _ in increments])
    result.add(Figure(f"audit verify after {counts.new_rows:,} new rows ({counts.trail:,}-row trail)",
                      inc_s * 1000, "ms", "full verify", full_s * 1000, (at_most(0.05, "ratio"),)))
    result.add(Figure("chat p99 while a full verify runs", busy["latency_ms"]["p99"], "ms",
                      "chat p99, nothing else running", quiet["latency_ms"]["p99"],
                      (at_most(2.0, "ratio"),)))
    result.add(Figure("rows sealed and committed while building", counts.trail / built_s, "rows/s"))
    result.add(Figure(f"prune {sum(n for n, _ in batches):,} rows: longest batch", max(s for _, s in batches) * 1000,
                      "ms"))
    result.add(Figure("prune: all batches", sum(s for _, s in batches), "s"))
    result.info = {
        "counts": counts.__dict__, "settings": settings_note,
        "full": {"seconds": round(full_s, 2), "rows_checked": full["rows_checked"]},
        "incremental": [{"seconds": round(s, 3), "rows_checked": v["rows_checked"]}
                        for s, v in increments],
        "chat_quiet": quiet, "chat_during_verify": busy, "verify_outlasted_chats": verify_ran,
    }
    if not verify_ran:
        result.notes.append("the full verify ended before the chat run did: the second chat "
                            "figure includes time without a verify")
    return result


def start(daemon: Daemon) -> None:
    daemon.start(timeout=120)
    daemon.wait_for_log(WARMED_UP_LOG, timeout=60)


def timed(work: Any) -> float:
    started = time.perf_counter()
    work()
    return time.perf_counter() - started


def append_rows(workdir: Workdir, first: int, count: int) -> None:
    """With the daemon stopped: `count` rows sealed by the writer's code into its file."""

    async def scenario(db: Database) -> None:
        for start in range(first, first + count, BUILD_CHUNK):
            events = [AuditEvent(1.7e9 + n / 1000, f"bench-{n}", 0, 1, "status", None, None, 0.001)
                      for n in range(start, min(first + count, start + BUILD_CHUNK))]
            await db.run(rows.commit_rows, events)

    with_store(workdir, scenario)


def prune_everything(workdir: Workdir) -> list[tuple[int, float]]:
    """With the daemon stopped: (rows, seconds) of each retention batch pruning every
    row but the head; then the chain must still verify from the checkpoint."""

    async def scenario(db: Database) -> list[tuple[int, float]]:
        cutoff = format_ts(time.time() + DAY_S)  # every row is older
        batches = []
        while True:
            started = time.perf_counter()
            pruned = await db.run(prune_batch, cutoff, PRUNE_BATCH_ROWS)
            if not pruned:
                break
            batches.append((pruned, time.perf_counter() - started))
        verdict = await db.run(verify, None, True)
        if not verdict.result.ok or verdict.checkpoint is None:
            raise BenchError(f"after pruning the trail does not verify: {verdict.result}")
        return batches

    return with_store(workdir, scenario)


def with_store(workdir: Workdir, work: Callable[[Database], Awaitable[T]]) -> T:
    """Open the daemon's store (the daemon stopped), run `work`, close it."""
    key = Secret((workdir.state_dir / "db.key").read_text().strip())

    async def scenario() -> T:
        db = Database(workdir.state_dir / "agentd.db", key)
        await db.open()
        try:
            return await work(db)
        finally:
            await db.close()

    return asyncio.run(scenario())


def timed_verify(daemon: Daemon, *, full: bool) -> tuple[float, dict[str, Any]]:
    from agentctl.client import Client

    with Client(daemon.socket, timeout=1800) as client:
        started = time.perf_counter()
        verdict = client.call("audit_verify", {"full": True} if full else {})
        elapsed = time.perf_counter() - started
    if not verdict["ok"]:
        raise BenchError(f"the trail does not verify: {verdict['reason']} ({verdict['detail']})")
    return elapsed, verdict


def incremental(workdir: Workdir, daemon: Daemon, counts: Counts, n: int) -> tuple[float, dict[str, Any]]:
    daemon.stop()
    append_rows(workdir, counts.trail + n * counts.new_rows, counts.new_rows)
    start(daemon)
    return timed_verify(daemon, full=False)


def chat_p99(daemon: Daemon, seconds: float) -> dict[str, Any]:
    return run_json([
        PYTHON, "-m", "bench.loadgen", "--socket", daemon.socket, "--connections", "4",
        "--cmd", "chat", "--duration", str(seconds), "--warmup", "1",
        "--session-per-connection", "--chats-per-session", "10",
    ])


def chat_p99_during_verify(daemon: Daemon, seconds: float) -> tuple[dict[str, Any], bool]:
    """Chats while a full verify runs; whether the verify outlasted them."""
    before = daemon.stderr_text().count(VERIFY_STARTED)
    verifier = threading.Thread(target=timed_verify, args=(daemon,), kwargs={"full": True})
    verifier.start()
    deadline = time.monotonic() + 60
    while daemon.stderr_text().count(VERIFY_STARTED) == before:
        if time.monotonic() > deadline:
            raise BenchError("the full verify did not start")
        time.sleep(0.05)  # polling the log for a condition, with a deadline
    try:
        return chat_p99(daemon, seconds), verifier.is_alive()
    finally:
        verifier.join()
