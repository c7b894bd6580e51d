"""One request in, one reply out: role, state and argument checks around a handler.

This is the edge for a request: every error becomes a reply with a stable
code; anything unexpected is logged with an error id and answered INTERNAL
(never a traceback or a secret on the wire).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from typing import Any

from agentd.access import Peer, Role
from agentd.commands import COMMANDS, Call, CommandSpec, Emit
from agentd.errors import (
    BadRequest,
    Forbidden,
    NotReady,
    RequestError,
    ShuttingDown,
    UnknownCommand,
)
from agentd.lifecycle import SERVING, State
from agentd.protocol import ErrorCode, Request, error_reply, ok_reply
from agentd.runtime import Runtime
from agentd.telemetry.logs import peer_uid_var, request_id_var, session_id_var

logger = logging.getLogger(__name__)


def new_request_id() -> str:
    return "r-" + uuid.uuid4().hex[:16]


class Dispatcher:
    def __init__(self, runtime: Runtime) -> None:
        self._runtime = runtime

    async def handle(self, request: Request, peer: Peer, emit: Emit) -> dict[str, Any]:
        call = Call(request, new_request_id(), peer, emit)
        request_id_var.set(call.request_id)
        session_id_var.set(None)
        peer_uid_var.set(peer.uid)
        started = time.monotonic()
        try:
            spec = self._admit(call)
            result = await spec.handler(self._runtime, call)
        except RequestError as exc:
            self._log_outcome(call, started, exc.code)
            return error_reply(
                request.id, exc.code, exc.message, request_id=call.request_id, **exc.details
            )
        except asyncio.CancelledError:
            raise
        except Exception:
            error_id = "e-" + uuid.uuid4().hex[:12]
            logger.exception("internal error in %s", request.cmd, extra={"error_id": error_id})
            self._log_outcome(call, started, ErrorCode.INTERNAL)
            return error_reply(
                request.id,
                ErrorCode.INTERNAL,
                f"internal error; see the daemon log for {error_id}",
                error_id=error_id,
                request_id=call.request_id,
            )
        self._log_outcome(call, started, None)
        return ok_reply(request.id, {**result, "request_id": call.request_id})

    def is_long_running(self, cmd: str) -> bool:
        spec = COMMANDS.get(cmd)
        return spec is not None and spec.long_running

    def _admit(self, call: Call) -> CommandSpec:
        spec = COMMANDS.get(call.request.cmd)
        if spec is None:
            raise UnknownCommand(f"unknown command {call.request.cmd!r}")
        role = self._runtime.access.role_of(call.peer)
        if role < spec.role:
            raise Forbidden(
                f"{spec.name} needs the {spec.role.name.lower()} role; uid {call.peer.uid} has {_role_name(role)}"
            )
        state = self._runtime.lifecycle.state
        if state in (State.STOPPING, State.STOPPED) and not spec.when_stopping:
            raise ShuttingDown("agentd is shutting down")
        if state not in SERVING and state is not State.ERROR and not spec.when_not_ready:
            raise NotReady(f"agentd is {state}")
        unknown = set(call.args) - spec.args
        if unknown:
            raise BadRequest(f"{spec.name} takes no argument {sorted(unknown)[0]!r}")
        return spec

    def _log_outcome(self, call: Call, started: float, code: str | None) -> None:
        latency_ms = (time.monotonic() - started) * 1000
        self._runtime.lifetime["requests_total"] += 1
        logger.debug(
            "%s %s",
            call.request.cmd,
            "ok" if code is None else code,
            extra={
                "command": call.request.cmd,
                "outcome": "ok" if code is None else "error",
                "error_code": code,
                "latency_ms": round(latency_ms, 3),
            },
        )


def _role_name(role: Role) -> str:
    return "no role" if role is Role.NONE else f"the {role.name.lower()} role"
