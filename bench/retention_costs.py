"""`python -m bench.retention_costs [--messages N]`: what forgetting costs.

Measured on real SQLCipher files opened as the daemon opens them (Database):
  - a chat's commit (two messages and the session row, one transaction) with
    PRAGMA secure_delete OFF and ON (SQLCipher turns it on by default already);
  - deleting one 100-message session, with incremental vacuum and WAL truncation;
  - the one-time VACUUM that switches an existing store of N messages to
    auto_vacuum = INCREMENTAL.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import statistics
import tempfile
import time
from pathlib import Path

from agentd.secrets import Secret
from agentd.store import sessions
from agentd.store.database import Connection, Database, transaction
from agentd.store.migrations import migrate
from agentd.store.retention import delete_sessions, enable_incremental_vacuum

TEXT = "lorem ipsum dolor sit amet " * 20  # ~540 bytes, a short chat turn


def _commit_chat(conn: Connection, session_id: str) -> None:
    now = time.time()
    with transaction(conn):
        for role in ("user", "model"):
            conn.execute(
                "INSERT INTO messages (session_id, request_id, role, content, status, created_at)"
                " VALUES (?, 'r', ?, ?, 'complete', ?)",
                (session_id, role, TEXT, now),
            )
        conn.execute(
            "UPDATE sessions SET last_used_at = ?, turns = turns + 1 WHERE id = ?",
            (now, session_id),
        )


def _chat_commits(conn: Connection, session_id: str, count: int) -> list[float]:
    took = []
    for _ in range(count):
        started = time.perf_counter()
        _commit_chat(conn, session_id)
        took.append(time.perf_counter() - started)
    return took


def _fill(conn: Connection, owner: int, messages: int) -> None:
    session = sessions.create(conn, owner)
    now = time.time()
    rows = [(session.id, "user" if i % 2 else "model", TEXT, now) for i in range(messages)]
    with transaction(conn):
        conn.executemany(
            "INSERT INTO messages (session_id, request_id, role, content, status, created_at)"
            " VALUES (?, 'r', ?, ?, 'complete', ?)",
            rows,
        )


async def _open(path: Path) -> Database:
    db = Database(path, Secret(secrets.token_hex(32)))
    await db.open()
    await db.run(migrate)
    return db


async def measure(directory: Path, messages: int) -> None:
    db = await _open(directory / "commits.db")
    session = await db.run(sessions.create, 1000)
    for mode in ("OFF", "ON", "OFF", "ON"):  # interleaved: the disk warms up for both
        await db.run(lambda c, m=mode: c.execute(f"PRAGMA secure_delete = {m}"))
        took = await db.run(_chat_commits, session.id, 300)
        print(f"chat commit, secure_delete {mode}: median {statistics.median(took) * 1e3:.3f} ms")
    victim = await db.run(sessions.create, 1000)
    await db.run(_fill_session, victim.id, 100)
    started = time.perf_counter()
    await db.run(delete_sessions, [victim])
    print(f"delete a 100-message session: {(time.perf_counter() - started) * 1e3:.1f} ms")
    await db.close()

    old = await _open(directory / "old.db")
    await old.run(lambda c: (c.execute("PRAGMA auto_vacuum = NONE"), c.execute("VACUUM")))
    await old.run(_fill, 1000, messages)
    size = (directory / "old.db").stat().st_size
    took_s = await old.run(enable_incremental_vacuum)
    print(f"switch to incremental vacuum, {messages} messages ({size >> 20} MiB): {took_s:.2f} s")
    await old.close()


def _fill_session(conn: Connection, session_id: str, count: int) -> None:
    for _ in range(count // 2):
        _commit_chat(conn, session_id)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--messages", type=int, default=100_000)
    options = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="retention-bench-") as directory:
        asyncio.run(measure(Path(directory), options.messages))


if __name__ == "__main__":
    main()
