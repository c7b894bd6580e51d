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
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, NamedTuple

from agentd.access import AccessPolicy, Peer, Role
from agentd.audit.rows import AuditEvent
from agentd.audit.settings import AuditSettings
from agentd.audit.writer import AuditWriter
from agentd.commands import AuditFacts, Call, CommandSpec, Emit, Rate
from agentd.errors import (
    BadRequest,
    Forbidden,
    NotReady,
    RequestError,
    ShuttingDown,
    StoreError,
    UnknownCommand,
)
from agentd.lifecycle import SERVING, Lifecycle, State
from agentd.protocol import ErrorCode, Request, error_reply, ok_reply
from agentd.ratelimit import CHEAP, RequestLimiter
from agentd.refusals import REFUSALS, RefusalAudit
from agentd.telemetry.instruments import Instruments
from agentd.telemetry.logs import peer_uid_var, request_id_var, session_id_var
from agentd.tools.approvals import Approvals
from agentd.untrusted import clip

if TYPE_CHECKING:
    from agentd.runtime import Runtime

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
    """Runs requests of a command table: `answer_now` for handlers that never wait,
    `handle` for the rest.

    A request leaves an audit row when [audit] sets its command's class to
    `metadata`; one of a class set to `none` is counted in metrics instead. A
    refusal is audited whatever the class, but a peer's refusals past a budget
    per interval are only counted, into one row per peer (refusals.py).
    """

    def __init__(
        self,
        commands: Mapping[str, CommandSpec],
        context: Runtime,
        *,
        access: AccessPolicy,
        lifecycle: Lifecycle,
        limiter: RequestLimiter,
        metrics: Instruments,
        audit: AuditWriter,
        refusals: RefusalAudit,
        policy: AuditSettings,
    ) -> None:
        self._commands = dict(commands)
        self._context = context  # what handlers work with; dispatch itself never reads it
        self._access = access
        self._lifecycle = lifecycle
        self._limiter = limiter
        self._metrics = metrics
        self._audit = audit
        self._refusals = refusals
        self._audited = frozenset(n for n, s in commands.items() if policy.audited(s.audit))

    def spec(self, cmd: str) -> CommandSpec | None:
        """The command's spec; None when there is no such command."""
        return self._commands.get(cmd)

    def answer_now(self, request: Request, peer: Peer) -> dict[str, Any] | None:
        """The reply of a request whose handler never waits (status, ping...), computed
        at once; None when the request must go through `handle` instead.

        No task and no await: this is what keeps `status` cheap (docs/performance.md).
        Its audit row, if its class or a refusal calls for one, is queued without
        waiting, so when the audit queue is full the request goes through `handle`,
        which waits for room.
        """
        spec = self._commands.get(request.cmd)
        if spec is None or spec.answer is None or not self._audit.has_room():
            return None
        call = self._begin(request, peer, _no_events)
        started, arrived = time.monotonic(), time.time()
        try:
            self._admit(call)
            result = spec.answer(self._context, call)
        except Exception as exc:
            finished, reply = self._failed(Finished(call, spec, arrived, started, None, {}), exc)
        else:
            finished = Finished(call, spec, arrived, started, None, result)
            reply = self._ok_reply(finished)
        self._account_nowait(finished)
        return reply

    async def handle(
        self, request: Request, peer: Peer, emit: Emit, approvals: Approvals | None = None
    ) -> dict[str, Any]:
        call = self._begin(request, peer, emit, approvals)
        started, arrived = time.monotonic(), time.time()
        spec = self._commands.get(request.cmd)  # None: unknown, refused by _admit
        try:
            result = await self._admit(call).handler(self._context, call)
        except asyncio.CancelledError:
            # The client left or the daemon stops: the request still leaves its audit row
            # (with the session the handler reached, from call.facts).
            finished = Finished(call, spec, arrived, started, "CANCELLED", {})
            if self._gets_row(finished):
                self._audit.record_nowait(self._audit_event(finished))
            raise
        except Exception as exc:
            finished, reply = self._failed(Finished(call, spec, arrived, started, None, {}), exc)
        else:
            finished = Finished(call, spec, arrived, started, None, result)
            reply = self._ok_reply(finished)
        await self._account(finished)
        return reply

    def _begin(
        self, request: Request, peer: Peer, emit: Emit, approvals: Approvals | None = None
    ) -> Call:
        call = Call(request, new_request_id(), peer, emit, AuditFacts(), approvals)
        request_id_var.set(call.request_id)
        session_id_var.set(None)
        peer_uid_var.set(peer.uid)
        return call

    def _admit(self, call: Call) -> CommandSpec:
        spec = self._commands.get(call.request.cmd)
        if spec is None:
            raise UnknownCommand(f"unknown command {clip(call.request.cmd)!r}")
        role = self._access.role_of(call.peer)
        if role < spec.role:
            raise Forbidden(
                f"{spec.name} needs the {spec.role.name.lower()} role; uid {call.peer.uid} has {_role_name(role)}"
            )
        state = self._lifecycle.state
        if state in (State.STOPPING, State.STOPPED) and not spec.when_stopping:
            raise ShuttingDown("agentd is shutting down")
        if state not in SERVING and state is not State.ERROR and not spec.when_not_ready:
            raise NotReady(f"agentd is {state}")
        unknown = call.args.keys() - spec.args if call.args else None
        if unknown:
            raise BadRequest(f"{spec.name} takes no argument {clip(sorted(unknown)[0])!r}")
        if spec.rate is Rate.CHEAP:  # chat is limited by the chat pipeline, per session too
            self._limiter.check(call.peer.uid, None, CHEAP)
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

    def _record_metrics(self, finished: Finished, latency_s: float) -> None:
        spec, facts = finished.spec, finished.call.facts
        self._metrics.record_request(
            spec.name if spec is not None else "unknown",
            finished.code,
            latency_s,
            model=facts.model,
            tokens_in=facts.tokens_in,
            tokens_out=facts.tokens_out,
        )

    def _account_nowait(self, finished: Finished) -> None:
        """Metrics and the audit row, queued (answer_now checked there is room)."""
        latency_s = time.monotonic() - finished.started
        self._record_metrics(finished, latency_s)
        if self._gets_row(finished):
            self._audit.record_nowait(self._audit_event(finished, latency_s))

    async def _account(self, finished: Finished) -> None:
        """Metrics and the audit row; an answered chat's row is committed before the reply."""
        latency_s = time.monotonic() - finished.started
        self._record_metrics(finished, latency_s)
        if not self._gets_row(finished):
            return
        event = self._audit_event(finished, latency_s)
        spec = finished.spec
        if spec is not None and spec.drained and finished.code is None:
            try:
                await self._audit.record_now(event)
                return
            except StoreError as exc:
                logger.error(
                    "audit row of %s not committed, queued instead: %s",
                    finished.call.request_id,
                    exc,
                )
        await self._audit.record(event)

    def _gets_row(self, finished: Finished) -> bool:
        """Does the request leave an audit row of its own? A refusal does, up to the
        peer's budget (past it, it counts toward the peer's aggregate row); anything
        else when [audit] sets its command's class to metadata (else it is counted)."""
        code, peer = finished.code, finished.call.peer
        if code in REFUSALS:
            return self._refusals.audit_alone(peer.uid, peer.pid, code)
        name = finished.call.request.cmd
        if name in self._audited:
            return True
        self._metrics.count_unaudited(name, peer.uid)
        return False

    def _audit_event(self, finished: Finished, latency_s: float | None = None) -> AuditEvent:
        call, facts = finished.call, finished.call.facts
        if latency_s is None:
            latency_s = time.monotonic() - finished.started
        return AuditEvent(
            at=finished.arrived,
            request_id=call.request_id,
            peer_uid=call.peer.uid,
            peer_pid=call.peer.pid,
            command=call.request.cmd,
            session_id=facts.session_id,
            error_code=finished.code,
            latency_s=latency_s,
            model=facts.model,
            tokens_in=facts.tokens_in,
            tokens_out=facts.tokens_out,
            owner_uid=facts.owner_uid,
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
