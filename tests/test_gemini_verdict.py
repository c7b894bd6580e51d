"""GeminiHealth, the one owner of the gemini verdict and its ERROR, in-process.

A real ResilientProvider over the SDK to tests/fake_gemini.py, a real
HealthBoard and Lifecycle; time is a fake clock, waits advance it.
"""

from __future__ import annotations

import asyncio
import random
import ssl
from collections.abc import Awaitable, Callable
from typing import Any

from agentd.lifecycle import Lifecycle, State
from agentd.providers.base import GenerationRequest, Turn
from agentd.providers.gemini import GeminiProvider
from agentd.providers.health import KeyStatus
from agentd.providers.resilience import ResilientProvider
from agentd.providers.settings import ProviderSettings
from agentd.telemetry.gemini import GeminiHealth
from agentd.telemetry.health import HealthBoard, Level
from tests.conftest import async_wait_until
from tests.fake_gemini import FakeGemini, server_error, unauthorized
from tests.fakes import FakeClock

KEY = "test-key-not-secret"
TLS = ssl.create_default_context()


class Owner:
    """GeminiHealth wired as the daemon wires it: the provider's evidence goes to it."""

    def __init__(self, fake: FakeGemini, api_key: str | None = KEY, **overrides: Any) -> None:
        values: dict[str, Any] = {"base_url": fake.url, "fallback_model": "",
                                  "max_attempts": 1, "breaker_failure_threshold": 100,
                                  "breaker_cooldown_s": 30.0} | overrides
        settings = ProviderSettings(**values)
        self.clock = FakeClock()
        self.board = HealthBoard()
        self.lifecycle = Lifecycle()
        self.lifecycle.transition(State.READY, "started")
        self.provider = ResilientProvider(
            GeminiProvider(settings, api_key, tls=TLS), settings, clock=self.clock,
            sleep=self.sleep, rng=random.Random(1), on_health_change=self._evidence,
        )
        self.health = GeminiHealth(
            self.provider, self.board, self.lifecycle, model=settings.model,
            check_interval_s=60.0, recovery_max_backoff_s=30.0, clock=self.clock,
            sleep=self.sleep,
        )

    def _evidence(self) -> None:
        self.health.reassess()

    async def sleep(self, seconds: float) -> None:
        self.clock.advance(seconds)
        await asyncio.sleep(0)

    async def ask(self) -> str:
        turns = (Turn("user", "hello"),)
        request = GenerationRequest(request_id="r", system_prompt="Be brief.", turns=turns)
        return (await self.provider.generate(request)).text

    def gemini(self) -> tuple[Level, str]:
        verdict = self.board.get("gemini")
        assert verdict is not None
        return verdict.level, verdict.reason


def run(fake: FakeGemini, scenario: Callable[[Owner], Awaitable[Any]], **kwargs: Any) -> Any:
    async def main() -> Any:
        owner = Owner(fake, **kwargs)
        try:
            return await scenario(owner)
        finally:
            await owner.health.aclose()
            await owner.provider.aclose()

    return asyncio.run(main())


def test_the_breaker_opening_is_error_and_the_recovery_probe_brings_ready_back(
    fake_gemini: FakeGemini,
) -> None:
    """1. One failure opens the breaker: ERROR, gemini failed. 2. The owner's recovery
    loop probes after the cool-down; the probe closes the breaker: READY, gemini ok."""
    fake_gemini.push(server_error(503))

    async def scenario(o: Owner) -> list[Any]:
        await o.ask()
        seen: list[Any] = [o.lifecycle.state, o.lifecycle.reason, o.gemini()[0]]
        await async_wait_until(lambda: o.lifecycle.state is State.READY)
        return [*seen, o.gemini()[0], o.lifecycle.statistics().failing]

    assert run(fake_gemini, scenario, breaker_failure_threshold=1) == [
        State.ERROR, "gemini: circuit breaker open: Gemini keeps failing", Level.FAILED,
        Level.OK, (),
    ]


def test_a_rejected_key_check_fails_the_component_but_is_not_error(
    fake_gemini: FakeGemini,
) -> None:
    fake_gemini.push(unauthorized(), action="get")

    async def scenario(o: Owner) -> tuple[KeyStatus, tuple[Level, str], State]:
        result = await o.health.check_key()
        return result.status, o.gemini(), o.lifecycle.state

    status, (level, reason), state = run(fake_gemini, scenario)
    assert (status, level, state) == (KeyStatus.REJECTED, Level.FAILED, State.READY)
    assert reason.startswith("key check 0s ago: rejected:")


def test_a_call_that_works_clears_a_failed_key_check_at_once(fake_gemini: FakeGemini) -> None:
    fake_gemini.push(unauthorized(), action="get")

    async def scenario(o: Owner) -> tuple[Level, str]:
        await o.health.check_key()
        o.clock.advance(5)
        await o.ask()
        return o.gemini()

    assert run(fake_gemini, scenario) == (
        Level.OK, "key works: Gemini answered 0s ago; model gemini-flash-latest"
    )


def test_without_a_key_gemini_is_degraded_never_error_and_is_not_called(
    fake_gemini: FakeGemini,
) -> None:
    async def scenario(o: Owner) -> tuple[Level, State]:
        o.health.report_start()
        await o.ask()
        await o.health.check_key_if_stale(1.0)
        return o.gemini()[0], o.lifecycle.state

    assert run(fake_gemini, scenario, api_key=None) == (Level.DEGRADED, State.READY)
    assert fake_gemini.requests == []


def test_concurrent_key_checks_share_one_call_and_a_fresh_result_is_reused(
    fake_gemini: FakeGemini,
) -> None:
    async def scenario(o: Owner) -> list[KeyStatus]:
        both = await asyncio.gather(o.health.check_key(), o.health.check_key())
        o.clock.advance(59)
        await o.health.check_key_if_stale(1.0)  # fresh: no call
        o.clock.advance(1)
        await o.health.check_key_if_stale(1.0)  # stale: one call
        return [r.status for r in both]

    assert run(fake_gemini, scenario) == [KeyStatus.OK, KeyStatus.OK]
    assert [r.method for r in fake_gemini.requests] == ["GET", "GET"]
