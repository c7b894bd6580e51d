"""Output for people and for scripts: colour only on a TTY without NO_COLOR; JSON on request.

Text from others (session names, audit fields, log records, model answers) is
data, never terminal commands: `visible` shows control characters escaped,
as `ls -b` and journalctl do, so an escape sequence (cursor moves, erase-line,
OSC window titles and clipboard writes), a C1 control, a bidi override or a
NUL cannot act on the operator's terminal. Table cells and log records are
always escaped (they are for people; scripts use --json); message bodies are
escaped on a terminal only, and keep their newlines and tabs.
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Iterable
from typing import Any, Final

import click

# C0 controls (ESC, CR, BS, NUL...), DEL and C1 controls; the Arabic letter mark,
# left-to-right and right-to-left marks, embeddings, overrides and isolates;
# the line and paragraph separators.
_UNSAFE = "\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069\u2028\u2029"
_UNSAFE_IN_LINE: Final = re.compile(f"[{_UNSAFE}]")
_UNSAFE_IN_BODY: Final = re.compile(f"(?![\t\n])[{_UNSAFE}]")


def _escaped(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def visible(text: str) -> str:
    """One line of untrusted text, every control and bidi character shown escaped."""
    return _UNSAFE_IN_LINE.sub(_escaped, text)


def visible_body(text: str) -> str:
    """Untrusted multi-line text (a message): escaped like `visible`, but \\n and \\t stay."""
    return _UNSAFE_IN_BODY.sub(_escaped, text)


def for_terminal(text: str, stream: Any = None) -> str:
    """A message body as it may be written to `stream` (stdout): escaped on a terminal,
    byte-exact in a pipe or a file, where scripts read it."""
    return visible_body(text) if (stream or sys.stdout).isatty() else text


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


def print_components(components: dict[str, dict[str, Any]], indent: int = 2) -> None:
    """The component table of `status` and `health`: name, level, reason."""
    width = max((len(name) for name in components), default=0)
    for name, c in components.items():
        click.echo(
            f"{' ' * indent}{name.ljust(width)}  {level_colour(c['status'], 8)}  {c.get('reason', '')}"
        )


def print_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, sort_keys=True, default=str))


def print_pairs(pairs: Iterable[tuple[str, Any]], indent: int = 2) -> None:
    rows = list(pairs)
    width = max((len(k) for k, _ in rows), default=0)
    for key, value in rows:
        click.echo(f"{' ' * indent}{key.ljust(width)}  {value}")


def _print_aligned(headers: list[str], rows: list[list[str]]) -> None:
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


def print_table(headers: list[str], rows: list[list[str]]) -> None:
    """A table; its cells are data from others, shown escaped (see `visible`)."""
    _print_aligned(headers, [[visible(cell) for cell in row] for row in rows])


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
