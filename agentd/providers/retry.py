"""When to try again: which failures are retried, how long to wait, when to fall back.

::

    delay(error, failures, stop_at)
        not retryable, or max_attempts reached ──▶ None (no retry)
        Retry-After / RetryInfo given ───────────▶ that delay
        otherwise ───────────────────────────────▶ full jitter in
                                                   [0, min(backoff_max, base * 2^(failures-1))]
        the wait would end at or past stop_at ───▶ None (let the fallback or a
                                                   degraded answer go now)

Time and randomness are injected (clock, rng) so tests check the schedule
without waiting.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from agentd.providers.errors import ErrorKind, ProviderError
from agentd.providers.settings import ProviderSettings

if TYPE_CHECKING:
    import random

RETRYABLE = frozenset({ErrorKind.TRANSIENT, ErrorKind.RATE_LIMITED})
FALLBACK_ON = frozenset({ErrorKind.TRANSIENT, ErrorKind.RATE_LIMITED, ErrorKind.NOT_FOUND})
# Waits between attempts this long or longer are announced to the client (on_wait).
ANNOUNCED_WAIT_S = 1.0


class RetrySchedule:
    """Backoff with full jitter, the service's requested delay, and the deadline."""

    def __init__(
        self,
        settings: ProviderSettings,
        clock: Callable[[], float],
        rng: random.Random | None = None,
    ) -> None:
        self._settings = settings
        self._clock = clock
        self._rng = rng  # None: made at the first backoff (see _jitter)

    def models(self, primary: str) -> tuple[str, ...]:
        """The request's model, then the fallback if distinct."""
        fallback = self._settings.fallback
        return (primary,) if fallback in (None, primary) else (primary, fallback)

    def fallback_reserve(self) -> float:
        """Time the primary must leave for the fallback: one attempt's worth."""
        return min(self._settings.attempt_timeout_s, self._settings.deadline_s / 2)

    def delay(self, error: ProviderError, failures: int, stop_at: float) -> float | None:
        """Seconds to wait before the next attempt, or None: no retry."""
        if error.kind not in RETRYABLE or failures >= self._settings.max_attempts:
            return None
        if error.retry_after is not None:
            delay = error.retry_after
        else:
            ceiling = self._settings.backoff_base_s * 2 ** (failures - 1)
            delay = self._jitter(min(self._settings.backoff_max_s, ceiling))
        # Waiting past the deadline (Retry-After included) only delays the
        # inevitable; stop here and let the fallback or a degraded answer go.
        return delay if self._clock() + delay < stop_at else None

    def _jitter(self, ceiling: float) -> float:
        """Full jitter: uniform in [0, ceiling]."""
        if self._rng is None:
            # The `random` module costs ~2 ms of import: paid at the first retry,
            # not on the daemon's path to READY.
            import random

            self._rng = random.Random()
        return self._rng.uniform(0, ceiling)
