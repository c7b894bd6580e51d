"""Forgetting sessions for good: which ones retention selects, and deleting them.

A deleted message must not survive in the database file. The store
connection runs with `PRAGMA secure_delete = ON` (SQLite overwrites freed
cell content with zeros), and the database uses `auto_vacuum = INCREMENTAL`,
so `PRAGMA incremental_vacuum` after a deletion returns the freed pages to
the filesystem instead of keeping them (zeroed) on the free list; a
checkpoint then truncates the WAL, whose frames still hold the old pages.

A database created before this has `auto_vacuum = NONE`; switching it takes
a full VACUUM once (`enable_incremental_vacuum`, run at start-up: it is a
no-op when the mode is set already).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Final

from agentd.store.database import Connection, transaction
from agentd.store.sessions import _COLUMNS, Session

logger = logging.getLogger(__name__)

AUTO_VACUUM_INCREMENTAL: Final = 2  # PRAGMA auto_vacuum's value for INCREMENTAL


@dataclass(frozen=True)
class Forgotten:
    """One session deleted: what its audit tombstone records."""

    session_id: str
    owner_uid: int
    messages: int


@dataclass(frozen=True)
class Selection:
    """Which sessions to forget: older than a cut-off (last used), and/or past the
    newest `keep_newest` of each owner. `owner_uid` None means every owner's."""

    owner_uid: int | None
    used_before: float | None = None  # epoch seconds; None: no age limit
    keep_newest: int = 0  # 0: no count limit


def select(conn: Connection, selection: Selection) -> list[Session]:
    """The sessions `selection` names, oldest used first."""
    limits: list[str] = []
    params: list[Any] = []
    if selection.used_before is not None:
        limits.append("last_used_at < ?")
        params.append(selection.used_before)
    if selection.keep_newest > 0:
        limits.append("newer >= ?")  # `newer`: the owner's sessions used after this one
        params.append(selection.keep_newest)
    if not limits:
        return []
    owner = "" if selection.owner_uid is None else "WHERE owner_uid = ?"
    owner_params = [] if selection.owner_uid is None else [selection.owner_uid]
    rows = conn.execute(
        f"SELECT {_COLUMNS} FROM (SELECT {_COLUMNS}, row_number() OVER (PARTITION BY owner_uid "
        f"ORDER BY last_used_at DESC, id DESC) - 1 AS newer FROM sessions {owner}) "
        f"WHERE {' OR '.join(limits)} ORDER BY last_used_at, id",
        [*owner_params, *params],
    ).fetchall()
    return [Session(*row) for row in rows]


def delete_sessions(conn: Connection, doomed: list[Session]) -> list[Forgotten]:
    """Delete `doomed` with their messages in one transaction, then give the freed
    pages back to the filesystem. A session gone meanwhile is left out."""
    forgotten = []
    with transaction(conn):
        for session in doomed:
            (count,) = conn.execute(
                "SELECT count(*) FROM messages WHERE session_id = ?", (session.id,)
            ).fetchone()
            conn.execute("DELETE FROM messages WHERE session_id = ?", (session.id,))
            cursor = conn.execute(
                "DELETE FROM sessions WHERE id = ? AND owner_uid = ?",
                (session.id, session.owner_uid),
            )
            if cursor.rowcount:
                forgotten.append(Forgotten(session.id, session.owner_uid, count))
    if forgotten:
        conn.execute("PRAGMA incremental_vacuum").fetchall()
        # The WAL still holds the pages as they were before: checkpoint and truncate it.
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
    return forgotten


def enable_incremental_vacuum(conn: Connection) -> float | None:
    """Switch the database to auto_vacuum = INCREMENTAL (a VACUUM, once); the
    seconds it took, or None when it was set already. Runs outside a transaction."""
    (mode,) = conn.execute("PRAGMA auto_vacuum").fetchone()
    if mode == AUTO_VACUUM_INCREMENTAL:
        return None
    started = time.monotonic()
    conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
    conn.execute("VACUUM")
    took = time.monotonic() - started
    logger.info("store switched to incremental vacuum in %.3f s (one VACUUM)", took)
    return took
