"""agentctl: the thin client. Imports click, msgpack and agentd.protocol only.

Exit statuses (agentctl/exits.py): 0 ok, 1 failed, 2 usage, 3 not running,
4 retry later (rate limited/busy), 5 degraded answer, 6 permission denied.
"""

from __future__ import annotations

import importlib
import os
import sys
import time
from typing import TYPE_CHECKING, Any, Final, NoReturn

import click

from agentctl import exits
from agentctl.client import ConnectionLost, DaemonError, NotRunning, PermissionRefused
from agentctl.context import Options, describe, fail, json_option, options, show
from agentctl.output import (
    human_bytes,
    human_duration,
    print_components,
    print_json,
    print_pairs,
    state_colour,
)
from agentd.protocol import client_socket_path

if TYPE_CHECKING:
    import subprocess

SERVING = ("READY", "PROCESSING")
# Commands defined in their own modules, imported only when named (or listed by
# --help): `agentctl status`, the command scripts poll, then loads none of them.
LAZY_COMMANDS: Final = {
    "chat": "agentctl.conversation:chat",
    "sessions": "agentctl.conversation:sessions",
    "history": "agentctl.conversation:history",
    "metrics": "agentctl.ops:metrics",
    "health": "agentctl.ops:health",
    "logs": "agentctl.ops:logs",
    "audit": "agentctl.ops:audit",
    "budget": "agentctl.budget:budget",
    "backup": "agentctl.backup:backup",
    "export": "agentctl.dataport:export",
    "import": "agentctl.dataport:import_",
    "search": "agentctl.search:search",
    "tools": "agentctl.tools:tools",
    "tokens": "agentctl.tokens:tokens",
}


class AgentctlGroup(click.Group):
    """Turns every client error into one line on stderr and its documented exit status;
    finds the LAZY_COMMANDS when they are asked for."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *LAZY_COMMANDS})

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        command = super().get_command(ctx, name)
        if command is None and name in LAZY_COMMANDS:
            module, _, attribute = LAZY_COMMANDS[name].partition(":")
            command = getattr(importlib.import_module(module), attribute)
        return command

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except NotRunning as exc:
            fail(str(exc), exits.NOT_RUNNING)
        except PermissionRefused as exc:
            fail(str(exc), exits.PERMISSION)
        except ConnectionLost as exc:
            fail(str(exc), exits.FAILED)
        except DaemonError as exc:
            fail(describe(exc), exits.for_error_code(exc.code), error=exc)
        except KeyboardInterrupt:
            fail("interrupted", 130)


@click.group(cls=AgentctlGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--socket",
    "socket_path",
    metavar="PATH",
    envvar="AGENTD_SOCKET",
    show_envvar=True,
    help="agentd's socket (default: $XDG_RUNTIME_DIR/agentd/agentd.sock if it exists, else /run/agentd/agentd.sock).",
)
@click.option("--json", "json_flag", is_flag=True, help="Print JSON for scripts.")
@click.version_option(package_name="agentd", prog_name="agentctl")
@click.pass_context
def cli(ctx: click.Context, socket_path: str | None, json_flag: bool) -> None:
    """Drive the agentd daemon: start it, ask it things, stop it."""
    ctx.obj = Options(socket=socket_path or client_socket_path(os.environ), json=json_flag)


# -- start / status / stop ---------------------------------------------------------


@cli.command()
@click.option("--timeout", default=15.0, show_default=True, help="Seconds to wait for READY.")
@json_option
def start(timeout: float) -> None:
    """Make sure agentd runs: launch it detached if its socket does not answer."""
    opts = options()
    try:
        status = opts.client(timeout=5).call("status")
        already = True
    except NotRunning:
        status = _launch(opts, timeout)
        already = False
    if opts.json:
        print_json({**status, "already_running": already})
        return
    verb = "already running" if already else "started"
    click.echo(f"agentd {verb}: {state_colour(status['state'])}")
    print_pairs(
        [
            ("agent", status["agent_id"]),
            ("session", status["session_id"]),
            ("pid", status["pid"]),
            ("version", status["version"]),
            ("socket", status["socket"]),
        ]
    )


def _launch(opts: Options, timeout: float) -> dict[str, Any]:
    import subprocess  # only `start` spawns: keep it off every other command's path

    env = {**os.environ, "AGENTD_SOCKET": opts.socket}
    # -P: `-m` would put the current directory first on sys.path, so an agentd/ package
    # there (in /tmp, say) would run as the caller. The interpreter is the one running
    # agentctl (its venv's, so the installed agentd); PYTHONPATH still works for checkouts.
    process = subprocess.Popen(
        [sys.executable, "-P", "-m", "agentd", "--detached"],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
        close_fds=True,
    )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            _report_failed_start(process)
        try:
            status = opts.client(timeout=5).call("status")
        except (NotRunning, ConnectionLost):
            time.sleep(0.02)  # polling the socket for a condition, with a deadline
            continue
        if process.stderr is not None:
            process.stderr.close()
        return status
    process.terminate()
    fail(f"agentd did not become ready within {timeout:.0f}s", exits.FAILED)


def _report_failed_start(process: subprocess.Popen[bytes]) -> NoReturn:
    err = process.stderr.read().decode("utf-8", "replace") if process.stderr else ""
    lines = [line for line in err.splitlines() if line.strip()]
    last = lines[-1].removeprefix("agentd: ") if lines else "no message"
    fail(f"agentd failed to start (exit status {process.returncode}): {last}", exits.FAILED)


@cli.command()
@json_option
def status() -> None:
    """Show state, uptime, paths and component health; exit 0 only when READY/PROCESSING and healthy."""
    socket_path = options().socket
    result = show("status", lambda s: _print_status(s, socket_path))
    healthy = bool(result.get("healthy")) and result.get("state") in SERVING
    sys.exit(exits.OK if healthy else exits.FAILED)


def _print_status(s: dict[str, Any], socket_path: str) -> None:
    verdict = "healthy" if s.get("healthy") else "unhealthy"
    click.echo(
        f"agentd {s['version']}: {state_colour(s['state'])} ({verdict}) - {s.get('state_reason', '')}"
    )
    print_pairs(
        [
            ("pid", s["pid"]),
            ("uptime", human_duration(s["uptime_s"])),
            ("agent", s["agent_id"]),
            ("session", s["session_id"]),
            ("profile", s.get("profile", "")),
            ("socket", s.get("socket", socket_path)),
            ("store", f"{s['store']['path']} ({human_bytes(s['store']['size_bytes'])})"),
            ("in flight", s.get("in_flight", 0)),
        ]
    )
    click.echo("  components:")
    print_components(s.get("components", {}), indent=4)


@cli.command()
@click.option(
    "--timeout", default=60.0, show_default=True, help="Seconds to wait for agentd to exit."
)
@json_option
def stop(timeout: float) -> None:
    """Stop agentd gracefully (in-flight chats finish) and wait until it is gone.

    Nothing running is success, as with `systemctl stop`: the wanted end state holds."""
    opts = options()
    try:
        result = opts.client().call("stop")
    except NotRunning:
        if opts.json:
            print_json({"stopped": False, "was_running": False})
        else:
            click.echo("agentd is not running")
        return
    pid = int(result["pid"])
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _answers(opts) and not _alive(pid):
            if opts.json:
                print_json({"stopped": True, "was_running": True, "pid": pid})
            else:
                click.echo(f"agentd stopped (pid {pid})")
            return
        time.sleep(0.02)  # polling for the process to end, with a deadline
    fail(f"agentd (pid {pid}) is still running after {timeout:.0f}s", exits.FAILED)


def _answers(opts: Options) -> bool:
    try:
        opts.client(timeout=2).call("ping")
    except (NotRunning, ConnectionLost, DaemonError):
        return False
    return True


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another user's process (agentd under systemd): its state still tells
    return _not_zombie(pid)


def _not_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


@cli.command()
@json_option
def ping() -> None:
    """Check that agentd answers (exit 0) or not (exit 3)."""
    show("ping", lambda result: click.echo(f"pong ({result['state']})"))


def main() -> None:
    cli(prog_name="agentctl")

