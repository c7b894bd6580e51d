"""Sessions: named conversations. A session is found by its id or by its name."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Any

from agentd.store.database import Connection, transaction


@dataclass(frozen=True)
class Session:
    id: str
    name: str | None
    created_at: float
    last_used_at: float
    system_prompt: str | None
    turns: int

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "created_at": self.created_at,
            "last_used_at": self.last_used_at,
            "turns": self.turns,
            "system_prompt": self.system_prompt,
        }


_COLUMNS = "id, name, created_at, last_used_at, system_prompt, turns"


def new_session_id() -> str:
    return "s-" + uuid.uuid4().hex[:16]


def create(conn: Connection, name: str | None = None, system_prompt: str | None = None) -> Session:
    now = time.time()
    session = Session(new_session_id(), name, now, now, system_prompt, 0)
    with transaction(conn):
        conn.execute(
            f"INSERT INTO sessions ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)",
            (session.id, name, now, now, system_prompt, 0),
        )
    return session


def find(conn: Connection, ref: str) -> Session | None:
    """By id first, then by name."""
    row = conn.execute(
        f"SELECT {_COLUMNS} FROM sessions WHERE id = ? UNION ALL "
        f"SELECT {_COLUMNS} FROM sessions WHERE name = ? LIMIT 1",
        (ref, ref),
    ).fetchone()
    return Session(*row) if row else None


def list_all(conn: Connection, limit: int = 100) -> list[Session]:
    rows = conn.execute(
        f"SELECT {_COLUMNS} FROM sessions ORDER BY last_used_at DESC LIMIT ?", (limit,)
    ).fetchall()
    return [Session(*row) for row in rows]


def delete(conn: Connection, session_id: str) -> bool:
    with transaction(conn):
        cursor = conn.execute("DELETE FROM sessions WHERE id = ?", (session_id,))
    return bool(cursor.rowcount)
