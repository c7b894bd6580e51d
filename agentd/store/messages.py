"""Conversation turns. A user turn is committed *before* the model is asked, so a
crash never loses what a user sent; the answer is committed before the reply.

    user turn status:   pending ──▶ answered
                           └──────▶ interrupted   (shutdown, crash, client gone)
    model turn status:  complete | incomplete | truncated | empty | blocked | degraded
                        (agentd.providers.AnswerStatus; only complete turns go
                        back to the model as context)

The writes take no commit of their own when called inside a `Database.write`
batch (group commit): `transaction()` joins it.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from agentd.store.database import Connection, transaction
from agentd.store.recent import Exchange

PENDING = "pending"
ANSWERED = "answered"
INTERRUPTED = "interrupted"


@dataclass(frozen=True)
class StoredTurn:
    id: int
    request_id: str
    role: str
    content: str
    status: str
    model: str | None
    tokens_in: int
    tokens_out: int
    created_at: float

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "request_id": self.request_id,
            "role": self.role,
            "content": self.content,
            "status": self.status,
            "model": self.model,
            "tokens_in": self.tokens_in,
            "tokens_out": self.tokens_out,
            "created_at": self.created_at,
        }


@dataclass(frozen=True)
class ModelTurn:
    content: str
    status: str
    model: str
    tokens_in: int
    tokens_out: int


def record_user_turn(conn: Connection, session_id: str, request_id: str, content: str) -> int:
    now = time.time()
    with transaction(conn):
        cursor = conn.execute(
            "INSERT INTO messages (session_id, request_id, role, content, status, created_at) "
            "VALUES (?, ?, 'user', ?, ?, ?)",
            (session_id, request_id, content, PENDING, now),
        )
        conn.execute("UPDATE sessions SET last_used_at = ? WHERE id = ?", (now, session_id))
    return int(cursor.lastrowid)


def record_model_turn(
    conn: Connection, session_id: str, request_id: str, user_turn_id: int, turn: ModelTurn
) -> int:
    """The answer, the user turn's new status and the session's count, in one
    transaction; returns the answer's message id."""
    now = time.time()
    with transaction(conn):
        cursor = conn.execute(
            "INSERT INTO messages (session_id, request_id, role, content, status, model, tokens_in, "
            "tokens_out, created_at) VALUES (?, ?, 'model', ?, ?, ?, ?, ?, ?)",
            (
                session_id,
                request_id,
                turn.content,
                turn.status,
                turn.model,
                turn.tokens_in,
                turn.tokens_out,
                now,
            ),
        )
        conn.execute("UPDATE messages SET status = ? WHERE id = ?", (ANSWERED, user_turn_id))
        conn.execute(
            "UPDATE sessions SET turns = turns + 1, last_used_at = ? WHERE id = ?",
            (now, session_id),
        )
    return int(cursor.lastrowid)


def mark_interrupted(conn: Connection, user_turn_id: int) -> None:
    with transaction(conn):
        conn.execute(
            "UPDATE messages SET status = ? WHERE id = ? AND status = ?",
            (INTERRUPTED, user_turn_id, PENDING),
        )


def interrupt_pending(conn: Connection) -> int:
    """At start-up: turns left pending by a crash were interrupted."""
    with transaction(conn):
        cursor = conn.execute(
            "UPDATE messages SET status = ? WHERE status = ?", (INTERRUPTED, PENDING)
        )
    return int(cursor.rowcount)


def context_exchanges(conn: Connection, session_id: str, limit: int) -> list[Exchange]:
    """The latest `limit` complete exchanges, oldest first, for the model's context.

    Only exchanges the model really answered: degraded placeholders and
    interrupted prompts would mislead it. Cached per session by
    `agentd.store.recent.RecentTurns`: a change to a session's messages made
    elsewhere than `record_model_turn` must `forget` the session there.
    """
    rows = conn.execute(
        "SELECT m.id, u.content, m.content, m.tokens_out FROM messages m "
        "JOIN messages u ON u.request_id = m.request_id AND u.role = 'user' AND u.session_id = m.session_id "
        "WHERE m.session_id = ? AND m.role = 'model' AND m.status = 'complete' "
        "ORDER BY m.id DESC LIMIT ?",
        (session_id, limit),
    ).fetchall()
    return [Exchange(*row) for row in reversed(rows)]


_TURN_COLUMNS = "id, request_id, role, content, status, model, tokens_in, tokens_out, created_at"


def history_ids(conn: Connection, session_id: str, limit: int) -> list[int]:
    """The ids of a session's latest `limit` messages, oldest first.

    History is read one message at a time (`turn`), so a reply never has to
    hold, nor the daemon to load, a whole long conversation at once.
    """
    rows = conn.execute(
        "SELECT id FROM messages WHERE session_id = ? ORDER BY id DESC LIMIT ?",
        (session_id, limit),
    ).fetchall()
    return [row[0] for row in reversed(rows)]


def turn(conn: Connection, session_id: str, message_id: int) -> StoredTurn | None:
    """One message of `session_id`: ids are reused after a deletion, so an id read
    earlier may name another session's message by now (None then)."""
    row = conn.execute(
        f"SELECT {_TURN_COLUMNS} FROM messages WHERE id = ? AND session_id = ?",
        (message_id, session_id),
    ).fetchone()
    return StoredTurn(*row) if row else None


def exchange_statuses(conn: Connection, requests: Iterable[tuple[str, str]]) -> dict[str, str]:
    """request id -> how its exchange ended, for (session id, request id) pairs: the
    answer's stored status, or the prompt's when no answer was stored (interrupted).
    Looked up per session, through the session index."""
    by_session: dict[str, list[str]] = {}
    for session_id, request_id in requests:
        by_session.setdefault(session_id, []).append(request_id)
    found: dict[str, str] = {}
    for session_id, request_ids in by_session.items():
        marks = ", ".join("?" * len(request_ids))
        rows = conn.execute(
            "SELECT request_id, status FROM messages "
            f"WHERE session_id = ? AND request_id IN ({marks}) ORDER BY id",
            (session_id, *request_ids),
        )
        found.update(rows.fetchall())  # the answer follows its prompt: its status wins
    return found
