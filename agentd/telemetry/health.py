"""Component health: each component is ok, degraded or failed, with a reason."""

from __future__ import annotations

import enum
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

logger = logging.getLogger(__name__)


class Level(enum.StrEnum):
    OK = "ok"
    DEGRADED = "degraded"
    FAILED = "failed"


@dataclass(frozen=True)
class ComponentHealth:
    level: Level
    reason: str
    checked_at: float  # wall-clock time of the check

    def as_dict(self) -> dict[str, Any]:
        return {"status": str(self.level), "reason": self.reason, "checked_at": self.checked_at}


class HealthBoard:
    """The latest verdict per component, as the background checks left it."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._components: dict[str, ComponentHealth] = {}
        self._healthy = True
        # Every `status` reads the board and checks change it every few seconds:
        # the snapshot is built once per change, not once per request.
        self._snapshot: dict[str, dict[str, Any]] | None = None

    def report(self, component: str, level: Level, reason: str = "") -> None:
        self._components[component] = ComponentHealth(level, reason, self._clock())
        self._healthy = all(c.level is not Level.FAILED for c in self._components.values())
        self._snapshot = None

    def get(self, component: str) -> ComponentHealth | None:
        return self._components.get(component)

    @property
    def healthy(self) -> bool:
        return self._healthy

    def snapshot(self) -> dict[str, dict[str, Any]]:
        """Every component's verdict, by name; shared between callers: do not modify."""
        if self._snapshot is None:
            self._snapshot = {name: c.as_dict() for name, c in sorted(self._components.items())}
        return self._snapshot


def log_change(component: str, level: Level, reason: str, *, first: bool) -> None:
    """One line when a component changes level (its first ok is not news)."""
    if level is Level.OK and first:
        return
    log_level = {
        Level.OK: logging.INFO,
        Level.DEGRADED: logging.WARNING,
        Level.FAILED: logging.ERROR,
    }[level]
    logger.log(
        log_level,
        "%s is %s: %s",
        component,
        level,
        reason,
        extra={"component": component, "health": str(level)},
    )
