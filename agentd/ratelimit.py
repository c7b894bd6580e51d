"""Rate limits as the daemon applies them: the `[limits]` section over limits.RateLimiter.

Two command classes, each with its own budget per peer uid::

    cheap   status, metrics, logs, health, ...    checked in dispatch (no session)
    chat    chat                                  checked by the chat pipeline,
                                                  per uid and per (uid, session)

Over the budget a request is refused with RATE_LIMITED and `retry_after`.
Refusals are counted; the warning about them is throttled (one line per
`log_interval_s` saying how many were held back) so a flood cannot flood
the log.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Final

from agentd.constraints import bounded
from agentd.errors import RateLimited
from agentd.limits import Budget, Clock, RateLimiter, RateLimiterStatistics, Throttle

logger = logging.getLogger(__name__)

CHEAP: Final = "cheap"
CHAT: Final = "chat"


@dataclass(frozen=True)
class LimitSettings:
    """Token buckets: `rate` requests per second, bursts of up to `burst`."""

    enabled: bool = True
    # Every command but chat, per peer uid.
    cheap_rate: float = bounded(5000.0, gt=0)
    cheap_burst: float = bounded(10000.0, gt=0, ge=1)
    # Chat, per peer uid, and per (uid, session).
    chat_rate: float = bounded(2.0, gt=0)
    chat_burst: float = bounded(30.0, gt=0, ge=1)
    session_rate: float = bounded(1.0, gt=0)
    session_burst: float = bounded(20.0, gt=0, ge=1)
    # At most one warning about refused requests per this many seconds.
    log_interval_s: float = bounded(10.0, ge=0)
    # Refusals (unknown command, FORBIDDEN, RATE_LIMITED...) audited one by one per peer
    # uid and interval; the rest are counted in one row per peer and interval (refusals.py).
    refusals_audited_each: int = bounded(20, ge=0)
    refusal_interval_s: float = bounded(60.0, gt=0)


class RequestLimiter:
    """The daemon's budgets; a no-op when `[limits] enabled = false`.

    ::

        limiter.check(peer.uid, None, CHEAP)              # raises RateLimited
        wait = limiter.try_acquire(uid, session_id, CHAT) # 0.0 = go, else retry_after
    """

    def __init__(self, settings: LimitSettings, clock: Clock = time.monotonic) -> None:
        self.enabled = settings.enabled
        self._limiter = RateLimiter(
            per_peer={
                CHEAP: Budget(settings.cheap_rate, settings.cheap_burst),
                CHAT: Budget(settings.chat_rate, settings.chat_burst),
            },
            per_session={CHAT: Budget(settings.session_rate, settings.session_burst)},
            clock=clock,
        )
        self._throttle = Throttle(settings.log_interval_s, clock)

    def try_acquire(self, uid: int, session_id: str | None, command_class: str) -> float:
        """0.0 when the request may go on, else the seconds to wait before retrying."""
        if not self.enabled:
            return 0.0
        wait = self._limiter.try_acquire(uid, session_id, command_class)
        if wait > 0.0:
            self._log_refusal(uid, command_class, wait)
        return wait

    def check(self, uid: int, session_id: str | None, command_class: str) -> None:
        """Take a token or raise RateLimited with the seconds to wait."""
        wait = self.try_acquire(uid, session_id, command_class)
        if wait > 0.0:
            raise RateLimited(
                f"rate limit for {command_class} requests reached; retry in {wait:.1f}s",
                retry_after=wait,
            )

    def statistics(self) -> RateLimiterStatistics:
        return self._limiter.statistics()

    def _log_refusal(self, uid: int, command_class: str, wait: float) -> None:
        if self._throttle.should_log():
            logger.warning(
                "rate limited uid %d (%s requests; retry in %.2fs); %d more refusals held back",
                uid,
                command_class,
                wait,
                self._throttle.suppressed,
                extra={
                    "limited_uid": uid,
                    "command_class": command_class,
                    "suppressed": self._throttle.suppressed,
                },
            )
