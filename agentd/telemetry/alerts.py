"""Alert rules: conditions an operator must hear about, one CRITICAL line per episode.

    rule               fires when
    error_rate         the daemon failed more than health.alert_error_ratio of the
                       requests in the error window (once it holds alert_min_requests)
    chat_latency_p95   p95 chat latency (recent window) above health.alert_chat_p95_s
    breaker_open       the provider's circuit breaker is open
    disk_low           free space where the database or logs live is below
                       health.disk_min_free_bytes

An episode starts when a rule fires after being quiet: one CRITICAL log line,
and the alert shows in `status` and `health` until the rule is quiet again,
which logs one INFO line. Re-evaluating a firing rule logs nothing, however
often the checks run.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

from agentd.telemetry.settings import HealthSettings

logger = logging.getLogger(__name__)


# A NamedTuple, not a frozen dataclass: cheaper to define on the path to READY
# (see agentd/providers/base.py).
class Alert(NamedTuple):
    name: str
    detail: str
    since: float  # wall-clock time the episode started

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "detail": self.detail, "since": self.since}


class AlertBoard:
    """The alerts firing now; logs each episode's start and end once."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._active: dict[str, Alert] = {}
        self._episodes = 0

    def evaluate(self, name: str, firing: bool, detail: str) -> None:
        current = self._active.get(name)
        if firing and current is None:
            self._active[name] = Alert(name, detail, self._clock())
            self._episodes += 1
            logger.critical(
                "ALERT %s: %s", name, detail, extra={"alert": name, "alert_state": "firing"}
            )
        elif firing and current is not None:
            # Keep the episode's start; the detail follows the latest figures.
            self._active[name] = Alert(name, detail, current.since)
        elif not firing and current is not None:
            del self._active[name]
            logger.info(
                "alert %s cleared (was: %s)",
                name,
                current.detail,
                extra={"alert": name, "alert_state": "cleared"},
            )

    def active(self) -> list[Alert]:
        return sorted(self._active.values(), key=lambda alert: alert.since)

    def snapshot(self) -> list[dict[str, Any]]:
        if not self._active:  # the usual case, on every `status`
            return []
        return [alert.as_dict() for alert in self.active()]

    @property
    def episodes(self) -> int:
        """Alert episodes started since the process began."""
        return self._episodes


@dataclass(frozen=True)
class AlertInputs:
    """The figures the rules look at, gathered by the health checks."""

    errors: int  # daemon failures in the error window
    requests: int  # requests in the error window
    chat_p95_s: float | None
    breaker_open: bool
    breaker_detail: str
    disk_free_bytes: int | None  # the smallest free space among the watched directories
    disk_detail: str


def evaluate_rules(board: AlertBoard, inputs: AlertInputs, settings: HealthSettings) -> None:
    ratio = inputs.errors / inputs.requests if inputs.requests else 0.0
    board.evaluate(
        "error_rate",
        inputs.requests >= settings.alert_min_requests and ratio > settings.alert_error_ratio,
        f"{inputs.errors} of {inputs.requests} requests failed in the last "
        f"{settings.error_window_s}s ({ratio:.0%} > {settings.alert_error_ratio:.0%})",
    )
    p95 = inputs.chat_p95_s
    board.evaluate(
        "chat_latency_p95",
        p95 is not None and p95 > settings.alert_chat_p95_s,
        f"p95 chat latency {p95 or 0:.2f}s > {settings.alert_chat_p95_s:.2f}s",
    )
    board.evaluate("breaker_open", inputs.breaker_open, inputs.breaker_detail)
    free = inputs.disk_free_bytes
    board.evaluate(
        "disk_low", free is not None and free < settings.disk_min_free_bytes, inputs.disk_detail
    )
