"""Text a client chose (a command name, an argument name), made fit for a log line.

Every log line and error message that quotes such text goes through `clip`,
at every level, DEBUG included: a peer must not be able to write a megabyte
into the log with one request, nor terminal escapes into an operator's
`journalctl`.
"""

from __future__ import annotations

from typing import Final

MAX_CHARS: Final = 64


def clip(text: str, limit: int = MAX_CHARS) -> str:
    """`text` cut to `limit` characters (saying how many more there were), with
    control and other unprintable characters (escapes, bidi overrides) escaped."""
    if len(text) > limit:
        text = f"{text[:limit]}...(+{len(text) - limit} chars)"
    if text.isprintable():
        return text
    # repr() writes an unprintable character as its escape: \x1b, \u202e, \U000e0001.
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
