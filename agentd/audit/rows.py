"""Audit rows in the encrypted store: the schema, sealing, the anchors, queries.

Table (migration 0002_audit; STRICT, so every value keeps exactly the type
the chain hashed - an INTEGER column never hands back a float or a string)::

    audit  seq INTEGER PRIMARY KEY, ts TEXT, request_id TEXT, peer_uid INTEGER,
           peer_pid INTEGER, command TEXT, session_id TEXT NULL, outcome TEXT,
           error_code TEXT NULL, latency_ms INTEGER, model TEXT NULL,
           tokens_in INTEGER, tokens_out INTEGER, prev_hash TEXT, hash TEXT,
           owner_uid INTEGER NULL (migration 0005_audit_owner: whose data an admin touched)
    state  'audit_anchor'     -> {"seq": n, "hash": "..."}  the head, while the chain holds
           'audit_checkpoint' -> {"seq", "hash", "prev_hash"}  the last pruned row
                                 (retention.py); the table starts right after it
           'audit_verified'   -> {"seq", "hash"}  the last row `audit verify` found
                                 intact (verify.py); the next verify starts there

Rows are sealed only on the store thread, inside the transaction that
inserts them, from the head read in that same transaction: whichever path
wrote last (writer.py), or rolled back, the next row follows the committed head.

The anchor (chain.Anchor) in the state table follows the head, but only
while the chain still passes through the previous anchor: if rows were
deleted or rewritten while agentd was stopped, the anchor stays where it
was, so `verify` keeps reporting the break after new rows are appended.

A second anchor lives outside the database (store/anchor.py, `agentd.anchor`):
written after each commit of the writer, on the store thread. It catches what
the state table cannot, an older copy of the whole database put back:
`settle_anchor` refuses it at start-up (ConfigError, exit 78) unless the
operator accepts it, and `verify` keeps naming an accepted gap. Retention
never prunes the head row, so both anchors keep pointing at a row present.
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final, NamedTuple

from agentd.audit.chain import (
    GENESIS,
    Anchor,
    Content,
    MalformedRow,
    canonical_bytes,
    checked_hash,
    format_ts,
    hash_content,
)
from agentd.errors import ConfigError
from agentd.store import state
from agentd.store.anchor import AnchorFile, Gap
from agentd.store.database import Connection, transaction

logger = logging.getLogger(__name__)

# append_rows inserts (seq, *content, prev_hash, hash) in this order.
COLUMNS: Final = ("seq", *Content._fields, "prev_hash", "hash")
ANCHOR_KEY: Final = "audit_anchor"
CHECKPOINT_KEY: Final = "audit_checkpoint"
MAX_COMMAND_CHARS: Final = 64  # an unknown command is recorded, but not a megabyte of it
SELECT: Final = f"SELECT {', '.join(COLUMNS)} FROM audit"


def m0002_audit(conn: Connection) -> None:
    conn.execute(
        """CREATE TABLE audit (
            seq         INTEGER PRIMARY KEY,
            ts          TEXT NOT NULL,
            request_id  TEXT NOT NULL,
            peer_uid    INTEGER NOT NULL,
            peer_pid    INTEGER NOT NULL,
            command     TEXT NOT NULL,
            session_id  TEXT,
            outcome     TEXT NOT NULL,
            error_code  TEXT,
            latency_ms  INTEGER NOT NULL,
            model       TEXT,
            tokens_in   INTEGER NOT NULL,
            tokens_out  INTEGER NOT NULL,
            prev_hash   TEXT NOT NULL,
            hash        TEXT NOT NULL
        ) STRICT"""
    )
    # One index only: every request writes a row, and each index costs every write.
    # request_id is how an operator goes from a log line to its row; the other
    # filters scan from the newest row down.
    conn.execute("CREATE INDEX audit_by_request ON audit (request_id)")


def m0005_audit_owner(conn: Connection) -> None:
    # Null in every row before it: the chain leaves a null owner_uid out of the hash.
    conn.execute("ALTER TABLE audit ADD COLUMN owner_uid INTEGER")


class AuditEvent(NamedTuple):
    """One request, as the request path knows it; becomes a row when sealed.

    A NamedTuple, not a frozen dataclass: one is built per request, and a
    frozen dataclass costs several times as much to construct.
    """

    at: float  # wall-clock time the request arrived (epoch seconds)
    request_id: str
    peer_uid: int
    peer_pid: int
    command: str
    session_id: str | None
    error_code: str | None  # None: the request succeeded
    latency_s: float
    model: str | None = None
    tokens_in: int = 0
    tokens_out: int = 0
    owner_uid: int | None = None  # whose data it touched, when not the peer's own

    def content(self) -> Content:
        """The row's content fields (all but seq and the hashes), as the chain records them."""
        return Content(
            format_ts(self.at),
            self.request_id,
            self.peer_uid,
            self.peer_pid,
            self.command[:MAX_COMMAND_CHARS],
            self.session_id,
            "ok" if self.error_code is None else "error",
            self.error_code,
            max(0, round(self.latency_s * 1000)),
            self.model,
            max(0, self.tokens_in),
            max(0, self.tokens_out),
            self.owner_uid,
        )


def well_formed(event: AuditEvent) -> bool:
    """Does `event` pass the chain's full field checks? The fast sealing path
    trusts its types; this is how a batch it failed on finds the culprit."""
    try:
        content = event.content()
        canonical_bytes({"seq": 1, **content._asdict()})
        for value in content:
            if isinstance(value, str):
                value.encode("utf-8")  # what SQLite stores: a lone surrogate cannot go in
    except (MalformedRow, TypeError, ValueError, AttributeError):
        return False
    return True


# -- on the store thread ----------------------------------------------------------


def current_head(conn: Connection) -> Anchor:
    row = conn.execute("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1").fetchone()
    if row is None:
        return checkpoint(conn) or GENESIS
    return Anchor(seq=row[0], hash=row[1])


def checkpoint(conn: Connection) -> Anchor | None:
    """The last pruned row (None: nothing pruned): the chain in the table follows it."""
    return anchor_value(conn, CHECKPOINT_KEY)


def anchor_value(conn: Connection, key: str) -> Anchor | None:
    value = state.get_value(conn, key)
    if not isinstance(value, dict):
        return None
    return Anchor(seq=int(value["seq"]), hash=str(value["hash"]))


def put_anchor_value(conn: Connection, key: str, value: dict[str, Any]) -> None:
    """A state value, inside the caller's transaction (state.put_values opens its own)."""
    conn.execute(
        "INSERT INTO state (key, value) VALUES (?, ?) "
        "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        (key, json.dumps(value, sort_keys=True)),
    )


def append_rows(conn: Connection, events: Sequence[AuditEvent], head: Anchor) -> Anchor:
    """Seal `events` after `head` and insert them; returns the new head.

    Runs inside the caller's transaction; `head` must be the committed head
    read in that same transaction (see `append`). This loop runs once per
    request on the store thread, holding the GIL against the event loop, so
    it uses the chain's fast path (hash_content) and builds the insert tuples
    directly. It seals and inserts one chunk at a time: each INSERT lets go
    of the GIL, so the event loop never waits while a whole batch is sealed
    (up to 1,000 rows, ~10 ms of Python).
    """
    seq, prev_hash = head.seq, checked_hash(head.hash)
    chunk_rows = _CHUNK_ROWS[0]
    for start in range(0, len(events), chunk_rows):
        chunk = events[start : start + chunk_rows]
        values: list[Any] = []  # the rows' column values, one after the other
        for event in chunk:
            seq += 1
            content = event.content()
            row_hash = hash_content(prev_hash, seq, content)
            values += (seq, *content, prev_hash, row_hash)
            prev_hash = row_hash
        _insert(conn, values, len(chunk))
    return Anchor(seq=seq, hash=prev_hash)


# Rows go in with multi-row INSERTs of these sizes, largest first. Each statement
# is one trip into SQLite, and the store thread hands the GIL to the event loop
# and takes it back on every trip: per row (executemany), those handoffs cost
# more than SQLite itself (~3 futex calls per `status` under load, strace). The
# largest size also bounds how long sealing holds the GIL between two trips
# (~0.3 ms). A few fixed sizes keep the statements in sqlite3's statement cache.
_CHUNK_ROWS: Final = (32, 8, 1)


def _insert(conn: Connection, values: list[Any], rows: int) -> None:
    width, done = len(COLUMNS), 0
    for size in _CHUNK_ROWS:
        while rows - done >= size:
            conn.execute(_insert_sql(size), values[done * width : (done + size) * width])
            done += size


@functools.cache
def _insert_sql(rows: int) -> str:
    one_row = f"({', '.join('?' * len(COLUMNS))})"
    return f"INSERT INTO audit ({', '.join(COLUMNS)}) VALUES {', '.join([one_row] * rows)}"


def append(conn: Connection, events: Sequence[AuditEvent]) -> Anchor:
    """Append inside an open transaction: read the head, seal, insert, move the anchor."""
    head = append_rows(conn, events, current_head(conn))
    anchor = stored_anchor(conn)
    if anchor is None or anchor_holds(conn, anchor):
        _put_anchor(conn, head)
    return head


def commit_rows(
    conn: Connection, events: Sequence[AuditEvent], anchor: AnchorFile | None = None
) -> Anchor:
    """Append in a transaction of its own; then move the anchor file to the new head."""
    with transaction(conn):
        head = append(conn, events)
    if anchor is not None:
        anchor.write(head)
    return head


def stored_anchor(conn: Connection) -> Anchor | None:
    return anchor_value(conn, ANCHOR_KEY)


def anchor_holds(conn: Connection, anchor: Anchor) -> bool:
    """Does the chain still pass through `anchor`? (One primary-key lookup.)"""
    if anchor.seq == 0:
        return True
    row = conn.execute("SELECT hash FROM audit WHERE seq = ?", (anchor.seq,)).fetchone()
    if row is not None:
        return bool(row[0] == anchor.hash)
    # Pruned rows cannot be checked any more; the checkpoint row itself can.
    cut = checkpoint(conn)
    if cut is None or anchor.seq > cut.seq:
        return False
    return anchor.seq < cut.seq or cut.hash == anchor.hash


def _put_anchor(conn: Connection, head: Anchor) -> None:
    put_anchor_value(conn, ANCHOR_KEY, {"hash": head.hash, "seq": head.seq})


@dataclass(frozen=True)
class AuditQuery:
    """Filters for `recent`; None means any."""

    command: str | None = None
    outcome: str | None = None  # "ok" | "error"
    session_id: str | None = None
    request_id: str | None = None
    since: float | None = None  # epoch seconds
    limit: int = 50


def recent(conn: Connection, query: AuditQuery) -> list[dict[str, Any]]:
    """Matching rows, newest first."""
    clauses, params = _where(query)
    sql = f"{SELECT}{clauses} ORDER BY seq DESC LIMIT ?"
    rows = conn.execute(sql, (*params, query.limit)).fetchall()
    return [dict(zip(COLUMNS, row, strict=True)) for row in rows]


def _where(query: AuditQuery) -> tuple[str, list[Any]]:
    filters: list[tuple[str, Any]] = [
        ("command = ?", query.command),
        ("outcome = ?", query.outcome),
        ("session_id = ?", query.session_id),
        ("request_id = ?", query.request_id),
        # ts is fixed-width ISO 8601 UTC, so text order is time order.
        ("ts >= ?", None if query.since is None else format_ts(query.since)),
    ]
    used = [(sql, value) for sql, value in filters if value is not None]
    if not used:
        return "", []
    return " WHERE " + " AND ".join(sql for sql, _ in used), [value for _, value in used]


def find_gap(conn: Connection, anchored: Anchor) -> Gap | None:
    """Does the database's chain reach the head anchored in the file? (Two lookups.)"""
    head = current_head(conn)
    if head.seq < anchored.seq:
        return Gap(db_seq=head.seq, anchor_seq=anchored.seq)
    if not anchor_holds(conn, anchored):
        return Gap(db_seq=anchored.seq, anchor_seq=anchored.seq)
    return None


def settle_anchor(conn: Connection, anchor: AnchorFile, accept_rollback: bool) -> Anchor:
    """At start-up: the database must reach the anchored head. A gap is refused
    (ConfigError) unless accepted, then recorded in the file. Returns the head."""
    head, recorded = current_head(conn), anchor.record
    gap = None if recorded is None else find_gap(conn, recorded.head)
    if gap is None:
        anchor.write(head)
        return head
    if not accept_rollback:
        raise ConfigError(
            f"rollback detected: {gap.describe()} (anchor {anchor.path}); put the newer "
            "database back, or start with --accept-rollback to go on with this one"
        )
    logger.warning(
        "rollback accepted (--accept-rollback): %s; `audit verify` reports it until the "
        "anchor is moved on purpose",
        gap.describe(),
        extra={"audit_seq": head.seq, "audit_anchor_seq": gap.anchor_seq},
    )
    anchor.accept(head, gap)
    return head


def check_on_open(conn: Connection) -> tuple[Anchor, Anchor | None, bool]:
    """(head, stored anchor, whether the chain still passes through the anchor)."""
    anchor = stored_anchor(conn)
    return current_head(conn), anchor, anchor is None or anchor_holds(conn, anchor)
