"""Token buckets, per-peer budgets, the log throttle and the chat admission queue."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

from agentd.errors import Busy
from agentd.limits import (
    AdmissionQueue,
    AdmissionStatistics,
    Budget,
    KeyedBuckets,
    QueueFull,
    RateLimiter,
    Throttle,
    TokenBucket,
)
from agentd.protocol import ErrorCode
from tests.fakes import FakeClock


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(100.0)


# Token bucket


def test_a_new_bucket_admits_a_whole_burst_at_once(clock: FakeClock) -> None:
    bucket = TokenBucket(rate=1, burst=3, clock=clock)
    assert [bucket.try_acquire() for _ in range(3)] == [0.0, 0.0, 0.0]


def test_an_empty_bucket_says_exactly_how_long_to_wait(clock: FakeClock) -> None:
    bucket = TokenBucket(rate=4, burst=1, clock=clock)
    bucket.try_acquire()
    clock.advance(0.1)
    assert bucket.try_acquire() == pytest.approx(0.15)


def test_waiting_the_retry_after_is_enough(clock: FakeClock) -> None:
    bucket = TokenBucket(rate=3, burst=1, clock=clock)
    bucket.try_acquire()
    clock.advance(bucket.try_acquire())  # 1/3 s: inexact in binary floating point
    assert bucket.try_acquire() == 0.0


def test_a_refused_request_takes_no_tokens(clock: FakeClock) -> None:
    bucket = TokenBucket(rate=1, burst=1, clock=clock)
    bucket.try_acquire()
    clock.advance(0.5)
    assert bucket.try_acquire() == bucket.try_acquire() == 0.5


def test_a_bucket_refills_no_further_than_its_burst(clock: FakeClock) -> None:
    bucket = TokenBucket(rate=10, burst=2, clock=clock)
    clock.advance(3600)
    assert bucket.available() == 2


def test_asking_for_more_than_the_burst_is_an_error(clock: FakeClock) -> None:
    with pytest.raises(ValueError, match="never fit"):
        TokenBucket(rate=1, burst=2, clock=clock).try_acquire(3)


# Keyed buckets


def test_keys_have_independent_buckets(clock: FakeClock) -> None:
    buckets = KeyedBuckets[int](rate=1, burst=1, clock=clock)
    assert buckets.try_acquire(1000) == 0.0
    assert buckets.try_acquire(1000) > 0
    assert buckets.try_acquire(1001) == 0.0


def test_full_buckets_are_dropped_first_when_the_cap_is_reached(clock: FakeClock) -> None:
    buckets = KeyedBuckets[int](rate=1, burst=1, clock=clock, max_keys=2)
    buckets.try_acquire(1)
    clock.advance(10)  # bucket 1 refills: full again
    buckets.try_acquire(2)
    buckets.try_acquire(3)
    assert (1 in buckets, 2 in buckets, 3 in buckets) == (False, True, True)


def test_the_least_recently_used_bucket_goes_when_none_is_full(clock: FakeClock) -> None:
    buckets = KeyedBuckets[int](rate=1, burst=1, clock=clock, max_keys=2)
    buckets.try_acquire(1)
    buckets.try_acquire(2)
    buckets.try_acquire(1)  # 1 is now the most recently used
    buckets.try_acquire(3)
    assert (1 in buckets, 2 in buckets, 3 in buckets) == (True, False, True)


def test_prune_drops_every_full_bucket_and_keeps_the_others(clock: FakeClock) -> None:
    buckets = KeyedBuckets[int](rate=1, burst=1, clock=clock)
    buckets.try_acquire(1)
    clock.advance(10)
    buckets.try_acquire(2)
    assert buckets.prune() == 1
    assert (1 in buckets, 2 in buckets) == (False, True)


def test_keyed_buckets_never_hold_more_than_the_cap(clock: FakeClock) -> None:
    buckets = KeyedBuckets[int](rate=1, burst=1, clock=clock, max_keys=50)
    for uid in range(1000):
        buckets.try_acquire(uid)
    assert len(buckets) == 50


# Rate limiter


def limiter(clock: FakeClock) -> RateLimiter:
    return RateLimiter(
        per_peer={"chat": Budget(rate=1, burst=2), "cheap": Budget(rate=10, burst=5)},
        per_session={"chat": Budget(rate=1, burst=1)},
        clock=clock,
    )


def test_each_peer_uid_has_its_own_budget(clock: FakeClock) -> None:
    limits = limiter(clock)
    limits.try_acquire(1000, None, "chat")
    limits.try_acquire(1000, None, "chat")
    assert limits.try_acquire(1000, None, "chat") == 1.0
    assert limits.try_acquire(1001, None, "chat") == 0.0


def test_each_session_has_its_own_budget_within_the_peer_budget(clock: FakeClock) -> None:
    limits = limiter(clock)
    assert limits.try_acquire(1000, "a", "chat") == 0.0
    assert limits.try_acquire(1000, "a", "chat") == 1.0  # session "a" spent
    assert limits.try_acquire(1000, "b", "chat") == 0.0  # peer had a second token
    assert limits.try_acquire(1000, "c", "chat") == 1.0  # now the peer is spent


def test_the_same_session_name_under_two_uids_is_two_budgets(clock: FakeClock) -> None:
    limits = limiter(clock)
    limits.try_acquire(1000, "default", "chat")
    assert limits.try_acquire(1001, "default", "chat") == 0.0


def test_a_refusal_by_the_session_budget_spends_no_peer_token(clock: FakeClock) -> None:
    limits = limiter(clock)
    limits.try_acquire(1000, "a", "chat")
    for _ in range(5):
        limits.try_acquire(1000, "a", "chat")  # all refused by session "a"
    assert limits.try_acquire(1000, "b", "chat") == 0.0


def test_a_peer_over_its_budget_does_not_make_new_sessions_tracked(clock: FakeClock) -> None:
    limits = limiter(clock)
    limits.try_acquire(1000, None, "chat")
    limits.try_acquire(1000, None, "chat")
    for n in range(100):
        limits.try_acquire(1000, f"session-{n}", "chat")
    assert limits.statistics().tracked_sessions == 0


def test_chat_and_cheap_commands_draw_on_separate_budgets(clock: FakeClock) -> None:
    limits = limiter(clock)
    limits.try_acquire(1000, None, "chat")
    limits.try_acquire(1000, None, "chat")
    assert limits.try_acquire(1000, None, "chat") > 0
    assert limits.try_acquire(1000, None, "cheap") == 0.0


def test_a_class_without_a_session_budget_ignores_the_session(clock: FakeClock) -> None:
    limits = limiter(clock)
    results = [limits.try_acquire(1000, "a", "cheap") for _ in range(5)]
    assert results == [0.0] * 5


def test_an_unknown_command_class_is_an_error(clock: FakeClock) -> None:
    with pytest.raises(ValueError, match="no budget"):
        limiter(clock).try_acquire(1000, None, "admin")


def test_budget_per_minute_converts_to_per_second() -> None:
    assert Budget.per_minute(30, burst=5) == Budget(rate=0.5, burst=5)


def test_limiter_statistics_count_refusals_and_tracked_keys(clock: FakeClock) -> None:
    limits = limiter(clock)
    limits.try_acquire(1000, "a", "chat")
    limits.try_acquire(1000, "a", "chat")
    stats = limits.statistics()
    assert (stats.tracked_peers, stats.tracked_sessions, stats.refused) == (1, 1, 1)


# Log throttle


def test_the_first_line_is_logged(clock: FakeClock) -> None:
    assert Throttle(interval=10, clock=clock).should_log()


def test_lines_inside_the_interval_are_suppressed_and_counted(clock: FakeClock) -> None:
    throttle = Throttle(interval=10, clock=clock)
    throttle.should_log()
    assert [throttle.should_log() for _ in range(3)] == [False, False, False]
    clock.advance(10)
    assert throttle.should_log()
    assert throttle.suppressed == 3


def test_the_suppressed_count_starts_over_after_each_logged_line(clock: FakeClock) -> None:
    throttle = Throttle(interval=10, clock=clock)
    throttle.should_log()
    throttle.should_log()
    clock.advance(10)
    throttle.should_log()
    clock.advance(10)
    throttle.should_log()
    assert throttle.suppressed == 0


# Admission queue


def run(scenario: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(scenario())


async def until(condition: Callable[[], bool]) -> None:
    """Let other tasks run until condition holds; a bounded poll, not a timed wait."""
    for _ in range(100):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError("condition never held")


async def hold(queue: AdmissionQueue, entered: list[str], name: str, done: asyncio.Event) -> None:
    async with queue.admit():
        entered.append(name)
        await done.wait()


def fresh(capacity: int, max_waiting: int) -> tuple[AdmissionQueue, list[str], asyncio.Event]:
    """A queue, the names of the chats that got in, and the event that ends them."""
    return AdmissionQueue(capacity, max_waiting), [], asyncio.Event()


def spawn(
    queue: AdmissionQueue, entered: list[str], name: str, done: asyncio.Event
) -> asyncio.Task[None]:
    return asyncio.create_task(hold(queue, entered, name, done))


def test_up_to_capacity_chats_run_at_once() -> None:
    async def scenario() -> None:
        queue, entered, done = fresh(capacity=2, max_waiting=1)
        tasks = [spawn(queue, entered, name, done) for name in "abc"]
        await until(lambda: queue.statistics().waiting == 1)
        assert entered == ["a", "b"]
        done.set()
        await asyncio.gather(*tasks)
        assert entered == ["a", "b", "c"]

    run(scenario)


def test_waiters_are_served_first_come_first_served() -> None:
    async def scenario() -> None:
        queue, entered, first = fresh(capacity=1, max_waiting=3)
        rest = asyncio.Event()
        tasks = [spawn(queue, entered, "a", first)]
        tasks += [spawn(queue, entered, name, rest) for name in "bcd"]
        await until(lambda: queue.statistics().waiting == 3)
        rest.set()
        first.set()
        await asyncio.gather(*tasks)
        assert entered == ["a", "b", "c", "d"]

    run(scenario)


def test_a_full_wait_queue_refuses_at_once_with_busy() -> None:
    async def scenario() -> None:
        queue, entered, done = fresh(capacity=1, max_waiting=1)
        tasks = [spawn(queue, entered, name, done) for name in "ab"]
        await until(lambda: queue.statistics().waiting == 1)
        with pytest.raises(QueueFull) as refused:
            async with queue.admit():
                pass
        assert isinstance(refused.value, Busy)
        assert refused.value.code == ErrorCode.BUSY
        done.set()
        await asyncio.gather(*tasks)

    run(scenario)


def test_statistics_report_in_flight_waiting_and_rejected() -> None:
    async def scenario() -> None:
        queue, entered, done = fresh(capacity=1, max_waiting=1)
        tasks = [spawn(queue, entered, name, done) for name in "ab"]
        await until(lambda: queue.statistics().waiting == 1)
        with pytest.raises(QueueFull):
            async with queue.admit():
                pass
        assert queue.statistics() == AdmissionStatistics(
            in_flight=1, waiting=1, capacity=1, max_waiting=1, rejected=1
        )
        done.set()
        await asyncio.gather(*tasks)
        assert queue.statistics().in_flight == 0

    run(scenario)


def test_cancelling_a_waiter_frees_its_place_in_the_queue() -> None:
    async def scenario() -> None:
        queue, entered, done = fresh(capacity=1, max_waiting=1)
        holder = spawn(queue, entered, "a", done)
        waiter = spawn(queue, entered, "b", done)
        await until(lambda: queue.statistics().waiting == 1)
        waiter.cancel()
        await asyncio.gather(waiter, return_exceptions=True)
        assert queue.statistics().waiting == 0
        late = spawn(queue, entered, "c", done)
        await until(lambda: queue.statistics().waiting == 1)  # queued, not refused
        done.set()
        await asyncio.gather(holder, late)
        assert entered == ["a", "c"]

    run(scenario)


def test_a_waiter_cancelled_just_after_its_slot_arrived_passes_the_slot_on() -> None:
    """1. A holds the only slot; B waits.
    2. A leaves: the slot is handed to B, which has not run yet.
    3. B is cancelled before it runs: it must give the slot back.
    4. The slot is free again: in_flight 0, and a new chat gets in at once.
    """

    async def scenario() -> None:
        queue, entered, done = fresh(capacity=1, max_waiting=1)
        slot = queue.admit()
        await slot.__aenter__()
        waiter = spawn(queue, entered, "b", done)
        await until(lambda: queue.statistics().waiting == 1)
        await slot.__aexit__(None, None, None)
        waiter.cancel()
        await asyncio.gather(waiter, return_exceptions=True)
        assert entered == []
        assert queue.statistics().in_flight == 0
        async with queue.admit():
            assert queue.statistics().in_flight == 1

    run(scenario)


def test_a_chat_that_raises_releases_its_slot() -> None:
    async def scenario() -> None:
        queue = AdmissionQueue(capacity=1, max_waiting=0)
        with pytest.raises(RuntimeError):
            async with queue.admit():
                raise RuntimeError("provider exploded")
        assert queue.statistics().in_flight == 0

    run(scenario)
