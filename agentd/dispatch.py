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
from typing import Any, NamedTuple

from agentd.access import Peer, Role
from agentd.audit.rows import AuditEvent
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
from agentd.ownership import owner_uid_var
from agentd.protocol import ErrorCode, Request, error_reply, ok_reply
from agentd.ratelimit import CHAT, CHEAP
from agentd.refusals import REFUSALS, RefusalAudit
from agentd.runtime import Runtime
from agentd.telemetry.logs import peer_uid_var, request_id_var, session_id_var
from agentd.untrusted import clip

logger = logging.getLogger(__name__)


# r-<run><sequence>: the run part is unique per process, so ids stay unique across
# restarts; as unique as a uuid4 in practice, and far cheaper per request.
_REQUEST_ID_FORMAT = f"r-{uuid.uuid4().hex[:8]}%08x"
_request_numbers = itertools.count(1)


def new_request_id() -> str:
    return _REQUEST_ID_FORMAT % next(_request_numbers)


class Finished(NamedTuple):
    """One request as it ended: what metrics, the audit row and the log line need."""

    call: Call
    spec: CommandSpec | None  # None: the command is unknown
    arrived: float  # wall clock
    started: float  # monotonic
    code: str | None  # None: ok
    result: dict[str, Any]


class Dispatcher:
    """Runs requests: `answer_now` for handlers that never wait, `handle` for the rest.

    Each request leaves an audit row, but a peer's refusals past a budget per
    interval are only counted, into one row per peer (refusals.py).
    """

    def __init__(self, runtime: Runtime, refusals: RefusalAudit) -> None:
        self._runtime = runtime
        self._refusals = refusals

    def answer_now(self, request: Request, peer: Peer) -> dict[str, Any] | None:
        """The reply of a request whose handler never waits (status, ping...), computed
        at once; None when the request must go through `handle` instead.

        No task and no await: this is what keeps `status` cheap (docs/performance.md).
        Its audit row is queued without waiting, so when the audit queue is full the
        request goes through `handle`, which waits for room.
        """
        spec = COMMANDS.get(request.cmd)
        if spec is None or spec.answer is None or not self._runtime.audit.has_room():
            return None
        call = self._begin(request, peer, _no_events)
        started, arrived = time.monotonic(), time.time()
        try:
            self._admit(call)
            result = spec.answer(self._runtime, call)
        except Exception as exc:
            finished, reply = self._failed(Finished(call, spec, arrived, started, None, {}), exc)
        else:
            finished = Finished(call, spec, arrived, started, None, result)
            reply = self._ok_reply(finished)
        self._account_nowait(finished)
        return reply

    async def handle(self, request: Request, peer: Peer, emit: Emit) -> dict[str, Any]:
        call = self._begin(request, peer, emit)
        started, arrived = time.monotonic(), time.time()
        spec = COMMANDS.get(request.cmd)  # None: unknown, refused by _admit
        try:
            result = await self._admit(call).handler(self._runtime, call)
        except asyncio.CancelledError:
            # The client left or the daemon stops: the request still leaves its audit row.
            finished = Finished(call, spec, arrived, started, "CANCELLED", {})
            self._runtime.audit.record_nowait(self._audit_event(finished))
            raise
        except Exception as exc:
            finished, reply = self._failed(Finished(call, spec, arrived, started, None, {}), exc)
        else:
            finished = Finished(call, spec, arrived, started, None, result)
            reply = self._ok_reply(finished)
        await self._account(finished)
        return reply

    def is_long_running(self, cmd: str) -> bool:
        spec = COMMANDS.get(cmd)
        return spec is not None and spec.long_running

    def must_finish(self, cmd: str) -> bool:
        """Work a graceful stop waits for (chats); a log follow just ends."""
        spec = COMMANDS.get(cmd)
        return spec is not None and spec.cost == CHAT

    def _begin(self, request: Request, peer: Peer, emit: Emit) -> Call:
        call = Call(request, new_request_id(), peer, emit)
        request_id_var.set(call.request_id)
        session_id_var.set(None)
        peer_uid_var.set(peer.uid)
        return call

    def _admit(self, call: Call) -> CommandSpec:
        spec = COMMANDS.get(call.request.cmd)
        if spec is None:
            raise UnknownCommand(f"unknown command {clip(call.request.cmd)!r}")
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
        unknown = call.args.keys() - spec.args if call.args else None
        if unknown:
            raise BadRequest(f"{spec.name} takes no argument {clip(sorted(unknown)[0])!r}")
        if spec.cost == CHEAP:  # chat is limited by the chat pipeline, per session too
            self._runtime.limiter.check(call.peer.uid, None, CHEAP)
        return spec

    def _failed(self, unfinished: Finished, exc: Exception) -> tuple[Finished, dict[str, Any]]:
        """A RequestError answers with its own code; anything else is INTERNAL."""
        if isinstance(exc, RequestError):
            finished = unfinished._replace(code=exc.code)
            return finished, self._error_reply(finished, exc)
        finished = unfinished._replace(code=ErrorCode.INTERNAL)
        return finished, self._internal_error_reply(finished)

    def _ok_reply(self, finished: Finished) -> dict[str, Any]:
        self._log_outcome(finished)
        call = finished.call
        return ok_reply(call.request.id, {**finished.result, "request_id": call.request_id})

    def _error_reply(self, finished: Finished, exc: RequestError) -> dict[str, Any]:
        """A request refused or failed with a stable code."""
        self._log_outcome(finished)
        request = finished.call.request
        return error_reply(
            request.id, exc.code, exc.message, request_id=finished.call.request_id, **exc.details
        )

    def _internal_error_reply(self, finished: Finished) -> dict[str, Any]:
        """INTERNAL, with an error id that finds the traceback in the log."""
        error_id = "e-" + uuid.uuid4().hex[:12]
        request = finished.call.request
        logger.exception("internal error in %s", clip(request.cmd), extra={"error_id": error_id})
        self._log_outcome(finished)
        return error_reply(
            request.id,
            ErrorCode.INTERNAL,
            f"internal error; see the daemon log for {error_id}",
            error_id=error_id,
            request_id=finished.call.request_id,
        )

    def _record_metrics(self, finished: Finished, event: AuditEvent) -> None:
        spec = finished.spec
        self._runtime.metrics.record_request(
            spec.name if spec is not None else "unknown",
            finished.code,
            event.latency_s,
            model=event.model,
            tokens_in=event.tokens_in,
            tokens_out=event.tokens_out,
        )

    def _account_nowait(self, finished: Finished) -> None:
        """Metrics and the audit row, queued (answer_now checked there is room)."""
        event = self._audit_event(finished)
        self._record_metrics(finished, event)
        if finished.code is None or self._audited_alone(finished.code, finished.call.peer):
            self._runtime.audit.record_nowait(event)

    async def _account(self, finished: Finished) -> None:
        """Metrics and the audit row; an answered chat's row is committed before the reply."""
        event = self._audit_event(finished)
        self._record_metrics(finished, event)
        if finished.code is not None and not self._audited_alone(finished.code, finished.call.peer):
            return  # counted into the peer's aggregate row of refusals
        spec = finished.spec
        if spec is not None and spec.cost == CHAT and finished.code is None:
            try:
                await self._runtime.audit.record_now(event)
                return
            except StoreError as exc:
                logger.error(
                    "audit row of %s not committed, queued instead: %s",
                    finished.call.request_id,
                    exc,
                )
        await self._runtime.audit.record(event)

    def _audited_alone(self, code: str, peer: Peer) -> bool:
        """Does a request failed with `code` get an audit row of its own? A refusal past
        the peer's budget for the interval does not: it counts toward the aggregate row."""
        return code not in REFUSALS or self._refusals.audit_alone(peer.uid, peer.pid, code)

    def _audit_event(self, finished: Finished) -> AuditEvent:
        call, spec = finished.call, finished.spec
        event = AuditEvent(
            at=finished.arrived,
            request_id=call.request_id,
            peer_uid=call.peer.uid,
            peer_pid=call.peer.pid,
            command=call.request.cmd,
            session_id=session_id_var.get(),
            error_code=finished.code,
            latency_s=time.monotonic() - finished.started,
            owner_uid=owner_uid_var.get(),
        )
        if spec is None or spec.cost != CHAT:
            return event
        result = finished.result
        session, model = event.session_id or result.get("session_id"), result.get("model")
        tokens_in, tokens_out = result.get("tokens_in"), result.get("tokens_out")
        return event._replace(
            session_id=session if isinstance(session, str) else None,
            model=model if isinstance(model, str) else None,
            tokens_in=tokens_in if isinstance(tokens_in, int) else 0,
            tokens_out=tokens_out if isinstance(tokens_out, int) else 0,
        )

    def _log_outcome(self, finished: Finished) -> None:
        if not logger.isEnabledFor(logging.DEBUG):
            return  # the fields below cost a share of a `status` when nobody reads them
        cmd, code = clip(finished.call.request.cmd), finished.code
        logger.debug(
            "%s %s",
            cmd,
            "ok" if code is None else code,
            extra={
                "command": cmd,
                "outcome": "ok" if code is None else "error",
                "error_code": code,
                "latency_ms": round((time.monotonic() - finished.started) * 1000, 3),
            },
        )


async def _no_events(kind: str, fields: dict[str, Any], rid: int | str = 0) -> None:
    raise RuntimeError("a handler that answers at once sends no events")


def _role_name(role: Role) -> str:
    return "no role" if role is Role.NONE else f"the {role.name.lower()} role"
