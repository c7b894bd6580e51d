"""The audit writer: three ways in, one chain.

::

    writer.record_nowait(event) / await writer.record(event)
        cheap commands: queued, then sealed and committed in batches by one
        task (group commit: one fsync for many rows)
    await writer.record_now(event)
        committed before it returns (a chat's row, before the reply leaves)
    rows.append(conn, events)
        inside a caller's own transaction, on the store thread

Queue overflow: while the store works, a full queue makes the request wait
(backpressure, at most `max_wait_s`): the disk sets the pace, nothing is
lost. When the store fails, rows pile up until the queue is full; from then
on rows are dropped, counted (`dropped`) and logged (throttled), because the
daemon must keep answering status and health while its store is broken.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from dataclasses import dataclass

from agentd.audit.chain import GENESIS, Anchor
from agentd.audit.rows import AuditEvent, check_on_open, commit_rows, well_formed
from agentd.errors import StoreError
from agentd.limits import Throttle
from agentd.store.anchor import AnchorFile, AnchorRecord
from agentd.store.database import Database

logger = logging.getLogger(__name__)


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
