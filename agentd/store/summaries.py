"""Summaries of a session's older turns: one row per session (context_summary.py).

A summary stands for every exchange of its session up to `upto_message_id`
(a model message's id); the context sent to the model is the summary, then the
exchanges after it. Deleting the session deletes its summary (ON DELETE CASCADE).

    summaries  session_id TEXT PK -> sessions, upto_message_id INTEGER, content TEXT,
               model TEXT, turns INTEGER (exchanges it covers in all), created_at REAL
"""

from __future__ import annotations

import time
from typing import NamedTuple

from agentd.store.database import Connection, transaction


def m0008_summaries(conn: Connection) -> None:
    conn.execute(
        """CREATE TABLE summaries (
            session_id      TEXT PRIMARY KEY REFERENCES sessions(id) ON DELETE CASCADE,
            upto_message_id INTEGER NOT NULL,
            content         TEXT NOT NULL,
            model           TEXT NOT NULL,
            turns           INTEGER NOT NULL,
            created_at      REAL NOT NULL
        )"""
    )


class Summary(NamedTuple):
    session_id: str
    upto_message_id: int
    content: str
    model: str
    turns: int
    created_at: float


class Exchange(NamedTuple):
    """A complete exchange: the user's prompt and the model's answer (its id)."""

    model_message_id: int
    user_text: str
    model_text: str
    model_tokens: int  # the answer's tokens_out as the service reported it (0: unknown)


def get(conn: Connection, session_id: str) -> Summary | None:
    row = conn.execute(
        "SELECT session_id, upto_message_id, content, model, turns, created_at "
        "FROM summaries WHERE session_id = ?",
        (session_id,),
    ).fetchone()
    return Summary(*row) if row else None


def put(conn: Connection, session_id: str, upto: int, content: str, model: str, turns: int) -> None:
    with transaction(conn):
        conn.execute(
            "INSERT OR REPLACE INTO summaries VALUES (?, ?, ?, ?, ?, ?)",
            (session_id, upto, content, model, turns, time.time()),
        )


def exchanges_after(conn: Connection, session_id: str, after_id: int, limit: int) -> list[Exchange]:
    """The latest `limit` complete exchanges after message `after_id`, oldest first
    (as messages.context_turns: only answers the model really gave)."""
    rows = conn.execute(
        "SELECT m.id, u.content, m.content, m.tokens_out FROM messages m "
        "JOIN messages u ON u.request_id = m.request_id AND u.role = 'user' "
        "AND u.session_id = m.session_id "
        "WHERE m.session_id = ? AND m.role = 'model' AND m.status = 'complete' AND m.id > ? "
        "ORDER BY m.id DESC LIMIT ?",
        (session_id, after_id, limit),
    ).fetchall()
    return [Exchange(*row) for row in reversed(rows)]
