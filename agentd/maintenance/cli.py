"""`agentd restore PATH` and `agentd rekey --new-key-file FILE`: offline, on the state
directory of a stopped daemon, with the daemon's own config, paths and DB key.

Exit statuses: 0 done; 1 refused or failed, nothing changed (a running daemon,
a damaged backup, a key that does not open it...); 78 a config or key file
that cannot be used.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import click

if TYPE_CHECKING:
    from agentd.cli import Invocation
    from agentd.config import Config
    from agentd.paths import Paths
    from agentd.secrets import Secret

EX_CONFIG = 78


@click.command()
@click.argument("backup", metavar="PATH", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--key-file",
    metavar="FILE",
    type=click.Path(dir_okay=False, path_type=Path),
    help="The backup's key, when it was made with another key (`agentctl backup "
    "--key-file`); the restored database is re-encrypted with the database key.",
)
@click.pass_obj
def restore(invocation: Invocation, backup: Path, key_file: Path | None) -> None:
    """Put a backup in place of the database (agentd must be stopped).

    The backup is checked first (its key, every page, the audit chain); the
    database it replaces is kept aside as agentd.db.replaced-<time>."""
    from agentd.maintenance.restore import restore as restore_backup

    config, paths, db_key = _load(invocation)
    backup_key = _key_from(key_file, config, paths)
    report = _attempt(
        lambda: restore_backup(paths, db_key, backup.absolute(), backup_key, now=time.time())
    )
    click.echo(f"restored {report.backup} into {report.database}")
    _echo_contents(report.contents.as_dict())
    if report.kept_aside is not None:
        click.echo(f"  the replaced database is kept as {report.kept_aside}")
    click.echo("  the audit anchor now points at the restored head; start agentd as usual")


@click.command()
@click.option(
    "--new-key-file",
    metavar="FILE",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="The new key: 64 hex characters (e.g. `openssl rand -hex 32`).",
)
@click.pass_obj
def rekey(invocation: Invocation, new_key_file: Path) -> None:
    """Re-encrypt the database under a new key (agentd must be stopped)."""
    from agentd.maintenance.rekey import rekey as rekey_database

    config, paths, old_key = _load(invocation)
    new_key = _key_from(new_key_file, config, paths)
    assert new_key is not None
    own = None if _key_given(config, paths) else paths.generated_key
    report = _attempt(lambda: rekey_database(paths, old_key, new_key, own_key_file=own))
    click.echo(f"rekeyed {report.database}: the old key no longer opens it")
    _echo_contents(report.contents.as_dict())
    for path in report.old_key_files:
        click.echo(f"  {path} (kept aside by a restore) is still encrypted with the old key")
    if report.key_file is not None:
        click.echo(f"  {report.key_file} now holds the new key")
    else:
        click.echo(
            "  now install the new key where agentd reads it (the db-key credential or "
            "the key file) before starting agentd"
        )


def _load(invocation: Invocation) -> tuple[Config, Paths, Secret]:
    from agentd.config import current_environ, load_config
    from agentd.errors import ConfigError
    from agentd.paths import resolve_paths
    from agentd.secrets import load_db_key

    environ = current_environ()
    try:
        config = load_config(environ, config_path=invocation.config_path, flags=invocation.flags)
        paths = resolve_paths(config, environ)
        return config, paths, load_db_key(config, paths, environ).secret
    except ConfigError as exc:
        _fail(str(exc), EX_CONFIG)


def _key_from(path: Path | None, config: Config, paths: Paths) -> Secret | None:
    from agentd.errors import ConfigError
    from agentd.secrets import read_key_file

    if path is None:
        return None
    try:
        return read_key_file(path.absolute(), config, paths)
    except ConfigError as exc:
        _fail(str(exc), EX_CONFIG)


def _key_given(config: Config, paths: Paths) -> bool:
    """Does the daemon read its key from a credential or a configured file (the
    operator's to replace), rather than the db.key it generated in its state dir?"""
    credential = paths.credentials_dir is not None and (paths.credentials_dir / "db-key").exists()
    return credential or bool(config.secrets.db_key_file)


def _attempt(work: Any) -> Any:
    from agentd.errors import AgentdError, ConfigError

    try:
        return work()
    except ConfigError as exc:
        _fail(str(exc), EX_CONFIG)
    except AgentdError as exc:
        _fail(str(exc), 1)


def _echo_contents(contents: dict[str, Any]) -> None:
    rows, head = contents["rows"], contents["audit_head"]
    click.echo(
        f"  {rows['sessions']} sessions, {rows['messages']} messages, {rows['audit']} audit rows"
    )
    click.echo(f"  audit head: seq {head['seq']} hash {head['hash']}")


def _fail(message: str, status: int) -> NoReturn:
    click.echo(f"agentd: {message}", err=True)
    sys.exit(status)
