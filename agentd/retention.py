"""Forgetting sessions: the one deletion path, and the retention schedule.

Every deletion of a session (`session_delete`, `sessions_prune`, the
[retention] schedule) goes through `forget`: the rows go in one transaction
(store/retention.py makes sure the text leaves the file), each uid whose
current session it was loses it, and each deleted session leaves an audit
tombstone committed through the audit writer, so `audit verify` still holds:

    command    "session_tombstone"
    peer_uid   who deleted it (the daemon's own uid for the schedule)
    session_id the session deleted
    owner_uid  whose it was
    model      "reason=<user|retention> messages=<n>"  (like the refusal aggregate
               rows, a short text in a column the command does not otherwise use)
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Final

from agentd.access import Peer
from agentd.audit.rows import AuditEvent
from agentd.errors import StoreError
from agentd.store import retention
from agentd.store.retention import Forgotten, Selection
from agentd.store.sessions import Session

if TYPE_CHECKING:
    from agentd.config import RetentionSettings
    from agentd.runtime import Runtime

logger = logging.getLogger(__name__)

TOMBSTONE_COMMAND: Final = "session_tombstone"
BY_USER: Final = "user"
BY_RETENTION: Final = "retention"
DAY_S: Final = 86_400.0


async def forget(runtime: Runtime, doomed: list[Session], by: Peer, reason: str) -> list[Forgotten]:
    """Delete `doomed` (the caller checked it may) for good; one tombstone each."""
    if not doomed:
        return []
    started = time.time()
    forgotten = await runtime.db.run_checked(retention.delete_sessions, doomed)
    for gone in forgotten:
        runtime.db.recent.forget(gone.session_id)  # its cached context (store/recent.py)
        await runtime.current.forget_session(gone.session_id)
        await runtime.audit.record_now(_tombstone(gone, by, reason, started))
    logger.info(
        "deleted %d sessions (%d messages), reason %s",
        len(forgotten),
        sum(g.messages for g in forgotten),
        reason,
        extra={"deleted_sessions": len(forgotten), "reason": reason},
    )
    return forgotten


def _tombstone(gone: Forgotten, by: Peer, reason: str, at: float) -> AuditEvent:
    return AuditEvent(
        at=at,
        request_id=f"tombstone-{uuid.uuid4().hex[:16]}",
        peer_uid=by.uid,
        peer_pid=by.pid,
        command=TOMBSTONE_COMMAND,
        session_id=gone.session_id,
        error_code=None,
        latency_s=max(0.0, time.time() - at),
        model=f"reason={reason} messages={gone.messages}",
        owner_uid=gone.owner_uid,
    )


def scheduled_selection(settings: RetentionSettings, now: float) -> Selection | None:
    """What the [retention] policy deletes at `now` (None: it keeps everything)."""
    if settings.max_age_days <= 0 and settings.max_sessions_per_user <= 0:
        return None
    used_before = now - settings.max_age_days * DAY_S if settings.max_age_days > 0 else None
    return Selection(None, used_before, settings.max_sessions_per_user)


async def apply_policy(runtime: Runtime, now: float) -> list[Forgotten]:
    """One pass of the [retention] policy."""
    selection = scheduled_selection(runtime.config.retention, now)
    if selection is None:
        return []
    doomed = await runtime.db.run(retention.select, selection)
    return await forget(runtime, doomed, Peer(os.getpid(), os.getuid(), os.getgid()), BY_RETENTION)


async def run_schedule(runtime: Runtime, clock: Callable[[], float] = time.time) -> None:
    """Apply the policy now, then every retention.interval_s, until cancelled."""
    while True:
        try:
            await apply_policy(runtime, clock())
        except StoreError as exc:  # the store's own health check reports it; try next time
            logger.error("retention pass failed: %s", exc)
        await asyncio.sleep(runtime.config.retention.interval_s)  # a period, not synchronisation
