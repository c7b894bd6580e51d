"""chat, sessions, session_*: the conversation commands (history is in history.py).

Every session lookup goes through `find_session`, which asks the store for the
peer's own sessions (admins: any by id), so another user's session is
NOT_FOUND whatever the command. Each uid has its own current session.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Final

from agentd.access import Role, resolve_uid
from agentd.chat import validate_session_name, validate_system_prompt
from agentd.commands import Audit, Call, CommandSet
from agentd.commands.args import optional, optional_or_none, required
from agentd.errors import BadRequest, Forbidden, NotFound
from agentd.governance.gate import Ask
from agentd.ownership import ALL_USERS, owner_for
from agentd.providers.base import Wait
from agentd.retention import BY_USER, forget
from agentd.runtime import Runtime
from agentd.store import sessions
from agentd.store.sessions import Session
from agentd.telemetry.logs import session_id_var
from agentd.tools.approvals import peer_approver
from agentd.tools.trail import recorder

SPECS = CommandSet()
command = SPECS.command

MAX_LIST: Final = 10_000
LISTED_BYTES: Final = 300  # a listed session but its name, packed, with room to spare


@command(
    "chat",
    role=Role.CHAT,
    cost="chat",
    long_running=True,
    args=(
        "message",
        "session",
        "new_session",
        "session_name",
        "system_prompt",
        "stream",
        "model",
        "allow_secrets",
    ),
)
async def chat(runtime: Runtime, call: Call) -> dict[str, Any]:
    message = required(call.args, "message", str)
    stream = optional(call.args, "stream", bool, False)
    ask = _ask(runtime, call)
    session = await _session_for_chat(runtime, call)
    session_id_var.set(session.id)  # the chat's log lines name it
    call.facts.session_id = session.id

    async def send_chunk(text: str) -> None:
        await call.emit("chunk", {"text": text})

    async def send_wait(wait: Wait) -> None:
        # Streamed or not: a client waiting on a long retry deserves to know why.
        await call.emit("wait", wait._asdict())

    tools = None
    if runtime.tools is not None:
        approver = None
        if call.approvals is not None:
            timeout = runtime.config.tools.approval_timeout_s
            approver = peer_approver(call.approvals, call.emit, call.peer.uid, timeout)
        on_record = recorder(runtime.audit, call.request_id, call.peer, session.id)
        tools = runtime.tools.for_chat(ask.role.name.lower(), session.id, approver, on_record)
    reply = await runtime.chat.chat(
        session,
        call.request_id,
        message,
        send_chunk if stream else None,
        peer_uid=call.peer.uid,
        on_wait=send_wait,
        ask=ask,
        tools=tools,
    )
    call.facts.charged(reply.model, reply.tokens_in, reply.tokens_out)
    return reply.as_dict()


def _ask(runtime: Runtime, call: Call) -> Ask:
    """--model and --allow-secrets, with the peer's role for the model policy."""
    return Ask(
        role=runtime.access.role_of(call.peer),
        model=optional_or_none(call.args, "model", str),
        allow_secrets=optional(call.args, "allow_secrets", bool, False),
    )


async def _session_for_chat(runtime: Runtime, call: Call) -> Session:
    """--new-session starts (and switches to) a new one; --session picks one for this call."""
    if optional(call.args, "new_session", bool, False):
        name = optional_or_none(call.args, "session_name", str)
        prompt = optional_or_none(call.args, "system_prompt", str)
        return await _new_session(runtime, call, name, prompt)
    if call.args.get("session_name") is not None or call.args.get("system_prompt") is not None:
        raise BadRequest("session_name and system_prompt go with new_session")
    ref = optional_or_none(call.args, "session", str)
    if ref is not None:
        return await find_session(runtime, call, ref)
    return await _current_or_new(runtime, call)


async def _current_or_new(runtime: Runtime, call: Call) -> Session:
    """The peer's current session; a first chat (or one after it was deleted) starts one."""
    current = runtime.current.get(call.peer.uid)
    if current is not None:
        owner = owner_for(call.peer, runtime.access.role_of(call.peer))
        session = await runtime.db.run(sessions.find, current, owner)
        if session is not None:
            call.facts.owner(call.peer, session.owner_uid)
            return session
    return await _new_session(runtime, call, None, None)


async def _new_session(
    runtime: Runtime, call: Call, name: str | None, system_prompt: str | None
) -> Session:
    uid = call.peer.uid
    _check_system_prompt(runtime, system_prompt)
    await _check_name(runtime, uid, name)
    session = await runtime.db.run(sessions.create, uid, name, system_prompt)
    await runtime.current.set(uid, session.id)
    return session


def _check_system_prompt(runtime: Runtime, system_prompt: str | None) -> None:
    if system_prompt is not None:
        validate_system_prompt(
            system_prompt,
            runtime.config.chat.max_system_prompt_bytes,
            runtime.config.gemini.context_token_budget,
        )


async def _check_name(runtime: Runtime, owner_uid: int, name: str | None) -> None:
    """A valid name, not yet taken among the owner's sessions (names are per owner)."""
    if name is not None:
        validate_session_name(name)
        if await runtime.db.run(sessions.name_taken, owner_uid, name):
            raise BadRequest(f"a session named {name!r} exists already")


async def find_session(runtime: Runtime, call: Call, ref: str) -> Session:
    """The peer's session `ref` (admins: anyone's by id); NOT_FOUND for anything else,
    another user's session included, so a peer cannot learn that it exists."""
    owner = owner_for(call.peer, runtime.access.role_of(call.peer))
    session = await runtime.db.run(sessions.find, ref, owner)
    if session is None:
        raise NotFound(f"no session {ref!r}; `agentctl sessions` lists them")
    call.facts.owner(call.peer, session.owner_uid)
    return session


async def find_or_current(runtime: Runtime, call: Call) -> Session:
    ref = optional_or_none(call.args, "session", str) or runtime.current.get(call.peer.uid)
    if ref is None:
        raise NotFound("you have no current session yet; `agentctl chat` starts one")
    return await find_session(runtime, call, ref)


@command("sessions", role=Role.CHAT, audit=Audit.READ, args=("limit", "all", "user"))
async def list_sessions(runtime: Runtime, call: Call) -> dict[str, Any]:
    """The peer's own sessions; admins may ask for everyone's (all) or one user's (user).
    As many as fit in half a frame; `omitted` counts the older ones left out."""
    limit = max(1, min(optional(call.args, "limit", int, 100), MAX_LIST))
    owner_uid = _listed_owner(runtime, call)
    found = await runtime.db.run(sessions.list_owned, owner_uid, limit)
    current = runtime.current.get(call.peer.uid)
    budget, used = runtime.config.daemon.max_frame_bytes // 2, 0
    listed: list[dict[str, Any]] = []
    for session in found:  # newest first: those left out are the least recently used
        used += LISTED_BYTES + len((session.name or "").encode("utf-8"))
        if used > budget:
            break
        listed.append(_listed(session, current))
    return {"current": current, "sessions": listed, "omitted": len(found) - len(listed)}


def _listed(session: Session, current: str | None) -> dict[str, Any]:
    """A session in a listing: its system prompt (up to chat.max_system_prompt_bytes,
    times thousands of sessions) is left to `session_use` and `history`."""
    listed = session.as_dict()
    prompt = listed.pop("system_prompt")
    return {**listed, "has_system_prompt": prompt is not None, "current": session.id == current}


def _listed_owner(runtime: Runtime, call: Call) -> int | None:
    """Whose sessions to list (None: everyone's), audited when not the peer's own."""
    everyone = optional(call.args, "all", bool, False)
    user = optional_or_none(call.args, "user", str)
    if everyone and user is not None:
        raise BadRequest("give all or user, not both")
    uid = call.peer.uid if user is None else _uid_of(user)
    if not everyone and uid == call.peer.uid:
        return uid
    if runtime.access.role_of(call.peer) < Role.ADMIN:
        raise Forbidden("listing other users' sessions needs the admin role")
    call.facts.owner(call.peer, ALL_USERS if everyone else uid)
    return None if everyone else uid


def _uid_of(user: str) -> int:
    try:
        return resolve_uid(user)
    except LookupError as exc:
        raise BadRequest(str(exc)) from None


@command("session_new", role=Role.CHAT, audit=Audit.CHANGE, args=("name", "system_prompt"))
async def session_new(runtime: Runtime, call: Call) -> dict[str, Any]:
    session = await _new_session(
        runtime,
        call,
        optional_or_none(call.args, "name", str),
        optional_or_none(call.args, "system_prompt", str),
    )
    return {"session": session.as_dict()}


@command("session_use", role=Role.CHAT, audit=Audit.CHANGE, args=("session",))
async def session_use(runtime: Runtime, call: Call) -> dict[str, Any]:
    session = await find_session(runtime, call, required(call.args, "session", str))
    await runtime.current.set(call.peer.uid, session.id)
    return {"session": session.as_dict()}


@command("session_rename", role=Role.CHAT, audit=Audit.CHANGE, args=("session", "name"))
async def session_rename(runtime: Runtime, call: Call) -> dict[str, Any]:
    """Name one of the peer's sessions (admins: anyone's); no name removes it."""
    session = await find_session(runtime, call, required(call.args, "session", str))
    name = optional_or_none(call.args, "name", str)
    if name != session.name:
        await _check_name(runtime, session.owner_uid, name)
    renamed = dataclasses.replace(session, name=name)
    await runtime.db.run(sessions.update, renamed)
    return {"session": renamed.as_dict()}


@command("session_prompt", role=Role.CHAT, audit=Audit.CHANGE, args=("session", "system_prompt"))
async def session_prompt(runtime: Runtime, call: Call) -> dict[str, Any]:
    """Set or (none given) remove the system prompt of one of the peer's sessions."""
    session = await find_session(runtime, call, required(call.args, "session", str))
    prompt = optional_or_none(call.args, "system_prompt", str)
    _check_system_prompt(runtime, prompt)
    changed = dataclasses.replace(session, system_prompt=prompt)
    await runtime.db.run(sessions.update, changed)
    return {"session": changed.as_dict()}


@command("session_delete", role=Role.CHAT, audit=Audit.CHANGE, args=("session",))
async def session_delete(runtime: Runtime, call: Call) -> dict[str, Any]:
    """Delete one of the peer's sessions (admins: anyone's) with its messages."""
    session = await find_session(runtime, call, required(call.args, "session", str))
    call.facts.session_id = session.id
    was_current = runtime.current.get(call.peer.uid) == session.id
    await forget(runtime, [session], call.peer, BY_USER)  # the one deletion path
    if was_current:
        replacement = await runtime.db.run(sessions.create, call.peer.uid, None, None)
        await runtime.current.set(call.peer.uid, replacement.id)
    return {"deleted": session.id, "current": runtime.current.get(call.peer.uid)}
