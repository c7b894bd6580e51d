"""ResilientProvider around the real GeminiProvider and SDK, against the fake over HTTP.

Backoff and the breaker's cool-down run on an injected clock: `FakeSleep`
records each wait and moves the clock instead of sleeping. The only real
waiting is the short attempt timeout of the hang tests, which bounds real I/O.
"""

from __future__ import annotations

import asyncio
import random
import ssl
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest

from agentd.providers.base import Answer, GenerationRequest, Turn, Wait
from agentd.providers.breaker import BreakerState, CircuitBreaker
from agentd.providers.errors import ErrorKind
from agentd.providers.gemini import GeminiProvider
from agentd.providers.health import HealthStatus, KeyCheck, KeyStatus
from agentd.providers.resilience import ResilientProvider
from agentd.providers.settings import ProviderSettings
from tests.conftest import async_wait_until
from tests.fake_gemini import (
    FakeGemini,
    answer,
    context_too_long,
    drop_connection,
    forbidden,
    hang,
    invalid_key,
    malformed,
    not_found,
    prompt_blocked,
    quota_exhausted,
    rate_limited,
    server_error,
    stream_cut,
    unauthorized,
    unused_port,
)
from tests.fakes import FakeClock

PRIMARY = "gemini-flash-latest"
# Built once: every SDK client would otherwise load the CA store again (~100 ms).
TLS = ssl.create_default_context()
FALLBACK = "gemini-flash-lite-latest"
KEY = "test-key-not-secret"


class FakeSleep:
    """Records each requested wait and advances the clock by it; never sleeps."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.waits: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)
        self.clock.advance(seconds)
        await asyncio.sleep(0)


class Harness:
    """A ResilientProvider on the fake, with a fake clock, sleep and seeded randomness."""

    def __init__(self, fake: FakeGemini, api_key: str | None = KEY, seed: int = 7,
                 **overrides: Any) -> None:
        values: dict[str, Any] = {
            "base_url": fake.url, "attempt_timeout_s": 5.0, "fallback_model": "",
            "breaker_failure_threshold": 100,
        } | overrides
        self.settings = ProviderSettings(**values)
        self.clock = FakeClock()
        self.sleep = FakeSleep(self.clock)
        self.seed = seed
        self.transitions: list[tuple[BreakerState, BreakerState]] = []
        self._breaker_state = BreakerState.CLOSED
        self.provider = ResilientProvider(
            GeminiProvider(self.settings, api_key, tls=TLS), self.settings,
            clock=self.clock, sleep=self.sleep, rng=random.Random(seed),
            on_health_change=self._on_health_change,
        )

    def _on_health_change(self) -> None:
        """The breaker's moves, as the evidence they are reported as."""
        state = self.provider.statistics().breaker.state
        if state is not self._breaker_state:
            self.transitions.append((self._breaker_state, state))
            self._breaker_state = state

    async def ask(self, *texts: str) -> Answer:
        return await self.provider.generate(request(*texts))

    async def ask_streaming(self, pieces: list[str], *texts: str) -> Answer:
        async def on_chunk(text: str) -> None:
            pieces.append(text)

        return await self.provider.generate(request(*texts), on_chunk)


def request(*texts: str) -> GenerationRequest:
    roles = ("user", "model")
    turns = tuple(Turn(roles[i % 2], t) for i, t in enumerate(texts or ("hello",)))  # type: ignore[arg-type]
    return GenerationRequest(request_id="req-1", system_prompt="Be brief.", turns=turns)


@asynccontextmanager
async def harness(fake: FakeGemini, **kwargs: Any) -> AsyncIterator[Harness]:
    h = Harness(fake, **kwargs)
    try:
        yield h
    finally:
        await h.provider.aclose()


def run_with(fake: FakeGemini, scenario: Callable[[Harness], Any], **kwargs: Any) -> Any:
    async def main() -> Any:
        async with harness(fake, **kwargs) as h:
            return await scenario(h)

    return asyncio.run(main())


def models_seen(fake: FakeGemini) -> list[str | None]:
    return [r.model for r in fake.requests]


# --- retries -------------------------------------------------------------------------


def test_500_and_503_are_retried_until_success(fake_gemini: FakeGemini) -> None:
    fake_gemini.push(server_error(500), server_error(503), answer("finally"))

    async def scenario(h: Harness) -> tuple[Answer, Harness]:
        return await h.ask(), h

    result, h = run_with(fake_gemini, scenario)

    assert (result.text, result.attempts, result.degraded) == ("finally", 3, False)
    assert len(fake_gemini.requests) == 3
    assert h.provider.statistics().retries == 2


def test_backoff_is_exponential_with_full_jitter(fake_gemini: FakeGemini) -> None:
    fake_gemini.push(server_error(503), server_error(503), server_error(503), answer())

    async def scenario(h: Harness) -> list[float]:
        await h.ask()
        return h.sleep.waits

    waits = run_with(fake_gemini, scenario, max_attempts=4, backoff_base_s=0.5, backoff_max_s=1.5)

    replay = random.Random(7)
    assert waits == [replay.uniform(0, 0.5), replay.uniform(0, 1.0), replay.uniform(0, 1.5)]


def test_429_retry_after_header_is_the_wait(fake_gemini: FakeGemini) -> None:
    fake_gemini.push(rate_limited(retry_after=7), answer("ok"))

    async def scenario(h: Harness) -> tuple[Answer, list[float]]:
        return await h.ask(), h.sleep.waits

    result, waits = run_with(fake_gemini, scenario)

    assert waits == [7.0]
    assert result.text == "ok"


def test_429_retry_info_in_the_body_is_the_wait(fake_gemini: FakeGemini) -> None:
    fake_gemini.push(rate_limited(retry_delay_s=4), answer("ok"))

    async def scenario(h: Harness) -> list[float]:
        await h.ask()
        return h.sleep.waits

    assert run_with(fake_gemini, scenario) == [4.0]


def test_retry_after_past_the_deadline_skips_to_the_fallback(fake_gemini: FakeGemini) -> None:
    fake_gemini.push(rate_limited(retry_after=500), model=PRIMARY)
    fake_gemini.push(answer("from lite"), model=FALLBACK)

    async def scenario(h: Harness) -> tuple[Answer, list[float]]:
        return await h.ask(), h.sleep.waits

    result, waits = run_with(fake_gemini, scenario, fallback_model=FALLBACK, deadline_s=90)

    assert waits == []
    assert (result.text, result.fallback_used) == ("from lite", True)
    assert models_seen(fake_gemini) == [PRIMARY, FALLBACK]


def test_a_hang_past_the_attempt_timeout_is_retried(fake_gemini: FakeGemini) -> None:
    fake_gemini.push(hang(), answer("second try"))
    started = time.monotonic()

    async def scenario(h: Harness) -> Answer:
        return await h.ask()

    result = run_with(fake_gemini, scenario, attempt_timeout_s=0.4)

    assert (result.text, result.attempts) == ("second try", 2)
    assert time.monotonic() - started < 3
    assert len(fake_gemini.requests) == 2


def test_a_dropped_connection_and_a_malformed_body_are_retried(fake_gemini: FakeGemini) -> None:
    fake_gemini.push(drop_connection(), malformed(), answer("ok"))

    async def scenario(h: Harness) -> tuple[Answer, dict[str, int]]:
        result = await h.ask()
        return result, dict(h.provider.statistics().errors)

    result, errors = run_with(fake_gemini, scenario)

    assert (result.text, result.attempts) == ("ok", 3)
    assert errors == {"transient": 2}


def test_a_breaker_opened_by_a_rejected_key_says_so_not_unreachable(
    fake_gemini: FakeGemini,
) -> None:
    """1. Rejected-key answers open the breaker. 2. While it refuses calls, the degraded
    answer names the rejected key (what the operator must fix), not an outage."""
    fake_gemini.set_default(forbidden())

    async def scenario(h: Harness) -> Answer:
        for _ in range(3):
            await h.ask()
        return await h.ask()

    result = run_with(fake_gemini, scenario, breaker_failure_threshold=3, max_attempts=1)

    assert len(fake_gemini.requests) == 3  # the fourth was refused by the breaker
    assert result.degraded and "key was rejected" in result.text
    assert "unreachable" not in result.text


def test_refused_connections_end_in_a_degraded_answer(fake_gemini: FakeGemini) -> None:
    async def scenario(h: Harness) -> Answer:
        return await h.ask()

    result = run_with(fake_gemini, scenario, base_url=f"http://127.0.0.1:{unused_port()}",
                      max_attempts=3)

    assert result.degraded
    assert result.text.startswith("[degraded]") and "unreachable" in result.text
    assert (result.attempts, result.error_kind) == (3, "transient")


def test_the_deadline_bounds_retries(fake_gemini: FakeGemini) -> None:
    fake_gemini.set_default(server_error(503))

    async def scenario(h: Harness) -> tuple[Answer, list[float]]:
        return await h.ask(), h.sleep.waits

    result, waits = run_with(fake_gemini, scenario, max_attempts=50, backoff_base_s=4,
                             backoff_max_s=4, deadline_s=10, seed=1)

    assert result.degraded
    assert sum(waits) < 10
    assert len(fake_gemini.requests) == len(waits) + 1


# --- not retried -----------------------------------------------------------------------


@pytest.mark.parametrize("reply", [unauthorized(), forbidden(), invalid_key()],
                         ids=["401", "403", "400-key-invalid"])
def test_a_rejected_key_is_not_retried_and_shows_in_health(fake_gemini: FakeGemini,
                                                           reply: Any) -> None:
    fake_gemini.push(reply)

    async def scenario(h: Harness) -> tuple[Answer, Any]:
        return await h.ask(), h.provider.statistics()

    result, stats = run_with(fake_gemini, scenario, fallback_model=FALLBACK)

    assert result.degraded and "key was rejected" in result.text
    assert len(fake_gemini.requests) == 1
    assert stats.errors == {"auth": 1}
    assert stats.last_error_kind is ErrorKind.AUTH
    assert stats.breaker.consecutive_failures == 1
    assert (stats.health.status, stats.health.reason) == (HealthStatus.FAILED, "API key rejected")


def test_no_key_answers_with_a_configuration_hint_and_no_request(fake_gemini: FakeGemini) -> None:
    async def scenario(h: Harness) -> tuple[Answer, Any]:
        return await h.ask(), h.provider.statistics()

    result, stats = run_with(fake_gemini, scenario, api_key=None)

    assert result.degraded and result.error_kind == "no_key"
    assert "GEMINI_API_KEY" in result.text and "gemini-api-key" in result.text
    assert "key file" in result.text
    assert fake_gemini.requests == []
    assert (result.attempts, stats.attempts) == (0, 0)
    assert stats.health.status is HealthStatus.FAILED
    assert stats.health.reason == "no API key configured"


# --- circuit breaker ---------------------------------------------------------------------


def test_breaker_opens_after_the_threshold_and_then_refuses_without_calling(
    fake_gemini: FakeGemini,
) -> None:
    """1. Three failing requests open the breaker (threshold 3, one attempt each).
    2. The fourth is answered degraded at once, without an HTTP request.
    """
    fake_gemini.set_default(server_error(503))

    async def scenario(h: Harness) -> tuple[Answer, Harness]:
        for _ in range(3):
            await h.ask()
        return await h.ask(), h

    result, h = run_with(fake_gemini, scenario, breaker_failure_threshold=3, max_attempts=1)

    assert len(fake_gemini.requests) == 3
    assert result.degraded and result.error_kind == "unavailable"
    assert "unreachable" in result.text
    stats = h.provider.statistics()
    assert stats.breaker.state is BreakerState.OPEN and stats.breaker.trips == 1
    assert stats.health.status is HealthStatus.FAILED
    assert h.transitions == [(BreakerState.CLOSED, BreakerState.OPEN)]


def test_breaker_half_opens_after_the_cooldown_and_closes_on_success(
    fake_gemini: FakeGemini,
) -> None:
    """1. Two failures open the breaker (threshold 2).
    2. Just before the cool-down ends, a request is still refused without a call.
    3. After the cool-down (on the injected clock) one trial goes out and succeeds.
    4. The breaker is closed; the callback saw open, half-open, closed.
    """
    fake_gemini.push(server_error(503), server_error(503))

    async def scenario(h: Harness) -> tuple[Answer, Answer, Harness]:
        await h.ask()
        await h.ask()
        h.clock.advance(29)
        refused = await h.ask()
        h.clock.advance(1)
        return refused, await h.ask(), h

    refused, result, h = run_with(fake_gemini, scenario, breaker_failure_threshold=2,
                                  breaker_cooldown_s=30, max_attempts=1)

    assert refused.error_kind == "unavailable" and len(fake_gemini.requests) == 3
    assert (result.text, result.degraded) == ("This is a fake Gemini answer.", False)
    assert h.provider.statistics().breaker.state is BreakerState.CLOSED
    assert h.transitions == [(BreakerState.CLOSED, BreakerState.OPEN),
                             (BreakerState.OPEN, BreakerState.HALF_OPEN),
                             (BreakerState.HALF_OPEN, BreakerState.CLOSED)]


def test_a_failed_trial_reopens_the_breaker(fake_gemini: FakeGemini) -> None:
    fake_gemini.set_default(server_error(503))

    async def scenario(h: Harness) -> Any:
        await h.ask()
        h.clock.advance(30)
        await h.ask()
        return h.provider.statistics().breaker

    breaker = run_with(fake_gemini, scenario, breaker_failure_threshold=1,
                       breaker_cooldown_s=30, max_attempts=1)

    assert (breaker.state, breaker.trips) == (BreakerState.OPEN, 2)
    assert breaker.cooldown_remaining_s == 30


def test_a_blocked_answer_is_not_a_breaker_failure(fake_gemini: FakeGemini) -> None:
    fake_gemini.push(server_error(503), prompt_blocked("SAFETY"))

    async def scenario(h: Harness) -> tuple[Answer, Any]:
        first = await h.ask()
        assert first.degraded
        return await h.ask(), h.provider.statistics()

    result, stats = run_with(fake_gemini, scenario, max_attempts=1)

    assert result.text.startswith("[blocked]") and "SAFETY" in result.text
    assert (result.degraded, result.error_kind) == (False, "blocked")
    assert len(fake_gemini.requests) == 2
    assert stats.breaker.consecutive_failures == 0
    assert stats.blocked == 1


def test_breaker_unit_ignores_a_late_success_while_open() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(1, 10, clock=clock)
    breaker.acquire_nowait()
    breaker.record_failure(ErrorKind.TRANSIENT)

    breaker.record_success()  # a call that started before the trip

    assert breaker.state is BreakerState.OPEN


# --- fallback ------------------------------------------------------------------------------


def test_the_fallback_model_answers_when_the_primary_keeps_failing(
    fake_gemini: FakeGemini,
) -> None:
    fake_gemini.set_default(server_error(503), model=PRIMARY)
    fake_gemini.set_default(answer("lite answer"), model=FALLBACK)

    async def scenario(h: Harness) -> tuple[Answer, Any]:
        return await h.ask(), h.provider.statistics()

    result, stats = run_with(fake_gemini, scenario, fallback_model=FALLBACK, max_attempts=3)

    assert models_seen(fake_gemini) == [PRIMARY, PRIMARY, PRIMARY, FALLBACK]
    assert (result.text, result.model, result.fallback_used) == ("lite answer", FALLBACK, True)
    assert result.attempts == 4 and not result.degraded
    assert result.notice is not None and FALLBACK in result.notice
    assert (stats.fallbacks, stats.retries, stats.errors) == (1, 2, {"transient": 3})
    assert stats.health.status is HealthStatus.DEGRADED


def test_an_unknown_primary_model_goes_straight_to_the_fallback(fake_gemini: FakeGemini) -> None:
    fake_gemini.push(not_found(PRIMARY), model=PRIMARY)

    async def scenario(h: Harness) -> Answer:
        return await h.ask()

    result = run_with(fake_gemini, scenario, fallback_model=FALLBACK)

    assert models_seen(fake_gemini) == [PRIMARY, FALLBACK]
    assert result.fallback_used


def test_a_request_for_another_model_still_falls_back(fake_gemini: FakeGemini) -> None:
    fake_gemini.push(not_found("custom-model"), model="custom-model")

    async def scenario(h: Harness) -> Answer:
        req = GenerationRequest("req-2", "", (Turn("user", "hi"),), model="custom-model")
        return await h.provider.generate(req)

    result = run_with(fake_gemini, scenario, fallback_model=FALLBACK)

    assert models_seen(fake_gemini) == ["custom-model", FALLBACK]
    assert result.model == FALLBACK and result.fallback_used


def test_both_models_failing_ends_degraded(fake_gemini: FakeGemini) -> None:
    fake_gemini.set_default(server_error(500))

    async def scenario(h: Harness) -> Answer:
        return await h.ask()

    result = run_with(fake_gemini, scenario, fallback_model=FALLBACK, max_attempts=2)

    assert models_seen(fake_gemini) == [PRIMARY, PRIMARY, FALLBACK, FALLBACK]
    assert result.degraded and result.model == FALLBACK and result.attempts == 4


# --- streaming ------------------------------------------------------------------------------


def test_a_stream_failing_before_any_chunk_is_retried(fake_gemini: FakeGemini) -> None:
    fake_gemini.push(server_error(503), answer(chunks=("a", "b", "c")))
    pieces: list[str] = []

    async def scenario(h: Harness) -> Answer:
        return await h.ask_streaming(pieces)

    result = run_with(fake_gemini, scenario)

    assert pieces == ["a", "b", "c"]
    assert (result.text, result.attempts) == ("abc", 2)


@pytest.mark.parametrize("how", ["disconnect", "error"])
def test_a_stream_failing_mid_way_keeps_what_arrived_and_is_not_retried(
    fake_gemini: FakeGemini, how: Any,
) -> None:
    fake_gemini.push(stream_cut(2, chunks=("Once ", "upon ", "a ", "time"), how=how))
    pieces: list[str] = []

    async def scenario(h: Harness) -> Answer:
        return await h.ask_streaming(pieces)

    result = run_with(fake_gemini, scenario, fallback_model=FALLBACK)

    assert pieces == ["Once ", "upon "]
    assert result.text == "Once upon "
    assert result.degraded and result.error_kind == "transient"
    assert result.notice is not None and "cut off" in result.notice
    assert len(fake_gemini.requests) == 1


def test_a_degraded_stream_sends_its_text_through_on_chunk(fake_gemini: FakeGemini) -> None:
    pieces: list[str] = []

    async def scenario(h: Harness) -> Answer:
        return await h.ask_streaming(pieces)

    result = run_with(fake_gemini, scenario, api_key=None)

    assert pieces == [result.text] and result.degraded


def test_a_slow_but_steady_stream_is_not_timed_out(fake_gemini: FakeGemini) -> None:
    """The attempt timeout of a stream is per silence, not for the whole answer."""
    # Four silences of 0.15 s: each well inside the 0.5 s timeout, together past it.
    fake_gemini.push(answer(chunks=("a", "b", "c", "d", "e"), chunk_delay_s=0.15))
    pieces: list[str] = []

    async def scenario(h: Harness) -> Answer:
        return await h.ask_streaming(pieces)

    result = run_with(fake_gemini, scenario, attempt_timeout_s=0.5)

    assert result.text == "abcde" and result.attempts == 1


# --- context too long, safety -----------------------------------------------------------------


def test_context_too_long_trims_the_oldest_turns_and_retries_once(fake_gemini: FakeGemini) -> None:
    fake_gemini.push(context_too_long(), answer("short enough"))
    history = ("old question " * 50, "old answer " * 50, "recent question", "recent answer",
               "now")

    async def scenario(h: Harness) -> Answer:
        return await h.ask(*history)

    result = run_with(fake_gemini, scenario)

    first, second = fake_gemini.requests
    assert len(first.contents) == 5
    assert second.texts == ["recent question", "recent answer", "now"]
    assert result.text == "short enough" and not result.degraded
    assert result.notice is not None and "2 oldest" in result.notice


def test_context_too_long_twice_gives_up_with_advice(fake_gemini: FakeGemini) -> None:
    fake_gemini.set_default(context_too_long())

    async def scenario(h: Harness) -> Answer:
        return await h.ask("old " * 100, "older answer " * 100, "now")

    result = run_with(fake_gemini, scenario, fallback_model=FALLBACK)

    assert len(fake_gemini.requests) == 2
    assert result.degraded and result.error_kind == "context_too_long"
    assert "too long" in result.text


def test_a_single_message_too_long_is_not_retried(fake_gemini: FakeGemini) -> None:
    fake_gemini.set_default(context_too_long())

    async def scenario(h: Harness) -> Answer:
        return await h.ask("x" * 1000)

    result = run_with(fake_gemini, scenario)

    assert len(fake_gemini.requests) == 1 and result.error_kind == "context_too_long"


def test_a_safety_block_in_a_stream_is_reported_through_on_chunk(fake_gemini: FakeGemini) -> None:
    fake_gemini.push(prompt_blocked("SAFETY"))
    pieces: list[str] = []

    async def scenario(h: Harness) -> Answer:
        return await h.ask_streaming(pieces)

    result = run_with(fake_gemini, scenario)

    assert pieces == [result.text] and result.text.startswith("[blocked]")
    assert len(fake_gemini.requests) == 1


# --- cancellation, key checks, statistics -------------------------------------------------------


def test_cancellation_propagates_and_frees_the_trial_slot(fake_gemini: FakeGemini) -> None:
    """1. The breaker is half-open; a request takes the single trial slot and hangs.
    2. The caller cancels it: CancelledError comes out of generate().
    3. The slot is free again: the next request gets through and closes the breaker.
    """
    fake_gemini.push(server_error(503), hang(), answer("back"))

    async def scenario(h: Harness) -> tuple[bool, Answer]:
        await h.ask()
        h.clock.advance(30)
        task = asyncio.create_task(h.ask())
        await async_wait_until(lambda: len(fake_gemini.requests) == 2)
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            cancelled = True
        return cancelled, await h.ask()

    cancelled, result = run_with(fake_gemini, scenario, breaker_failure_threshold=1,
                                 breaker_cooldown_s=30, max_attempts=1)

    assert cancelled and result.text == "back"


def test_check_key_reports_ok_rejected_unreachable_and_missing(fake_gemini: FakeGemini) -> None:
    fake_gemini.push(unauthorized(), action="get")

    async def checks(h: Harness) -> list[KeyStatus]:
        return [(await h.provider.check_key()).status for _ in range(2)]

    async def one(h: Harness) -> KeyStatus:
        return (await h.provider.check_key()).status

    assert run_with(fake_gemini, checks) == [KeyStatus.REJECTED, KeyStatus.OK]
    assert [(r.method, r.model) for r in fake_gemini.requests] == [("GET", PRIMARY)] * 2
    refused = f"http://127.0.0.1:{unused_port()}"
    assert run_with(fake_gemini, one, base_url=refused) is KeyStatus.UNREACHABLE
    assert run_with(fake_gemini, one, api_key=None) is KeyStatus.MISSING
    assert len(fake_gemini.requests) == 2


def test_check_key_is_the_breakers_trial_after_the_cooldown(fake_gemini: FakeGemini) -> None:
    fake_gemini.push(server_error(503))

    async def scenario(h: Harness) -> tuple[KeyStatus, Harness]:
        await h.ask()
        h.clock.advance(30)
        return (await h.provider.check_key()).status, h

    status, h = run_with(fake_gemini, scenario, breaker_failure_threshold=1,
                         breaker_cooldown_s=30, max_attempts=1)

    assert status is KeyStatus.OK
    assert h.transitions[-1] == (BreakerState.HALF_OPEN, BreakerState.CLOSED)
    assert h.provider.statistics().health.status is HealthStatus.OK


def test_statistics_count_every_outcome(fake_gemini: FakeGemini) -> None:
    fake_gemini.push(rate_limited(retry_after=1), answer("one"), prompt_blocked(),
                     unauthorized())

    async def scenario(h: Harness) -> Any:
        for _ in range(3):
            await h.ask()
        return h.provider.statistics()

    stats = run_with(fake_gemini, scenario)

    assert (stats.requests, stats.answered, stats.attempts, stats.retries) == (3, 1, 4, 1)
    assert (stats.degraded, stats.blocked, stats.fallbacks) == (1, 1, 0)
    assert dict(stats.errors) == {"rate_limited": 1, "blocked": 1, "auth": 1}
    assert stats.last_error_kind is ErrorKind.AUTH




# --- quota, waits and named causes -------------------------------------------------------


def test_quota_429s_never_open_the_breaker_and_health_says_rate_limited(
    fake_gemini: FakeGemini,
) -> None:
    """Ten quota 429s in a row with a breaker that opens after two failures: closed,
    and health is degraded (rate-limited), not failed."""
    fake_gemini.set_default(quota_exhausted(0.5))

    async def scenario(h: Harness) -> tuple[list[Answer], Harness]:
        return [await h.ask() for _ in range(5)], h

    answers, h = run_with(fake_gemini, scenario, breaker_failure_threshold=2, max_attempts=2)

    assert len(fake_gemini.requests) == 10
    assert all(a.error_kind == "rate_limited" and "unreachable" not in a.text for a in answers)
    stats = h.provider.statistics()
    assert stats.breaker.state is BreakerState.CLOSED and h.transitions == []
    assert stats.health.status is HealthStatus.DEGRADED and "rate-limited" in stats.health.reason


def test_long_waits_are_announced_with_their_cause_and_short_ones_are_not(
    fake_gemini: FakeGemini,
) -> None:
    fake_gemini.push(server_error(503), quota_exhausted(12), answer("ok"))
    waits: list[Wait] = []

    async def on_wait(wait: Wait) -> None:
        waits.append(wait)

    async def scenario(h: Harness) -> Answer:
        return await h.provider.generate(request("hello"), on_wait=on_wait)

    result = run_with(fake_gemini, scenario, backoff_base_s=0.01, backoff_max_s=0.05)

    assert result.text == "ok"
    assert [(w.seconds, w.model, w.reason) for w in waits] == [
        (12, PRIMARY, "RESOURCE_EXHAUSTED")]
    assert "quota" in waits[0].message and "12s" in waits[0].message


def test_a_breaker_refusal_names_the_last_failures_cause(fake_gemini: FakeGemini) -> None:
    async def scenario(h: Harness) -> Answer:
        await h.ask()
        return await h.ask()

    port = unused_port()
    refused = run_with(fake_gemini, scenario, base_url=f"http://127.0.0.1:{port}",
                       breaker_failure_threshold=1, max_attempts=1)

    assert refused.error_kind == "unavailable"
    assert "ConnectError" in refused.text


def test_check_key_on_a_spent_quota_is_rate_limited_not_unreachable(
    fake_gemini: FakeGemini,
) -> None:
    fake_gemini.push(quota_exhausted(30), action="get")

    async def scenario(h: Harness) -> KeyCheck:
        return await h.provider.check_key()

    assert run_with(fake_gemini, scenario).status is KeyStatus.RATE_LIMITED


def test_a_successful_call_is_remembered_as_evidence(fake_gemini: FakeGemini) -> None:
    async def scenario(h: Harness) -> tuple[float | None, float | None]:
        before = h.provider.statistics().last_success_age_s
        await h.ask()
        h.clock.advance(7)
        return before, h.provider.statistics().last_success_age_s

    assert run_with(fake_gemini, scenario) == (None, 7)
