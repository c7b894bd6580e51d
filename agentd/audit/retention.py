"""Audit retention: rows older than `retention_days` are pruned every `prune_interval_s`.

Only a prefix of the chain goes, oldest first, and never the head row (both
anchors point at it). The last pruned row stays as the checkpoint (state key
`audit_checkpoint`: its seq, its hash, and the prev_hash it continued from),
and `audit verify` starts from it: the first remaining row must carry the
checkpoint's hash as its prev_hash, so the chain still verifies across the
cut, and a row deleted or edited after it is still found.

Rows go in batches of `batch_rows`, one short transaction each on the store
thread: a million rows to prune never hold up a chat's commit for long.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Final

from agentd.audit import rows
from agentd.audit.chain import format_ts
from agentd.errors import StoreError
from agentd.store.database import Connection, Database, transaction

logger = logging.getLogger(__name__)

BATCH_ROWS: Final = 1000  # ~10 ms a transaction on an idle machine: a chat commit waits no longer
DAY_S: Final = 86_400.0


class AuditRetention:
    """Prunes old audit rows on a schedule; `run()` is a background task.

    `retention_days` 0 keeps everything (`run` returns at once).
    """

    def __init__(
        self,
        db: Database,
        *,
        retention_days: float,
        prune_interval_s: float,
        clock: Callable[[], float] = time.time,
        batch_rows: int = BATCH_ROWS,
    ) -> None:
        self._db = db
        self._retention_s = retention_days * DAY_S
        self._interval_s = prune_interval_s
        self._clock = clock
        self._batch_rows = batch_rows

    async def run(self) -> None:
        if self._retention_s <= 0:
            return
        while True:
            try:
                await self.prune()
            except StoreError as exc:
                logger.error(
                    "audit retention: pruning failed, next try in %.0f s: %s", self._interval_s, exc
                )
            await asyncio.sleep(self._interval_s)  # the schedule, not synchronisation

    async def prune(self) -> int:
        """Prune every row older than the retention age (bar the head); the count pruned."""
        cutoff = format_ts(self._clock() - self._retention_s)
        total = 0
        while pruned := await self._db.run(prune_batch, cutoff, self._batch_rows):
            total += pruned
        if total:
            logger.info(
                "audit retention: pruned %d rows older than %s",
                total,
                cutoff,
                extra={"audit_pruned": total},
            )
        return total


def prune_batch(conn: Connection, cutoff: str, limit: int) -> int:
    """On the store thread: delete up to `limit` of the oldest rows with ts < `cutoff`,
    never the head, and move the checkpoint to the last one; returns how many."""
    with transaction(conn):
        head = rows.current_head(conn)
        oldest = conn.execute(
            "SELECT seq, ts, hash, prev_hash FROM audit ORDER BY seq LIMIT ?", (limit,)
        ).fetchall()
        last = None
        for count, (seq, ts, row_hash, prev_hash) in enumerate(oldest, 1):
            if ts >= cutoff or seq >= head.seq:
                break
            last = (count, seq, row_hash, prev_hash)
        if last is None:
            return 0
        count, seq, row_hash, prev_hash = last
        conn.execute("DELETE FROM audit WHERE seq <= ?", (seq,))
        rows.put_anchor_value(
            conn, rows.CHECKPOINT_KEY, {"seq": seq, "hash": row_hash, "prev_hash": prev_hash}
        )
    return count
