"""What a copy of the store holds, once SQLCipher, SQLite and the audit chain agree it is
whole. The one module of the maintenance package that reads the audit trail."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

import sqlcipher3

from agentd.audit import rows as audit
from agentd.audit.chain import GENESIS, Anchor, Content, hash_content
from agentd.audit.verify import verify
from agentd.errors import MaintenanceError
from agentd.store.database import Connection

_ROWS: Final = (
    f"SELECT seq, {', '.join(Content._fields)}, prev_hash, hash FROM audit "
    "WHERE seq > ? ORDER BY seq"
)


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


def check_contents(
    conn: Connection, what: str, *, thorough: bool, verified: Anchor = GENESIS
) -> Contents:
    """Every page authenticated (cipher_integrity_check: the file holds what SQLCipher
    wrote under this key, nothing truncated or changed), and the audit chain intact
    through its stored anchor; `thorough` (a file that may have been anywhere: restore,
    rekey) adds integrity_check, every b-tree and index checked. MaintenanceError
    naming the first problem otherwise.

    `verified`: the chain up to this row was verified already (on the snapshot a
    backup was copied from, while it was copied): the copy must hold that very row,
    and only the rows after it are verified here."""
    try:
        _check_pages(conn, what)
        if thorough:
            _check_structure(conn, what)
        head = verify_chain(conn, what, start=verified)
        return Contents(
            sessions=_count(conn, "sessions"),
            messages=_count(conn, "messages"),
            audit_rows=_count(conn, "audit"),
            head=head,
        )
    except sqlcipher3.Error as exc:
        raise MaintenanceError(f"{what} cannot be read: {exc.__class__.__name__}: {exc}") from None


def verify_chain(conn: Connection, what: str, *, start: Anchor = GENESIS) -> Anchor:
    """The audit chain's head, once every row is found sealed to the one before it and the
    chain passes through its stored anchor.

    The fast path rebuilds each row's hash as the writer sealed it (hash_content: the
    STRICT table guarantees the types it trusts), ~10x faster than the canonical
    verifier, which names the first broken row when the fast path finds one."""
    cut = audit.checkpoint(conn)  # audit retention pruned the rows up to here
    if cut is not None and cut.seq > start.seq:
        start = cut
    if not audit.anchor_holds(conn, start):
        _diagnose(conn, what)
    head = start
    for row in conn.execute(_ROWS, (start.seq,)):
        seq, content, prev_hash, row_hash = row[0], Content(*row[1:-2]), row[-2], row[-1]
        if seq != head.seq + 1 or prev_hash != head.hash:
            _diagnose(conn, what)
        if hash_content(prev_hash, seq, content) != row_hash:
            _diagnose(conn, what)
        head = Anchor(seq, row_hash)
    anchor = audit.stored_anchor(conn)
    if anchor is not None and (anchor.seq > head.seq or not audit.anchor_holds(conn, anchor)):
        _diagnose(conn, what)
    return head


def _diagnose(conn: Connection, what: str) -> None:
    result = verify(conn, None, full=True).result
    detail = f"{result.reason}: {result.detail}" if not result.ok else "a row fails its hash"
    raise MaintenanceError(
        f"{what}: the audit chain is broken at seq {result.first_broken_seq} ({detail})"
    )


def _check_pages(conn: Connection, what: str) -> None:
    problems = conn.execute("PRAGMA cipher_integrity_check").fetchall()
    if problems:
        raise MaintenanceError(
            f"{what} is damaged: {len(problems)} page(s) fail their HMAC "
            f"(first: {problems[0][0]}); truncated or tampered with"
        )


def _check_structure(conn: Connection, what: str) -> None:
    rows = conn.execute("PRAGMA integrity_check(1)").fetchall()
    if rows != [("ok",)]:
        first = rows[0][0] if rows else "no answer"
        raise MaintenanceError(f"{what} is damaged: integrity_check found {first}")


def _count(conn: Connection, table: str) -> int:
    return int(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])
