"""The command layer: one small handler per command, described by a `CommandSpec`.

A handler is `async def handler(runtime, call) -> dict`: the reply's result.
What the audit row needs beyond the request (the session touched, whose data
it was, the model and tokens of a chat) the handler records on `call.facts`,
so a request that fails or is cancelled half-way still names its session.

Each commands module declares its specs with its own decorator:

    SPECS = CommandSet()
    command = SPECS.command

    @command("ping", role=Role.READ, audit=Audit.PROBE)
    def ping(runtime, call): ...

and table.py assembles the table explicitly; the Dispatcher receives it. A
spec says nothing about frames or events: the msgpack connection is one
transport of this layer (`call.emit` is whatever the transport sends with).

A handler that never waits (status, ping) is a plain `def`: dispatch then
answers it inside the read callback, with no task (Dispatcher.answer_now).
"""

from __future__ import annotations

import enum
import inspect
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar

from agentd.access import Peer, Role
from agentd.protocol import Request
from agentd.tools.approvals import Approvals

if TYPE_CHECKING:
    from agentd.runtime import Runtime

Emit = Callable[[str, dict[str, Any]], Awaitable[None]]


class Rate(enum.StrEnum):
    """Which rate-limit budget a command draws on."""

    CHEAP = "cheap"  # checked by dispatch before the handler runs
    CHAT = "chat"  # checked by the chat pipeline, per session too


class Audit(enum.StrEnum):
    """A command's audit class; [audit] sets a level per class (audit/settings.py)."""

    PROBE = "probe"  # ping, status, health, metrics: counted in metrics
    READ = "read"  # reads of conversations, the trail, budgets, logs
    CHANGE = "change"  # changes to sessions, configuration, keys
    CHAT = "chat"
    ADMIN = "admin"


class AuditFacts:
    """What a handler learned that its audit row records (never content).

    Filled in by the handler as it goes, read by dispatch once the request ends
    however it ends (answered, failed, cancelled).
    """

    __slots__ = ("model", "owner_uid", "session_id", "tokens_in", "tokens_out")

    def __init__(self) -> None:
        self.session_id: str | None = None
        self.owner_uid: int | None = None  # None: the peer's own data only
        self.model: str | None = None
        self.tokens_in = 0
        self.tokens_out = 0

    def owner(self, peer: Peer, owner_uid: int) -> None:
        """The request touched `owner_uid`'s data: audit it when that is not the peer."""
        if owner_uid != peer.uid:
            self.owner_uid = owner_uid

    def charged(self, model: str, tokens_in: int, tokens_out: int) -> None:
        """The model a chat was answered by and the tokens it cost."""
        self.model, self.tokens_in, self.tokens_out = model, tokens_in, tokens_out


class Call(NamedTuple):
    """One request on its way through dispatch (a NamedTuple: cheap to build)."""

    request: Request
    request_id: str  # ours, for logs and audit; request.id is the client's
    peer: Peer
    emit: Emit  # sends one event ("chunk", "log") before the reply, on the request's transport
    facts: AuditFacts
    approvals: Approvals | None = None  # a chat's answers from its peer (tool approvals)

    @property
    def args(self) -> dict[str, Any]:
        return self.request.args


Handler = Callable[["Runtime", Call], Awaitable[dict[str, Any]]]
Immediate = Callable[["Runtime", Call], dict[str, Any]]  # a handler that never waits
AnyHandler = TypeVar("AnyHandler", Handler, Immediate)


@dataclass(frozen=True)
class CommandSpec:
    name: str
    handler: Handler
    answer: Immediate | None  # the same handler, when it never waits
    role: Role
    args: frozenset[str]
    rate: Rate
    audit: Audit
    drained: bool  # a graceful stop waits for it to finish (chats); others are cancelled
    when_stopping: bool  # still answered while STOPPING (status, health...)
    when_not_ready: bool  # answered in any state (status must explain ERROR)
    long_running: bool  # cancelled when the client hangs up before the reply (chat, logs --follow)


class CommandSet:
    """The specs one commands module declares, through its `command` decorator."""

    def __init__(self) -> None:
        self.specs: list[CommandSpec] = []

    def command(
        self,
        name: str,
        *,
        role: Role,
        args: tuple[str, ...] = (),
        cost: str = "cheap",
        audit: Audit | None = None,
        drained: bool | None = None,
        when_stopping: bool = False,
        when_not_ready: bool = False,
        long_running: bool = False,
    ) -> Callable[[AnyHandler], AnyHandler]:
        """Declare a command. `cost="chat"` (the older single knob) still means: the chat
        rate budget, drained on stop, audit class chat; `audit` and `drained` say so
        explicitly. Without `audit`, an admin command is class admin, any other read."""
        rate = Rate(cost)
        audit_class = audit if audit is not None else _default_audit(rate, role)
        drain = rate is Rate.CHAT if drained is None else drained

        def declare(handler: AnyHandler) -> AnyHandler:
            function: Any = handler  # which of the two kinds it is shows only at run time
            waiting: Handler = function
            answer: Immediate | None = None
            if not inspect.iscoroutinefunction(function):
                waiting, answer = _awaitable(function), function
            spec = CommandSpec(
                name=name,
                handler=waiting,
                answer=answer,
                role=role,
                args=frozenset(args),
                rate=rate,
                audit=audit_class,
                drained=drain,
                when_stopping=when_stopping,
                when_not_ready=when_not_ready,
                long_running=long_running,
            )
            self.specs.append(spec)
            return handler

        return declare


def _default_audit(rate: Rate, role: Role) -> Audit:
    if rate is Rate.CHAT:
        return Audit.CHAT
    return Audit.ADMIN if role >= Role.ADMIN else Audit.READ


def _awaitable(answer: Immediate) -> Handler:
    async def handler(runtime: Runtime, call: Call) -> dict[str, Any]:
        return answer(runtime, call)

    return handler
