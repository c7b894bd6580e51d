"""Real peers for the ownership and terminal tests: throw-away users in a throw-away group,
agentctl run as each of them (setpriv), and agentctl on a real pseudo-terminal.

Needs root (useradd, setpriv); the test modules using it skip otherwise.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pty
import secrets
import select
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest

from agentd.secrets import Secret
from agentd.store.database import Connection, Database
from tests.conftest import DaemonProcess
from tests.test_access import open_path_to_others

T = TypeVar("T")

needs_root = pytest.mark.skipif(
    os.geteuid() != 0, reason="needs root to create users and run clients under their uids"
)


@dataclass(frozen=True)
class Member:
    """A user whose primary group is the daemon's socket group: the chat role."""

    name: str
    uid: int
    gid: int


@dataclass(frozen=True)
class Peers:
    group: str
    alice: Member
    bob: Member


@contextlib.contextmanager
def throwaway_peers() -> Iterator[Peers]:
    """Two new users sharing a new group; both removed afterwards."""
    tag = secrets.token_hex(3)
    group, names = f"agtg{tag}", (f"agta{tag}", f"agtb{tag}")
    subprocess.run(["groupadd", group], check=True)
    try:
        for name in names:
            subprocess.run(
                ["useradd", "-M", "-N", "-g", group, "-s", "/usr/sbin/nologin", name], check=True
            )
        alice, bob = (_member(name) for name in names)
        yield Peers(group, alice, bob)
    finally:
        for name in names:
            subprocess.run(["userdel", name], check=False, capture_output=True)
        subprocess.run(["groupdel", group], check=False, capture_output=True)


@pytest.fixture(scope="module", name="peers")
def peers_fixture() -> Iterator[Peers]:
    """Two throw-away members, shared by a module's tests."""
    with throwaway_peers() as made:
        yield made


def _member(name: str) -> Member:
    import pwd

    entry = pwd.getpwnam(name)
    return Member(name, entry.pw_uid, entry.pw_gid)


def start_group_daemon(d: DaemonProcess, peers: Peers) -> DaemonProcess:
    """Start `d` with its socket open (0660) to the peers' group."""
    d.env["AGENTD_DAEMON__SOCKET_GROUP"] = peers.group
    open_path_to_others(Path(d.socket).parent)
    return d.start()


def _setpriv(member: Member) -> list[str]:
    return ["setpriv", f"--reuid={member.uid}", f"--regid={member.gid}", "--clear-groups"]


def as_member(
    d: DaemonProcess, member: Member, *args: str, input: bytes | None = None
) -> subprocess.CompletedProcess[bytes]:
    """agentctl as a real process under the member's uid."""
    return subprocess.run(
        [*_setpriv(member), sys.executable, "-m", "agentctl", *args],
        env={**d.env, "HOME": "/tmp"},
        input=input,
        stdin=None if input is not None else subprocess.DEVNULL,
        capture_output=True,
        timeout=60,
        check=False,
    )


def raw_call_as(d: DaemonProcess, member: Member, cmd: str, args: dict[str, Any]) -> str:
    """One request with any command name, sent by a client under the member's uid;
    returns the error code of the reply ("" when it succeeded)."""
    script = (
        "import sys, json\n"
        "from agentctl.client import Client, DaemonError\n"
        "cmd, args = json.loads(sys.argv[1])\n"
        "try:\n"
        "    Client(sys.argv[2]).call(cmd, args)\n"
        "except DaemonError as exc:\n"
        "    print(exc.code)\n"
    )
    import json

    result = subprocess.run(
        [*_setpriv(member), sys.executable, "-c", script, json.dumps([cmd, args]), d.socket],
        env={**d.env, "HOME": "/tmp"},
        capture_output=True,
        timeout=60,
        check=True,
    )
    return result.stdout.decode().strip()


def on_tty(
    d: DaemonProcess, *args: str, member: Member | None = None, timeout: float = 60
) -> tuple[int, bytes]:
    """agentctl (as root, or as `member`) with its stdout on a real pseudo-terminal:
    (exit status, what the terminal got)."""
    master, slave = pty.openpty()
    prefix = _setpriv(member) if member else []
    process = subprocess.Popen(
        [*prefix, sys.executable, "-m", "agentctl", *args],
        env={
            **d.env,
            "HOME": "/tmp",
            "TERM": "xterm",
            "NO_COLOR": "1",
        },  # our own colours are ESC too
        stdin=subprocess.DEVNULL,
        stdout=slave,
        stderr=subprocess.DEVNULL,
    )
    os.close(slave)
    received = bytearray()
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.1)
            if ready:
                try:
                    chunk = os.read(master, 65536)
                except OSError:  # EIO: the terminal's other end is closed
                    break
                if not chunk:
                    break
                received += chunk
            elif process.poll() is not None:
                break
        status = process.wait(max(0.1, deadline - time.monotonic()))
    finally:
        process.kill()
        os.close(master)
    return status, bytes(received)


def with_store(state_dir: Path, fn: Callable[..., T], *args: Any) -> T:
    """fn(conn, *args) on the daemon's real SQLCipher file, opened with its key file
    (the daemon must be stopped)."""
    key = Secret((state_dir / "db.key").read_text().strip())

    async def scenario() -> T:
        db = Database(state_dir / "agentd.db", key)
        await db.open()
        try:
            return await db.run(fn, *args)
        finally:
            await db.close()

    return asyncio.run(scenario())


def insert_session(conn: Connection, session_id: str, name: str | None, owner_uid: int) -> None:
    """A session row as an older agentd may have left it (names were not checked);
    owner_uid goes in only where the schema has it."""
    columns = {row[1] for row in conn.execute("PRAGMA table_info(sessions)")}
    owner = {"owner_uid": owner_uid} if "owner_uid" in columns else {}
    fields = {"id": session_id, "name": name, "created_at": 1.0, "last_used_at": 1.0, "turns": 0}
    fields |= owner
    conn.execute(
        f"INSERT INTO sessions ({', '.join(fields)}) VALUES ({', '.join('?' * len(fields))})",
        tuple(fields.values()),
    )
