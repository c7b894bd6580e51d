"""The retry schedule on its own: backoff with full jitter, Retry-After, deadline, fallback."""

from __future__ import annotations

import random
from typing import Any

import pytest

from agentd.providers.errors import (
    AuthError,
    Blocked,
    InvalidRequest,
    ProviderError,
    RateLimited,
    TransientError,
)
from agentd.providers.retry import RetrySchedule
from agentd.providers.settings import ProviderSettings
from tests.fakes import FakeClock

FAR = 1e9  # a deadline that never interferes


def schedule(seed: int = 7, **overrides: Any) -> tuple[RetrySchedule, FakeClock]:
    values: dict[str, Any] = {"max_attempts": 10, "backoff_base_s": 0.5,
                              "backoff_max_s": 8.0} | overrides
    clock = FakeClock()
    return RetrySchedule(ProviderSettings(**values), clock, random.Random(seed)), clock


def test_backoff_is_full_jitter_under_a_doubling_ceiling_capped_at_the_maximum() -> None:
    s, _ = schedule(seed=3)
    delays = [s.delay(TransientError("503"), n, FAR) for n in range(1, 8)]
    expected = random.Random(3)
    ceilings = [0.5, 1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
    assert delays == [expected.uniform(0, c) for c in ceilings]
    assert all(d is not None and 0 <= d <= c for d, c in zip(delays, ceilings, strict=True))


def test_the_services_requested_delay_replaces_the_backoff() -> None:
    s, _ = schedule()
    assert s.delay(RateLimited("429", retry_after=37.0), 1, FAR) == 37.0


@pytest.mark.parametrize("error", [AuthError("401"), InvalidRequest("400"),
                                   Blocked("SAFETY")])
def test_only_transient_failures_and_rate_limits_are_retried(error: ProviderError) -> None:
    s, _ = schedule()
    assert s.delay(error, 1, FAR) is None


def test_no_retry_once_max_attempts_have_failed() -> None:
    s, _ = schedule(max_attempts=3)
    assert s.delay(TransientError("503"), 2, FAR) is not None
    assert s.delay(TransientError("503"), 3, FAR) is None


def test_a_wait_that_would_end_at_the_deadline_is_not_taken() -> None:
    s, clock = schedule()
    error = RateLimited("429", retry_after=10.0)
    assert s.delay(error, 1, clock() + 10.0) is None
    assert s.delay(error, 1, clock() + 10.5) == 10.0
    clock.advance(1)
    assert s.delay(error, 1, clock() + 9.0) is None


def test_the_fallback_is_tried_only_when_distinct_and_keeps_one_attempts_time() -> None:
    s, _ = schedule(model="a", fallback_model="b", attempt_timeout_s=30.0, deadline_s=90.0)
    assert s.models("a") == ("a", "b")
    assert s.models("b") == ("b",)
    assert s.fallback_reserve() == 30.0
    short, _ = schedule(fallback_model="", attempt_timeout_s=30.0, deadline_s=20.0)
    assert short.models("a") == ("a",)
    assert short.fallback_reserve() == 10.0
