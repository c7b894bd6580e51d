"""Output for people and for scripts: colour only on a TTY without NO_COLOR; JSON on request."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterable
from typing import Any

import click


def use_colour(stream: Any = None) -> bool:
    stream = stream or sys.stdout
    return stream.isatty() and "NO_COLOR" not in os.environ and os.environ.get("TERM") != "dumb"


def style(text: str, **kwargs: Any) -> str:
    return click.style(text, **kwargs) if use_colour() else text


def state_colour(state: str) -> str:
    colour = {"READY": "green", "PROCESSING": "cyan", "ERROR": "red", "STOPPING": "yellow"}.get(
        state
    )
    return style(state, fg=colour, bold=True) if colour else state


def level_colour(level: str, width: int = 0) -> str:
    """The level coloured, padded to `width` visible columns (the escape codes take none)."""
    colour = {"ok": "green", "degraded": "yellow", "failed": "red"}.get(level)
    padding = " " * (width - len(level))
    return (style(level, fg=colour) if colour else level) + padding


def print_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, sort_keys=True, default=str))


def print_pairs(pairs: Iterable[tuple[str, Any]], indent: int = 2) -> None:
    rows = list(pairs)
    width = max((len(k) for k, _ in rows), default=0)
    for key, value in rows:
        click.echo(f"{' ' * indent}{key.ljust(width)}  {value}")


def print_table(headers: list[str], rows: list[list[str]]) -> None:
    widths = [
        max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)
    ]
    click.echo(
        "  ".join(
            style(h.ljust(w), bold=True) for h, w in zip(headers, widths, strict=True)
        ).rstrip()
    )
    for row in rows:
        click.echo("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


def human_duration(seconds: float) -> str:
    seconds = int(seconds)
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [f"{days}d"] if days else []
    if hours or days:
        parts.append(f"{hours}h")
    if minutes or hours or days:
        parts.append(f"{minutes}m")
    parts.append(f"{secs}s")
    return " ".join(parts)


def human_bytes(size: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"
