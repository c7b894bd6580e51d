"""The gemini component: the one owner of its verdict and of the ERROR it implies.

Evidence flows in; one object decides and publishes::

    a call worked / failed ──┐  (provider's on_health_change)
    the breaker moved ───────┤
    a key check ended ───────┼──▶ GeminiHealth.reassess()
    the periodic checks ─────┘        │
                                      ├──▶ HealthBoard "gemini": ok / degraded / failed
                                      └──▶ Lifecycle: ERROR while the breaker is not
                                           closed (and a recovery loop probes until
                                           it is), READY again once it closes

    no API key                      degraded (chat answers in degraded mode)
    live health and key check       the worse of the two; on a tie the key check's
                                    words (they name the key); a call that worked
                                    is newer evidence than any key check before it

The key check is one authenticated call, cached for `check_interval_s`;
concurrent refreshes share one call, so a burst of `agentctl health` costs
the provider a single request. Time is injected (clock, sleep).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Final

from agentd.lifecycle import Lifecycle
from agentd.providers.breaker import BreakerState
from agentd.providers.health import HealthStatus, KeyCheck, KeyStatus
from agentd.providers.resilience import ResilientProvider
from agentd.telemetry.health import HealthBoard, Level, log_change

logger = logging.getLogger(__name__)

COMPONENT: Final = "gemini"
BREAKER_OPEN: Final = "circuit breaker open: Gemini keeps failing"
_KEY_LEVELS: Final = {
    KeyStatus.OK: Level.OK,
    KeyStatus.MISSING: Level.DEGRADED,
    KeyStatus.REJECTED: Level.FAILED,
    KeyStatus.UNREACHABLE: Level.FAILED,
    KeyStatus.RATE_LIMITED: Level.DEGRADED,  # the service is up; this key must wait
    KeyStatus.MISCONFIGURED: Level.FAILED,
}
_PROVIDER_LEVELS: Final = {
    HealthStatus.OK: Level.OK,
    HealthStatus.DEGRADED: Level.DEGRADED,
    HealthStatus.FAILED: Level.FAILED,
}
_ORDER: Final = (Level.OK, Level.DEGRADED, Level.FAILED)
_RECOVERY_FIRST_DELAY_S: Final = 0.5


class GeminiHealth:
    """Decides the gemini verdict from the evidence; the only writer of it and its ERROR."""

    def __init__(
        self,
        provider: ResilientProvider,
        board: HealthBoard,
        lifecycle: Lifecycle,
        *,
        model: str,
        check_interval_s: float,
        recovery_max_backoff_s: float,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._provider = provider
        self._board = board
        self._lifecycle = lifecycle
        self._model = model
        self.interval_s = check_interval_s
        self._recovery_max_backoff_s = recovery_max_backoff_s
        self._clock = clock
        self._sleep = sleep
        self._latest: KeyCheck | None = None
        self._checked_at = 0.0
        self._running: asyncio.Task[KeyCheck] | None = None
        self._failing = False  # the lifecycle holds ERROR for gemini
        self._recovery: asyncio.Task[None] | None = None

    @property
    def provider(self) -> ResilientProvider:
        return self._provider

    # -- the verdict

    def report_start(self) -> None:
        """At start-up, before any evidence: configured or not."""
        if self._provider.configuration_problem() is None:
            self._publish(Level.OK, f"key configured; model {self._model}")
        else:
            self._publish(Level.DEGRADED, "no API key: chat answers in degraded mode")

    def reassess(self) -> None:
        """New evidence (or a periodic look): decide, publish, move the lifecycle."""
        self._publish(*self.verdict())
        failing = self._provider.statistics().breaker.state is not BreakerState.CLOSED
        if failing == self._failing:
            return
        self._failing = failing
        if failing:
            self._lifecycle.component_failed(COMPONENT, BREAKER_OPEN)
            if self._recovery is None or self._recovery.done():
                self._recovery = asyncio.create_task(self._recover(), name="gemini-recovery")
        else:
            self._lifecycle.component_recovered(COMPONENT)

    def verdict(self) -> tuple[Level, str]:
        provider, model = self._provider, self._model
        if provider.configuration_problem() is not None:
            return Level.DEGRADED, (
                "no API key: chat answers in degraded mode "
                "(set the credential gemini-api-key or GEMINI_API_KEY)"
            )
        statistics = provider.statistics()
        live = (_PROVIDER_LEVELS[statistics.health.status], statistics.health.reason)
        checked = self.latest()
        worked = statistics.last_success_age_s
        if worked is not None and (checked is None or worked <= checked[1]):
            # A call that worked is newer evidence than any key check before it.
            key = (Level.OK, f"key works: Gemini answered {worked:.0f}s ago; model {model}")
        elif checked is None:
            key = (Level.OK, f"key configured; model {model}; not verified yet")
        elif checked[0].status is KeyStatus.OK:
            key = (Level.OK, f"key configured and verified {checked[1]:.0f}s ago; model {model}")
        else:
            result = checked[0]
            key = (
                _KEY_LEVELS[result.status],
                f"key check {checked[1]:.0f}s ago: {result.status}: {result.detail}",
            )
        # The worse of the two wins; on a tie, the key check's words (they name the key).
        return max(key, live, key=lambda verdict: _ORDER.index(verdict[0]))

    def _publish(self, level: Level, reason: str) -> None:
        previous = self._board.get(COMPONENT)
        self._board.report(COMPONENT, level, reason)
        if previous is None or previous.level is not level:
            log_change(COMPONENT, level, reason, first=previous is None)

    # -- the key check

    def latest(self) -> tuple[KeyCheck, float] | None:
        """The latest key check and its age in seconds, or None before the first."""
        if self._latest is None:
            return None
        return self._latest, self._clock() - self._checked_at

    def stale(self) -> bool:
        return self._latest is None or self._clock() - self._checked_at >= self.interval_s

    async def check_key(self) -> KeyCheck:
        """A key check now (shared with one already running); the verdict follows it."""
        if self._running is None or self._running.done():
            self._running = asyncio.create_task(self._check(), name="gemini-key-check")
        return await asyncio.shield(self._running)

    async def check_key_if_stale(self, max_wait_s: float) -> None:
        """Refresh a stale result, waiting at most `max_wait_s` (it goes on in the background)."""
        if self._provider.configuration_problem() is not None or not self.stale():
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(max_wait_s):
                await self.check_key()

    async def refresh(self, max_wait_s: float) -> None:
        """For `agentctl health`: a fresh key check if the cached one is stale, then the
        verdict."""
        await self.check_key_if_stale(max_wait_s)
        self.reassess()

    async def _check(self) -> KeyCheck:
        result = await self._provider.check_key()
        self._latest, self._checked_at = result, self._clock()
        self.reassess()
        return result

    # -- recovery

    async def _recover(self) -> None:
        """Probe Gemini with backoff until the breaker closes (the probe is its trial call)."""
        provider = self._provider
        delay = max(provider.statistics().breaker.cooldown_remaining_s, _RECOVERY_FIRST_DELAY_S)
        while provider.statistics().breaker.state is not BreakerState.CLOSED:
            await self._sleep(delay)
            check = await provider.check_key()
            logger.info(
                "gemini recovery probe: %s", check.status, extra={"probe": str(check.status)}
            )
            delay = min(
                max(delay * 2, provider.statistics().breaker.cooldown_remaining_s),
                self._recovery_max_backoff_s,
            )

    async def aclose(self) -> None:
        """Stop the recovery loop, if one runs."""
        if self._recovery is None:
            return
        self._recovery.cancel()
        await asyncio.gather(self._recovery, return_exceptions=True)
