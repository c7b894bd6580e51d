"""`agentd`: run the daemon in the foreground (what systemd runs), or check the config.

`agentd restore PATH` and `agentd rekey --new-key-file FILE` work on a stopped
daemon's state directory (agentd/maintenance/cli.py); `agentd` with no command
runs the daemon.

Exit statuses: 0 clean stop; 1 failure (another daemon owns the socket or the
state directory...); 78 (EX_CONFIG) a start-up failure a restart cannot fix:
bad config, wrong DB key, a database missing or older than its audit anchor.
"""

from __future__ import annotations

import gc
import logging
import os
import sys
from typing import TYPE_CHECKING, Final, NamedTuple

import click

from agentd import __version__

if TYPE_CHECKING:
    from agentd.config import Config
    from agentd.lifecycle import State
    from agentd.paths import Paths

EX_CONFIG: Final = 78


class Invocation(NamedTuple):
    """The options given before a command (`agentd --config P restore ...`)."""

    config_path: str | None
    flags: dict[str, str | None]


logger = logging.getLogger("agentd")


@click.group(invoke_without_command=True, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--config",
    "config_path",
    metavar="PATH",
    help="TOML config file (else AGENTD_CONFIG, /etc/agentd/agentd.toml, ~/.config/agentd/agentd.toml).",
)
@click.option(
    "--check-config",
    is_flag=True,
    help="Validate the config, print the effective values and where each came from, and exit.",
)
@click.option("--socket", "socket_path", metavar="PATH", help="Unix socket to listen on.")
@click.option("--state-dir", metavar="DIR", help="Directory for the database, keys and log files.")
@click.option("--log-level", metavar="LEVEL", help="DEBUG, INFO, WARNING, ERROR.")
@click.option(
    "--accept-rollback",
    is_flag=True,
    help="Start even though the database is older than its audit anchor (restored "
    "from a copy, or missing); `audit verify` keeps reporting the gap.",
)
@click.option(
    "--detached",
    is_flag=True,
    hidden=True,
    help="Started by `agentctl start`: stop writing to stderr once READY.",
)
@click.version_option(__version__, "--version", prog_name="agentd")
@click.pass_context
def main(
    ctx: click.Context,
    config_path: str | None,
    check_config: bool,
    socket_path: str | None,
    state_dir: str | None,
    log_level: str | None,
    accept_rollback: bool,
    detached: bool,
) -> None:
    """The agentd daemon: an AI agent as a Linux service. With no command, run it."""
    flags = {
        "daemon.socket_path": socket_path,
        "daemon.state_dir": state_dir,
        "log.level": log_level,
    }
    if ctx.invoked_subcommand is not None:
        ctx.obj = Invocation(config_path, flags)
        return
    # Start-up builds ~40,000 objects that nearly all live as long as the daemon,
    # and the cyclic collector runs ~60 times over them as the modules load (~2%
    # of the instructions to READY, docs/performance.md). So it is off until
    # READY (_collect_again_once_ready), and the imports come after this.
    gc.disable()
    from agentd.config import current_environ, load_config
    from agentd.errors import ConfigError
    from agentd.paths import resolve_paths

    environ = current_environ()
    try:
        config = load_config(environ, config_path=config_path, flags=flags)
        paths = resolve_paths(config, environ)
    except ConfigError as exc:
        if not check_config:
            _refuse_activation_clients(str(exc))
        _fail(str(exc), EX_CONFIG)
    if check_config:
        _print_config(config, paths)
        return
    sys.exit(_run(config, paths, detached, accept_rollback))


def _register_commands() -> None:
    from agentd.maintenance.cli import rekey, restore

    main.add_command(restore)
    main.add_command(rekey)


_register_commands()


def _run(config: Config, paths: Paths, detached: bool, accept_rollback: bool) -> int:
    # uvloop: the asyncio loop on libuv. Same API, but reads, writes and timers
    # run in C: 15-30% more `status` requests/s on the same CPU (docs/performance.md).
    import uvloop

    from agentd.daemon import Daemon
    from agentd.errors import AgentdError, AlreadyRunning, ConfigError
    from agentd.systemd import stderr_is_journal
    from agentd.telemetry.logs import setup_logging

    sinks = setup_logging(
        config.log.level, config.log.ring_size, journal=stderr_is_journal(os.environ)
    )
    daemon = Daemon(
        config, paths, os.environ, sinks, detached=detached, accept_rollback=accept_rollback
    )
    daemon.lifecycle.add_listener(_collect_again_once_ready)
    if detached:
        daemon.lifecycle.add_listener(_leave_working_directory)
    try:
        uvloop.run(daemon.run())
    except ConfigError as exc:
        return _fatal(sinks.stderr, str(exc), EX_CONFIG)
    except AlreadyRunning as exc:
        return _fatal(sinks.stderr, str(exc), 1)
    except AgentdError as exc:
        return _fatal(sinks.stderr, str(exc), 1)
    return 0


def _collect_again_once_ready(old: State, new: State, reason: str) -> None:
    """Turn the collector back on at READY (main() turned it off)."""
    from agentd.lifecycle import State

    if new is State.READY and not gc.isenabled():
        # Freeze first: what start-up built lives as long as the daemon, and
        # enabling alone would make the next collection walk all of it at once
        # (~10 ms on the loop just after READY). Frozen, no collection ever walks
        # it again; the ~400 garbage objects among it (~100 KB) stay with it.
        gc.freeze()
        gc.enable()


def _leave_working_directory(old: State, new: State, reason: str) -> None:
    """Detached (`agentctl start`): hold neither the caller's directory nor its mount, and
    resolve nothing against it once READY (paths.py made the daemon's paths absolute)."""
    from agentd.lifecycle import State

    if new is State.READY:
        os.chdir("/")


def _fatal(stderr_handler: logging.Handler | None, message: str, status: int) -> int:
    """One plain line on stderr; the JSON record goes to the log file and journal only."""
    if stderr_handler is not None and isinstance(stderr_handler, logging.StreamHandler):
        logging.getLogger().removeHandler(stderr_handler)
    logger.critical("cannot start: %s", message, extra={"exit_status": status})
    click.echo(f"agentd: {message}", err=True)
    return status


def _refuse_activation_clients(message: str) -> None:
    """Socket activation: answer the client that started us before exiting."""
    from agentd.server import refuse_waiting_clients
    from agentd.systemd import adopt_listen_socket

    sock = adopt_listen_socket(os.environ)
    if sock is not None:
        refuse_waiting_clients(sock, f"agentd cannot start: {message}")


def _fail(message: str, status: int) -> None:
    click.echo(f"agentd: {message}", err=True)
    sys.exit(status)


def _print_config(config: Config, paths: Paths) -> None:
    from agentd.config import current_environ, effective_items
    from agentd.errors import ConfigError
    from agentd.secrets import load_gemini_key

    origin = (
        "AGENTD_ENV" if config.profile_source != "default" else "default; AGENTD_ENV is not set"
    )
    click.echo(f"# profile: {config.profile} ({origin})")
    click.echo(f"# config file: {config.config_file or 'none'}")
    click.echo(f"# state dir: {paths.state_dir}")
    click.echo(f"# socket: {paths.socket}")
    try:
        has_key = load_gemini_key(config, paths, current_environ()) is not None
    except ConfigError as exc:
        _fail(str(exc), EX_CONFIG)
    click.echo(
        f"# gemini api key: {'configured (redacted)' if has_key else 'not configured: chat answers in degraded mode'}"
    )
    section = ""
    for key, value, source in effective_items(config):
        head, _, name = key.partition(".")
        if head != section:
            section = head
            click.echo(f"\n[{section}]")
        if value is None:  # TOML has no null: an unset value is a comment, not a fake ""
            click.echo(f"# {name} is unset ({source})")
        else:
            click.echo(f"{name} = {_toml_value(value)}  # {source}")


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return str(value)
