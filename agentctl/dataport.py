"""agentctl export and import: sessions out as JSON lines or Markdown, and back in.

JSON lines are exact (what `import` reads back; docs/data.md). Markdown is
for people: on a terminal, control characters in it are shown escaped, as
everywhere else text from others is printed. A file named with -o is
created 0600 beside its final name and renamed into place when complete; an
existing file is kept unless --force, and a directory others may write to
is refused (they could swap the file under us).
"""

from __future__ import annotations

import os
import stat
import sys
import tempfile
from pathlib import Path
from typing import IO, Any

import click

from agentctl import exits
from agentctl.client import Client
from agentctl.context import fail, json_option, options
from agentctl.exportformat import JsonLines, Markdown, joined
from agentctl.output import print_json, visible

EXPORT_TIMEOUT_S = 600.0


@click.command("export")
@click.argument("session_refs", nargs=-1, metavar="[SESSION]...")
@click.option("--all", "everyone", is_flag=True, help="Every user's sessions (admin).")
@click.option(
    "--format", "fmt", type=click.Choice(["jsonl", "markdown"]), default="jsonl", show_default=True
)
@click.option(
    "-o", "--output", metavar="FILE", help="Write to FILE (created 0600) instead of stdout."
)
@click.option("--force", is_flag=True, help="Replace FILE if it exists.")
@json_option
def export(
    session_refs: tuple[str, ...], everyone: bool, fmt: str, output: str | None, force: bool
) -> None:
    """Export sessions (all yours by default) with their messages."""
    opts = options()
    args: dict[str, Any] = {"sessions": list(session_refs)} if session_refs else {}
    if everyone:
        args["all"] = True
    target = Path(output) if output else None
    if target is not None:
        check_target(target, force)
    with opts.client(timeout=EXPORT_TIMEOUT_S) as client:
        if target is None:
            result = _export_to(client, args, fmt, sys.stdout.buffer, sys.stdout.isatty())
        else:
            result = _export_to_file(client, args, fmt, target, force)
    summary = {"sessions": result["sessions"], "messages": result["messages"], "file": output}
    if opts.json and target is not None:
        print_json(summary)
    else:
        where = f" to {visible(output)}" if output else ""
        click.echo(
            f"exported {result['sessions']} session(s), {result['messages']} message(s){where}",
            err=True,
        )


def check_target(target: Path, force: bool) -> None:
    """Refuse a FILE that exists (without --force) or lies in a directory others can write."""
    directory = target.absolute().parent
    try:
        info = directory.stat()
    except OSError as exc:
        fail(f"cannot use {visible(str(directory))}: {exc.strerror}", exits.FAILED)
    if info.st_mode & stat.S_IWOTH or info.st_uid not in (0, os.geteuid()):
        fail(
            f"{visible(str(directory))} is writable by others or not yours: "
            "choose a directory only you can write to",
            exits.FAILED,
        )
    if not force and os.path.lexists(target):
        fail(f"{visible(str(target))} exists; --force replaces it", exits.FAILED)


def _export_to_file(
    client: Client, args: dict[str, Any], fmt: str, target: Path, force: bool
) -> dict[str, Any]:
    fd, temporary = tempfile.mkstemp(dir=target.absolute().parent, prefix=f".{target.name}.")
    try:
        with os.fdopen(fd, "wb") as handle:  # mkstemp makes it 0600
            result = _export_to(client, args, fmt, handle, False)
            handle.flush()
            os.fsync(handle.fileno())
        if force:
            os.replace(temporary, target)
        else:
            os.link(temporary, target)  # fails if the name was taken meanwhile
            os.unlink(temporary)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return result


def _export_to(
    client: Client, args: dict[str, Any], fmt: str, out: IO[bytes], terminal: bool
) -> dict[str, Any]:
    writer = JsonLines(out) if fmt == "jsonl" else Markdown(out, terminal)
    writer.start()
    result = client.call("export", args, on_event=joined(writer.session, writer.message))
    out.flush()
    return result


@click.command("import")
@click.argument("source", type=click.File("rb"), metavar="FILE.jsonl")
@json_option
def import_(source: IO[bytes]) -> None:
    """Bring an export (JSON lines) back as new sessions of yours: all of it, or nothing."""
    opts = options()
    with opts.client(timeout=EXPORT_TIMEOUT_S) as client:
        begun = client.call("import_begin")
        import_id, chunk = begun["import_id"], int(begun["chunk_bytes"])
        sent = 0
        while data := source.read(chunk):
            sent += len(data)
            if sent > int(begun["max_bytes"]):
                fail(
                    f"the file is larger than the import limit of {begun['max_bytes']} bytes",
                    exits.USAGE,
                )
            client.call("import_data", {"import_id": import_id, "data": data})
        result = client.call("import_commit", {"import_id": import_id})
    if opts.json:
        print_json(result)
        return
    for s in result["sessions"]:
        name = f" ({visible(s['name'])})" if s.get("name") else ""
        click.echo(f"{s['id']}{name}: {s['messages']} message(s), from {visible(s['from'])}")
    click.echo(f"imported {len(result['sessions'])} session(s), {result['messages']} message(s)")
