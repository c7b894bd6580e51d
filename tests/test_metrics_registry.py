"""The metrics registry, its JSON snapshot, lifetime persistence and Prometheus text."""

from __future__ import annotations

import json
import math
import re

import pytest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from agentd.telemetry.metrics import (
    Counter,
    Gauge,
    Histogram,
    Registry,
    estimate_cost_usd,
    percentile,
    process_rss_bytes,
)
from agentd.telemetry.prometheus import CONTENT_TYPE, render
from tests.fakes import FakeClock


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def registry(clock: FakeClock) -> Registry:
    return Registry(clock)


def parse(text: str) -> dict[str, Metric]:
    return {family.name: family for family in text_string_to_metric_families(text)}


# Counters


def test_unlabelled_counter_reads_zero_before_any_increment() -> None:
    assert Counter("starts_total", "Starts.").samples() == [({}, 0.0)]


def test_counter_counts_each_label_set_apart() -> None:
    requests = Counter("requests_total", "Requests.", ("command", "outcome"))
    requests.inc(command="chat", outcome="ok")
    requests.inc(2, command="chat", outcome="ok")
    requests.inc(command="status", outcome="error")
    assert requests.value(command="chat", outcome="ok") == 3
    assert requests.value(command="status", outcome="error") == 1
    assert requests.value(command="status", outcome="ok") == 0


def test_counter_refuses_to_go_down() -> None:
    with pytest.raises(ValueError, match="only goes up"):
        Counter("requests_total", "Requests.").inc(-1)


def test_counter_name_must_end_in_total() -> None:
    with pytest.raises(ValueError, match="_total"):
        Counter("requests", "Requests.")


def test_counter_refuses_labels_it_was_not_declared_with() -> None:
    requests = Counter("requests_total", "Requests.", ("command",))
    with pytest.raises(ValueError, match="takes labels"):
        requests.inc(command="chat", outcome="ok")


def test_reserved_label_names_are_refused() -> None:
    with pytest.raises(ValueError, match="invalid label name"):
        Counter("requests_total", "Requests.", ("__name",))


# Gauges


def test_gauge_goes_up_and_down() -> None:
    depth = Gauge("queue_waiting", "Chats waiting.")
    depth.set(3)
    depth.inc()
    depth.dec(2)
    assert depth.value() == 2


def test_callback_gauge_is_read_only_when_sampled() -> None:
    calls: list[int] = []

    def read() -> float:
        calls.append(1)
        return 42.0

    gauge = Gauge("resident_memory_bytes", "RSS.", callback=read)
    assert calls == []
    assert gauge.samples() == [({}, 42.0)]
    assert len(calls) == 1


def test_callback_gauge_cannot_be_set() -> None:
    gauge = Gauge("resident_memory_bytes", "RSS.", callback=lambda: 1.0)
    with pytest.raises(TypeError, match="callback"):
        gauge.set(2)


def test_process_rss_is_a_positive_number_of_bytes() -> None:
    assert process_rss_bytes() > 1024 * 1024


# Histograms


def test_histogram_puts_a_value_equal_to_a_bound_in_that_bucket() -> None:
    latency = Histogram("latency_seconds", "Latency.", buckets=(0.1, 1.0))
    latency.observe(0.1)
    assert latency.state().cumulative == (1, 1, 1)


def test_histogram_buckets_are_cumulative_and_end_at_infinity() -> None:
    latency = Histogram("latency_seconds", "Latency.", buckets=(0.1, 1.0))
    for value in (0.05, 0.5, 0.7, 30.0):
        latency.observe(value)
    state = latency.state()
    assert state.bounds == (0.1, 1.0, math.inf)
    assert state.cumulative == (1, 3, 4)
    assert state.count == 4
    assert state.sum == pytest.approx(31.25)


def test_histogram_buckets_must_increase() -> None:
    with pytest.raises(ValueError, match="increase"):
        Histogram("latency_seconds", "Latency.", buckets=(1.0, 0.5))


def test_histogram_refuses_an_le_label() -> None:
    with pytest.raises(ValueError, match="invalid label name"):
        Histogram("latency_seconds", "Latency.", ("le",))


def test_percentiles_use_the_nearest_rank() -> None:
    latency = Histogram("latency_seconds", "Latency.")
    for value in range(1, 101):
        latency.observe(value / 100)
    state = latency.state()
    assert (state.p50, state.p95, state.p99) == (0.5, 0.95, 0.99)


def test_percentiles_cover_only_the_recent_window() -> None:
    latency = Histogram("latency_seconds", "Latency.", window=10)
    for _ in range(1000):
        latency.observe(9.0)
    for _ in range(10):
        latency.observe(0.2)
    state = latency.state()
    assert state.p99 == 0.2
    assert state.count == 1010  # buckets still count everything


def test_percentiles_are_none_before_the_first_observation() -> None:
    state = Histogram("latency_seconds", "Latency.").state()
    assert (state.p50, state.p95, state.p99) == (None, None, None)


def test_percentile_of_a_single_value_is_that_value() -> None:
    assert percentile([0.3], 50) == percentile([0.3], 99) == 0.3


# Sliding rate and error rate


def test_sliding_rate_counts_events_of_the_last_sixty_seconds(
    registry: Registry, clock: FakeClock
) -> None:
    rate = registry.sliding_rate("requests_per_minute", "Requests in the last minute.")
    rate.mark()
    clock.advance(30)
    rate.mark(2)
    assert rate.per_minute() == 3
    clock.advance(30)
    assert rate.per_minute() == 2


def test_sliding_rate_reuses_a_slot_after_a_full_window(
    registry: Registry, clock: FakeClock
) -> None:
    rate = registry.sliding_rate("requests_per_minute", "Requests in the last minute.")
    rate.mark(5)
    clock.advance(60)  # same slot of the ring, one window later
    rate.mark()
    assert rate.count() == 1


def test_sliding_rate_forgets_everything_after_a_long_idle(
    registry: Registry, clock: FakeClock
) -> None:
    rate = registry.sliding_rate("requests_per_minute", "Requests in the last minute.")
    rate.mark(7)
    clock.advance(3600)
    assert rate.count() == 0


def test_error_rate_is_errors_over_requests_in_the_window(
    registry: Registry, clock: FakeClock
) -> None:
    errors = registry.error_rate("error_ratio", "Errors / requests, last minute.")
    errors.record(ok=False)
    clock.advance(59)
    for _ in range(3):
        errors.record(ok=True)
    assert errors.ratio() == 0.25
    clock.advance(1)  # the early error leaves the window
    assert errors.ratio() == 0.0


def test_error_rate_is_zero_without_traffic(registry: Registry) -> None:
    assert registry.error_rate("error_ratio", "Errors / requests.").ratio() == 0.0


# Registry, snapshot, lifetime counters


def test_registry_refuses_a_second_metric_with_the_same_name(registry: Registry) -> None:
    registry.counter("requests_total", "Requests.")
    with pytest.raises(ValueError, match="already registered"):
        registry.gauge("requests_total", "Requests.")


def test_snapshot_is_plain_json(registry: Registry) -> None:
    registry.counter("requests_total", "Requests.", ("command",)).inc(command="chat")
    registry.histogram("latency_seconds", "Latency.", buckets=(1.0,)).observe(0.5)
    registry.sliding_rate("requests_per_minute", "Rate.").mark()
    registry.error_rate("error_ratio", "Errors.").record(ok=False)
    registry.gauge("rss_bytes", "RSS.", callback=lambda: 7.0)
    snapshot = json.loads(json.dumps(registry.snapshot(), allow_nan=False))
    assert snapshot["requests_total"]["samples"] == [{"labels": {"command": "chat"}, "value": 1.0}]
    assert snapshot["latency_seconds"]["samples"][0]["buckets"] == {"1.0": 1, "+Inf": 1}
    assert snapshot["latency_seconds"]["samples"][0]["p50"] == 0.5
    assert snapshot["requests_per_minute"]["per_minute"] == 1
    assert snapshot["error_ratio"]["ratio"] == 1.0
    assert snapshot["rss_bytes"]["samples"][0]["value"] == 7.0


def test_lifetime_counters_survive_a_restart_through_export_and_restore(clock: FakeClock) -> None:
    before = Registry(clock)
    before.counter("requests_total", "Requests.", ("command",), lifetime=True).inc(
        4, command="chat"
    )
    saved = json.loads(json.dumps(before.export_lifetime()))  # as the store keeps it

    after = Registry(clock)
    requests = after.counter("requests_total", "Requests.", ("command",), lifetime=True)
    assert after.restore_lifetime(saved) == []
    assert requests.value(command="chat") == 4


def test_process_only_counters_are_not_exported(registry: Registry) -> None:
    registry.counter("connections_total", "Connections.").inc()
    assert registry.export_lifetime() == {}


def test_restore_adds_to_what_was_counted_before_it(registry: Registry) -> None:
    tokens = registry.counter("tokens_total", "Tokens.", lifetime=True)
    tokens.inc(10)
    registry.restore_lifetime({"tokens_total": [{"labels": {}, "value": 100}]})
    assert tokens.value() == 110


def test_restore_skips_retired_and_relabelled_counters(registry: Registry) -> None:
    registry.counter("requests_total", "Requests.", ("command",), lifetime=True)
    saved = {
        "retired_total": [{"labels": {}, "value": 1}],
        "requests_total": [{"labels": {"cmd": "chat"}, "value": 2}],
    }
    assert registry.restore_lifetime(saved) == ["retired_total", "requests_total"]


def test_restore_refuses_malformed_data(registry: Registry) -> None:
    registry.counter("requests_total", "Requests.", lifetime=True)
    with pytest.raises(ValueError, match="malformed"):
        registry.restore_lifetime({"requests_total": [{"labels": {}, "value": "x"}]})


# Estimated cost


def test_cost_is_tokens_times_price_per_million() -> None:
    prices = {"gemini-flash-latest": (0.30, 2.50)}
    cost = estimate_cost_usd(prices, "gemini-flash-latest", 1_000_000, 200_000)
    assert cost == pytest.approx(0.30 + 0.50)


def test_cost_finds_a_price_under_the_api_model_prefix() -> None:
    prices = {"gemini-flash-latest": (1.0, 1.0)}
    assert estimate_cost_usd(prices, "models/gemini-flash-latest", 1_000_000, 0) == 1.0


def test_cost_of_an_unpriced_model_is_unknown() -> None:
    assert estimate_cost_usd({}, "gemini-flash-latest", 10, 10) is None


# Prometheus exposition


def test_exposition_parses_with_prefix_help_and_types(registry: Registry) -> None:
    registry.counter("requests_total", "Requests answered.", ("command",)).inc(command="chat")
    registry.gauge("queue_waiting", "Chats waiting.").set(2)
    registry.sliding_rate("requests_per_minute", "Requests, last minute.")
    families = parse(render(registry))
    # The parser strips "_total" from a counter family's name, not its samples.
    assert {name: f.type for name, f in families.items()} == {
        "agentd_requests": "counter",
        "agentd_queue_waiting": "gauge",
        "agentd_requests_per_minute": "gauge",
    }
    assert families["agentd_requests"].documentation == "Requests answered."
    [sample] = families["agentd_requests"].samples
    assert (sample.name, sample.labels, sample.value) == (
        "agentd_requests_total",
        {"command": "chat"},
        1.0,
    )


def test_every_family_has_help_then_type_lines(registry: Registry) -> None:
    registry.counter("requests_total", "Requests.")
    registry.histogram("latency_seconds", "Latency.", buckets=(1.0,))
    lines = render(registry).splitlines()
    assert lines[0:2] == [
        "# HELP agentd_requests_total Requests.",
        "# TYPE agentd_requests_total counter",
    ]
    assert "# TYPE agentd_latency_seconds histogram" in lines


def test_exposition_histogram_has_cumulative_buckets_sum_and_count(registry: Registry) -> None:
    latency = registry.histogram("chat_latency_seconds", "Chat latency.", buckets=(0.5, 2.0))
    for value in (0.1, 1.0, 1.5, 9.0):
        latency.observe(value)
    family = parse(render(registry))["agentd_chat_latency_seconds"]
    samples = {(s.name, s.labels.get("le")): s.value for s in family.samples}
    assert family.type == "histogram"
    assert samples == {
        ("agentd_chat_latency_seconds_bucket", "0.5"): 1.0,
        ("agentd_chat_latency_seconds_bucket", "2.0"): 3.0,
        ("agentd_chat_latency_seconds_bucket", "+Inf"): 4.0,
        ("agentd_chat_latency_seconds_sum", None): 11.6,
        ("agentd_chat_latency_seconds_count", None): 4.0,
    }


def test_label_values_with_quotes_backslashes_and_newlines_round_trip(registry: Registry) -> None:
    nasty = 'say "hi"\\ then\nleave'
    registry.counter("requests_total", "Requests.", ("command",)).inc(command=nasty)
    [sample] = parse(render(registry))["agentd_requests"].samples
    assert sample.labels == {"command": nasty}


def test_help_text_with_backslashes_and_newlines_round_trips(registry: Registry) -> None:
    registry.counter("requests_total", 'Requests\\ "answered"\non two lines.')
    family = parse(render(registry))["agentd_requests"]
    assert family.documentation == 'Requests\\ "answered"\non two lines.'


def test_exposition_sample_lines_are_well_formed(registry: Registry) -> None:
    registry.counter("requests_total", "R.", ("a", "b")).inc(a='x"', b="y\n")
    registry.histogram("latency_seconds", "L.", ("model",)).observe(0.2, model="m")
    registry.error_rate("error_ratio", "E.")
    text = render(registry)
    sample = re.compile(r'[a-z_]+(\{([a-z_]+="([^"\\\n]|\\[\\"n])*",?)+\})? \S+')
    assert text.endswith("\n")
    for line in text.splitlines():
        assert line.startswith("# ") or sample.fullmatch(line), line


def test_content_type_announces_version_0_0_4() -> None:
    assert CONTENT_TYPE == "text/plain; version=0.0.4; charset=utf-8"
