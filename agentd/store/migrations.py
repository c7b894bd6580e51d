"""Ordered, named schema migrations, each recorded in `schema_migrations` when applied.

Append new migrations to MIGRATIONS; never edit or reorder applied ones.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from typing import Final

from agentd.audit.rows import m0002_audit, m0005_audit_owner
from agentd.governance.store import m0006_governance
from agentd.store.database import Connection, transaction
from agentd.store.search import m0007_search
from agentd.store.summaries import m0008_summaries
from agentd.store.tokens import m0009_tokens

logger = logging.getLogger(__name__)


_MESSAGES_TABLE: Final = """CREATE TABLE {table} (
    id          INTEGER PRIMARY KEY,
    session_id  TEXT NOT NULL REFERENCES {sessions}(id) ON DELETE CASCADE,
    request_id  TEXT NOT NULL,
    role        TEXT NOT NULL CHECK (role IN ('user', 'model')),
    content     TEXT NOT NULL,
    status      TEXT NOT NULL,
    model       TEXT,
    tokens_in   INTEGER NOT NULL DEFAULT 0,
    tokens_out  INTEGER NOT NULL DEFAULT 0,
    created_at  REAL NOT NULL
)"""


def m0001_initial(conn: Connection) -> None:
    conn.execute(
        """CREATE TABLE sessions (
            id            TEXT PRIMARY KEY,
            name          TEXT UNIQUE,
            created_at    REAL NOT NULL,
            last_used_at  REAL NOT NULL,
            system_prompt TEXT,
            turns         INTEGER NOT NULL DEFAULT 0
        )"""
    )
    conn.execute(_MESSAGES_TABLE.format(table="messages", sessions="sessions"))
    conn.execute("CREATE INDEX messages_by_session ON messages (session_id, id)")
    conn.execute("CREATE TABLE state (key TEXT PRIMARY KEY, value TEXT NOT NULL)")


def m0003_pending_index(conn: Connection) -> None:
    # Start-up marks chats a crash left pending as interrupted; without this the
    # scan reads the whole messages table (~60 ms at 100k rows).
    conn.execute("CREATE INDEX messages_pending ON messages (status) WHERE status = 'pending'")


def m0004_session_owner(conn: Connection) -> None:
    """Sessions get an owner uid; names become unique per owner instead of globally.

    SQLite cannot drop the old UNIQUE(name), so both tables are rebuilt: the
    new sessions table first, then messages pointing at it (dropping the old
    sessions table while messages referenced it would cascade-delete them).
    Existing sessions belong to the daemon's own uid: it is the one who ran them.
    """
    conn.execute(
        """CREATE TABLE sessions_new (
            id            TEXT PRIMARY KEY,
            owner_uid     INTEGER NOT NULL,
            name          TEXT,
            created_at    REAL NOT NULL,
            last_used_at  REAL NOT NULL,
            system_prompt TEXT,
            turns         INTEGER NOT NULL DEFAULT 0,
            UNIQUE (owner_uid, name)
        )"""
    )
    conn.execute(
        "INSERT INTO sessions_new (id, owner_uid, name, created_at, last_used_at, system_prompt, "
        "turns) SELECT id, ?, name, created_at, last_used_at, system_prompt, turns FROM sessions",
        (os.getuid(),),
    )
    conn.execute(_MESSAGES_TABLE.format(table="messages_new", sessions="sessions_new"))
    conn.execute("INSERT INTO messages_new SELECT * FROM messages")
    conn.execute("DROP TABLE messages")
    conn.execute("DROP TABLE sessions")
    # Renaming rewrites messages_new's reference to sessions_new as well.
    conn.execute("ALTER TABLE sessions_new RENAME TO sessions")
    conn.execute("ALTER TABLE messages_new RENAME TO messages")
    conn.execute("CREATE INDEX sessions_by_owner ON sessions (owner_uid, last_used_at)")
    conn.execute("CREATE INDEX messages_by_session ON messages (session_id, id)")
    m0003_pending_index(conn)


MIGRATIONS: Final[list[tuple[str, Callable[[Connection], None]]]] = [
    ("0001_initial", m0001_initial),
    ("0002_audit", m0002_audit),
    ("0003_pending_index", m0003_pending_index),
    ("0004_session_owner", m0004_session_owner),
    ("0005_audit_owner", m0005_audit_owner),
    ("0006_governance", m0006_governance),
    ("0007_search", m0007_search),
    ("0008_summaries", m0008_summaries),
    ("0009_tokens", m0009_tokens),
]


def migrate(conn: Connection) -> list[str]:
    """Apply every migration not yet recorded; return the names applied now."""
    conn.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations (name TEXT PRIMARY KEY, applied_at REAL NOT NULL)"
    )
    done = {row[0] for row in conn.execute("SELECT name FROM schema_migrations")}
    applied = []
    for name, step in MIGRATIONS:
        if name in done:
            continue
        with transaction(conn):
            step(conn)
            conn.execute("INSERT INTO schema_migrations VALUES (?, ?)", (name, time.time()))
        logger.info("applied migration %s", name, extra={"migration": name})
        applied.append(name)
    return applied
