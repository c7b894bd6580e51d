"""The daemon's metric set, built on `metrics.Registry`.

Two ways figures arrive:

- *pushed* by the request path: `record_request()` once per request from
  dispatch (count, rate, error ratio, chat latency, tokens and cost), and
  `observe_provider()` from the chat pipeline around the provider call;
- *read* at snapshot time by `refresh(readings)`: lifecycle, provider
  (retries, fallbacks, degraded answers, breaker), chat queue, audit writer,
  event-loop lag. Monotonic totals read from another component are turned
  into our counters by adding the difference since the last read, so they
  can be lifetime counters too.

Lifetime counters (requests, tokens, cost, provider totals, transitions)
are persisted by the daemon (`export_lifetime()` into the state table) and
added back at start-up; gauges, rates and percentiles describe this process.

Names are bare here (`requests_total`); the Prometheus exposition adds the
`agentd_` prefix.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from agentd.lifecycle import LifecycleStatistics, State
from agentd.limits import AdmissionStatistics
from agentd.protocol import ErrorCode
from agentd.providers.breaker import BreakerState
from agentd.providers.resilience import ProviderStatistics
from agentd.store import state
from agentd.telemetry.loop_lag import LoopLagMonitor, LoopLagStatistics
from agentd.telemetry.metrics import (
    Clock,
    Counter,
    HistogramState,
    Registry,
    estimate_cost_usd,
    process_rss_bytes,
)

if TYPE_CHECKING:
    from agentd.audit.writer import AuditStatistics
    from agentd.store.database import Database

# What the error ratio counts: the daemon failing a request. A client's
# mistake (BAD_REQUEST, FORBIDDEN...) or a rate limit doing its job is not.
SERVER_FAILURES: Final = frozenset(
    {
        ErrorCode.INTERNAL,
        ErrorCode.PROVIDER_ERROR,
        ErrorCode.NOT_READY,
        ErrorCode.BUSY,
    }
)
REJECTIONS: Final = {ErrorCode.RATE_LIMITED: "rate_limited", ErrorCode.BUSY: "busy"}
CHAT_COMMAND: Final = "chat"

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Readings:
    """Statistics of other components, read once per snapshot."""

    lifecycle: LifecycleStatistics
    provider: ProviderStatistics | None = None
    admission: AdmissionStatistics | None = None
    audit: AuditStatistics | None = None
    store_size_bytes: int | None = None


class _Deltas:
    """Turns totals read from elsewhere into increments of our counters."""

    def __init__(self) -> None:
        self._seen: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}

    def sync(self, counter: Counter, total: float, **labels: str) -> None:
        key = (counter.name, tuple(sorted(labels.items())))
        previous = self._seen.get(key, 0.0)
        # A smaller total means the source started over (a new provider object).
        if total > previous:
            counter.inc(total - previous, **labels)
        self._seen[key] = total


class Instruments:
    """Every metric the daemon exports, and the readable summary of them."""

    def __init__(
        self,
        *,
        prices: Mapping[str, tuple[float, float]],
        loop_lag: LoopLagMonitor,
        error_window_s: int = 60,
        clock: Clock = time.monotonic,
    ) -> None:
        self.registry = Registry(clock)
        self._prices = dict(prices)
        self._loop_lag = loop_lag
        self._deltas = _Deltas()
        self._started = clock()
        self._clock = clock
        self._define(error_window_s)

    def _define(self, error_window_s: int) -> None:
        r = self.registry
        r.gauge(
            "uptime_seconds",
            "Seconds since this process started.",
            callback=lambda: self._clock() - self._started,
        )
        self.requests = r.counter(
            "requests_total",
            "Requests answered, by command and outcome (ok or the error code).",
            ("command", "outcome"),
            lifetime=True,
        )
        self.unaudited = r.counter(
            "requests_unaudited_total",
            "Requests of a command class [audit] does not audit one by one (by default "
            "the probes: ping, status, health, metrics), by command and peer uid.",
            ("command", "uid"),
            lifetime=True,
        )
        self.starts = r.counter(
            "starts_total", "Times agentd started on this store.", lifetime=True
        )
        self.rate = r.sliding_rate("requests_per_minute", "Requests over the last 60 seconds.")
        self.errors = r.error_rate(
            "error_ratio",
            "Share of requests the daemon failed (INTERNAL, "
            "PROVIDER_ERROR, NOT_READY, BUSY) over the window.",
            window_seconds=error_window_s,
        )
        self.rejections = r.counter(
            "rejections_total",
            "Requests refused to protect the daemon, by reason (rate_limited, busy).",
            ("reason",),
            lifetime=True,
        )
        self.connections_refused = r.counter(
            "connections_refused_total",
            "Connections refused (BUSY) by the limit that refused them: max_connections, "
            "max_connections_per_uid, admin_reserved_connections.",
            ("limit",),
            lifetime=True,
        )
        self.refusals_aggregated = r.counter(
            "audit_refusals_aggregated_total",
            "Refused requests audited in a peer's aggregate row instead of a row each "
            "(past [limits] refusals_audited_each in an interval), by error code.",
            ("code",),
            lifetime=True,
        )
        self.chat_latency = r.histogram(
            "chat_latency_seconds", "Chat latency, end to end, of answered chats."
        )
        self.provider_latency = r.histogram(
            "provider_latency_seconds",
            "Time spent in the provider per chat, retries and fallback included.",
        )
        self.tokens = r.counter(
            "tokens_total",
            "Tokens sent (in) and received (out), by model.",
            ("model", "direction"),
            lifetime=True,
        )
        self.cost = r.counter(
            "estimated_cost_usd_total",
            "Estimated cost in USD, from the configured per-model prices.",
            ("model",),
            lifetime=True,
        )
        self._define_provider()
        self._define_state()

    def _define_provider(self) -> None:
        r = self.registry
        self.provider_totals = {
            name: r.counter(f"provider_{name}_total", text, lifetime=True)
            for name, text in (
                ("requests", "Chats handed to the provider."),
                ("attempts", "HTTP attempts, retries and fallback included."),
                ("retries", "Attempts repeated after a transient failure."),
                ("fallbacks", "Times the fallback model was tried."),
                ("degraded", "Degraded answers (placeholders, cut-off streams)."),
                ("blocked", "Answers blocked by the safety filters."),
            )
        }
        self.breaker_trips = r.counter(
            "breaker_trips_total", "Times the circuit breaker opened.", lifetime=True
        )
        self.breaker_state = r.gauge(
            "breaker_state", "1 for the circuit breaker's current state.", ("state",)
        )

    def _define_state(self) -> None:
        r = self.registry
        self.lifecycle_state = r.gauge(
            "lifecycle_state", "1 for the agent's current state.", ("state",)
        )
        self.transitions = r.counter(
            "lifecycle_transitions_total", "Lifecycle transitions.", ("transition",), lifetime=True
        )
        self.queue_waiting = r.gauge("chat_queue_depth", "Chats waiting for a provider slot.")
        self.in_flight = r.gauge("chats_in_flight", "Chats at the provider now.")
        self.audit_rows = r.counter("audit_rows_total", "Audit rows committed.", lifetime=True)
        self.audit_dropped = r.counter(
            "audit_dropped_total",
            "Audit rows lost because the store failed and the audit queue was full.",
            lifetime=True,
        )
        self.audit_queued = r.gauge("audit_queue_depth", "Audit rows waiting to be committed.")
        self.store_size = r.gauge("store_size_bytes", "Database size on disk, WAL included.")
        self.rss = r.gauge(
            "process_resident_memory_bytes", "Resident memory (RSS).", callback=process_rss_bytes
        )
        self.loop_lag = r.gauge(
            "event_loop_lag_seconds",
            "Worst event-loop lag of the last samples (how late a timer fired).",
        )

    # -- pushed by the request path ------------------------------------------------

    def lifetime_totals(self) -> dict[str, int]:
        """The headline totals since the store was created, for `status`."""
        return {
            "starts": int(self.starts.total()),
            "requests_total": int(self.requests.total()),
        }

    def record_request(
        self,
        command: str,
        code: str | None,
        latency_s: float,
        *,
        model: str | None = None,
        tokens_in: int = 0,
        tokens_out: int = 0,
    ) -> None:
        """One answered request; `code` is None for ok, else the error code."""
        self.requests.inc_series((command, code or "ok"))
        self.rate.mark()
        self.errors.record(ok=code not in SERVER_FAILURES)
        if code in REJECTIONS:
            self.rejections.inc(reason=REJECTIONS[code])
        if command == CHAT_COMMAND and code is None:
            self.chat_latency.observe(latency_s)
        if model:
            self.record_tokens(model, tokens_in, tokens_out)

    def count_unaudited(self, command: str, uid: int) -> None:
        """A request that leaves no audit row of its own ([audit] level none)."""
        self.unaudited.inc_series((command, str(uid)))

    def record_tokens(self, model: str, tokens_in: int, tokens_out: int) -> None:
        self.tokens.inc(max(tokens_in, 0), model=model, direction="in")
        self.tokens.inc(max(tokens_out, 0), model=model, direction="out")
        cost = estimate_cost_usd(self._prices, model, max(tokens_in, 0), max(tokens_out, 0))
        if cost is not None:
            self.cost.inc(cost, model=model)

    def observe_provider(self, seconds: float) -> None:
        """Time one chat spent in the provider (the chat pipeline calls this)."""
        self.provider_latency.observe(max(seconds, 0.0))

    # -- read at snapshot time ---------------------------------------------------------

    def refresh(self, readings: Readings) -> None:
        self._read_lifecycle(readings.lifecycle)
        if readings.provider is not None:
            self._read_provider(readings.provider)
        if readings.admission is not None:
            self.queue_waiting.set(readings.admission.waiting)
            self.in_flight.set(readings.admission.in_flight)
        if readings.audit is not None:
            self._deltas.sync(self.audit_rows, readings.audit.committed)
            self._deltas.sync(self.audit_dropped, readings.audit.dropped)
            self.audit_queued.set(readings.audit.queued)
        if readings.store_size_bytes is not None:
            self.store_size.set(readings.store_size_bytes)
        self.loop_lag.set(self._loop_lag.statistics().max_recent_s)

    def _read_lifecycle(self, stats: LifecycleStatistics) -> None:
        for name in State:
            self.lifecycle_state.set(1.0 if name is stats.state else 0.0, state=str(name))
        for transition, count in stats.transitions.items():
            self._deltas.sync(self.transitions, count, transition=transition)

    def _read_provider(self, stats: ProviderStatistics) -> None:
        for name, counter in self.provider_totals.items():
            self._deltas.sync(counter, getattr(stats, name))
        self._deltas.sync(self.breaker_trips, stats.breaker.trips)
        for name in BreakerState:
            self.breaker_state.set(1.0 if name is stats.breaker.state else 0.0, state=str(name))

    # -- persistence --------------------------------------------------------------------

    def export_lifetime(self) -> dict[str, list[dict[str, Any]]]:
        return self.registry.export_lifetime()

    def restore_lifetime(self, saved: Mapping[str, Any]) -> list[str]:
        """Add the totals of earlier runs; returns the names that no longer fit."""
        return self.registry.restore_lifetime(saved)

    # -- the readable summary ----------------------------------------------------------

    def summary(self) -> dict[str, Any]:
        """The figures an operator reads first, as plain JSON (call refresh() before)."""
        errors, window_requests = self.errors.counts()
        return {
            "uptime_s": round(self._clock() - self._started, 3),
            "requests": {
                "total": int(sum(v for _, v in self.requests.samples())),
                "by_command": self._by_command(),
                "per_minute": self.rate.per_minute(),
                "error_ratio": round(self.errors.ratio(), 4),
                "errors_in_window": errors,
                "requests_in_window": window_requests,
                "window_s": self.errors.window_seconds,
            },
            "chat_latency_s": latency_summary(self.chat_latency.state()),
            "provider_latency_s": latency_summary(self.provider_latency.state()),
            "tokens": self._tokens_summary(),
            "provider": self._provider_summary(),
            "rejections": {
                reason: int(self.rejections.value(reason=reason)) for reason in REJECTIONS.values()
            },
            "chat_queue": {
                "waiting": int(self.queue_waiting.value()),
                "in_flight": int(self.in_flight.value()),
            },
            "lifecycle": self._lifecycle_summary(),
            "store_size_bytes": int(self.store_size.value()),
            "rss_bytes": int(self.rss.value()),
            "event_loop_lag_s": self._lag_summary(),
            "audit": {
                "rows": int(self.audit_rows.value()),
                "dropped": int(self.audit_dropped.value()),
                "queued": int(self.audit_queued.value()),
            },
        }

    async def run_loop_lag(self) -> None:
        """Measure event-loop lag until cancelled (a background task of the daemon)."""
        await self._loop_lag.run()

    def loop_lag_statistics(self) -> LoopLagStatistics:
        return self._loop_lag.statistics()

    def chat_p95_s(self) -> float | None:
        return self.chat_latency.state().p95

    def _by_command(self) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        for labels, value in self.requests.samples():
            out.setdefault(labels["command"], {})[labels["outcome"]] = int(value)
        return dict(sorted(out.items()))

    def _tokens_summary(self) -> dict[str, Any]:
        totals = {"in": 0, "out": 0}
        for labels, value in self.tokens.samples():
            totals[labels["direction"]] += int(value)
        cost = sum(value for _, value in self.cost.samples())
        return {**totals, "estimated_cost_usd": round(cost, 6)}

    def _provider_summary(self) -> dict[str, Any]:
        totals = {name: int(counter.value()) for name, counter in self.provider_totals.items()}
        states = [labels["state"] for labels, value in self.breaker_state.samples() if value]
        return {
            **totals,
            "breaker_state": states[0] if states else None,
            "breaker_trips": int(self.breaker_trips.value()),
        }

    def _lifecycle_summary(self) -> dict[str, Any]:
        states = [labels["state"] for labels, value in self.lifecycle_state.samples() if value]
        transitions = {
            labels["transition"]: int(value) for labels, value in self.transitions.samples()
        }
        return {"state": states[0] if states else None, "transitions": transitions}

    def _lag_summary(self) -> dict[str, float]:
        stats = self._loop_lag.statistics()
        return {"last": round(stats.last_s, 6), "max_recent": round(stats.max_recent_s, 6)}


def latency_summary(state: HistogramState) -> dict[str, Any]:
    """count, avg, p50, p95, p99 in seconds (None before the first observation)."""
    avg = state.sum / state.count if state.count else None
    return {
        "count": state.count,
        "avg": _round(avg),
        "p50": _round(state.p50),
        "p95": _round(state.p95),
        "p99": _round(state.p99),
    }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 6)


async def restore_counters(db: Database, metrics: Instruments) -> None:
    """Add the lifetime totals of earlier runs; a damaged value is logged and skipped."""
    saved = await db.run(state.get_value, "metrics_lifetime")
    try:
        skipped = metrics.restore_lifetime(saved if isinstance(saved, dict) else {})
    except ValueError as exc:
        logger.warning("lifetime metrics not restored (%s): counting from zero", exc)
        return
    if skipped:
        logger.info("lifetime metrics no longer defined, not restored: %s", ", ".join(skipped))


async def save_counters(db: Database, metrics: Instruments, readings: Readings) -> None:
    """Persist every lifetime counter (a real write: the health check's too)."""
    metrics.refresh(readings)
    await db.run(state.put_values, {"metrics_lifetime": metrics.export_lifetime()})
