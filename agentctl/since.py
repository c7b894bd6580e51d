"""`--since 10m` or `--since 2025-06-01T12:00:00Z`: a point in time for filters."""

from __future__ import annotations

import math
import re
from datetime import datetime
from typing import Final

import click

from agentd.protocol import MAX_EPOCH_S

_DURATION: Final = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([smhd])\s*\Z")
_UNIT_SECONDS: Final = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_since(text: str, now: float) -> float:
    """'10m', '2h', '30s', '1d' ago, or an ISO 8601 timestamp (local time if no zone)."""
    match = _DURATION.match(text)
    if match:
        return _checked(text, now - float(match[1]) * _UNIT_SECONDS[match[2]])
    try:
        moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise click.BadParameter(
            f"{text!r} is neither a duration (10m, 2h) nor a timestamp"
        ) from None
    return _checked(text, moment.timestamp())


def _checked(text: str, epoch: float) -> float:
    if not (math.isfinite(epoch) and 0 <= epoch <= MAX_EPOCH_S):
        raise click.BadParameter(f"{text!r} is out of range (1970 to 9999)")
    return epoch
