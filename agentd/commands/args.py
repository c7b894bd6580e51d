"""Typed access to request arguments; a wrong type is a BAD_REQUEST naming the argument."""

from __future__ import annotations

import math
from typing import Any, TypeVar

from agentd.errors import BadRequest
from agentd.protocol import MAX_EPOCH_S

T = TypeVar("T")


def optional(args: dict[str, Any], name: str, kind: type[T], default: T) -> T:
    value = args.get(name)
    if value is None:
        return default
    return _checked(name, value, kind)


def optional_or_none(args: dict[str, Any], name: str, kind: type[T]) -> T | None:
    value = args.get(name)
    return None if value is None else _checked(name, value, kind)


def required(args: dict[str, Any], name: str, kind: type[T]) -> T:
    if args.get(name) is None:
        raise BadRequest(f"argument {name!r} is required")
    return _checked(name, args[name], kind)


def _checked(name: str, value: Any, kind: type[T]) -> T:
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise BadRequest(f"argument {name!r} must be {kind.__name__}, got {type(value).__name__}")
    return value


def epoch_or_none(args: dict[str, Any], name: str) -> float | None:
    """A point in time in epoch seconds: finite, from 1970 to the year 9999.
    NaN, infinities and far-off values would otherwise fail deep in a query."""
    value = optional_or_none(args, name, float)
    if value is not None and not (math.isfinite(value) and 0 <= value <= MAX_EPOCH_S):
        raise BadRequest(
            f"argument {name!r} must be epoch seconds from 0 to {MAX_EPOCH_S:.0f}, got {value!r}"
        )
    return value
