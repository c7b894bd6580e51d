"""Event-loop lag: how late a timer fires, measured by a small sleeping task.

A coroutine that blocks the loop (a slow synchronous call, a CPU-bound
parse) delays every other request by as long as it runs. The monitor sleeps
`interval_s` over and over and records the overshoot: on an idle, healthy
loop it is well under a millisecond.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import NamedTuple

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]


# A NamedTuple, not a frozen dataclass: cheaper to define on the path to READY
# (see agentd/providers/base.py).
class LoopLagStatistics(NamedTuple):
    last_s: float  # the latest measurement
    max_recent_s: float  # the worst of the last `window` measurements
    samples: int  # measurements since start


class LoopLagMonitor:
    def __init__(
        self,
        interval_s: float = 0.5,
        window: int = 20,
        *,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self.interval_s = interval_s
        self._clock = clock
        self._sleep = sleep
        self._recent: deque[float] = deque(maxlen=window)
        self._samples = 0

    async def run(self) -> None:
        """Measure until cancelled."""
        while True:
            await self.measure_once()

    async def measure_once(self) -> float:
        started = self._clock()
        await self._sleep(self.interval_s)
        lag = max(0.0, self._clock() - started - self.interval_s)
        self._recent.append(lag)
        self._samples += 1
        return lag

    def statistics(self) -> LoopLagStatistics:
        last = self._recent[-1] if self._recent else 0.0
        return LoopLagStatistics(last, max(self._recent, default=0.0), self._samples)
