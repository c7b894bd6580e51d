"""The audit trail: one hash-chained row per request, in the encrypted store.

Table (migration 0002_audit; STRICT, so every value keeps exactly the type
audit_chain hashed - an INTEGER column never hands back a float or a string)::

    audit  seq INTEGER PRIMARY KEY, ts TEXT, request_id TEXT, peer_uid INTEGER,
           peer_pid INTEGER, command TEXT, session_id TEXT NULL, outcome TEXT,
           error_code TEXT NULL, latency_ms INTEGER, model TEXT NULL,
           tokens_in INTEGER, tokens_out INTEGER, prev_hash TEXT, hash TEXT,
           owner_uid INTEGER NULL (migration 0005_audit_owner: whose data an admin touched)
    state  'audit_anchor' -> {"seq": n, "hash": "..."}

Three ways in, one chain::

    writer.record_nowait(event) / await writer.record(event)
        cheap commands: queued, then sealed and committed in batches by one
        task (group commit: one fsync for many rows)
    await writer.record_now(event)
        committed before it returns (a chat's row, before the reply leaves)
    append(conn, events)
        inside a caller's own transaction, on the store thread

Rows are sealed only on the store thread, inside the transaction that
inserts them, from the head read in that same transaction: whichever path
wrote last, or rolled back, the next row follows the committed head.

The anchor (audit_chain.Anchor) in the state table follows the head, but
only while the chain still passes through the previous anchor: if rows were
deleted or rewritten while agentd was stopped, the anchor stays where it
was, so `verify` keeps reporting the break after new rows are appended.

A second anchor lives outside the database (store/anchor.py, `agentd.anchor`):
written after each commit of the writer, on the store thread. It catches what
the state table cannot, an older copy of the whole database put back:
`settle_anchor` refuses it at start-up (ConfigError, exit 78) unless the
operator accepts it, and `verify` keeps naming an accepted gap.

Queue overflow: while the store works, a full queue makes the request wait
(backpressure, at most `max_wait_s`): the disk sets the pace, nothing is
lost. When the store fails, rows pile up until the queue is full; from then
on rows are dropped, counted (`dropped`) and logged (throttled), because the
daemon must keep answering status and health while its store is broken.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import time
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Final, NamedTuple

from agentd.audit_chain import (
    GENESIS,
    Anchor,
    Breakage,
    Content,
    MalformedRow,
    VerifyResult,
    canonical_bytes,
    checked_hash,
    format_ts,
    hash_content,
    verify_chain,
)
from agentd.errors import ConfigError, StoreError
from agentd.limits import Throttle
from agentd.store import state
from agentd.store.anchor import ANCHOR_NAME, AnchorFile, AnchorRecord, Gap
from agentd.store.database import Connection, Database, transaction

logger = logging.getLogger(__name__)

# append_rows inserts (seq, *content, prev_hash, hash) in this order.
COLUMNS: Final = ("seq", *Content._fields, "prev_hash", "hash")
ANCHOR_KEY: Final = "audit_anchor"
MAX_COMMAND_CHARS: Final = 64  # an unknown command is recorded, but not a megabyte of it
_SELECT: Final = f"SELECT {', '.join(COLUMNS)} FROM audit"


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


def _without_malformed(events: list[AuditEvent], exc: Exception) -> list[AuditEvent]:
    """`events` less those that fail the chain's checks, which are logged as left out
    (`exc` is the error their commit failed with)."""
    good: list[AuditEvent] = []
    bad: list[AuditEvent] = []
    for event in events:
        (good if well_formed(event) else bad).append(event)
    if bad:
        _log_malformed(bad, exc)
    return good


def _log_malformed(bad: list[AuditEvent], exc: Exception) -> None:
    logger.critical(
        "audit rows left out: %d malformed event(s), a bug in their producer (%s: %s): %s",
        len(bad),
        exc.__class__.__name__,
        exc,
        ", ".join(repr(getattr(event, "request_id", None)) for event in bad[:5]),
    )


# -- on the store thread ----------------------------------------------------------


def current_head(conn: Connection) -> Anchor:
    row = conn.execute("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1").fetchone()
    return GENESIS if row is None else Anchor(seq=row[0], hash=row[1])


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
    value = state.get_value(conn, ANCHOR_KEY)
    if not isinstance(value, dict):
        return None
    return Anchor(seq=int(value["seq"]), hash=str(value["hash"]))


def anchor_holds(conn: Connection, anchor: Anchor) -> bool:
    """Does the chain still pass through `anchor`? (One primary-key lookup.)"""
    if anchor.seq == 0:
        return True
    row = conn.execute("SELECT hash FROM audit WHERE seq = ?", (anchor.seq,)).fetchone()
    return row is not None and row[0] == anchor.hash


def _put_anchor(conn: Connection, head: Anchor) -> None:
    # Inside the caller's transaction: state.put_values would open a second one.
    value = json.dumps({"hash": head.hash, "seq": head.seq}, sort_keys=True)
    conn.execute(
        "INSERT INTO state (key, value) VALUES (?, ?) "
        "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        (ANCHOR_KEY, value),
    )


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
    sql = f"{_SELECT}{clauses} ORDER BY seq DESC LIMIT ?"
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


def verify(
    conn: Connection, anchored: AnchorRecord | None = None
) -> tuple[VerifyResult, Anchor | None]:
    """Check the whole chain, through the stored anchor; streams the rows. Then the
    anchor file: a gap (found now, or accepted at start-up) is a rollback."""
    anchor = stored_anchor(conn)
    result = verify_chain(_all_rows(conn), anchor=anchor)
    if not result.ok or anchored is None:
        return result, anchor
    gap = anchored.accepted or find_gap(conn, anchored.head)
    if gap is None:
        return result, anchor
    detail = f"{gap.describe()}; see {ANCHOR_NAME}"
    if anchored.accepted is not None:
        detail += " (accepted at start-up with --accept-rollback)"
    first_missing = min(gap.db_seq + 1, gap.anchor_seq)  # equal seqs: that row differs
    broken = VerifyResult(
        False, result.rows_checked, result.head, first_missing, Breakage.ROLLED_BACK, detail
    )
    return broken, anchor


def _all_rows(conn: Connection) -> Iterator[dict[str, Any]]:
    for row in conn.execute(f"{_SELECT} ORDER BY seq"):
        yield dict(zip(COLUMNS, row, strict=True))


def check_on_open(conn: Connection) -> tuple[Anchor, Anchor | None, bool]:
    """(head, stored anchor, whether the chain still passes through the anchor)."""
    anchor = stored_anchor(conn)
    return current_head(conn), anchor, anchor is None or anchor_holds(conn, anchor)


# -- on the event loop ------------------------------------------------------------------


@dataclass(frozen=True)
class AuditStatistics:
    committed: int  # rows committed by this process
    dropped: int  # rows lost: the store failed and the queue was full
    queued: int  # rows waiting for the writer
    batches: int  # group commits
    failing: bool  # the latest commit failed; the writer is retrying
    head_seq: int  # the latest committed seq this process knows of


class AuditWriter:
    """Group commit for audit rows: a bounded queue drained by one task.

    The queue is a plain deque and a wake-up event rather than an
    asyncio.Queue: every request passes here, and per-row queue bookkeeping
    (get, task_done) cost a measurable share of `status` throughput.
    """

    def __init__(
        self,
        db: Database,
        *,
        anchor: AnchorFile | None = None,
        max_queue: int = 20_000,
        max_batch: int = 1000,
        max_wait_s: float = 1.0,
        retry_max_s: float = 5.0,
    ) -> None:
        self._db = db
        self._anchor = anchor  # settled at start-up (settle_anchor); moved with each commit
        self._pending: deque[AuditEvent] = deque()
        self._max_queue = max_queue
        self._max_batch = max_batch
        self._max_wait_s = max_wait_s
        self._retry_max_s = retry_max_s
        self._task: asyncio.Task[None] | None = None
        self._wakeup = asyncio.Event()
        self._progress = asyncio.Event()  # replaced after each batch; waiters hold the old one
        self._accepted = 0  # rows queued so far
        self._settled = 0  # of those, rows committed or dropped
        self._in_batch = 0  # rows of the batch being committed (lost if we give up)
        self._committed = 0
        self._dropped = 0
        self._batches = 0
        self._failing = False
        self._head = GENESIS
        self._drop_log = Throttle(10.0, time.monotonic)

    async def start(self) -> None:
        """Check the chain against its anchor, then start the writer task."""
        head, anchor, holds = await self._db.run(check_on_open)
        self._head = head
        if not holds:
            assert anchor is not None
            logger.critical(
                "audit trail no longer passes through its anchor (seq %d): rows were deleted or "
                "rewritten while agentd was stopped; run `agentctl audit verify`",
                anchor.seq,
                extra={"audit_anchor_seq": anchor.seq, "audit_anchor_hash": anchor.hash},
            )
        logger.info(
            "audit head: seq %d hash %s",
            head.seq,
            head.hash,
            extra={"audit_seq": head.seq, "audit_hash": head.hash},
        )
        self._task = asyncio.create_task(self._drain(), name="audit-writer")

    def anchored(self) -> AnchorRecord | None:
        """What the anchor file holds now (None: no anchor file)."""
        return self._anchor.record if self._anchor is not None else None

    def has_room(self) -> bool:
        """Would record_nowait() queue a row now?"""
        return len(self._pending) < self._max_queue

    def record_nowait(self, event: AuditEvent) -> bool:
        """Queue a row; False when the queue is full (nothing queued)."""
        if len(self._pending) >= self._max_queue:
            return False
        self._pending.append(event)
        self._accepted += 1
        self._wakeup.set()
        return True

    async def record(self, event: AuditEvent) -> None:
        """Queue a row, waiting (briefly) for room while the store works; else drop it."""
        if self.record_nowait(event):
            return
        if not self._failing and self._task is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._max_wait_s):
                    while not self.record_nowait(event):
                        await self._progress.wait()
                    return
        self._accepted += 1
        self._settle_dropped(1)

    async def record_now(self, event: AuditEvent) -> Anchor:
        """Commit one row before returning; StoreError if the store fails.

        A malformed event is left out, logged and counted as dropped, as in a
        batch, rather than failing a chat whose answer is already committed."""
        try:
            head: Anchor = await self._db.run_checked(commit_rows, [event], self._anchor)
        except (StoreError, TypeError, ValueError, AttributeError) as exc:
            if _without_malformed([event], exc):
                raise  # well formed: the store failed
            self._dropped += 1
            return self._head
        self._committed += 1
        self._head = head
        return head

    async def flush(self) -> None:
        """Until every row queued so far is committed (or dropped)."""
        mark = self._accepted
        while self._settled < mark:
            await self._progress.wait()

    async def close(self, timeout: float = 5.0) -> None:
        """Commit what is queued (up to `timeout`), stop the task, log the head."""
        if self._task is None:
            return
        try:
            async with asyncio.timeout(timeout):
                await self.flush()
        except TimeoutError:
            lost = len(self._pending) + self._in_batch
            self._pending.clear()
            self._settle_dropped(lost)
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        self._task = None
        logger.info(
            "audit head at shutdown: seq %d hash %s (%d rows this run in %d commits, %d dropped)",
            self._head.seq,
            self._head.hash,
            self._committed,
            self._batches,
            self._dropped,
            extra={"audit_seq": self._head.seq, "audit_hash": self._head.hash},
        )

    def statistics(self) -> AuditStatistics:
        return AuditStatistics(
            self._committed,
            self._dropped,
            len(self._pending),
            self._batches,
            self._failing,
            self._head.seq,
        )

    async def _drain(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            while self._pending:
                count = min(len(self._pending), self._max_batch)
                batch = [self._pending.popleft() for _ in range(count)]
                self._in_batch = count
                malformed = await self._commit(batch)
                self._in_batch = 0
                self._committed += count - malformed
                self._batches += 1
                self._dropped += malformed
                self._settle(count)

    async def _commit(self, batch: list[AuditEvent]) -> int:
        """Commit one batch, retrying with backoff while the store fails; returns
        how many malformed events were left out."""
        delay = 0.05
        malformed = 0
        checked = False  # every event of `batch` is known to be well formed
        while True:
            try:
                self._head = await self._db.run_checked(commit_rows, batch, self._anchor)
            except (StoreError, TypeError, ValueError, AttributeError) as exc:
                # An event the fast path cannot seal (TypeError...) or the STRICT
                # table refuses (a StoreError), from a bug in whatever built it,
                # would fail its batch forever and stop the trail for everyone:
                # leave such events out, loudly, and retry the rest at once.
                if not checked:
                    checked = True
                    good = _without_malformed(batch, exc)
                    if len(good) < len(batch):
                        malformed += len(batch) - len(good)
                        batch = good
                        continue
                if not isinstance(exc, StoreError):
                    raise  # no culprit: the bug is here; let the task's failure show it
                if not self._failing:
                    logger.error("audit rows cannot be committed, retrying: %s", exc)
                self._failing = True
                await asyncio.sleep(delay)  # backoff between retries, not synchronisation
                delay = min(delay * 2, self._retry_max_s)
                continue
            if self._failing:
                logger.info("audit writer recovered (%d rows dropped so far)", self._dropped)
            self._failing = False
            return malformed

    def _settle(self, count: int) -> None:
        self._settled += count
        self._progress.set()
        self._progress = asyncio.Event()

    def _settle_dropped(self, count: int) -> None:
        if count <= 0:
            return
        self._dropped += count
        self._settle(count)
        if self._drop_log.should_log():
            logger.critical(
                "audit rows dropped: the store fails and the audit queue is full "
                "(%d dropped so far)",
                self._dropped,
                extra={"audit_dropped": self._dropped},
            )
