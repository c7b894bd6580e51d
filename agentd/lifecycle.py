"""The agent's lifecycle: an enum, one transition table, one object that owns the state.

    INITIALIZING ──▶ READY ⇄ PROCESSING
                       │         │
                       ▼         ▼
                     ERROR ──▶ READY          (recovery)
    any state ──▶ STOPPING ──▶ STOPPED

Every transition goes through `Lifecycle.transition`, which refuses illegal
moves, logs, counts, and tells listeners (systemd STATUS=, metrics).
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections import Counter
from collections.abc import Callable
from typing import Final, NamedTuple

logger = logging.getLogger(__name__)


class State(enum.StrEnum):
    INITIALIZING = "INITIALIZING"
    READY = "READY"
    PROCESSING = "PROCESSING"
    ERROR = "ERROR"
    STOPPING = "STOPPING"
    STOPPED = "STOPPED"


TRANSITIONS: Final[dict[State, frozenset[State]]] = {
    State.INITIALIZING: frozenset({State.READY, State.ERROR, State.STOPPING}),
    State.READY: frozenset({State.PROCESSING, State.ERROR, State.STOPPING}),
    State.PROCESSING: frozenset({State.READY, State.ERROR, State.STOPPING}),
    State.ERROR: frozenset({State.READY, State.STOPPING}),
    State.STOPPING: frozenset({State.STOPPED}),
    State.STOPPED: frozenset(),
}

SERVING: Final = frozenset({State.READY, State.PROCESSING})

Listener = Callable[[State, State, str], None]


class IllegalTransition(RuntimeError):
    pass


# A NamedTuple, not a frozen dataclass: cheaper to define on the path to READY
# (see agentd/providers/base.py).
class LifecycleStatistics(NamedTuple):
    state: State
    since: float  # monotonic time of the last transition
    reason: str
    in_flight: int
    failing: tuple[str, ...]  # components that put the agent in ERROR
    transitions: dict[str, int]  # "READY->PROCESSING" -> count


class Lifecycle:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._state = State.INITIALIZING
        self._since = clock()
        self._reason = "starting"
        self._in_flight = 0
        self._failing: dict[str, str] = {}
        self._listeners: list[Listener] = []
        self._counts: Counter[str] = Counter()
        self._changed = asyncio.Event()

    @property
    def state(self) -> State:
        return self._state

    def add_listener(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def transition(self, new: State, reason: str) -> None:
        old = self._state
        if new == old:
            return
        if new not in TRANSITIONS[old]:
            raise IllegalTransition(f"{old} -> {new} is not allowed ({reason})")
        self._state, self._since, self._reason = new, self._clock(), reason
        self._counts[f"{old}->{new}"] += 1
        logger.info(
            "state %s -> %s: %s", old, new, reason, extra={"state": str(new), "previous": str(old)}
        )
        for listener in self._listeners:
            listener(old, new, reason)
        self._changed.set()
        self._changed = asyncio.Event()

    # -- work in flight: READY <-> PROCESSING ---------------------------------

    def begin_work(self) -> None:
        self._in_flight += 1
        if self._state == State.READY:
            self.transition(State.PROCESSING, "chat in flight")

    def end_work(self) -> None:
        self._in_flight -= 1
        if self._in_flight == 0 and self._state == State.PROCESSING:
            self.transition(State.READY, "no chat in flight")

    # -- component failure and recovery: -> ERROR -> READY ----------------------

    def component_failed(self, component: str, reason: str) -> None:
        self._failing[component] = reason
        if self._state in SERVING:
            self.transition(State.ERROR, f"{component}: {reason}")

    def component_recovered(self, component: str) -> None:
        if self._failing.pop(component, None) is None:
            return
        if self._state == State.ERROR and not self._failing:
            self.transition(State.READY, f"{component} recovered")
            if self._in_flight:
                self.transition(State.PROCESSING, "chat in flight")

    @property
    def reason(self) -> str:
        """Why the agent is in its current state."""
        return self._reason

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def failing(self) -> dict[str, str]:
        return dict(self._failing)

    async def wait_for(self, *states: State) -> State:
        while self._state not in states:
            await self._changed.wait()
        return self._state

    def statistics(self) -> LifecycleStatistics:
        return LifecycleStatistics(
            state=self._state,
            since=self._since,
            reason=self._reason,
            in_flight=self._in_flight,
            failing=tuple(sorted(self._failing)),
            transitions=dict(self._counts),
        )
