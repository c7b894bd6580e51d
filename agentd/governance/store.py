"""The governance tables and their SQL (run on the store's thread via Database.run).

Tables (migration 0006_governance)::

    budget_usage     day TEXT (UTC date), scope TEXT ('uid:<n>' | 'global'),
                     tokens INTEGER, cost_usd REAL, PRIMARY KEY (day, scope)
    secret_findings  request_id, at, peer_uid, kind, class, action, count, lines
                     what the scanner found in one request: kinds, classes, counts and
                     line numbers, never values; joins the audit row and the stored
                     messages on request_id

The stored user turn keeps what the user sent (the database is encrypted);
secret_findings says what of it was redacted, refused or let through.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from agentd.governance.budgets import Usage
from agentd.store.database import Connection, transaction

Finding = tuple[str, float, int, str, str, str, int, str]  # one secret_findings row


def m0006_governance(conn: Connection) -> None:
    conn.execute(
        """CREATE TABLE budget_usage (
            day       TEXT NOT NULL,
            scope     TEXT NOT NULL,
            tokens    INTEGER NOT NULL DEFAULT 0,
            cost_usd  REAL NOT NULL DEFAULT 0,
            PRIMARY KEY (day, scope)
        )"""
    )
    conn.execute(
        """CREATE TABLE secret_findings (
            request_id  TEXT NOT NULL,
            at          REAL NOT NULL,
            peer_uid    INTEGER NOT NULL,
            kind        TEXT NOT NULL,
            class       TEXT NOT NULL,
            action      TEXT NOT NULL CHECK (action IN ('refuse', 'redact', 'allow')),
            count       INTEGER NOT NULL,
            lines       TEXT NOT NULL
        )"""
    )
    conn.execute("CREATE INDEX secret_findings_by_request ON secret_findings (request_id)")


def load_day(conn: Connection, day: str) -> dict[str, Usage]:
    rows = conn.execute("SELECT scope, tokens, cost_usd FROM budget_usage WHERE day = ?", (day,))
    return {scope: Usage(tokens, cost) for scope, tokens, cost in rows}


def add_usages(conn: Connection, usage: Mapping[tuple[str, str], Usage]) -> None:
    """Add to each (day, scope) row, in one transaction."""
    with transaction(conn):
        conn.executemany(
            """INSERT INTO budget_usage (day, scope, tokens, cost_usd) VALUES (?, ?, ?, ?)
               ON CONFLICT (day, scope) DO UPDATE SET tokens = tokens + excluded.tokens,
                                                      cost_usd = cost_usd + excluded.cost_usd""",
            [(day, scope, u.tokens, u.cost_usd) for (day, scope), u in usage.items()],
        )


def insert_findings(conn: Connection, rows: Sequence[Finding]) -> None:
    with transaction(conn):
        conn.executemany("INSERT INTO secret_findings VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)


def findings_for(conn: Connection, request_ids: Sequence[str]) -> dict[str, list[dict[str, Any]]]:
    """request_id -> [{kind, class, action, count, lines}] for these requests."""
    out: dict[str, list[dict[str, Any]]] = {}
    for start in range(0, len(request_ids), 500):  # SQLite's bound-parameter limit
        chunk = request_ids[start : start + 500]
        marks = ", ".join("?" * len(chunk))
        rows = conn.execute(
            "SELECT request_id, kind, class, action, count, lines FROM secret_findings"
            f" WHERE request_id IN ({marks}) ORDER BY rowid",
            tuple(chunk),
        )
        for rid, kind, cls, action, count, lines in rows:
            entry = {"kind": kind, "class": cls, "action": action, "count": count, "lines": lines}
            out.setdefault(rid, []).append(entry)
    return out
