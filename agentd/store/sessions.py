"""Sessions: named conversations, each owned by the uid that created it.

Ownership is a rule of this module, not of its callers: every lookup takes
the uid asking (an `Owner`), and a session of another uid is simply not
found. Admins pass `ANY_OWNER` where they may act on anyone's session:
then an id finds any session, while a name still means one of their own
(names are unique per owner, so a name alone cannot say whose it is).

    sessions  id TEXT PK, owner_uid INTEGER, name TEXT NULL (UNIQUE per owner),
              created_at REAL, last_used_at REAL, system_prompt TEXT NULL, turns INTEGER
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from typing import Any, Final, NamedTuple

from agentd.store import state
from agentd.store.database import Connection, transaction


class Owner(NamedTuple):
    """Who asks: their uid, and whether an id of another uid's session finds it too."""

    uid: int
    any_by_id: bool = False


@dataclass(frozen=True)
class Session:
    id: str
    owner_uid: int
    name: str | None
    created_at: float
    last_used_at: float
    system_prompt: str | None
    turns: int

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "owner_uid": self.owner_uid,
            "name": self.name,
            "created_at": self.created_at,
            "last_used_at": self.last_used_at,
            "turns": self.turns,
            "system_prompt": self.system_prompt,
        }


_COLUMNS: Final = "id, owner_uid, name, created_at, last_used_at, system_prompt, turns"


def new_session_id() -> str:
    return "s-" + uuid.uuid4().hex[:16]


def create(
    conn: Connection, owner_uid: int, name: str | None = None, system_prompt: str | None = None
) -> Session:
    now = time.time()
    session = Session(new_session_id(), owner_uid, name, now, now, system_prompt, 0)
    with transaction(conn):
        conn.execute(
            f"INSERT INTO sessions ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (session.id, owner_uid, name, now, now, system_prompt, 0),
        )
    return session


def find(conn: Connection, ref: str, owner: Owner) -> Session | None:
    """By id first, then by name among the owner's own sessions."""
    row = conn.execute(
        f"SELECT {_COLUMNS} FROM sessions WHERE id = ? AND (owner_uid = ? OR ?) UNION ALL "
        f"SELECT {_COLUMNS} FROM sessions WHERE owner_uid = ? AND name = ? LIMIT 1",
        (ref, owner.uid, owner.any_by_id, owner.uid, ref),
    ).fetchone()
    return Session(*row) if row else None


def name_taken(conn: Connection, owner_uid: int, name: str) -> bool:
    row = conn.execute(
        "SELECT 1 FROM sessions WHERE owner_uid = ? AND name = ?", (owner_uid, name)
    ).fetchone()
    return row is not None


def list_owned(conn: Connection, owner_uid: int | None, limit: int = 100) -> list[Session]:
    """The newest used first; `owner_uid` None lists every owner's (admins)."""
    where, params = (
        ("", [limit]) if owner_uid is None else ("WHERE owner_uid = ?", [owner_uid, limit])
    )
    rows = conn.execute(
        f"SELECT {_COLUMNS} FROM sessions {where} ORDER BY last_used_at DESC LIMIT ?", params
    ).fetchall()
    return [Session(*row) for row in rows]


def update(conn: Connection, session: Session) -> None:
    """Store `session`'s name and system prompt (a copy of one found through `find`)."""
    with transaction(conn):
        conn.execute(
            "UPDATE sessions SET name = ?, system_prompt = ? WHERE id = ? AND owner_uid = ?",
            (session.name, session.system_prompt, session.id, session.owner_uid),
        )


# -- current sessions: one per uid, kept in the state table ----------------------------

CURRENT_PREFIX: Final = "current_session:"
LEGACY_CURRENT: Final = "current_session"  # before sessions had owners: the daemon's own


def current_key(uid: int) -> str:
    return f"{CURRENT_PREFIX}{uid}"


def restore_current(conn: Connection, daemon_uid: int) -> dict[int, str]:
    """Each uid's current session as the previous run left it; the daemon's own uid
    always has one (created when missing). Sessions deleted since are left out.
    A database from before owners had one current session: the daemon's own."""
    current: dict[int, str] = {}
    legacy = state.get_value(conn, LEGACY_CURRENT)
    if isinstance(legacy, str):
        current[daemon_uid] = legacy
    rows = conn.execute(
        "SELECT key, value FROM state WHERE key GLOB ?", (CURRENT_PREFIX + "*",)
    ).fetchall()
    for key, value in rows:
        suffix, session_id = key.removeprefix(CURRENT_PREFIX), json.loads(value)
        if suffix.isdigit() and isinstance(session_id, str):
            current[int(suffix)] = session_id
    current = {uid: sid for uid, sid in current.items() if _exists(conn, sid)}
    if daemon_uid not in current:
        current[daemon_uid] = create(conn, daemon_uid).id
    with transaction(conn):
        conn.execute("DELETE FROM state WHERE key = ?", (LEGACY_CURRENT,))
    state.put_values(conn, {current_key(uid): sid for uid, sid in current.items()})
    return current


def _exists(conn: Connection, session_id: str) -> bool:
    return conn.execute("SELECT 1 FROM sessions WHERE id = ?", (session_id,)).fetchone() is not None
