"""The circuit breaker: stop calling a service that keeps failing, try again after a cool-down.

Time is injected (`clock`) so tests drive the cool-down on a fake clock.
"""

from __future__ import annotations

import enum
import logging
import time
from collections.abc import Callable
from typing import NamedTuple

from agentd.providers.errors import CircuitOpen, ErrorKind
from agentd.providers.texts import breaker_refusal, kind_and_reason

logger = logging.getLogger(__name__)

Clock = Callable[[], float]

# Failures that say the service (or our key) is unwell, as opposed to the request.
# Not RATE_LIMITED: a quota's 429 proves the service is up; it never opens the
# breaker (which would put the daemon in ERROR).
COUNTED_FAILURES = frozenset({ErrorKind.TRANSIENT, ErrorKind.AUTH})


class BreakerState(enum.StrEnum):
    CLOSED = "closed"  # calls flow; failures are counted
    OPEN = "open"  # calls are refused until the cool-down has passed
    HALF_OPEN = "half_open"  # one trial call decides: closed again, or open again


OnStateChange = Callable[[BreakerState, BreakerState], None]


# Statistics are NamedTuples, not frozen dataclasses: cheaper to define on the
# path to READY (see base.py).
class BreakerStatistics(NamedTuple):
    state: BreakerState
    consecutive_failures: int
    failure_threshold: int
    trips: int  # times it opened
    opened_at: float | None  # clock time of the latest opening
    cooldown_remaining_s: float  # 0 unless open
    last_failure_kind: ErrorKind | None
    last_failure_reason: str | None = None  # its cause, e.g. ConnectError


class CircuitBreaker:
    """Closed → open after `failure_threshold` consecutive failures → half-open
    after `cooldown_s` (one trial) → closed on success, open again on failure.

    ::

        breaker.acquire_nowait()          # CircuitOpen if calls are refused
        try:
            ...call...
        except BaseException:
            breaker.release()             # no verdict (cancelled)
            raise
        breaker.record_success()          # or record_failure(kind, reason)

    `on_state_change(old, new)` runs synchronously on every transition.
    """

    def __init__(
        self,
        failure_threshold: int,
        cooldown_s: float,
        *,
        clock: Clock = time.monotonic,
        on_state_change: OnStateChange | None = None,
    ) -> None:
        self._threshold = failure_threshold
        self._cooldown_s = cooldown_s
        self._clock = clock
        self._on_state_change = on_state_change
        self._state = BreakerState.CLOSED
        self._consecutive_failures = 0
        self._trips = 0
        self._opened_at: float | None = None
        self._trial_in_flight = False
        self._last_failure_kind: ErrorKind | None = None
        self._last_failure_reason: str | None = None

    @property
    def state(self) -> BreakerState:
        return self._state

    def acquire_nowait(self) -> None:
        """Allow one call now, or raise CircuitOpen."""
        if self._state is BreakerState.OPEN and self._cooldown_remaining() <= 0:
            self._move_to(BreakerState.HALF_OPEN)
        if self._state is BreakerState.CLOSED:
            return
        if self._state is BreakerState.HALF_OPEN and not self._trial_in_flight:
            self._trial_in_flight = True
            return
        refusal = CircuitOpen(self._refusal_message(), reason=self._last_failure_reason)
        refusal.cause = self._last_failure_kind
        raise refusal

    def record_success(self) -> None:
        self._trial_in_flight = False
        if self._state is BreakerState.OPEN:
            return  # a call from before the trip; the cool-down still stands
        self._consecutive_failures = 0
        if self._state is BreakerState.HALF_OPEN:
            self._move_to(BreakerState.CLOSED)

    def record_failure(self, kind: ErrorKind, reason: str | None = None) -> None:
        self._trial_in_flight = False
        self._consecutive_failures += 1
        self._last_failure_kind = kind
        self._last_failure_reason = reason
        tripped = self._state is BreakerState.HALF_OPEN or (
            self._state is BreakerState.CLOSED and self._consecutive_failures >= self._threshold
        )
        if tripped:
            self._trips += 1
            self._opened_at = self._clock()
            self._move_to(BreakerState.OPEN)

    def release(self) -> None:
        """The call ended without a verdict (cancelled): free the trial slot."""
        self._trial_in_flight = False

    def statistics(self) -> BreakerStatistics:
        return BreakerStatistics(
            state=self._state,
            consecutive_failures=self._consecutive_failures,
            failure_threshold=self._threshold,
            trips=self._trips,
            opened_at=self._opened_at,
            cooldown_remaining_s=max(0.0, self._cooldown_remaining()),
            last_failure_kind=self._last_failure_kind,
            last_failure_reason=self._last_failure_reason,
        )

    def last_failure(self) -> str:
        """The latest failure's kind and cause, e.g. "transient: ConnectError"."""
        return kind_and_reason(self._last_failure_kind, self._last_failure_reason)

    def _cooldown_remaining(self) -> float:
        if self._state is not BreakerState.OPEN or self._opened_at is None:
            return 0.0
        return self._opened_at + self._cooldown_s - self._clock()

    def _refusal_message(self) -> str:
        return breaker_refusal(
            trial_pending=self._state is BreakerState.HALF_OPEN,
            failures=self._consecutive_failures,
            last_failure=self.last_failure(),
            remaining_s=max(0.0, self._cooldown_remaining()),
        )

    def _move_to(self, new: BreakerState) -> None:
        old, self._state = self._state, new
        log = logger.warning if new is BreakerState.OPEN else logger.info
        log(
            "circuit breaker %s -> %s",
            old,
            new,
            extra={
                "breaker_old": str(old),
                "breaker_new": str(new),
                "consecutive_failures": self._consecutive_failures,
                "trips": self._trips,
            },
        )
        if self._on_state_change is not None:
            self._on_state_change(old, new)
