"""agentctl backup [PATH] [--key-file FILE] [--force] [--keep N] (admin).

The daemon writes the backup (it holds the database and its key): PATH is
made absolute here and must be a place the daemon may write. A `--key-file`
is read here, checked like the daemon checks its own (a regular file of ours
or root's, not open to others), and its key sent over the socket.

Imports click, msgpack (through the client) and agentd.protocol only.
Found by agentctl.cli (LAZY_COMMANDS) when named.
"""

from __future__ import annotations

import os
import re
from typing import Any, Final

import click

from agentctl import exits
from agentctl.context import fail, json_option, options
from agentctl.output import human_bytes, print_json, print_pairs
from agentd.protocol import path_problem

_HEX_KEY: Final = re.compile(r"[0-9a-fA-F]{64}\n?\Z")


@click.command()
@click.argument("path", required=False, metavar="[PATH]")
@click.option(
    "--key-file",
    metavar="FILE",
    help="Encrypt with this key (64 hex characters) instead of the database's.",
)
@click.option("--force", is_flag=True, help="Replace an existing file at PATH.")
@click.option(
    "--keep",
    type=click.IntRange(1, 10_000),
    metavar="N",
    help="Then keep only the newest N timestamped backups in that directory.",
)
@json_option
def backup(path: str | None, key_file: str | None, force: bool, keep: int | None) -> None:
    """Write an encrypted, checked backup while agentd runs (admin).

    PATH is a file, or a directory for a timestamped agentd-<UTC time>.db;
    default: the backups/ directory in agentd's state directory."""
    opts = options()
    args: dict[str, Any] = {"force": force}
    if path is not None:
        args["path"] = os.path.abspath(path)
    if key_file is not None:
        args["key"] = _read_key(key_file)
    if keep is not None:
        args["keep"] = keep
    result = opts.client(timeout=None).call("backup", args)
    if opts.json:
        print_json(result)
        return
    rows, head = result["rows"], result["audit_head"]
    click.echo(f"backup written: {result['path']}")
    print_pairs(
        [
            ("size", human_bytes(result["size_bytes"])),
            (
                "rows",
                f"{rows['sessions']} sessions, {rows['messages']} messages, "
                f"{rows['audit']} audit rows",
            ),
            ("audit head", f"seq {head['seq']} hash {head['hash']}"),
            ("key", "the database key" if result["key"] == "database" else "the key given"),
            ("took", f"{result['seconds']:.2f}s"),
            *(("pruned", p) for p in result["pruned"]),
        ]
    )


def _read_key(path: str) -> str:
    problem = path_problem(path, owners=(os.geteuid(), 0), forbidden_mode=0o077, directory=False)
    if problem is not None:
        fail(f"key file {path} {problem}: chmod 600 it, owned by you or root", exits.USAGE)
    try:
        with open(path, encoding="ascii") as handle:
            text = handle.read(200)
    except (OSError, UnicodeDecodeError) as exc:
        fail(f"cannot read key file {path}: {getattr(exc, 'strerror', None) or exc}", exits.USAGE)
    if not _HEX_KEY.match(text):
        fail(f"key file {path} must hold 64 hex characters (256 bits)", exits.USAGE)
    return text.strip().lower()
