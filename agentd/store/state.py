"""The `state` table: small JSON values that outlive the process (agent id, session, counters)."""

from __future__ import annotations

import json
from typing import Any

from agentd.store.database import Connection, transaction


def get_value(conn: Connection, key: str) -> Any:
    row = conn.execute("SELECT value FROM state WHERE key = ?", (key,)).fetchone()
    return json.loads(row[0]) if row else None


def put_values(conn: Connection, values: dict[str, Any]) -> None:
    with transaction(conn):
        conn.executemany(
            "INSERT INTO state (key, value) VALUES (?, ?) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            [(key, json.dumps(value, sort_keys=True)) for key, value in values.items()],
        )


def probe(conn: Connection) -> None:
    """A real read and a real write through SQLCipher, for the health check."""
    conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
    put_values(conn, {"health_probe": 1})


def delete_value(conn: Connection, key: str) -> None:
    with transaction(conn):
        conn.execute("DELETE FROM state WHERE key = ?", (key,))
