"""The circuit breaker on its own, on a fake clock: milliseconds, no provider."""

from __future__ import annotations

import pytest

from agentd.providers.breaker import BreakerState, CircuitBreaker
from agentd.providers.errors import CircuitOpen, ErrorKind
from tests.fakes import FakeClock


def breaker(threshold: int = 3, cooldown_s: float = 30.0) -> tuple[CircuitBreaker, FakeClock,
                                                                   list[tuple[str, str]]]:
    clock = FakeClock()
    moves: list[tuple[str, str]] = []
    b = CircuitBreaker(threshold, cooldown_s, clock=clock,
                       on_state_change=lambda old, new: moves.append((old, new)))
    return b, clock, moves


def fail(b: CircuitBreaker, times: int) -> None:
    for _ in range(times):
        b.acquire_nowait()
        b.record_failure(ErrorKind.TRANSIENT, "ConnectError")


def test_it_opens_after_the_threshold_of_consecutive_failures_only() -> None:
    b, _, moves = breaker(threshold=3)
    fail(b, 2)
    b.acquire_nowait()
    b.record_success()  # resets the count
    fail(b, 2)
    assert b.state is BreakerState.CLOSED and moves == []
    fail(b, 1)
    assert b.state is BreakerState.OPEN and moves == [("closed", "open")]
    assert b.statistics().trips == 1


def test_an_open_breaker_refuses_until_the_cooldown_has_passed() -> None:
    b, clock, _ = breaker(threshold=1, cooldown_s=30)
    fail(b, 1)
    clock.advance(29.5)
    with pytest.raises(CircuitOpen, match=r"1 consecutive failures \(last: transient: "
                                          r"ConnectError\); next try in 0s") as refused:
        b.acquire_nowait()
    assert refused.value.reason == "ConnectError"
    assert b.statistics().cooldown_remaining_s == pytest.approx(0.5)


def test_after_the_cooldown_one_trial_call_goes_and_its_success_closes() -> None:
    """1. Open. 2. Cool-down passes: one trial is allowed, a second caller is refused.
    3. The trial succeeds: closed, and calls flow again."""
    b, clock, moves = breaker(threshold=1, cooldown_s=30)
    fail(b, 1)
    clock.advance(30)
    b.acquire_nowait()
    assert b.state is BreakerState.HALF_OPEN
    with pytest.raises(CircuitOpen, match="a trial call is checking"):
        b.acquire_nowait()
    b.record_success()
    b.acquire_nowait()
    assert moves == [("closed", "open"), ("open", "half_open"), ("half_open", "closed")]


def test_a_failed_trial_opens_again_for_a_whole_cooldown() -> None:
    b, clock, _ = breaker(threshold=5, cooldown_s=30)
    fail(b, 5)
    clock.advance(30)
    fail(b, 1)  # the trial: one failure is enough in half-open
    stats = b.statistics()
    assert (stats.state, stats.trips, stats.cooldown_remaining_s) == (BreakerState.OPEN, 2, 30)


def test_a_cancelled_trial_frees_the_slot_without_a_verdict() -> None:
    b, clock, _ = breaker(threshold=1, cooldown_s=30)
    fail(b, 1)
    clock.advance(30)
    b.acquire_nowait()
    b.release()
    b.acquire_nowait()  # a new trial may go
    assert b.state is BreakerState.HALF_OPEN


def test_a_success_from_before_the_trip_does_not_cut_the_cooldown_short() -> None:
    b, _, _ = breaker(threshold=1, cooldown_s=30)
    b.acquire_nowait()  # a slow call, started while closed
    fail(b, 1)
    b.record_success()  # ... that answers after the trip
    assert b.state is BreakerState.OPEN
    with pytest.raises(CircuitOpen):
        b.acquire_nowait()
