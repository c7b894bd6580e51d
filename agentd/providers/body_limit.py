"""A bound on the HTTP body of a whole (non-streamed) answer, read by httpx2.

The SDK reads a non-streamed response whole before we see any of it, so the
text cap (chat.max_answer_bytes, see gemini.py) alone would let an endpoint
that never ends its body grow the daemon without bound. A response hook on the
SDK's httpx2 client wraps the body of each response: while `BODY_LIMIT` holds
a number (set around one non-streamed call), reading more bytes than that
raises AnswerTooLarge and closes the connection. Streamed answers are bounded
by the text cap as they arrive, so they leave `BODY_LIMIT` unset.

Imports httpx2: loaded with the SDK's client (gemini._build_client), never on
the daemon's path to READY.
"""

from __future__ import annotations

import contextvars
from collections.abc import AsyncIterator

import httpx2

from agentd.providers.errors import AnswerTooLarge

BODY_LIMIT: contextvars.ContextVar[int | None] = contextvars.ContextVar(
    "agentd_body_limit", default=None
)


def body_limit_for(max_answer_bytes: int) -> int:
    """Room for the text as JSON (escapes) and the response's metadata around it."""
    return 4 * max_answer_bytes + 64 * 1024


async def bound_body(response: httpx2.Response) -> None:
    """httpx2 response hook: runs before the body is read."""
    limit = BODY_LIMIT.get()
    if limit is not None and isinstance(response.stream, httpx2.AsyncByteStream):
        response.stream = _BoundedBody(response.stream, limit)


class _BoundedBody(httpx2.AsyncByteStream):
    def __init__(self, inner: httpx2.AsyncByteStream, limit: int) -> None:
        self._inner = inner
        self._limit = limit

    async def __aiter__(self) -> AsyncIterator[bytes]:
        seen = 0
        async for chunk in self._inner:
            seen += len(chunk)
            if seen > self._limit:
                raise AnswerTooLarge(
                    f"the response body passed {self._limit} bytes and was not read further",
                    reason="BODY_TOO_LARGE",
                )
            yield chunk

    async def aclose(self) -> None:
        await self._inner.aclose()
