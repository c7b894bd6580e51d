"""export and import: a user's sessions out as events, and an export back in as new sessions.

`export` streams: a `session` event per session, then its messages in
`messages` events, none larger than half a frame (a long message comes in
pieces marked `more`, as `history` sends them). `import_begin`,
`import_data` and `import_commit` carry a file in chunks (store/imports.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Final

from agentd.access import Role
from agentd.chat import validate_system_prompt
from agentd.commands import Audit, Call, CommandSet, Emit
from agentd.commands.args import optional, required
from agentd.commands.chat import find_session
from agentd.commands.history import MESSAGE_BYTES, MIN_PIECE_BYTES, pieces
from agentd.errors import BadRequest, Forbidden
from agentd.ownership import ALL_USERS
from agentd.runtime import Runtime
from agentd.store import export as store_export
from agentd.store import imports
from agentd.store.database import Database
from agentd.store.messages import StoredTurn
from agentd.store.sessions import Session

SPECS = CommandSet()
command = SPECS.command

MAX_NAMED: Final = 1000


@command("export", role=Role.CHAT, args=("sessions", "all"), long_running=True)
async def export(runtime: Runtime, call: Call) -> dict[str, Any]:
    chosen = await _chosen_sessions(runtime, call)
    budget = max(MIN_PIECE_BYTES, runtime.config.daemon.max_frame_bytes // 2)
    sent = await stream_sessions(runtime.db, chosen, call.emit, budget)
    return {"sessions": len(chosen), "messages": sent, "format": imports.FORMAT,
            "version": imports.VERSION}  # fmt: skip


async def stream_sessions(db: Database, chosen: list[Session], emit: Emit, budget: int) -> int:
    """Each session as a `session` event and its messages in `messages` events;
    returns how many messages went out."""
    sent = 0
    for session in chosen:
        await emit("session", {"session": session.as_dict()})
        after = 0
        while page := await db.run(store_export.message_page, session.id, after):
            for batch in _batches(page, budget):
                await emit("messages", {"session_id": session.id, "messages": batch})
            after, sent = page[-1].id, sent + len(page)
    return sent


def _batches(page: list[StoredTurn], budget: int) -> Iterator[list[dict[str, Any]]]:
    """Messages in lists of at most `budget` bytes; one too large alone in pieces."""
    batch: list[dict[str, Any]] = []
    used = 0
    for turn in page:
        size = MESSAGE_BYTES + len(turn.content.encode("utf-8"))
        if batch and used + size > budget:
            yield batch
            batch, used = [], 0
        if size > budget:
            for piece in pieces(turn, budget - MESSAGE_BYTES):
                yield [piece]
            continue
        batch.append({**turn.as_dict(), "more": False})
        used += size
    if batch:
        yield batch


async def _chosen_sessions(runtime: Runtime, call: Call) -> list[Session]:
    """The sessions named (each one the caller may read), every one of `all` (admins),
    or else all the caller's own."""
    refs = optional(call.args, "sessions", list, [])
    everyone = optional(call.args, "all", bool, False)
    if refs and everyone:
        raise BadRequest("name sessions or give all, not both")
    if everyone:
        if runtime.access.role_of(call.peer) < Role.ADMIN:
            raise Forbidden("exporting every user's sessions needs the admin role")
        call.facts.owner(call.peer, ALL_USERS)
        return await runtime.db.run(store_export.owned_sessions, None)
    if not refs:
        return await runtime.db.run(store_export.owned_sessions, call.peer.uid)
    if len(refs) > MAX_NAMED or not all(isinstance(ref, str) for ref in refs):
        raise BadRequest(f"argument 'sessions' must be up to {MAX_NAMED} strings")
    return await _named(runtime, call, refs)


async def _named(runtime: Runtime, call: Call, refs: list[str]) -> list[Session]:
    found = [await find_session(runtime, call, ref) for ref in refs]
    owners = {session.owner_uid for session in found} - {call.peer.uid}
    if len(owners) > 1:
        call.facts.owner_uid = ALL_USERS  # several other users' data in one request
    return list({session.id: session for session in found}.values())


# -- import ---------------------------------------------------------------------------------


def _check_prompt(runtime: Runtime, ref: str, prompt: str) -> None:
    """An imported system prompt is held to the limits of one set by `session_prompt`."""
    try:
        validate_system_prompt(
            prompt,
            runtime.config.chat.max_system_prompt_bytes,
            runtime.config.gemini.context_token_budget,
        )
    except BadRequest as exc:
        raise BadRequest(f"session {ref!r}: {exc.message}") from None


@command("import_begin", role=Role.CHAT)
async def import_begin(runtime: Runtime, call: Call) -> dict[str, Any]:
    import_id = runtime.imports.begin(call.peer.uid, imports.MAX_IMPORT_BYTES)
    chunk = max(MIN_PIECE_BYTES, runtime.config.daemon.max_frame_bytes // 2)
    return {"import_id": import_id, "max_bytes": imports.MAX_IMPORT_BYTES, "chunk_bytes": chunk}


@command("import_data", role=Role.CHAT, args=("import_id", "data"))
async def import_data(runtime: Runtime, call: Call) -> dict[str, Any]:
    data = required(call.args, "data", bytes)
    lines = runtime.imports.feed(call.peer.uid, required(call.args, "import_id", str), data)
    return {"lines": lines}


@command("import_commit", role=Role.CHAT, audit=Audit.CHANGE, args=("import_id",))
async def import_commit(runtime: Runtime, call: Call) -> dict[str, Any]:
    staged = runtime.imports.finish(call.peer.uid, required(call.args, "import_id", str))
    for session in staged:
        if session.system_prompt is not None:
            _check_prompt(runtime, session.ref, session.system_prompt)
    created = await runtime.db.run_checked(imports.write_imported, call.peer.uid, staged)
    # Only new sessions were written: no cached context of an existing session is stale.
    return {"sessions": created, "messages": sum(item["messages"] for item in created)}
