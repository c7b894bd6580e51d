"""`audit verify`: check the chain from the last verified row, or all of it, off the store thread.

A full check of a million rows takes seconds of hashing. It runs on a
read-only connection of its own, on a thread of its own (Database.run_reader):
WAL gives it a snapshot while the store thread goes on committing chats, and
it lets go of the GIL between batches so the event loop keeps answering.

Incremental by default: the state key `audit_verified` remembers the last row
a verify found intact ({"seq", "hash"}); the next verify re-checks that one row
(is it still the row verified?) and then only what follows. `full` starts
from the beginning, which is the checkpoint row when old rows were pruned
(retention.py). Only the mark's move is written, on the store thread, and only
forward: a verify that finds a break leaves it where it was, so the break is
reported again next time.

Every read of one verify shares one snapshot (a read transaction), so rows
pruned or appended meanwhile do not look like a break. A verify whose request
is gone (the client left, agentd stops) is abandoned at the next batch.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Final

from agentd.audit import rows
from agentd.audit.chain import GENESIS, Anchor, Breakage, VerifyResult, verify_chain
from agentd.errors import AgentdError
from agentd.store.anchor import ANCHOR_NAME, AnchorRecord
from agentd.store.database import Connection, transaction

logger = logging.getLogger(__name__)

VERIFIED_KEY: Final = "audit_verified"
BATCH_ROWS: Final = 200  # ~2 ms of hashing between two chances for the event loop
# A real pause, not sleep(0): after sleep(0) this thread usually takes the GIL back
# before the event loop's thread has woken up to take it.
YIELD_S: Final = 0.0002


class VerifyAbandoned(AgentdError):
    """Nobody waits for this verify any more; its thread stops early."""


@dataclass(frozen=True)
class Verification:
    """A verify's verdict: `result` covers the rows after `start`."""

    result: VerifyResult
    start: Anchor  # where checking began: the genesis, the checkpoint, or the last verified row
    full: bool
    anchor: Anchor | None  # the anchor in the state table
    checkpoint: Anchor | None  # the last pruned row


def verify(
    conn: Connection,
    anchored: AnchorRecord | None,
    full: bool,
    abandoned: threading.Event | None = None,
) -> Verification:
    """On a reader connection: check the chain after the start point, through the
    stored anchor; then the anchor file: a gap (found now, or accepted at
    start-up) is a rollback. VerifyAbandoned once `abandoned` is set."""
    with _snapshot(conn):
        return _verify(conn, anchored, full, abandoned or threading.Event())


@contextlib.contextmanager
def _snapshot(conn: Connection) -> Iterator[None]:
    conn.execute("BEGIN")  # deferred: the snapshot is taken at the first read
    try:
        yield
    finally:
        conn.execute("COMMIT")


def _verify(
    conn: Connection, anchored: AnchorRecord | None, full: bool, abandoned: threading.Event
) -> Verification:
    cut = rows.checkpoint(conn)
    start = cut or GENESIS
    verified = None if full else _verified(conn)
    if verified is not None and verified.seq > start.seq:
        start = verified
    anchor = rows.stored_anchor(conn)
    result = _check_start(conn, start, verified, anchor)
    if result is None:
        logger.info("audit verify: checking rows after seq %d (full: %s)", start.seq, full)
        found = _rows_after(conn, start.seq, abandoned)
        result = verify_chain(found, start=start, anchor=anchor)
    if result.ok and anchored is not None:
        result = _check_anchor_file(conn, result, anchored)
    return Verification(result, start, full, anchor, cut)


def _check_start(
    conn: Connection, start: Anchor, verified: Anchor | None, anchor: Anchor | None
) -> VerifyResult | None:
    """A break at or before `start`, which the walk after it cannot see; else None."""
    if start == verified and not rows.anchor_holds(conn, start):
        detail = f"seq {start.seq} is not the row verified earlier; run verify --full"
        return VerifyResult(False, 0, start, start.seq, Breakage.CONTENT_EDITED, detail)
    if anchor is not None and anchor.seq <= start.seq and not rows.anchor_holds(conn, anchor):
        detail = f"seq {anchor.seq} differs from the anchor"
        return VerifyResult(False, 0, start, anchor.seq, Breakage.ANCHOR_MISMATCH, detail)
    return None


def _check_anchor_file(
    conn: Connection, result: VerifyResult, anchored: AnchorRecord
) -> VerifyResult:
    gap = anchored.accepted or rows.find_gap(conn, anchored.head)
    if gap is None:
        return result
    detail = f"{gap.describe()}; see {ANCHOR_NAME}"
    if anchored.accepted is not None:
        detail += " (accepted at start-up with --accept-rollback)"
    first_missing = min(gap.db_seq + 1, gap.anchor_seq)  # equal seqs: that row differs
    return VerifyResult(
        False, result.rows_checked, result.head, first_missing, Breakage.ROLLED_BACK, detail
    )


def _rows_after(conn: Connection, seq: int, abandoned: threading.Event) -> Iterator[dict[str, Any]]:
    cursor = conn.execute(f"{rows.SELECT} WHERE seq > ? ORDER BY seq", (seq,))
    while batch := cursor.fetchmany(BATCH_ROWS):
        for row in batch:
            yield dict(zip(rows.COLUMNS, row, strict=True))
        if abandoned.is_set():
            raise VerifyAbandoned("audit verify abandoned: nobody waits for it")
        time.sleep(YIELD_S)  # hand the GIL to the event loop's thread


def _verified(conn: Connection) -> Anchor | None:
    return rows.anchor_value(conn, VERIFIED_KEY)


def remember_verified(conn: Connection, head: Anchor) -> None:
    """On the store thread: move the mark forward to `head` (never back)."""
    with transaction(conn):
        mark = _verified(conn)
        if mark is None or mark.seq < head.seq:
            rows.put_anchor_value(conn, VERIFIED_KEY, {"seq": head.seq, "hash": head.hash})
