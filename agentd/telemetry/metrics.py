"""In-process metrics: counters, gauges, latency histograms, sliding rates.

The daemon keeps its own small registry instead of prometheus_client: that
library costs start-up time, and we need JSON snapshots (``agentctl metrics``)
and counters that survive restarts, which it does not give. ``prometheus.py``
renders a :class:`Registry` in the Prometheus text format.

Two lifetimes, on purpose:

- *lifetime* counters (``lifetime=True``: requests, tokens, estimated cost)
  are totals an operator wants across restarts. :meth:`Registry.export_lifetime`
  gives a JSON-friendly dict the daemon persists in its encrypted store, and
  :meth:`Registry.restore_lifetime` adds it back at start-up.
- everything else is *process-only*: gauges, histograms and their percentiles,
  sliding rates and error rates. They describe this process's recent traffic;
  a percentile or a rate carried over from a previous process would describe
  traffic that is gone.

Units are base units, named in the metric name: seconds (``_seconds``),
bytes (``_bytes``); counter names end in ``_total``. Registry names are bare
(``requests_total``); the exposition adds the ``agentd_`` prefix.

Not thread-safe, by design: every metric is touched from the daemon's single
asyncio loop. Code on another thread (the store's) must hop to the loop
(``loop.call_soon_threadsafe``) before touching a metric.

Time is injected (a monotonic ``Callable[[], float]``) wherever behaviour
depends on it, so tests drive a fake clock.
"""

from __future__ import annotations

import math
import re
import time
from bisect import bisect_left
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from itertools import pairwise
from typing import Any, ClassVar, TypeAlias, TypeVar

Clock: TypeAlias = Callable[[], float]
LabelValues: TypeAlias = tuple[str, ...]

# Latency buckets in seconds, spread for LLM calls: sub-100 ms for local
# commands, up to a minute for a long generation.
DEFAULT_LATENCY_BUCKETS: tuple[float, ...] = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)  # fmt: skip
# Percentiles come from the most recent observations only, which bounds memory
# and keeps the figures about current traffic.
DEFAULT_PERCENTILE_WINDOW = 1024

_NAME_RE = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*\Z")
_LABEL_RE = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*\Z")


def _check_name(name: str) -> None:
    if not _NAME_RE.match(name):
        raise ValueError(f"invalid metric name {name!r}")


def _check_labelnames(labelnames: Sequence[str], reserved: frozenset[str]) -> None:
    for label in labelnames:
        # "__" names are reserved by Prometheus for its own use.
        if not _LABEL_RE.match(label) or label.startswith("__") or label in reserved:
            raise ValueError(f"invalid label name {label!r}")
    if len(set(labelnames)) != len(labelnames):
        raise ValueError(f"duplicate label names in {labelnames!r}")


def _check_finite(value: float, what: str) -> None:
    if not math.isfinite(value):
        raise ValueError(f"{what} must be a finite number, not {value!r}")


class _Metric:
    """Name, description and label names shared by every metric."""

    kind: ClassVar[str]
    reserved_labels: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, name: str, description: str, labelnames: Sequence[str] = ()) -> None:
        _check_name(name)
        _check_labelnames(labelnames, self.reserved_labels)
        self.name = name
        self.description = description
        self.labelnames: LabelValues = tuple(labelnames)

    def _key(self, labels: Mapping[str, str]) -> LabelValues:
        if labels.keys() != set(self.labelnames):
            raise ValueError(
                f"{self.name} takes labels {sorted(self.labelnames)}, got {sorted(labels)}"
            )
        return tuple(labels[name] for name in self.labelnames)

    def label_dict(self, key: LabelValues) -> dict[str, str]:
        return dict(zip(self.labelnames, key, strict=True))


class _Scalar(_Metric):
    """A metric holding one number per label set."""

    def __init__(self, name: str, description: str, labelnames: Sequence[str] = ()) -> None:
        super().__init__(name, description, labelnames)
        self._values: dict[LabelValues, float] = {}
        if not self.labelnames:
            # An unlabelled series exists from the start, so it reads 0, not absent.
            self._values[()] = 0.0

    def value(self, **labels: str) -> float:
        return self._values.get(self._key(labels), 0.0)

    def samples(self) -> list[tuple[dict[str, str], float]]:
        return [(self.label_dict(key), value) for key, value in self._values.items()]

    def _add(self, amount: float, labels: Mapping[str, str]) -> None:
        _check_finite(amount, f"{self.name} increment")
        key = self._key(labels)
        self._values[key] = self._values.get(key, 0.0) + amount


class Counter(_Scalar):
    """A total that only goes up, e.g. ``requests_total{command, outcome}``."""

    kind = "counter"

    def __init__(
        self,
        name: str,
        description: str,
        labelnames: Sequence[str] = (),
        *,
        lifetime: bool = False,
    ) -> None:
        if not name.endswith("_total"):
            raise ValueError(f"counter names end in _total: {name!r}")
        super().__init__(name, description, labelnames)
        self.lifetime = lifetime

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        if amount < 0:
            raise ValueError(f"{self.name} only goes up; got {amount}")
        self._add(amount, labels)

    def inc_series(self, key: LabelValues) -> None:
        """Add one to the series whose label values are `key`, in labelnames order.

        For the per-request path, where `inc(**labels)` and its checks are a
        measurable share of a `status`; the caller owns getting `key` right.
        """
        self._values[key] = self._values.get(key, 0.0) + 1.0

    def total(self) -> float:
        """The sum over every label set."""
        return sum(self._values.values())


class Gauge(_Scalar):
    """A value that goes up and down: set by the daemon, or read from a callback.

    A callback gauge (``callback=``) is evaluated only when a snapshot is
    taken, so costly readings (RSS through psutil) cost nothing between scrapes.
    """

    kind = "gauge"

    def __init__(
        self,
        name: str,
        description: str,
        labelnames: Sequence[str] = (),
        *,
        callback: Callable[[], float] | None = None,
    ) -> None:
        if callback is not None and labelnames:
            raise ValueError(f"{name}: a callback gauge has no labels")
        super().__init__(name, description, labelnames)
        self._callback = callback

    def set(self, value: float, **labels: str) -> None:
        self._refuse_if_callback()
        _check_finite(value, self.name)
        self._values[self._key(labels)] = float(value)

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        self._refuse_if_callback()
        self._add(amount, labels)

    def dec(self, amount: float = 1.0, **labels: str) -> None:
        self.inc(-amount, **labels)

    def value(self, **labels: str) -> float:
        if self._callback is not None:
            self._key(labels)
            return float(self._callback())
        return super().value(**labels)

    def samples(self) -> list[tuple[dict[str, str], float]]:
        if self._callback is not None:
            return [({}, float(self._callback()))]
        return super().samples()

    def _refuse_if_callback(self) -> None:
        if self._callback is not None:
            raise TypeError(f"{self.name} is read from a callback; it cannot be set")


def percentile(sorted_values: Sequence[float], p: float) -> float | None:
    """Nearest-rank percentile of already sorted values; None when there are none.

    Nearest rank returns an observed value (never an interpolation), which
    makes the figure exact for the window and easy to pin in tests.
    """
    if not 0 < p <= 100:
        raise ValueError(f"percentile must be in (0, 100], got {p}")
    if not sorted_values:
        return None
    rank = math.ceil(p / 100 * len(sorted_values))
    return sorted_values[rank - 1]


@dataclass(frozen=True)
class HistogramState:
    """One histogram series at one moment.

    ``bounds`` are the bucket upper bounds, the last is ``math.inf``;
    ``cumulative[i]`` counts observations ``<= bounds[i]``. The percentiles
    cover the most recent ``window`` observations (None before the first).
    """

    bounds: tuple[float, ...]
    cumulative: tuple[int, ...]
    count: int
    sum: float
    p50: float | None
    p95: float | None
    p99: float | None


class _HistogramSeries:
    """Bucket counts, sum and a bounded window of recent observations."""

    __slots__ = ("bounds", "count", "counts", "recent", "sum")

    def __init__(self, bounds: tuple[float, ...], window: int) -> None:
        self.bounds = bounds
        self.counts = [0] * len(bounds)
        self.count = 0
        self.sum = 0.0
        self.recent: deque[float] = deque(maxlen=window)

    def observe(self, value: float) -> None:
        # bisect_left finds the first bound >= value: Prometheus buckets are "le".
        self.counts[bisect_left(self.bounds, value)] += 1
        self.count += 1
        self.sum += value
        self.recent.append(value)

    def state(self) -> HistogramState:
        cumulative = tuple(_running_sum(self.counts))
        ordered = sorted(self.recent)
        return HistogramState(
            bounds=self.bounds,
            cumulative=cumulative,
            count=self.count,
            sum=self.sum,
            p50=percentile(ordered, 50),
            p95=percentile(ordered, 95),
            p99=percentile(ordered, 99),
        )


def _running_sum(values: Iterable[int]) -> Iterable[int]:
    total = 0
    for value in values:
        total += value
        yield total


class Histogram(_Metric):
    """Latencies (in seconds) in fixed buckets, plus recent-window percentiles.

    Memory per series is bounded: one int per bucket and at most ``window``
    recent observations for the percentiles.
    """

    kind = "histogram"
    reserved_labels = frozenset({"le"})

    def __init__(
        self,
        name: str,
        description: str,
        labelnames: Sequence[str] = (),
        *,
        buckets: Sequence[float] = DEFAULT_LATENCY_BUCKETS,
        window: int = DEFAULT_PERCENTILE_WINDOW,
    ) -> None:
        super().__init__(name, description, labelnames)
        self.bounds = (*_check_buckets(buckets), math.inf)
        if window < 1:
            raise ValueError(f"{name}: the percentile window holds at least one value")
        self.window = window
        self._series: dict[LabelValues, _HistogramSeries] = {}
        if not self.labelnames:
            self._series[()] = _HistogramSeries(self.bounds, window)

    def observe(self, value: float, **labels: str) -> None:
        _check_finite(value, f"{self.name} observation")
        key = self._key(labels)
        series = self._series.get(key)
        if series is None:
            series = self._series[key] = _HistogramSeries(self.bounds, self.window)
        series.observe(value)

    def state(self, **labels: str) -> HistogramState:
        series = self._series.get(self._key(labels))
        return (series or _HistogramSeries(self.bounds, 1)).state()

    def samples(self) -> list[tuple[dict[str, str], HistogramState]]:
        return [(self.label_dict(key), series.state()) for key, series in self._series.items()]


def _check_buckets(buckets: Sequence[float]) -> tuple[float, ...]:
    bounds = tuple(float(b) for b in buckets)
    if not bounds or any(not math.isfinite(b) for b in bounds):
        raise ValueError("histogram buckets are finite numbers; +Inf is added for you")
    if any(a >= b for a, b in pairwise(bounds)):
        raise ValueError(f"histogram buckets must increase strictly: {bounds}")
    return bounds


class _SecondBuckets:
    """Event counts per whole second over the last ``window`` seconds.

    A ring of ``window`` slots, each stamped with the second it counts; a slot
    whose stamp is too old reads as zero and is reused. Resolution is one
    second: the window is the current partial second plus the previous
    ``window - 1`` whole seconds.
    """

    def __init__(self, clock: Clock, window: int) -> None:
        if window < 1:
            raise ValueError(f"the window is at least one second, got {window}")
        self._clock = clock
        self.window = window
        # Stamped one window in the past, so every slot starts out expired.
        start = math.floor(clock()) - window
        self._stamps = [start] * window
        self._counts = [0] * window

    def add(self, n: int = 1) -> None:
        second = int(self._clock())  # floor for the clock's non-negative times, cheaper
        slot = second % self.window
        if self._stamps[slot] != second:
            self._stamps[slot] = second
            self._counts[slot] = 0
        self._counts[slot] += n

    def total(self) -> int:
        now = math.floor(self._clock())
        return sum(
            count
            for stamp, count in zip(self._stamps, self._counts, strict=True)
            if now - stamp < self.window
        )


class SlidingRate(_Metric):
    """Events over the last ``window_seconds`` (60 by default), e.g. requests per minute."""

    kind = "rate"

    def __init__(
        self, name: str, description: str, *, clock: Clock, window_seconds: int = 60
    ) -> None:
        super().__init__(name, description)
        self._events = _SecondBuckets(clock, window_seconds)
        self.window_seconds = window_seconds

    def mark(self, n: int = 1) -> None:
        self._events.add(n)

    def count(self) -> int:
        """Events inside the window."""
        return self._events.total()

    def per_minute(self) -> float:
        return self.count() * 60 / self.window_seconds


class ErrorRate(_Metric):
    """The share of failed requests over the last ``window_seconds``."""

    kind = "error_rate"

    def __init__(
        self, name: str, description: str, *, clock: Clock, window_seconds: int = 60
    ) -> None:
        super().__init__(name, description)
        self._requests = _SecondBuckets(clock, window_seconds)
        self._errors = _SecondBuckets(clock, window_seconds)
        self.window_seconds = window_seconds

    def record(self, *, ok: bool) -> None:
        self._requests.add()
        if not ok:
            self._errors.add()

    def counts(self) -> tuple[int, int]:
        """(errors, requests) inside the window."""
        return self._errors.total(), self._requests.total()

    def ratio(self) -> float:
        """Errors / requests in the window; 0.0 when there was no traffic."""
        errors, requests = self.counts()
        return errors / requests if requests else 0.0


Metric: TypeAlias = Counter | Gauge | Histogram | SlidingRate | ErrorRate
# A registered metric comes back with its own type, not the Metric union.
_M = TypeVar("_M", Counter, Gauge, Histogram, SlidingRate, ErrorRate)


class Registry:
    """The daemon's metrics, in registration order, with snapshots and persistence."""

    def __init__(self, clock: Clock = time.monotonic) -> None:
        self._clock = clock
        self._metrics: dict[str, Metric] = {}

    def counter(
        self,
        name: str,
        description: str,
        labelnames: Sequence[str] = (),
        *,
        lifetime: bool = False,
    ) -> Counter:
        return self._add(Counter(name, description, labelnames, lifetime=lifetime))

    def gauge(
        self,
        name: str,
        description: str,
        labelnames: Sequence[str] = (),
        *,
        callback: Callable[[], float] | None = None,
    ) -> Gauge:
        return self._add(Gauge(name, description, labelnames, callback=callback))

    def histogram(
        self,
        name: str,
        description: str,
        labelnames: Sequence[str] = (),
        *,
        buckets: Sequence[float] = DEFAULT_LATENCY_BUCKETS,
        window: int = DEFAULT_PERCENTILE_WINDOW,
    ) -> Histogram:
        metric = Histogram(name, description, labelnames, buckets=buckets, window=window)
        return self._add(metric)

    def sliding_rate(self, name: str, description: str, *, window_seconds: int = 60) -> SlidingRate:
        metric = SlidingRate(name, description, clock=self._clock, window_seconds=window_seconds)
        return self._add(metric)

    def error_rate(self, name: str, description: str, *, window_seconds: int = 60) -> ErrorRate:
        metric = ErrorRate(name, description, clock=self._clock, window_seconds=window_seconds)
        return self._add(metric)

    def metrics(self) -> tuple[Metric, ...]:
        return tuple(self._metrics.values())

    def snapshot(self) -> dict[str, dict[str, Any]]:
        """Every metric as JSON- and msgpack-friendly data, keyed by name."""
        return {metric.name: _snapshot_one(metric) for metric in self._metrics.values()}

    def export_lifetime(self) -> dict[str, list[dict[str, Any]]]:
        """Lifetime counters as ``{name: [{"labels": {...}, "value": v}, ...]}``."""
        return {
            metric.name: [{"labels": labels, "value": value} for labels, value in metric.samples()]
            for metric in self._lifetime_counters()
        }

    def restore_lifetime(self, saved: Mapping[str, Any]) -> list[str]:
        """Add persisted lifetime totals to the live counters; call once, at start-up.

        Adding (rather than overwriting) keeps what this process counted before
        the restore. Series that no longer fit (a counter renamed, retired or
        relabelled in a newer version) are skipped and their names returned,
        so the caller can log them. A malformed ``saved`` raises ValueError.
        """
        counters = {metric.name: metric for metric in self._lifetime_counters()}
        skipped: list[str] = []
        for name, series in saved.items():
            counter = counters.get(name)
            if counter is None or not _restore_series(counter, series):
                skipped.append(name)
        return skipped

    def _lifetime_counters(self) -> list[Counter]:
        return [m for m in self._metrics.values() if isinstance(m, Counter) and m.lifetime]

    def _add(self, metric: _M) -> _M:
        if metric.name in self._metrics:
            raise ValueError(f"metric {metric.name!r} is already registered")
        self._metrics[metric.name] = metric
        return metric


def _restore_series(counter: Counter, series: Any) -> bool:
    """Add one persisted counter's series; False when its labels no longer fit."""
    if not isinstance(series, list):
        raise ValueError(f"saved {counter.name}: expected a list, got {type(series).__name__}")
    entries = [_parse_saved_entry(counter.name, entry) for entry in series]
    if any(labels.keys() != set(counter.labelnames) for labels, _ in entries):
        return False
    for labels, value in entries:
        counter.inc(value, **labels)
    return True


def _parse_saved_entry(name: str, entry: Any) -> tuple[dict[str, str], float]:
    try:
        labels, value = entry["labels"], entry["value"]
    except (TypeError, KeyError) as exc:
        raise ValueError(f"saved {name}: malformed entry {entry!r}") from exc
    valid_labels = isinstance(labels, dict) and all(
        isinstance(k, str) and isinstance(v, str) for k, v in labels.items()
    )
    valid_value = isinstance(value, int | float) and not isinstance(value, bool)
    if not valid_labels or not valid_value or value < 0 or not math.isfinite(value):
        raise ValueError(f"saved {name}: malformed entry {entry!r}")
    return labels, float(value)


def _snapshot_one(metric: Metric) -> dict[str, Any]:
    head: dict[str, Any] = {"type": metric.kind, "description": metric.description}
    if isinstance(metric, Counter):
        return head | {"lifetime": metric.lifetime, "samples": _scalar_samples(metric)}
    if isinstance(metric, Gauge):
        return head | {"samples": _scalar_samples(metric)}
    if isinstance(metric, Histogram):
        return head | {"samples": [_histogram_sample(lb, st) for lb, st in metric.samples()]}
    if isinstance(metric, SlidingRate):
        return head | {
            "window_seconds": metric.window_seconds,
            "count": metric.count(),
            "per_minute": metric.per_minute(),
        }
    errors, requests = metric.counts()
    return head | {
        "window_seconds": metric.window_seconds,
        "errors": errors,
        "requests": requests,
        "ratio": metric.ratio(),
    }


def _scalar_samples(metric: Counter | Gauge) -> list[dict[str, Any]]:
    return [{"labels": labels, "value": value} for labels, value in metric.samples()]


def _histogram_sample(labels: dict[str, str], state: HistogramState) -> dict[str, Any]:
    # JSON has no infinity: bucket bounds become strings, as Prometheus's "le" does.
    buckets = {format_bound(b): n for b, n in zip(state.bounds, state.cumulative, strict=True)}
    return {
        "labels": labels,
        "count": state.count,
        "sum": state.sum,
        "buckets": buckets,
        "p50": state.p50,
        "p95": state.p95,
        "p99": state.p99,
    }


def format_bound(bound: float) -> str:
    """A bucket bound as Prometheus writes ``le``: ``0.005``, ``1.0``, ``+Inf``."""
    return "+Inf" if bound == math.inf else repr(bound)


def process_rss_bytes() -> float:
    """This process's resident set size, for a callback gauge.

    psutil is imported here, not at module import: its import cost is paid
    on the first snapshot, and never by code that only counts.
    """
    import psutil

    return float(psutil.Process().memory_info().rss)


def estimate_cost_usd(
    prices: Mapping[str, tuple[float, float]], model: str, tokens_in: int, tokens_out: int
) -> float | None:
    """Estimated cost of one call; None when the model has no configured price.

    ``prices`` maps a model name to (input, output) USD per million tokens.
    The API's ``models/`` prefix is ignored so both spellings find a price.
    """
    price = prices.get(model.removeprefix("models/"))
    if price is None:
        return None
    in_price, out_price = price
    return (tokens_in * in_price + tokens_out * out_price) / 1_000_000
