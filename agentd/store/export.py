"""Reading sessions out for `export`: which ones, and their messages page by page.

A page is bounded in rows and in bytes, so an export of any size never holds
more than one page in memory, however long a session or a single message is.
"""

from __future__ import annotations

from typing import Final

from agentd.store.database import Connection
from agentd.store.messages import StoredTurn
from agentd.store.sessions import Session

PAGE_ROWS: Final = 2000
PAGE_BYTES: Final = 4 * 1024 * 1024

_SESSION_COLUMNS: Final = "id, owner_uid, name, created_at, last_used_at, system_prompt, turns"
_TURN_COLUMNS: Final = (
    "id, request_id, role, content, status, model, tokens_in, tokens_out, created_at"
)


def owned_sessions(conn: Connection, owner_uid: int | None) -> list[Session]:
    """Every session of `owner_uid` (None: everyone's), oldest first."""
    where, params = ("", ()) if owner_uid is None else ("WHERE owner_uid = ?", (owner_uid,))
    rows = conn.execute(
        f"SELECT {_SESSION_COLUMNS} FROM sessions {where} ORDER BY created_at, id", params
    ).fetchall()
    return [Session(*row) for row in rows]


def message_page(conn: Connection, session_id: str, after_id: int) -> list[StoredTurn]:
    """The session's messages after `after_id`, oldest first: up to PAGE_ROWS of them,
    and no more once PAGE_BYTES of text are read (at least one, however large)."""
    cursor = conn.execute(
        f"SELECT {_TURN_COLUMNS} FROM messages WHERE session_id = ? AND id > ? ORDER BY id LIMIT ?",
        (session_id, after_id, PAGE_ROWS),
    )
    page: list[StoredTurn] = []
    size = 0
    try:
        for row in cursor:
            page.append(StoredTurn(*row))
            size += len(row[3])
            if size >= PAGE_BYTES:
                break
    finally:
        cursor.close()  # an unfinished statement would hold its read snapshot open
    return page
