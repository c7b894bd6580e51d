"""Built-in read-only tools for operators, served over MCP stdio.

    python -m agentd.tools --root /var/log --root /etc/nginx [--max-file-bytes N]

    read_file(path)               a file under a root, at most --max-file-bytes
    list_directory(path)          a directory under a root (names, kinds, sizes)
    unit_state(unit)              `systemctl show` with a fixed property list
    journal(unit, lines, since)   `journalctl -u UNIT -n N [--since ...]`
    disk_usage(path)              total, used and free bytes of a root's filesystem

Every argument is validated; paths are resolved (symlinks followed) and must
stay under a root, so a symlink cannot lead out; programs run from argument
vectors, never a shell, with a timeout and a cap on what is read back. It
sees what the daemon's user may see inside the unit's sandbox
(docs/tools.md says how to widen that deliberately).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import shutil
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Final

UNIT: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9:_.@\\-]{0,254}\Z")
SINCE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9 :.+-]{0,39}\Z")  # "yesterday", "-1h" not
UNIT_PROPERTIES: Final = (
    "Id",
    "Description",
    "LoadState",
    "ActiveState",
    "SubState",
    "Result",
    "MainPID",
    "ExecMainStatus",
    "ExecMainStartTimestamp",
    "ExecMainExitTimestamp",
    "ActiveEnterTimestamp",
    "InactiveEnterTimestamp",
    "NRestarts",
    "MemoryCurrent",
    "CPUUsageNSec",
    "TasksCurrent",
    "FragmentPath",
    "UnitFileState",
)
MAX_JOURNAL_LINES: Final = 1000
MAX_LISTED: Final = 500
COMMAND_TIMEOUT_S: Final = 10.0
MAX_OUTPUT_BYTES: Final = 256 * 1024


class Refused(ValueError):
    """An argument the tool will not act on; its message goes back to the model."""


class Confinement:
    """The roots a path must resolve under."""

    def __init__(self, roots: list[str]) -> None:
        self.roots = tuple(Path(r).resolve() for r in roots)

    def resolve(self, path: str) -> Path:
        if not path or "\x00" in path:
            raise Refused("give a path")
        if not os.path.isabs(path):
            raise Refused("give an absolute path")
        try:
            resolved = Path(path).resolve(strict=True)
        except (OSError, RuntimeError) as exc:
            raise Refused(
                f"{path}: {exc.strerror if isinstance(exc, OSError) else 'loop'}"
            ) from None
        if not any(resolved == root or resolved.is_relative_to(root) for root in self.roots):
            roots = ", ".join(map(str, self.roots)) or "none configured"
            raise Refused(f"{path} is outside the readable roots ({roots})")
        return resolved


def read_file(confinement: Confinement, path: str, max_bytes: int) -> str:
    resolved = confinement.resolve(path)
    # O_NOFOLLOW: were the last component swapped for a symlink since resolving, refuse.
    try:
        fd = os.open(resolved, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as exc:
        raise Refused(f"{path}: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as handle:
        if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
            raise Refused(f"{path} is not a regular file")
        data = handle.read(max_bytes + 1)
    text = data[:max_bytes].decode("utf-8", "replace")
    if len(data) > max_bytes:
        text += f"\n[read_file: cut at {max_bytes} bytes]"
    return text


def list_directory(confinement: Confinement, path: str) -> str:
    resolved = confinement.resolve(path)
    if not resolved.is_dir():
        raise Refused(f"{path} is not a directory")
    lines = []
    with os.scandir(resolved) as entries:
        for count, entry in enumerate(sorted(entries, key=lambda e: e.name)):
            if count == MAX_LISTED:
                lines.append(f"[list_directory: more than {MAX_LISTED} entries; the rest left out]")
                break
            info = entry.stat(follow_symlinks=False)
            kind = (
                "dir"
                if entry.is_dir(follow_symlinks=False)
                else ("link" if entry.is_symlink() else "file")
            )
            lines.append(f"{kind}\t{info.st_size}\t{entry.name}")
    return "\n".join(lines) or "(empty)"


def disk_usage(confinement: Confinement, path: str) -> str:
    usage = shutil.disk_usage(confinement.resolve(path))
    return f"total {usage.total} bytes, used {usage.used}, free {usage.free}"


def check_unit(unit: str) -> str:
    if not UNIT.match(unit):
        raise Refused(f"{unit!r} is not a unit name")
    return unit


def journal_argv(unit: str, lines: int, since: str | None) -> list[str]:
    if not 1 <= lines <= MAX_JOURNAL_LINES:
        raise Refused(f"lines is 1 to {MAX_JOURNAL_LINES}")
    argv = ["journalctl", "--no-pager", "-o", "short-iso", "-u", check_unit(unit), "-n", str(lines)]
    if since:
        if not SINCE.match(since):
            raise Refused(f"{since!r}: since is a time such as 'yesterday' or '2026-01-02 03:04'")
        argv += ["--since", since]
    return argv


def unit_argv(unit: str) -> list[str]:
    return [
        "systemctl",
        "show",
        "--no-pager",
        f"--property={','.join(UNIT_PROPERTIES)}",
        "--",
        check_unit(unit),
    ]


async def run(argv: list[str]) -> str:
    """A program's output (stdout, then stderr), bounded in time and size; never a shell."""
    try:
        process = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
    except OSError as exc:
        raise Refused(f"{argv[0]}: {exc.strerror}") from None
    try:
        async with asyncio.timeout(COMMAND_TIMEOUT_S):
            out, err = await process.communicate()
    except TimeoutError:
        process.kill()
        await process.wait()
        raise Refused(f"{argv[0]} did not finish within {COMMAND_TIMEOUT_S:.0f} s") from None
    text = (out + err)[:MAX_OUTPUT_BYTES].decode("utf-8", "replace")
    return text if process.returncode == 0 else f"[{argv[0]} exited {process.returncode}]\n{text}"


@contextlib.contextmanager
def refused_as_tool_error() -> Iterator[None]:
    """A refusal reaches the model as the tool's error, its message intact (the SDK
    hides the message of any other exception)."""
    from mcp.server.mcpserver.exceptions import ToolError

    try:
        yield
    except Refused as exc:
        raise ToolError(str(exc)) from None


def build_server(confinement: Confinement, max_file_bytes: int) -> object:
    """The MCP server with the five tools (the SDK imported here: only this process pays)."""
    from mcp.server.mcpserver import MCPServer

    # ERROR: the SDK logs refused calls at INFO with their message, which names the
    # path or unit asked for; the daemon's journal must not hold arguments.
    server = MCPServer(
        "agentd-builtin", instructions="Read-only tools for Linux operators.", log_level="ERROR"
    )

    @server.tool(name="read_file")
    def read_file_tool(path: str) -> str:
        """Read a text file (absolute path) under the configured roots; large files are cut."""
        with refused_as_tool_error():
            return read_file(confinement, path, max_file_bytes)

    @server.tool(name="list_directory")
    def list_directory_tool(path: str) -> str:
        """List a directory (absolute path) under the configured roots: kind, size, name."""
        with refused_as_tool_error():
            return list_directory(confinement, path)

    @server.tool(name="disk_usage")
    def disk_usage_tool(path: str) -> str:
        """Total, used and free bytes of the filesystem holding a path under the roots."""
        with refused_as_tool_error():
            return disk_usage(confinement, path)

    @server.tool()
    async def unit_state(unit: str) -> str:
        """A systemd unit's state: load, active and sub state, main PID, restarts, memory..."""
        with refused_as_tool_error():
            return await run(unit_argv(unit))

    @server.tool()
    async def journal(unit: str, lines: int = 50, since: str | None = None) -> str:
        """The last `lines` journal records of a systemd unit, optionally since a time."""
        with refused_as_tool_error():
            return await run(journal_argv(unit, lines, since))

    return server


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m agentd.tools", description=__doc__)
    parser.add_argument("--root", action="append", default=[], help="a readable root (repeat)")
    parser.add_argument("--max-file-bytes", type=int, default=64 * 1024)
    args = parser.parse_args(argv)
    server = build_server(Confinement(args.root), args.max_file_bytes)
    server.run()  # type: ignore[attr-defined]
