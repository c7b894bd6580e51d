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


