"""One request in, one reply out: role, state and argument checks around a handler.

This is the edge for a request: every error becomes a reply with a stable
code; anything unexpected is logged with an error id and answered INTERNAL
(never a traceback or a secret on the wire).
"""

from __future__ import annotations

import asyncio
import itertools
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
    StoreError,
    UnknownCommand,
)
from agentd.lifecycle import SERVING, State
from agentd.protocol import ErrorCode, Request, error_reply, ok_reply
from agentd.ratelimit import CHAT, CHEAP
from agentd.runtime import Runtime
from agentd.store.audit import AuditEvent
from agentd.telemetry.logs import peer_uid_var, request_id_var, session_id_var

logger = logging.getLogger(__name__)


_RUN_PREFIX = uuid.uuid4().hex[:8]  # unique per process, so ids stay unique across restarts
_request_numbers = itertools.count(1)


def new_request_id() -> str:
    """r-<run><sequence>: as unique as a uuid4 in practice, and far cheaper per request."""
    return f"r-{_RUN_PREFIX}{next(_request_numbers):08x}"


class Dispatcher:
    def __init__(self, runtime: Runtime) -> None:
        self._runtime = runtime

    async def handle(self, request: Request, peer: Peer, emit: Emit) -> dict[str, Any]:
        call = Call(request, new_request_id(), peer, emit)
        request_id_var.set(call.request_id)
        session_id_var.set(None)
        peer_uid_var.set(peer.uid)
        started, arrived = time.monotonic(), time.time()
        spec: CommandSpec | None = None
        try:
            spec = self._admit(call)
            result = await spec.handler(self._runtime, call)
        except RequestError as exc:
            self._log_outcome(call, started, exc.code)
            await self._account(call, spec, arrived, started, exc.code, {})
            return error_reply(
                request.id, exc.code, exc.message, request_id=call.request_id, **exc.details
            )
        except asyncio.CancelledError:
            # The client left or the daemon stops: the request still leaves its audit row.
            event = self._audit_event(call, spec, arrived, started, "CANCELLED", {})
            self._runtime.audit.record_nowait(event)
            raise
        except Exception:
            error_id = "e-" + uuid.uuid4().hex[:12]
            logger.exception("internal error in %s", request.cmd, extra={"error_id": error_id})
            self._log_outcome(call, started, ErrorCode.INTERNAL)
            await self._account(call, spec, arrived, started, ErrorCode.INTERNAL, {})
            return error_reply(
                request.id,
                ErrorCode.INTERNAL,
                f"internal error; see the daemon log for {error_id}",
                error_id=error_id,
                request_id=call.request_id,
            )
        self._log_outcome(call, started, None)
        await self._account(call, spec, arrived, started, None, result)
        return ok_reply(request.id, {**result, "request_id": call.request_id})

    def is_long_running(self, cmd: str) -> bool:
        spec = COMMANDS.get(cmd)
        return spec is not None and spec.long_running

    def must_finish(self, cmd: str) -> bool:
        """Work a graceful stop waits for (chats); a log follow just ends."""
        spec = COMMANDS.get(cmd)
        return spec is not None and spec.cost == CHAT

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
        if spec.cost == CHEAP:  # chat is limited by the chat pipeline, per session too
            self._runtime.limiter.check(call.peer.uid, None, CHEAP)
        return spec

    async def _account(
        self,
        call: Call,
        spec: CommandSpec | None,
        arrived: float,
        started: float,
        code: str | None,
        result: dict[str, Any],
    ) -> None:
        """Metrics and the audit row of one finished request."""
        event = self._audit_event(call, spec, arrived, started, code, result)
        self._runtime.metrics.record_request(
            spec.name if spec is not None else "unknown",
            code,
            event.latency_s,
            model=event.model,
            tokens_in=event.tokens_in,
            tokens_out=event.tokens_out,
        )
        if spec is not None and spec.cost == CHAT and code is None:
            try:  # an answered chat's row is committed before the reply leaves
                await self._runtime.audit.record_now(event)
                return
            except StoreError as exc:
                logger.error(
                    "audit row of %s not committed, queued instead: %s", call.request_id, exc
                )
        await self._runtime.audit.record(event)

    def _audit_event(
        self,
        call: Call,
        spec: CommandSpec | None,
        arrived: float,
        started: float,
        code: str | None,
        result: dict[str, Any],
    ) -> AuditEvent:
        chat = spec is not None and spec.cost == CHAT
        model, tokens_in, tokens_out = (
            result.get("model"),
            result.get("tokens_in"),
            result.get("tokens_out"),
        )
        session = session_id_var.get() or (result.get("session_id") if chat else None)
        return AuditEvent(
            at=arrived,
            request_id=call.request_id,
            peer_uid=call.peer.uid,
            peer_pid=call.peer.pid,
            command=call.request.cmd,
            session_id=session if isinstance(session, str) else None,
            error_code=code,
            latency_s=time.monotonic() - started,
            model=model if chat and isinstance(model, str) else None,
            tokens_in=tokens_in if chat and isinstance(tokens_in, int) else 0,
            tokens_out=tokens_out if chat and isinstance(tokens_out, int) else 0,
        )

    def _log_outcome(self, call: Call, started: float, code: str | None) -> None:
        latency_ms = (time.monotonic() - started) * 1000
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
