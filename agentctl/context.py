"""What every agentctl command shares: the global options, --json, failing with an
exit status, and "call the daemon, then print JSON or text".

Its own module so that cli.py (the group) and the command modules beside it
(conversation, ops, budget) depend on it, not on each other.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NoReturn, TypeVar

import click

from agentctl.client import Client, DaemonError
from agentctl.output import print_json, visible

F = TypeVar("F", bound=Callable[..., Any])


@dataclass
class Options:
    socket: str
    json: bool

    def client(self, timeout: float | None = 30.0) -> Client:
        return Client(self.socket, timeout=timeout)


def options() -> Options:
    return click.get_current_context().ensure_object(Options)


def show(
    cmd: str,
    print_text: Callable[[dict[str, Any]], None],
    args: dict[str, Any] | None = None,
    *,
    timeout: float | None = 30.0,
) -> dict[str, Any]:
    """Call the daemon; print the result as JSON (--json) or with `print_text`; return it."""
    opts = options()
    result = opts.client(timeout).call(cmd, args or {})
    if opts.json:
        print_json(result)
    else:
        print_text(result)
    return result


def describe(exc: DaemonError) -> str:
    text = f"{exc.message} ({exc.code})"
    if exc.code == "RATE_LIMITED" and "retry_after" in exc.details and "retry in" not in text:
        text += f"; retry in {float(exc.details['retry_after']):.1f}s"
    if "error_id" in exc.details:
        text += f" [{exc.details['error_id']}]"
    return text


def fail(message: str, status: int, error: DaemonError | None = None) -> NoReturn:
    ctx = click.get_current_context(silent=True)
    found = ctx.find_object(Options) if ctx else None
    if found is not None and found.json:
        payload = (
            {"code": error.code, "message": error.message, **error.details}
            if error
            else {"message": message}
        )
        print_json({"ok": False, "exit_status": status, "error": payload})
    click.echo(f"agentctl: {visible(message)}", err=True)  # it may quote what others wrote
    sys.exit(status)


def json_option(fn: F) -> F:
    """--json on every command, as well as before it."""

    def remember(ctx: click.Context, _param: click.Parameter, value: bool) -> bool:
        if value:
            ctx.ensure_object(Options).json = True
        return value

    return click.option(
        "--json",
        "json_flag",
        is_flag=True,
        expose_value=False,
        callback=remember,
        help="Print JSON for scripts.",
    )(fn)
