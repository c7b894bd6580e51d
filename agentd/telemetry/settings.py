"""The `[health]` and `[pricing]` configuration sections: frozen, typed, stdlib only.

Like every section, each declares its constraints on its fields
(agentd/constraints.py); the config loader turns the first broken one into an
error naming the key and where it came from. Values are plain str, int, float, bool and
tuple[str, ...] because that is what TOML and `AGENTD_*` variables give.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Final

from agentd.constraints import bounded

MIB: Final = 1024 * 1024

# "model=input/output", prices in USD per million tokens; e.g. "gemini-2.5-flash=0.30/2.50".
_PRICE: Final = re.compile(
    r"\s*(?P<model>[^=\s]+)\s*=\s*(?P<input>[0-9.]+)\s*/\s*(?P<output>[0-9.]+)\s*\Z"
)


@dataclass(frozen=True)
class HealthSettings:
    """Thresholds of the component checks and of the alert rules."""

    # Free space where the database and logs live: degraded (and the disk-low
    # alert) below this; failed below 1 MiB, where writes are about to fail.
    disk_min_free_bytes: int = bounded(100 * MIB, ge=0)
    # Event-loop lag (how late a timer fires): degraded above, failed above.
    loop_lag_degraded_s: float = bounded(0.5, gt=0)
    loop_lag_failed_s: float = bounded(5.0, at_least="loop_lag_degraded_s")
    # Resident memory: degraded above this; 0 = no limit.
    rss_max_bytes: int = bounded(1024 * MIB, ge=0)
    # The Gemini key check is one authenticated call: cached this long.
    gemini_check_interval_s: float = bounded(600.0, gt=0)
    # PRAGMA cipher_integrity_check reads and authenticates every page: at
    # start-up, then this often; 0 = at start-up only.
    integrity_check_interval_s: float = bounded(3600.0, ge=0)
    # Alert rules. The error ratio counts the daemon's failures (INTERNAL,
    # PROVIDER_ERROR, NOT_READY, BUSY) over the last error_window_s seconds,
    # and only once the window holds alert_min_requests requests.
    error_window_s: int = bounded(60, ge=1)
    alert_error_ratio: float = bounded(0.5, gt=0, le=1)
    alert_min_requests: int = bounded(20, ge=1)
    alert_chat_p95_s: float = bounded(30.0, gt=0)


@dataclass(frozen=True)
class PricingSettings:
    """Per-model prices for the estimated cost, as "model=input/output" strings.

    Prices are USD per million tokens. A tuple of strings rather than a table
    because every config value is a scalar or a list of strings (and so can
    come from one environment variable: AGENTD_PRICING__MODELS="a=1/2,b=3/4").
    Tokens of a model without a price are counted but cost nothing here.
    `as_of` dates the table: budgets and `agentctl budget` say which prices
    their estimates use.
    """

    as_of: str = "2025-07-22"

    models: tuple[str, ...] = bounded(
        (
            "gemini-flash-latest=0.30/2.50",
            "gemini-flash-lite-latest=0.10/0.40",
            "gemini-2.5-flash=0.30/2.50",
            "gemini-2.5-flash-lite=0.10/0.40",
        ),
        check=lambda models: _bad_price(models),
    )

    def prices(self) -> dict[str, tuple[float, float]]:
        """model -> (input, output) USD per million tokens; invalid entries are skipped."""
        out: dict[str, tuple[float, float]] = {}
        for entry in self.models:
            parsed = parse_price(entry)
            if parsed is not None:
                model, price = parsed
                out[model] = price
        return out


def _bad_price(models: tuple[str, ...]) -> str | None:
    bad = [entry for entry in models if parse_price(entry) is None]
    if bad:
        return f"entry {bad[0]!r} is not 'model=input/output' (USD per million tokens)"
    return None


def parse_price(entry: str) -> tuple[str, tuple[float, float]] | None:
    match = _PRICE.match(entry)
    if match is None:
        return None
    try:
        price = float(match["input"]), float(match["output"])
    except ValueError:
        return None
    if not all(math.isfinite(p) for p in price):
        return None
    return match["model"], price
