"""Refused requests in the audit trail: a row each up to a budget, then one row per peer.

A refusal (an unknown command, FORBIDDEN, RATE_LIMITED...) costs a peer nothing,
so one peer can send thousands a second; with a row each, one peer grew the
database by 312 MB in 16 s. So, per peer uid and interval
(`[limits] refusal_interval_s`)::

    refusals 1..N    a row each, as any other request     N = [limits] refusals_audited_each
    refusals N+1..   counted by code; at the end of the interval (and at shutdown)
                     one row for the peer, metadata only:

        command     "refused"
        outcome     "error"
        error_code  the counts by code, sorted: "FORBIDDEN=12,UNKNOWN_COMMAND=3988"
        ts          when the first counted refusal arrived
        latency_ms  the span the row covers: from ts until the row was closed
        peer_uid    the peer; peer_pid: the process of its latest counted refusal
        request_id  "refused-" and a fresh id

The codes are stable error codes, never anything the client chose. Every
refusal is still counted in metrics (requests_total by outcome, and
audit_refusals_aggregated_total for those in aggregate rows). Memory: one
small tally per peer uid refused in the current interval (uids come from the
kernel, so their number is that of the host's users).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import Final

from agentd.audit.rows import AuditEvent
from agentd.audit.writer import AuditWriter
from agentd.limits import Clock
from agentd.protocol import ErrorCode
from agentd.telemetry.metrics import Counter

logger = logging.getLogger(__name__)

# Answers that refuse a request before (or instead of) doing its work. Other
# failures (NOT_FOUND, PROVIDER_ERROR, INTERNAL) keep a row each: they are not free.
REFUSALS: Final = frozenset(
    {
        ErrorCode.BAD_REQUEST,
        ErrorCode.UNKNOWN_COMMAND,
        ErrorCode.FORBIDDEN,
        ErrorCode.NOT_READY,
        ErrorCode.RATE_LIMITED,
        ErrorCode.BUSY,
        ErrorCode.SHUTTING_DOWN,
    }
)
AGGREGATE_COMMAND: Final = "refused"


@dataclass
class _Tally:
    """One peer's refusals in the current interval."""

    audited: int = 0  # given a row each
    counts: dict[str, int] = field(default_factory=dict)  # the rest, by code
    first_at: float = 0.0  # wall clock of the first counted refusal
    pid: int = 0


class RefusalAudit:
    """Decides which refusals get a row of their own and writes the aggregate rows.

    ::

        if refusals.audit_alone(uid, pid, code):   # on the request path
            writer.record_nowait(event)
        await refusals.run()                       # background: flushes each interval
        await refusals.flush()                     # at shutdown, before the writer closes
    """

    def __init__(
        self,
        writer: AuditWriter,
        counted: Counter,
        *,
        audited_each: int,
        interval_s: float,
        clock: Clock = time.time,
    ) -> None:
        self._writer = writer
        self._counted = counted  # audit_refusals_aggregated_total
        self._audited_each = audited_each
        self._interval_s = interval_s
        self._clock = clock  # wall clock: it stamps the rows
        self._tallies: dict[int, _Tally] = {}

    def audit_alone(self, uid: int, pid: int, code: str) -> bool:
        """True: give this refusal its own row; False: it is counted for the peer's
        aggregate row instead."""
        tally = self._tallies.get(uid)
        if tally is None:
            tally = self._tallies[uid] = _Tally()
        if tally.audited < self._audited_each:
            tally.audited += 1
            return True
        if not tally.counts:
            tally.first_at = self._clock()
        tally.counts[code] = tally.counts.get(code, 0) + 1
        tally.pid = pid
        self._counted.inc(code=code)
        return False

    def close_interval(self) -> list[AuditEvent]:
        """The aggregate rows of the interval that ends now; every peer starts afresh."""
        now = self._clock()
        rows = [_aggregate_row(uid, t, now) for uid, t in self._tallies.items() if t.counts]
        self._tallies.clear()
        return rows

    async def flush(self) -> None:
        """Close the interval and queue its aggregate rows for the audit writer."""
        for row in self.close_interval():
            logger.info(
                "uid %d: refusals audited as one row: %s",
                row.peer_uid,
                row.error_code,
                extra={"refused_uid": row.peer_uid, "audit_request_id": row.request_id},
            )
            if not self._writer.record_nowait(row):
                await self._writer.record(row)  # the queue is full: wait for room

    async def run(self) -> None:
        """Flush at the end of every interval, until cancelled."""
        while True:
            await asyncio.sleep(self._interval_s)  # a period, not synchronisation
            await self.flush()


def _aggregate_row(uid: int, tally: _Tally, now: float) -> AuditEvent:
    counts = ",".join(f"{code}={n}" for code, n in sorted(tally.counts.items()))
    return AuditEvent(
        at=tally.first_at,
        request_id=f"refused-{uuid.uuid4().hex[:16]}",
        peer_uid=uid,
        peer_pid=tally.pid,
        command=AGGREGATE_COMMAND,
        session_id=None,
        error_code=counts,
        latency_s=max(0.0, now - tally.first_at),
    )
