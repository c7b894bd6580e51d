"""backup: an online backup of a 100,000-message store while 8 clients chat.

    store        the daemon creates it; then, offline, 1,000 sessions of 100
                 messages (~400 bytes each) and 50,000 audit rows (sealed by the
                 chain's own code) go in directly: 50,000 chats through the
                 daemon would take most of an hour on 2 cores
    load         8 connections chatting in a closed loop against the instant fake
                 Gemini (bench.loadgen), each in its own session
    floor        a bare sqlcipher3 backup-API copy of the same file (one step,
                 same key), made by this process under the same load
    backup       `backup` requests to the daemon, back to back, under the same load:
                 target ≤ 1.3x the floor (median of the runs)
    chat p99     during the backups, against the same load with no backup:
                 target ≤ 2x

One run measures all three phases in turn, so their ratios share the machine's
state. ``--quick`` shrinks the store (a smoke run: not the targets' figures).
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlcipher3

from bench.harness import (
    PYTHON,
    BenchError,
    Daemon,
    Workdir,
    chat_environ,
    collect_json,
    fake_gemini,
    spawn_json,
)
from bench.report import BenchResult, Figure, at_most

SUMMARY = "backup of a 100,000-message store while 8 clients chat: time and chat p99"
CLIENTS = 8
CONTENT = "x" * 400


@dataclass(frozen=True)
class Counts:
    sessions: int
    per_session: int
    audit_rows: int
    runs: int
    window_s: float


FULL = Counts(sessions=1_000, per_session=100, audit_rows=50_000, runs=5, window_s=20.0)
QUICK = Counts(sessions=100, per_session=100, audit_rows=5_000, runs=3, window_s=6.0)


def run(quick: bool) -> BenchResult:
    counts = QUICK if quick else FULL
    result = BenchResult("backup")
    with Workdir() as workdir, fake_gemini() as fake:
        env, settings_note = chat_environ(workdir, fake.url)
        with Daemon(workdir, env) as daemon:  # creates the store and its key
            daemon.start()
            daemon.stop()
        fill_store(workdir.state_dir, counts)
        size_mb = (workdir.state_dir / "agentd.db").stat().st_size / 2**20
        with Daemon(workdir, env) as daemon:
            daemon.start()
            quiet = under_load(daemon, counts.window_s, lambda: None)
            floor = under_load(daemon, counts.window_s, lambda: bare_copy(workdir.state_dir))
            ours = under_load(daemon, counts.window_s, lambda: request_backup(daemon))
            daemon.stop()
    messages = counts.sessions * counts.per_session
    result.add(Figure(f"backup of {messages:,} messages ({size_mb:.0f} MiB), 8 clients chatting",
                      statistics.median(ours.work_s) * 1000, "ms", "bare backup-API copy",
                      statistics.median(floor.work_s) * 1000, (at_most(1.3, "ratio"),)))
    result.add(Figure("chat p99 during backups", ours.chat["latency_ms"]["p99"], "ms",
                      "same load, no backup", quiet.chat["latency_ms"]["p99"], (at_most(2.0, "ratio"),)))
    result.add(Figure("chat p99 during bare copies", floor.chat["latency_ms"]["p99"], "ms",
                      "same load, no backup", quiet.chat["latency_ms"]["p99"]))
    result.info = {"counts": counts.__dict__, "store_mib": round(size_mb, 1),
                   "backup_s": ours.work_s, "bare_copy_s": floor.work_s,
                   "chat": {"quiet": quiet.chat, "bare": floor.chat, "backup": ours.chat}}
    result.notes += [
        f"backups back to back in a {counts.window_s:.0f} s window of {CLIENTS} chatting clients; "
        f"{len(ours.work_s)} backups, {len(floor.work_s)} bare copies",
        "the backup includes what the bare copy does not: its checks ("
        "quick_check, the audit chain), fsync of the file and the directory, the rename",
        settings_note,
    ]
    if quick:
        result.notes.append("--quick counts: NOT the targets' counts; run without --quick for the figures")
    return result


@dataclass
class Phase:
    work_s: list[float]
    chat: dict[str, Any]


def under_load(daemon: Daemon, window_s: float, work: Any) -> Phase:
    """`work` back to back (timed) while CLIENTS chat for `window_s`; then the chat figures."""
    load = spawn_json([PYTHON, "-m", "bench.loadgen", "--socket", daemon.socket,
                       "--connections", str(CLIENTS), "--cmd", "chat", "--duration", str(window_s),
                       "--warmup", "1", "--session-per-connection", "--args", '{"stream": false}'])
    time.sleep(1.0)  # the load generator's unmeasured warm-up: the work starts with the measured window
    timings: list[float] = []
    deadline = time.monotonic() + window_s - 1.5
    while time.monotonic() < deadline or not timings:
        started = time.monotonic()
        work()
        timings.append(time.monotonic() - started)
        if load.poll() is not None:
            break
    chat = collect_json(load)
    if chat.get("errors"):
        raise BenchError(f"chat errors under load: {chat['errors']}")
    return Phase([t for t in timings if t > 0] or [0.0], chat)


def request_backup(daemon: Daemon) -> None:
    from agentctl.client import Client

    with Client(daemon.socket, timeout=None) as client:  # into <state dir>/backups, the last kept
        client.call("backup", {"keep": 1})


def bare_copy(state_dir: Path) -> None:
    """The floor: sqlcipher3's backup API, one step, into a new file under the same key."""
    key = (state_dir / "db.key").read_text().strip()
    with tempfile.TemporaryDirectory(dir=state_dir) as scratch:
        source = _open(state_dir / "agentd.db", key)
        target = _open(Path(scratch) / "copy.db", key)
        try:
            source.backup(target)
        finally:
            target.close()
            source.close()


def _open(path: Path, key: str) -> Any:
    conn = sqlcipher3.connect(str(path), isolation_level=None)
    conn.execute(f"PRAGMA key = \"x'{key}'\"")
    return conn


def fill_store(state_dir: Path, counts: Counts) -> None:
    """Sessions, messages and sealed audit rows, written offline into the daemon's store."""
    from agentd.audit.rows import AuditEvent, append
    from agentd.store.database import transaction

    conn = _open(state_dir / "agentd.db", (state_dir / "db.key").read_text().strip())
    now, uid = time.time(), os.getuid()
    try:
        with transaction(conn):
            for s in range(counts.sessions):
                sid = f"bench-{s:06d}"
                conn.execute("INSERT INTO sessions (id, owner_uid, name, created_at, last_used_at, turns) "
                             "VALUES (?, ?, ?, ?, ?, ?)", (sid, uid, sid, now, now, counts.per_session // 2))
                conn.executemany(
                    "INSERT INTO messages (session_id, request_id, role, content, status, model, created_at) "
                    "VALUES (?, ?, ?, ?, 'complete', 'bench', ?)",
                    [(sid, f"r-{s}-{m // 2}", ("user", "model")[m % 2], CONTENT, now)
                     for m in range(counts.per_session)])
            events = [AuditEvent(now, f"r-bench-{n}", uid, 1, "chat", None, None, 0.01)
                      for n in range(counts.audit_rows)]
            append(conn, events)
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()
