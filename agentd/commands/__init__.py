"""The command registry: one small handler per wire command.

A handler is `async def handler(runtime, call) -> dict` registered with
`@command(name, role=..., args=...)`. Dispatch (dispatch.py) checks the role,
the lifecycle state, the argument names and rate limits before calling it.

A handler that never waits (status, ping) is a plain `def`: dispatch then
answers it inside the read callback, with no task (Dispatcher.answer_now).
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, NamedTuple, TypeVar

from agentd.access import Peer, Role
from agentd.protocol import Request

if TYPE_CHECKING:
    from agentd.runtime import Runtime

Emit = Callable[[str, dict[str, Any]], Awaitable[None]]


class Call(NamedTuple):
    """One request on its way through dispatch (a NamedTuple: cheap to build)."""

    request: Request
    request_id: str  # ours, for logs and audit; request.id is the client's
    peer: Peer
    emit: Emit  # sends one event frame ("chunk", "log") before the reply

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
    cost: str  # "cheap" or "chat": which rate-limit budget it draws on
    when_stopping: bool  # still answered while STOPPING (status, health...)
    when_not_ready: bool  # answered in any state (status must explain ERROR)
    long_running: bool  # cancelled when the client hangs up before the reply (chat, logs --follow)


COMMANDS: dict[str, CommandSpec] = {}

MODULES: Final = ("status", "stop", "metrics", "logs", "audit", "chat", "history", "budget", "retention")


def command(
    name: str,
    *,
    role: Role,
    args: tuple[str, ...] = (),
    cost: str = "cheap",
    when_stopping: bool = False,
    when_not_ready: bool = False,
    long_running: bool = False,
) -> Callable[[AnyHandler], AnyHandler]:
    def register(handler: AnyHandler) -> AnyHandler:
        function: Any = handler  # which of the two kinds it is shows only at run time
        waiting: Handler = function
        answer: Immediate | None = None
        if not inspect.iscoroutinefunction(function):
            waiting, answer = _awaitable(function), function
        COMMANDS[name] = CommandSpec(
            name,
            waiting,
            answer,
            role,
            frozenset(args),
            cost,
            when_stopping,
            when_not_ready,
            long_running,
        )
        return handler

    return register


def _awaitable(answer: Immediate) -> Handler:
    async def handler(runtime: Runtime, call: Call) -> dict[str, Any]:
        return answer(runtime, call)

    return handler


def load_commands() -> dict[str, CommandSpec]:
    for module in MODULES:
        importlib.import_module(f"agentd.commands.{module}")
    return COMMANDS
