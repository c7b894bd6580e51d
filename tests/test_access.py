"""Peer authorisation with real clients under other uids (SO_PEERCRED), as root."""

from __future__ import annotations

import grp
import os
import pwd
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import DaemonProcess

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0, reason="needs root to run a client under another uid"
)

OUTSIDER = "nobody"
GROUP = "users"


def as_user(
    d: DaemonProcess, user: str, group: str, *args: str
) -> subprocess.CompletedProcess[bytes]:
    """agentctl as a real process under another uid and primary group."""
    uid, gid = pwd.getpwnam(user).pw_uid, grp.getgrnam(group).gr_gid
    env = {**d.env, "HOME": "/tmp"}
    return subprocess.run(
        [
            "setpriv",
            f"--reuid={uid}",
            f"--regid={gid}",
            "--clear-groups",
            sys.executable,
            "-m",
            "agentctl",
            *args,
        ],
        env=env,
        capture_output=True,
        timeout=60,
        check=False,
    )


def open_path_to_others(path: Path) -> None:
    for part in (path, *path.parents):
        if str(part) in ("/", "/tmp"):
            break
        os.chmod(part, os.stat(part).st_mode | 0o011)  # traverse only, no listing


@pytest.fixture
def group_daemon(make_daemon: Callable[..., DaemonProcess]) -> DaemonProcess:
    """A daemon whose socket is open (0660) to the group `users`."""
    d = make_daemon({"AGENTD_DAEMON__SOCKET_GROUP": GROUP})
    open_path_to_others(Path(d.socket).parent)
    return d.start()


def test_socket_with_a_group_is_0660_and_owned_by_that_group(group_daemon: DaemonProcess) -> None:
    info = os.stat(group_daemon.socket)
    assert info.st_mode & 0o777 == 0o660
    assert info.st_gid == grp.getgrnam(GROUP).gr_gid


def test_group_member_may_read_and_chat(group_daemon: DaemonProcess) -> None:
    assert as_user(group_daemon, OUTSIDER, GROUP, "status").returncode == 0
    chat = as_user(group_daemon, OUTSIDER, GROUP, "chat", "hello")
    assert chat.returncode == 5  # no API key: degraded, but allowed
    assert as_user(group_daemon, OUTSIDER, GROUP, "sessions").returncode == 0


def test_group_member_is_forbidden_admin_commands_with_exit_6(group_daemon: DaemonProcess) -> None:
    stop = as_user(group_daemon, OUTSIDER, GROUP, "stop")
    assert stop.returncode == 6
    assert b"FORBIDDEN" in stop.stderr
    assert b"admin role" in stop.stderr
    session = group_daemon.call("status")["session_id"]
    delete = as_user(group_daemon, OUTSIDER, GROUP, "sessions", "delete", session)
    assert delete.returncode == 1  # another user's session: not found, as if absent
    assert b"NOT_FOUND" in delete.stderr
    assert group_daemon.call("status")["state"] == "READY"  # still running, session kept
    assert group_daemon.call("history", {"session": session})["session"]["id"] == session


def test_non_member_cannot_even_connect(group_daemon: DaemonProcess) -> None:
    result = as_user(group_daemon, OUTSIDER, "nogroup", "status")
    assert result.returncode == 6
    assert b"permission denied" in result.stderr


def test_default_socket_admits_only_its_owner(daemon: DaemonProcess) -> None:
    open_path_to_others(Path(daemon.socket).parent)
    result = as_user(daemon, OUTSIDER, GROUP, "status")
    assert result.returncode == 6


def test_configured_admin_user_may_stop(make_daemon: Callable[..., DaemonProcess]) -> None:
    d = make_daemon({"AGENTD_DAEMON__SOCKET_GROUP": GROUP, "AGENTD_ACCESS__ADMIN_USERS": OUTSIDER})
    open_path_to_others(Path(d.socket).parent)
    d.start()
    assert as_user(d, OUTSIDER, GROUP, "stop").returncode == 0
    assert d.wait_exit() == 0


def test_read_group_may_read_but_not_chat(make_daemon: Callable[..., DaemonProcess]) -> None:
    d = make_daemon({"AGENTD_DAEMON__SOCKET_GROUP": GROUP, "AGENTD_ACCESS__READ_GROUPS": "nogroup"})
    open_path_to_others(Path(d.socket).parent)
    d.start()
    os.chmod(d.socket, 0o666)  # let the non-member reach the socket: the role check must hold
    assert as_user(d, OUTSIDER, "nogroup", "status").returncode == 0
    chat = as_user(d, OUTSIDER, "nogroup", "chat", "hi")
    assert chat.returncode == 6
    assert b"chat role" in chat.stderr
