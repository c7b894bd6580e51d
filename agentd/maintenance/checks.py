"""What a copy of the store holds, once SQLCipher, SQLite and the audit chain agree it is
whole. The one module of the maintenance package that reads the audit trail."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import sqlcipher3

from agentd.audit_chain import Anchor
from agentd.errors import MaintenanceError
from agentd.store import audit
from agentd.store.database import Connection


@dataclass(frozen=True)
class Contents:
    """Row counts and the audit head of a checked copy."""

    sessions: int
    messages: int
    audit_rows: int
    head: Anchor

    def as_dict(self) -> dict[str, Any]:
        return {
            "rows": {
                "sessions": self.sessions,
                "messages": self.messages,
                "audit": self.audit_rows,
            },
            "audit_head": {"seq": self.head.seq, "hash": self.head.hash},
        }


def check_contents(conn: Connection, what: str, *, thorough: bool) -> Contents:
    """Every page authenticated (cipher_integrity_check), the b-trees sound (quick_check;
    `thorough`: integrity_check, which also matches every index to its table), and the
    audit chain intact through its stored anchor. MaintenanceError naming the first
    problem otherwise."""
    try:
        _check_pages(conn, what)
        _check_structure(conn, what, thorough)
        head = _check_chain(conn, what)
        return Contents(
            sessions=_count(conn, "sessions"),
            messages=_count(conn, "messages"),
            audit_rows=_count(conn, "audit"),
            head=head,
        )
    except sqlcipher3.Error as exc:
        raise MaintenanceError(f"{what} cannot be read: {exc.__class__.__name__}: {exc}") from None


def _check_pages(conn: Connection, what: str) -> None:
    problems = conn.execute("PRAGMA cipher_integrity_check").fetchall()
    if problems:
        raise MaintenanceError(
            f"{what} is damaged: {len(problems)} page(s) fail their HMAC "
            f"(first: {problems[0][0]}); truncated or tampered with"
        )


def _check_structure(conn: Connection, what: str, thorough: bool) -> None:
    pragma = "integrity_check" if thorough else "quick_check"
    rows = conn.execute(f"PRAGMA {pragma}(1)").fetchall()
    if rows != [("ok",)]:
        first = rows[0][0] if rows else "no answer"
        raise MaintenanceError(f"{what} is damaged: {pragma} found {first}")


def _check_chain(conn: Connection, what: str) -> Anchor:
    result, _anchor = audit.verify(conn)
    if not result.ok:
        raise MaintenanceError(
            f"{what}: the audit chain is broken at seq {result.first_broken_seq} "
            f"({result.reason}: {result.detail})"
        )
    return result.head


def _count(conn: Connection, table: str) -> int:
    return int(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])
