"""chat, sessions, history, session_delete: the conversation commands."""

from __future__ import annotations

from typing import Any

from agentd.access import Role
from agentd.commands import Call, command
from agentd.commands.args import optional, optional_or_none, required
from agentd.errors import BadRequest, NotFound
from agentd.governance.gate import Ask
from agentd.runtime import Runtime
from agentd.store import messages, sessions, state
from agentd.store.sessions import Session
from agentd.telemetry.logs import session_id_var

MAX_NAME = 100


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
    session_id_var.set(session.id)

    async def send_chunk(text: str) -> None:
        await call.emit("chunk", {"text": text})

    reply = await runtime.chat.chat(
        session,
        call.request_id,
        message,
        send_chunk if stream else None,
        peer_uid=call.peer.uid,
        ask=ask,
    )
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
        return await _new_session(runtime, name, prompt)
    if call.args.get("session_name") is not None or call.args.get("system_prompt") is not None:
        raise BadRequest("session_name and system_prompt go with new_session")
    ref = optional_or_none(call.args, "session", str)
    return await find_session(runtime, ref or runtime.session_id)


async def _new_session(runtime: Runtime, name: str | None, system_prompt: str | None) -> Session:
    if name is not None:
        if not name.strip() or len(name) > MAX_NAME:
            raise BadRequest(f"a session name is 1 to {MAX_NAME} characters")
        if await runtime.db.run(sessions.find, name) is not None:
            raise BadRequest(f"a session named {name!r} exists already")
    session = await runtime.db.run(sessions.create, name, system_prompt)
    await runtime.db.run(state.put_values, {"current_session": session.id})
    runtime.session_id = session.id
    return session


async def find_session(runtime: Runtime, ref: str) -> Session:
    session = await runtime.db.run(sessions.find, ref)
    if session is None:
        raise NotFound(f"no session {ref!r}; `agentctl sessions` lists them")
    return session


@command("sessions", role=Role.CHAT, args=("limit",))
async def list_sessions(runtime: Runtime, call: Call) -> dict[str, Any]:
    limit = optional(call.args, "limit", int, 100)
    found = await runtime.db.run(sessions.list_all, max(1, min(limit, 10_000)))
    return {
        "current": runtime.session_id,
        "sessions": [{**s.as_dict(), "current": s.id == runtime.session_id} for s in found],
    }


@command("session_new", role=Role.CHAT, args=("name", "system_prompt"))
async def session_new(runtime: Runtime, call: Call) -> dict[str, Any]:
    session = await _new_session(
        runtime,
        optional_or_none(call.args, "name", str),
        optional_or_none(call.args, "system_prompt", str),
    )
    return {"session": session.as_dict()}


@command("session_use", role=Role.CHAT, args=("session",))
async def session_use(runtime: Runtime, call: Call) -> dict[str, Any]:
    session = await find_session(runtime, required(call.args, "session", str))
    await runtime.db.run(state.put_values, {"current_session": session.id})
    runtime.session_id = session.id
    return {"session": session.as_dict()}


@command("history", role=Role.CHAT, args=("session", "limit"))
async def history(runtime: Runtime, call: Call) -> dict[str, Any]:
    session = await find_session(runtime, optional(call.args, "session", str, runtime.session_id))
    limit = max(1, min(optional(call.args, "limit", int, 100), 10_000))
    turns = await runtime.db.run(messages.history, session.id, limit)
    return {"session": session.as_dict(), "messages": [t.as_dict() for t in turns]}


@command("session_delete", role=Role.ADMIN, args=("session",))
async def session_delete(runtime: Runtime, call: Call) -> dict[str, Any]:
    session = await find_session(runtime, required(call.args, "session", str))
    await runtime.db.run(sessions.delete, session.id)
    if session.id == runtime.session_id:
        replacement = await runtime.db.run(sessions.create, None, None)
        await runtime.db.run(state.put_values, {"current_session": replacement.id})
        runtime.session_id = replacement.id
    return {"deleted": session.id, "current": runtime.session_id}
