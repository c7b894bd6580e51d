"""The daemon's metric set, alert rules, rate limits and their settings, on fake clocks."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import time
import types
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from agentctl.since import parse_since
from agentd.commands.logs import parse_query
from agentd.constraints import problems
from agentd.errors import BadRequest, RateLimited
from agentd.lifecycle import LifecycleStatistics, State
from agentd.limits import AdmissionStatistics
from agentd.providers.breaker import BreakerState, BreakerStatistics
from agentd.providers.health import Health, HealthStatus
from agentd.providers.resilience import ProviderStatistics
from agentd.ratelimit import CHAT, CHEAP, LimitSettings, RequestLimiter
from agentd.telemetry.alerts import AlertBoard, AlertInputs, evaluate_rules
from agentd.telemetry.instruments import Instruments, Readings
from agentd.telemetry.logs import LogEntry
from agentd.telemetry.loop_lag import LoopLagMonitor
from agentd.telemetry.prometheus import render
from agentd.telemetry.settings import HealthSettings, PricingSettings
from tests.fakes import FakeClock


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def instruments(clock: FakeClock) -> Instruments:
    prices = PricingSettings(models=("m=1.0/2.0",)).prices()
    return Instruments(prices=prices, loop_lag=LoopLagMonitor(clock=clock), clock=clock)


def lifecycle(state: State = State.READY, **transitions: int) -> LifecycleStatistics:
    return LifecycleStatistics(state, 0.0, "", 0, (), {"INITIALIZING->READY": 1, **transitions})


def provider(
    retries: int = 0, trips: int = 0, state: BreakerState = BreakerState.CLOSED
) -> ProviderStatistics:
    breaker = BreakerStatistics(state, 0, 5, trips, None, 0.0, None)
    return ProviderStatistics(
        requests=retries + 1,
        answered=1,
        attempts=retries + 1,
        retries=retries,
        fallbacks=0,
        degraded=0,
        blocked=0,
        trimmed=0,
        errors=types.MappingProxyType({}),
        last_error_kind=None,
        breaker=breaker,
        health=Health(HealthStatus.OK, "ok"),
    )


# -- instruments


def test_requests_are_counted_by_command_and_outcome(instruments: Instruments) -> None:
    instruments.record_request("status", None, 0.001)
    instruments.record_request("status", None, 0.001)
    instruments.record_request("chat", "RATE_LIMITED", 0.0)
    summary = instruments.summary()["requests"]
    assert summary["total"] == 3
    assert summary["by_command"] == {"chat": {"RATE_LIMITED": 1}, "status": {"ok": 2}}
    assert instruments.summary()["rejections"] == {"rate_limited": 1, "busy": 0}


def test_the_error_ratio_counts_daemon_failures_not_client_mistakes(
    instruments: Instruments,
) -> None:
    for code in (None, "BAD_REQUEST", "FORBIDDEN", "RATE_LIMITED", "INTERNAL"):
        instruments.record_request("status", code, 0.001)
    assert instruments.summary()["requests"]["error_ratio"] == pytest.approx(0.2)


def test_rates_slide_out_after_a_minute(instruments: Instruments, clock: FakeClock) -> None:
    for _ in range(30):
        instruments.record_request("status", None, 0.001)
    assert instruments.summary()["requests"]["per_minute"] == 30
    clock.advance(61)
    assert instruments.summary()["requests"]["per_minute"] == 0
    assert instruments.summary()["requests"]["total"] == 30  # lifetime stays


def test_chat_latency_summary_has_avg_and_percentiles(instruments: Instruments) -> None:
    for ms in range(1, 101):
        instruments.record_request("chat", None, ms / 1000)
    instruments.record_request("chat", "BUSY", 50.0)  # refused chats are not latency
    latency = instruments.summary()["chat_latency_s"]
    assert latency == {"count": 100, "avg": 0.0505, "p50": 0.05, "p95": 0.095, "p99": 0.099}


def test_tokens_and_estimated_cost_by_model(instruments: Instruments) -> None:
    instruments.record_request(
        "chat", None, 0.1, model="m", tokens_in=1_000_000, tokens_out=500_000
    )
    instruments.record_request("chat", None, 0.1, model="unpriced", tokens_in=10, tokens_out=10)
    assert instruments.summary()["tokens"] == {
        "in": 1_000_010,
        "out": 500_010,
        "estimated_cost_usd": 2.0,
    }


def test_totals_read_from_the_provider_become_counter_increments(instruments: Instruments) -> None:
    instruments.refresh(Readings(lifecycle(), provider=provider(retries=2, trips=1)))
    instruments.refresh(
        Readings(lifecycle(), provider=provider(retries=5, trips=1, state=BreakerState.OPEN))
    )
    summary = instruments.summary()["provider"]
    assert summary["retries"] == 5
    assert summary["breaker_trips"] == 1
    assert summary["breaker_state"] == "open"


def test_queue_lifecycle_and_store_figures_are_read_at_refresh(instruments: Instruments) -> None:
    readings = Readings(
        lifecycle(State.PROCESSING, **{"READY->PROCESSING": 3}),
        admission=AdmissionStatistics(
            in_flight=2, waiting=5, capacity=2, max_waiting=8, rejected=0
        ),
        store_size_bytes=4096,
    )
    instruments.refresh(readings)
    summary = instruments.summary()
    assert summary["chat_queue"] == {"waiting": 5, "in_flight": 2}
    assert summary["lifecycle"] == {
        "state": "PROCESSING",
        "transitions": {"INITIALIZING->READY": 1, "READY->PROCESSING": 3},
    }
    assert summary["store_size_bytes"] == 4096


def test_lifetime_counters_survive_an_export_and_restore(clock: FakeClock) -> None:
    """1. A process counts. 2. It exports. 3. A new process restores and counts on."""
    first = Instruments(prices={"m": (1.0, 1.0)}, loop_lag=LoopLagMonitor(clock=clock), clock=clock)
    first.record_request("status", None, 0.001)
    first.record_request("chat", None, 0.2, model="m", tokens_in=10, tokens_out=20)
    first.refresh(Readings(lifecycle(), provider=provider(retries=4)))
    saved = first.export_lifetime()

    second = Instruments(prices={}, loop_lag=LoopLagMonitor(clock=clock), clock=clock)
    assert second.restore_lifetime(saved) == []
    second.record_request("status", None, 0.001)
    summary = second.summary()
    assert summary["requests"]["by_command"] == {"chat": {"ok": 1}, "status": {"ok": 2}}
    assert summary["tokens"]["out"] == 20
    assert summary["provider"]["retries"] == 4
    assert summary["chat_latency_s"]["count"] == 0  # percentiles describe this process only


def test_the_exposition_of_every_metric_parses(instruments: Instruments) -> None:
    instruments.record_request("chat", None, 0.3, model="m", tokens_in=3, tokens_out=4)
    instruments.observe_provider(0.25)
    instruments.refresh(Readings(lifecycle(), provider=provider(), store_size_bytes=1))
    families = {f.name: f for f in text_string_to_metric_families(render(instruments.registry))}
    assert families["agentd_requests"].type == "counter"
    assert families["agentd_chat_latency_seconds"].type == "histogram"
    assert families["agentd_breaker_state"].type == "gauge"
    assert all(math.isfinite(s.value) for f in families.values() for s in f.samples)


def test_loop_lag_is_the_overshoot_of_a_sleep(clock: FakeClock) -> None:
    async def late_sleep(seconds: float) -> None:
        clock.advance(seconds + 0.2)  # the loop was blocked for 200 ms

    monitor = LoopLagMonitor(interval_s=0.5, clock=clock, sleep=late_sleep)
    assert asyncio.run(monitor.measure_once()) == pytest.approx(0.2)
    assert monitor.statistics().max_recent_s == pytest.approx(0.2)


# -- alerts


def inputs(**changes: Any) -> AlertInputs:
    quiet = AlertInputs(
        errors=0,
        requests=100,
        chat_p95_s=0.5,
        breaker_open=False,
        breaker_detail="",
        disk_free_bytes=10**12,
        disk_detail="plenty",
    )
    return dataclasses.replace(quiet, **changes)


def test_an_alert_logs_once_per_episode_and_once_when_it_clears(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """1. The rule fires: one CRITICAL. 2. Still firing: nothing. 3. Clears: one INFO. 4. Fires again: a new episode."""
    board, settings = AlertBoard(), HealthSettings()
    with caplog.at_level(logging.INFO, logger="agentd.telemetry.alerts"):
        evaluate_rules(board, inputs(errors=60), settings)
        evaluate_rules(board, inputs(errors=70), settings)
        assert [a.name for a in board.active()] == ["error_rate"]
        assert "70 of 100" in board.active()[0].detail
        evaluate_rules(board, inputs(), settings)
        evaluate_rules(board, inputs(errors=90), settings)
    levels = [(r.levelname, r.getMessage().split(":")[0]) for r in caplog.records]
    assert levels == [
        ("CRITICAL", "ALERT error_rate"),
        ("INFO", "alert error_rate cleared (was"),
        ("CRITICAL", "ALERT error_rate"),
    ]
    assert board.episodes == 2


def test_too_few_requests_never_raise_the_error_alert() -> None:
    board = AlertBoard()
    evaluate_rules(board, inputs(errors=5, requests=5), HealthSettings(alert_min_requests=20))
    assert board.active() == []


@pytest.mark.parametrize(
    ("changes", "name"),
    [
        ({"chat_p95_s": 45.0}, "chat_latency_p95"),
        ({"breaker_open": True}, "breaker_open"),
        ({"disk_free_bytes": 1024}, "disk_low"),
    ],
)
def test_each_rule_fires_on_its_condition(changes: dict[str, Any], name: str) -> None:
    board = AlertBoard()
    evaluate_rules(board, inputs(**changes), HealthSettings())
    assert [a.name for a in board.active()] == [name]


# -- rate limits


def test_cheap_requests_over_the_budget_get_rate_limited_with_retry_after(clock: FakeClock) -> None:
    limiter = RequestLimiter(LimitSettings(cheap_rate=2, cheap_burst=2), clock)
    limiter.check(1000, None, CHEAP)
    limiter.check(1000, None, CHEAP)
    with pytest.raises(RateLimited) as info:
        limiter.check(1000, None, CHEAP)
    assert info.value.details["retry_after"] == pytest.approx(0.5)
    limiter.check(1001, None, CHEAP)  # another uid has its own budget
    clock.advance(0.5)
    limiter.check(1000, None, CHEAP)


def test_chat_has_a_budget_per_session_inside_the_peers(clock: FakeClock) -> None:
    limiter = RequestLimiter(
        LimitSettings(chat_rate=1, chat_burst=3, session_rate=1, session_burst=1), clock
    )
    assert limiter.try_acquire(1000, "s-a", CHAT) == 0.0
    assert limiter.try_acquire(1000, "s-a", CHAT) == pytest.approx(1.0)
    assert limiter.try_acquire(1000, "s-b", CHAT) == 0.0
    assert limiter.try_acquire(1000, None, CHEAP) == 0.0  # chat does not spend the cheap budget


def test_disabled_limits_admit_everything(clock: FakeClock) -> None:
    limiter = RequestLimiter(LimitSettings(enabled=False, cheap_rate=1, cheap_burst=1), clock)
    assert all(limiter.try_acquire(1000, None, CHEAP) == 0.0 for _ in range(100))


def test_refusals_are_logged_at_most_once_per_interval(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    limiter = RequestLimiter(LimitSettings(cheap_rate=1, cheap_burst=1, log_interval_s=10), clock)
    with caplog.at_level(logging.WARNING, logger="agentd.ratelimit"):
        for _ in range(1000):
            limiter.try_acquire(1000, None, CHEAP)
        clock.advance(10)
        for _ in range(3):
            limiter.try_acquire(1000, None, CHEAP)
    assert len(caplog.records) == 2
    assert caplog.records[0].suppressed == 0  # type: ignore[attr-defined]
    assert caplog.records[1].suppressed == 998  # type: ignore[attr-defined]
    assert limiter.statistics().refused == 1001


# -- settings


def test_prices_parse_and_a_bad_entry_is_named() -> None:
    assert PricingSettings(models=("a=0.30/2.50", " b = 1 / 2 ")).prices() == {
        "a": (0.3, 2.5),
        "b": (1.0, 2.0),
    }
    assert problems(PricingSettings(models=("a=0.30",))) == [
        ("models", "entry 'a=0.30' is not 'model=input/output' (USD per million tokens)")
    ]


def test_health_thresholds_must_make_sense() -> None:
    found = dict(
        problems(
            HealthSettings(loop_lag_degraded_s=1.0, loop_lag_failed_s=0.5, alert_error_ratio=2)
        )
    )
    assert set(found) == {"loop_lag_failed_s", "alert_error_ratio"}


def test_since_takes_a_duration_or_a_timestamp() -> None:
    now = time.time()
    assert parse_since("10m", now) == now - 600
    assert parse_since("1.5h", now) == now - 5400
    assert parse_since("2025-06-01T12:00:00Z", now) == 1748779200.0
    with pytest.raises(Exception, match="neither a duration"):
        parse_since("yesterday", now)


# -- log queries


def entry(level: int, request_id: str | None, created: float = 100.0) -> LogEntry:
    return LogEntry(created, level, request_id, "{}")


def test_a_log_query_keeps_the_last_lines_at_or_above_its_level() -> None:
    query = parse_query({"lines": 2, "level": "warning"})
    entries = [
        entry(logging.ERROR, "a"),
        entry(logging.INFO, "b"),
        entry(logging.WARNING, "c"),
        entry(logging.CRITICAL, "d"),
    ]
    assert [e.request_id for e in query.backlog(entries)] == ["c", "d"]
    assert not query.matches(entry(logging.DEBUG, "e"))


def test_a_followed_query_filters_by_request_but_not_by_since() -> None:
    query = parse_query({"request_id": "r-1", "since": 500.0})
    assert query.backlog([entry(logging.INFO, "r-1", created=100.0)]) == []
    assert query.matches(entry(logging.INFO, "r-1", created=100.0))  # new records are new
    assert not query.matches(entry(logging.INFO, "r-2"))


def test_a_bad_log_level_is_a_bad_request() -> None:
    with pytest.raises(BadRequest, match="unknown log level"):
        parse_query({"level": "loud"})
