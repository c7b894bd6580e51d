"""export_search: search over 100,000 messages, and export of 10,000, against bare SQL floors.

    store      one real SQLCipher file, written with the daemon stopped (the
               store's own key; the FTS5 index kept by migration 0007's
               triggers): 100,000 messages of synthetic prose in 1,000
               sessions, 10,000 of them (100 sessions) the bench's own uid's,
               the rest another uid's; one term in 1% of the messages
    search     `search` through the daemon (all users', as an admin, so all
               100,000 are searched) by an in-process client, median of many
               floor: the bare FTS5 query for the same term on the same file
               (a second connection), with the same snippet() and rank order
    export     `export` of the own uid's 10,000 messages through the daemon,
               written as JSON lines by agentctl's own writer, median of a few
               floor: a bare SELECT of the same rows written as JSON lines
    targets    search ≤ 2x its floor, export ≤ 2x its floor (issue 15)

One `agentctl export -o` as a real process is reported beside them (its
Python start-up included), with no target.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import sqlcipher3

from agentctl.client import Client
from agentctl.exportformat import JsonLines, joined
from bench.harness import AGENTCTL, Daemon, Workdir, limits_overrides, median
from bench.report import BenchResult, Figure, at_most

SUMMARY = "search over 100,000 messages and export of 10,000, each vs bare SQL on the same file"
TERM = "walrus"
SESSIONS = 1_000
OWN_SESSIONS = 100
OTHER_UID = 4_242_424


def run(quick: bool) -> BenchResult:
    total = 20_000 if quick else 100_000
    searches, exports = (50, 3) if quick else (300, 7)
    result = BenchResult("export_search")
    with Workdir() as workdir:
        limits_env, limits_note = limits_overrides()
        env = workdir.environ(**limits_env)
        with Daemon(workdir, env) as daemon:  # creates the key and the schema
            daemon.start()
            daemon.stop()
        key = (workdir.state_dir / "db.key").read_text().strip()
        database = workdir.state_dir / "agentd.db"
        fill(database, key, total)
        with Daemon(workdir, env) as daemon:
            daemon.start()
            with open_store(database, key) as conn:
                bare_search = timed(searches, lambda: bare_fts(conn))
                bare_export = timed(exports, lambda: bare_jsonl(conn))
            with Client(workdir.socket, timeout=300) as client:
                ours_search = timed(searches, lambda: client.call("search", {"query": TERM, "all": True, "limit": 20}))
                own_search = timed(searches, lambda: client.call("search", {"query": TERM, "limit": 20}))
                round_trip = timed(searches, lambda: client.call("session_use", {"session": "s-bench00000000000"}))
                ours_export = timed(exports, lambda: export_jsonl(client))
            process = agentctl_export(env)
            daemon.stop()
    result.add(Figure(f"search, {total:,} messages (median of {searches})", median(ours_search) * 1000, "ms",
                      "bare FTS5 query", median(bare_search) * 1000, (at_most(2, "ratio"),)))
    result.add(Figure("search, the caller's own sessions (no target)", median(own_search) * 1000, "ms",
                      "bare FTS5 query", median(bare_search) * 1000))
    result.add(Figure("a request on the store thread (session_use), for scale", median(round_trip) * 1000, "ms"))
    own = total * OWN_SESSIONS // SESSIONS
    result.add(Figure(f"export, {own:,} messages (median of {exports})", median(ours_export) * 1000, "ms",
                      "bare SELECT as JSON lines", median(bare_export) * 1000, (at_most(2, "ratio"),)))
    result.add(Figure("agentctl export -o, one process", process * 1000, "ms"))
    result.info = {"messages": total, "own_messages": own, "term_share": 0.01, "limits": limits_note}
    return result


def timed(runs: int, fn: Callable[[], Any]) -> list[float]:
    fn()  # warm: caches, the page cache, the first connection
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return times


@contextlib.contextmanager
def open_store(path: Path, key: str) -> Iterator[Any]:
    """A second connection to the daemon's file, with its key (WAL: reads run beside it)."""
    conn = sqlcipher3.connect(str(path), isolation_level=None, check_same_thread=False)
    try:
        conn.execute(f"PRAGMA key = \"x'{key}'\"")
        yield conn
    finally:
        conn.close()


def fill(path: Path, key: str, total: int) -> None:
    """`total` messages in SESSIONS sessions: the first OWN_SESSIONS the bench's uid's."""
    rng = random.Random(15)
    words = ["".join(rng.choice("abcdefghijklmnoprstuvwy") for _ in range(rng.randint(3, 9))) for _ in range(5000)]
    weights = [1 / (rank + 1) for rank in range(len(words))]
    per_session = total // SESSIONS
    with open_store(path, key) as conn:
        conn.execute("BEGIN")
        for number in range(SESSIONS):
            session_id, owner = f"s-bench{number:011d}", os.getuid() if number < OWN_SESSIONS else OTHER_UID
            conn.execute("INSERT INTO sessions (id, owner_uid, name, created_at, last_used_at, turns) "
                         "VALUES (?, ?, ?, ?, ?, ?)", (session_id, owner, f"bench {number}", 1.0e9, 1.0e9, per_session // 2))
            rows = []
            for index in range(per_session):
                text = rng.choices(words, weights, k=rng.randint(20, 80))
                if rng.random() < 0.01:
                    text.insert(rng.randrange(len(text)), TERM)
                role = "user" if index % 2 == 0 else "model"
                rows.append((session_id, f"r-{number}-{index // 2}", role, " ".join(text),
                             "answered" if role == "user" else "complete", None if role == "user" else "gemini-flash-latest",
                             1.0e9 + index))
            conn.executemany("INSERT INTO messages (session_id, request_id, role, content, status, model, created_at) "
                             "VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
        conn.execute("COMMIT")


def bare_fts(conn: Any) -> list[Any]:
    return list(conn.execute(
        "SELECT rowid, snippet(messages_fts, 0, '[', ']', '…', 12) FROM messages_fts "
        "WHERE messages_fts MATCH ? ORDER BY rank LIMIT 20", (f'"{TERM}"',)).fetchall())


def bare_jsonl(conn: Any) -> None:
    with tempfile.TemporaryFile() as out:
        rows = conn.execute(
            "SELECT m.session_id, m.id, m.request_id, m.role, m.content, m.status, m.model, m.tokens_in, "
            "m.tokens_out, m.created_at FROM messages m JOIN sessions s ON s.id = m.session_id "
            "WHERE s.owner_uid = ? ORDER BY s.created_at, s.id, m.id", (os.getuid(),))
        keys = ("session", "id", "request_id", "role", "content", "status", "model", "tokens_in", "tokens_out", "created_at")
        for row in rows:
            out.write(json.dumps(dict(zip(keys, row, strict=True)), ensure_ascii=False).encode("utf-8") + b"\n")


def export_jsonl(client: Client) -> None:
    with tempfile.TemporaryFile() as out:
        writer = JsonLines(out)
        writer.start()
        client.call("export", {}, on_event=joined(writer.session, writer.message))


def agentctl_export(env: dict[str, str]) -> float:
    with tempfile.TemporaryDirectory() as directory:
        started = time.perf_counter()
        subprocess.run([*AGENTCTL, "export", "-o", f"{directory}/out.jsonl"], env=env, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return time.perf_counter() - started
