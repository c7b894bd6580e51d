"""What the provider's own calls say about Gemini's health, and the key check's vocabulary.

`ProviderHealth` is evidence, kept by the resilience layer: the latest
service-side failure, the latest success, whether the fallback answers.
`live_health()` summarises it with the breaker's state for statistics.
The gemini component's verdict, and the ERROR it implies, are decided in
one place only: agentd/telemetry/gemini.py (GeminiHealth), which combines
this with the key check.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import NamedTuple

from agentd.providers.breaker import COUNTED_FAILURES, BreakerState, BreakerStatistics
from agentd.providers.errors import ErrorKind, ProviderError
from agentd.providers.texts import kind_and_reason

# Failures that say something about the service (or key), not the request.
_HEALTH_KINDS = COUNTED_FAILURES | {
    ErrorKind.RATE_LIMITED,
    ErrorKind.NOT_FOUND,
    ErrorKind.UNAVAILABLE,
    ErrorKind.NO_KEY,
}


class HealthStatus(enum.StrEnum):
    OK = "ok"
    DEGRADED = "degraded"  # answering, but recent failures
    FAILED = "failed"  # not answering with the model (no key, key rejected, breaker open)


class Health(NamedTuple):
    status: HealthStatus
    reason: str


class KeyStatus(enum.StrEnum):
    OK = "ok"
    MISSING = "missing"
    REJECTED = "rejected"
    UNREACHABLE = "unreachable"
    RATE_LIMITED = "rate_limited"  # the key works; its quota is spent for now
    MISCONFIGURED = "misconfigured"  # the key works, the [gemini] settings do not


class KeyCheck(NamedTuple):
    status: KeyStatus
    detail: str


def key_status(error: ProviderError) -> KeyStatus:
    """What a failed key check says about the key."""
    if error.kind is ErrorKind.AUTH:
        return KeyStatus.REJECTED
    if error.kind is ErrorKind.RATE_LIMITED:
        return KeyStatus.RATE_LIMITED
    if error.kind is ErrorKind.NO_KEY:
        return KeyStatus.MISSING
    if error.kind in (ErrorKind.NOT_FOUND, ErrorKind.INVALID_REQUEST):
        return KeyStatus.MISCONFIGURED
    return KeyStatus.UNREACHABLE


class ProviderHealth:
    """The evidence of the provider's calls and key checks."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._problem: ProviderError | None = None  # the latest service-side failure
        self._fallback_why: str | None = None  # set while the fallback answers
        self._fallback_active = False
        self._last_success_at: float | None = None
        self._failed_since_success = False

    def record(self, error: ProviderError | None) -> bool:
        """A call or key check ended (None: the service worked); True if that is news.

        A success is news after any failure (a failed key check, say), even one
        that left the live verdict alone; a failure always is.
        """
        news = error is not None or self._failed_since_success
        self._failed_since_success = error is not None
        if error is None:
            self._last_success_at = self._clock()
        if error is None or error.kind in _HEALTH_KINDS:
            self._problem = error
        return news

    def record_answer(self, *, fallback_used: bool, primary_failure: str | None) -> None:
        self._fallback_active = fallback_used
        self._fallback_why = primary_failure if fallback_used else None

    def last_success_age_s(self) -> float | None:
        """Seconds since the service last proved to work, None if it never did."""
        if self._last_success_at is None:
            return None
        return max(0.0, self._clock() - self._last_success_at)

    def live(self, configured: bool, breaker: BreakerStatistics) -> Health:
        """The calls' own summary: no key, the breaker, the latest failure, the fallback."""
        if not configured:
            return Health(HealthStatus.FAILED, "no API key configured")
        latest = self._problem
        if breaker.state is BreakerState.OPEN:
            last = kind_and_reason(breaker.last_failure_kind, breaker.last_failure_reason)
            return Health(
                HealthStatus.FAILED,
                f"circuit breaker open: {breaker.consecutive_failures} consecutive"
                f" failures (last: {last})",
            )
        if latest is not None and latest.kind is ErrorKind.AUTH:
            return Health(HealthStatus.FAILED, "API key rejected")
        if latest is not None and latest.kind is ErrorKind.NOT_FOUND:
            return Health(HealthStatus.FAILED, f"model not found: {latest.message}")
        if breaker.state is BreakerState.HALF_OPEN:
            return Health(HealthStatus.DEGRADED, "circuit breaker half-open: trial call pending")
        if latest is not None and latest.kind is ErrorKind.RATE_LIMITED:
            return Health(
                HealthStatus.DEGRADED, "rate-limited: Gemini's quota for this key is exhausted"
            )
        if latest is not None:
            return Health(
                HealthStatus.DEGRADED,
                f"recent failure: {kind_and_reason(latest.kind, latest.reason)}",
            )
        if self._fallback_active:
            why = f" ({self._fallback_why})" if self._fallback_why else ""
            return Health(
                HealthStatus.DEGRADED, f"the fallback model answers; the primary is failing{why}"
            )
        return Health(HealthStatus.OK, "ok")
