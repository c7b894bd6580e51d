"""history: a session's messages, however large, in frames under the frame limit."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Final

from agentd.access import Role
from agentd.commands import Audit, Call, CommandSet
from agentd.commands.args import optional
from agentd.commands.chat import MAX_LIST, find_or_current
from agentd.runtime import Runtime
from agentd.store import messages, summaries
from agentd.store.messages import StoredTurn
from agentd.store.summaries import Summary

SPECS = CommandSet()
command = SPECS.command

MIN_PIECE_BYTES: Final = 4096
MESSAGE_BYTES: Final = 300  # a message but its text, packed, with room to spare


@command("history", role=Role.CHAT, audit=Audit.READ, args=("session", "limit", "stream"))
async def history(runtime: Runtime, call: Call) -> dict[str, Any]:
    """A session's latest messages, oldest first.

    No frame may exceed the frame limit, whatever a session holds. With
    `stream`, each message goes in `message` events, a long one split over
    several (each piece marked `more` until its last); the reply only counts
    them. Without it, the reply holds what fits in half a frame: the oldest
    messages are left out first (`omitted`), and a message too large alone is
    cut (`truncated`).
    """
    session = await find_or_current(runtime, call)
    call.facts.session_id = session.id
    summary = _summary(await runtime.db.run(summaries.get, session.id))
    limit = max(1, min(optional(call.args, "limit", int, 100), MAX_LIST))
    ids = await runtime.db.run(messages.history_ids, session.id, limit)
    budget = max(MIN_PIECE_BYTES, runtime.config.daemon.max_frame_bytes // 2)
    if optional(call.args, "stream", bool, False):
        sent = 0
        for message_id in ids:
            turn = await runtime.db.run(messages.turn, session.id, message_id)
            if turn is not None:  # deleted meanwhile
                for piece in pieces(turn, budget):
                    await call.emit("message", {"message": piece})
                sent += 1
        return {"session": session.as_dict(), "count": sent, "summary": summary}
    page, omitted = await _page(runtime, session.id, ids, budget)
    return {"session": session.as_dict(), "messages": page, "omitted": omitted, "summary": summary}


def _summary(summary: Summary | None) -> dict[str, Any] | None:
    """Where the session's summary stands (context_summary.py): the model sees it
    instead of every message up to `upto_message_id`."""
    if summary is None:
        return None
    return {
        "upto_message_id": summary.upto_message_id,
        "turns": summary.turns,
        "model": summary.model,
        "created_at": summary.created_at,
    }


async def _page(
    runtime: Runtime, session_id: str, ids: list[int], budget: int
) -> tuple[list[dict[str, Any]], int]:
    """The newest messages that fit `budget` bytes together, oldest first."""
    page: list[dict[str, Any]] = []
    used = 0
    for position, message_id in enumerate(reversed(ids)):
        turn = await runtime.db.run(messages.turn, session_id, message_id)
        if turn is None:
            continue
        size = MESSAGE_BYTES + len(turn.content.encode("utf-8"))
        if used + size > budget and page:
            return page[::-1], len(ids) - position
        if size > budget:
            first = next(_split_utf8(turn.content, budget - MESSAGE_BYTES))
            page.append({**turn.as_dict(), "content": first, "truncated": True})
        else:
            page.append(turn.as_dict())
        used += size
    return page[::-1], 0


def pieces(turn: StoredTurn, max_bytes: int) -> Iterator[dict[str, Any]]:
    """The message as one or more event payloads of at most `max_bytes` of text each."""
    meta = turn.as_dict()
    parts = list(_split_utf8(turn.content, max_bytes)) or [""]
    for index, text in enumerate(parts):
        yield {**meta, "content": text, "more": index < len(parts) - 1}


def _split_utf8(text: str, max_bytes: int) -> Iterator[str]:
    """`text` in pieces of at most `max_bytes` UTF-8 bytes, cut between characters."""
    data = text.encode("utf-8")
    start = 0
    while start < len(data):
        end = min(start + max_bytes, len(data))
        while end < len(data) and data[end] & 0xC0 == 0x80:  # inside a character: back off
            end -= 1
        yield data[start:end].decode("utf-8")
        start = end
