"""search: full-text search over the caller's conversations (admins: everyone's with `all`)."""

from __future__ import annotations

from typing import Any, Final

from agentd.access import Role
from agentd.commands import Call, CommandSet
from agentd.commands.args import optional, optional_or_none, required
from agentd.commands.chat import find_session
from agentd.errors import Forbidden
from agentd.ownership import ALL_USERS
from agentd.runtime import Runtime
from agentd.store import search as store_search
from agentd.store.search import Query

SPECS = CommandSet()
command = SPECS.command

MAX_RESULTS: Final = 200
HIT_BYTES: Final = 400  # a hit but its snippet text, packed, with room to spare


@command("search", role=Role.CHAT, args=("query", "session", "limit", "all", "raw"))
async def search(runtime: Runtime, call: Call) -> dict[str, Any]:
    """The best matches first, each with a snippet; as many as fit in half a frame."""
    text = required(call.args, "query", str)
    session_id = await _searched_session(runtime, call)
    query = Query(
        text,
        raw=optional(call.args, "raw", bool, False),
        # A session found is one the caller may read (find_session checked it).
        owner_uid=_searched_owner(runtime, call) if session_id is None else None,
        session_id=session_id,
        limit=max(1, min(optional(call.args, "limit", int, 20), MAX_RESULTS)),
    )
    hits = await runtime.db.run(store_search.search, query)
    return fitting(hits, runtime.config.daemon.max_frame_bytes // 2)


def fitting(hits: list[store_search.Hit], budget: int) -> dict[str, Any]:
    listed: list[dict[str, Any]] = []
    used = 0
    for hit in hits:
        used += HIT_BYTES + sum(len(text.encode("utf-8")) for text, _ in hit.snippet)
        if used > budget:
            break
        listed.append(hit.as_dict())
    return {"results": listed, "omitted": len(hits) - len(listed)}


def _searched_owner(runtime: Runtime, call: Call) -> int | None:
    """The caller's own messages, or (admins, `all`) everyone's, audited as such."""
    if not optional(call.args, "all", bool, False):
        return call.peer.uid
    if runtime.access.role_of(call.peer) < Role.ADMIN:
        raise Forbidden("searching every user's sessions needs the admin role")
    call.facts.owner(call.peer, ALL_USERS)
    return None


async def _searched_session(runtime: Runtime, call: Call) -> str | None:
    ref = optional_or_none(call.args, "session", str)
    return None if ref is None else (await find_session(runtime, call, ref)).id
