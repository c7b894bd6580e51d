"""Render a metrics Registry in the Prometheus text exposition format 0.0.4.

Every family gets ``# HELP`` and ``# TYPE`` lines and the ``agentd_`` prefix::

    # HELP agentd_requests_total Requests answered, by command and outcome.
    # TYPE agentd_requests_total counter
    agentd_requests_total{command="chat",outcome="ok"} 3.0
    # HELP agentd_chat_latency_seconds Chat latency, end to end.
    # TYPE agentd_chat_latency_seconds histogram
    agentd_chat_latency_seconds_bucket{le="0.005"} 0
    ...
    agentd_chat_latency_seconds_bucket{le="+Inf"} 3
    agentd_chat_latency_seconds_sum 4.2
    agentd_chat_latency_seconds_count 3

Sliding rates and error rates are exported as gauges. The recent-window
percentiles stay in the JSON snapshot: Prometheus users get them from the
buckets with ``histogram_quantile()``, and a histogram family cannot carry
quantile samples.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from typing import Final

from agentd.telemetry.metrics import (
    Counter,
    ErrorRate,
    Gauge,
    Histogram,
    HistogramState,
    Metric,
    Registry,
    SlidingRate,
    format_bound,
)

CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"
NAMESPACE: Final = "agentd"


def render(registry: Registry, *, namespace: str = NAMESPACE) -> str:
    """The whole registry as one exposition document (ends with a newline)."""
    lines: list[str] = []
    for metric in registry.metrics():
        lines.extend(_render_family(metric, f"{namespace}_{metric.name}"))
    return "".join(line + "\n" for line in lines)


def escape_label_value(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def escape_help(text: str) -> str:
    # HELP text escapes backslash and newline only; quotes are literal there.
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def format_value(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


def _render_family(metric: Metric, name: str) -> Iterator[str]:
    prom_type = "gauge" if isinstance(metric, SlidingRate | ErrorRate) else metric.kind
    yield f"# HELP {name} {escape_help(metric.description)}"
    yield f"# TYPE {name} {prom_type}"
    if isinstance(metric, Counter | Gauge):
        for labels, value in metric.samples():
            yield _sample(name, labels, value)
    elif isinstance(metric, Histogram):
        for labels, state in metric.samples():
            yield from _histogram_samples(name, labels, state)
    elif isinstance(metric, SlidingRate):
        yield _sample(name, {}, metric.per_minute())
    else:
        yield _sample(name, {}, metric.ratio())


def _histogram_samples(name: str, labels: dict[str, str], state: HistogramState) -> Iterator[str]:
    for bound, count in zip(state.bounds, state.cumulative, strict=True):
        yield _sample(f"{name}_bucket", labels | {"le": format_bound(bound)}, count)
    yield _sample(f"{name}_sum", labels, state.sum)
    yield _sample(f"{name}_count", labels, state.count)


def _sample(name: str, labels: Mapping[str, str], value: float) -> str:
    if not labels:
        return f"{name} {format_value(value)}"
    pairs = ",".join(f'{key}="{escape_label_value(val)}"' for key, val in labels.items())
    return f"{name}{{{pairs}}} {format_value(value)}"
