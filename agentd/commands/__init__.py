"""The command registry: one small handler per wire command.

A handler is `async def handler(runtime, call) -> dict` registered with
`@command(name, role=..., args=...)`. Dispatch (dispatch.py) checks the role,
the lifecycle state, the argument names and rate limits before calling it.
"""

from __future__ import annotations

import importlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from agentd.access import Peer, Role
from agentd.protocol import Request

if TYPE_CHECKING:
    from agentd.runtime import Runtime

Emit = Callable[[str, dict[str, Any]], Awaitable[None]]


@dataclass(frozen=True)
class Call:
    request: Request
    request_id: str  # ours, for logs and audit; request.id is the client's
    peer: Peer
    emit: Emit  # sends one event frame ("chunk", "log") before the reply

    @property
    def args(self) -> dict[str, Any]:
        return self.request.args


Handler = Callable[["Runtime", Call], Awaitable[dict[str, Any]]]


@dataclass(frozen=True)
class CommandSpec:
    name: str
    handler: Handler
    role: Role
    args: frozenset[str]
    cost: str  # "cheap" or "chat": which rate-limit budget it draws on
    when_stopping: bool  # still answered while STOPPING (status, health...)
    when_not_ready: bool  # answered in any state (status must explain ERROR)
    long_running: bool  # cancelled when the client hangs up before the reply (chat, logs --follow)


COMMANDS: dict[str, CommandSpec] = {}

MODULES: Final = ("status", "stop", "metrics", "logs", "audit", "chat")


def command(
    name: str,
    *,
    role: Role,
    args: tuple[str, ...] = (),
    cost: str = "cheap",
    when_stopping: bool = False,
    when_not_ready: bool = False,
    long_running: bool = False,
) -> Callable[[Handler], Handler]:
    def register(handler: Handler) -> Handler:
        COMMANDS[name] = CommandSpec(
            name, handler, role, frozenset(args), cost, when_stopping, when_not_ready, long_running
        )
        return handler

    return register


def load_commands() -> dict[str, CommandSpec]:
    for module in MODULES:
        importlib.import_module(f"agentd.commands.{module}")
    return COMMANDS
