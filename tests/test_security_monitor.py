"""Issue 11, item 9: a read-only monitoring user, in the documented configuration.

The socket's group only lets peers connect; SO_PEERCRED against [access] decides
the role (etc/agentd.toml, docs/security.md)::

    [daemon] socket_group = SOCK          everyone who may connect at all
    [access] socket_group_role = "none"
             read_groups = [MON]          monitors: in SOCK and MON
             chat_groups = [CHAT]         chat users: in SOCK and CHAT

Real throw-away users and groups (useradd/groupadd, removed afterwards); agentctl
runs under each uid with its supplementary groups (setpriv --init-groups).
"""

from __future__ import annotations

import os
import pwd
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import DaemonProcess
from tests.test_access import open_path_to_others

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to add users and groups")

PERMISSION = 6
DEGRADED = 5  # no Gemini key: chat answers, degraded


@dataclass(frozen=True)
class Site:
    socket_group: str
    read_group: str
    chat_group: str
    monitor: str  # in socket_group and read_group
    chatter: str  # in socket_group and chat_group
    member_only: str  # in socket_group alone
    outsider: str  # in read_group, not socket_group


def _run(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def site() -> Iterator[Site]:
    n = os.getpid() % 100000  # unique per run: other suites may run beside this one
    s = Site(f"adsk{n}", f"admo{n}", f"adch{n}", f"admon{n}", f"adcht{n}", f"admem{n}", f"adout{n}")
    groups = (s.socket_group, s.read_group, s.chat_group)
    users = {
        s.monitor: (s.read_group, s.socket_group),
        s.chatter: (s.chat_group, s.socket_group),
        s.member_only: (s.socket_group, ""),
        s.outsider: (s.read_group, ""),
    }
    try:
        for group in groups:
            _run("groupadd", "--system", group)
        for user, (primary, extra) in users.items():
            more = ["-G", extra] if extra else []
            _run("useradd", "--system", "-M", "-s", "/usr/sbin/nologin", "-g", primary, *more, user)
        yield s
    finally:
        for user in users:
            subprocess.run(["userdel", user], capture_output=True, check=False)
        for group in groups:
            subprocess.run(["groupdel", group], capture_output=True, check=False)


def as_user(d: DaemonProcess, user: str, *args: str) -> subprocess.CompletedProcess[bytes]:
    account = pwd.getpwnam(user)
    return subprocess.run(
        [
            *("setpriv", f"--reuid={account.pw_uid}", f"--regid={account.pw_gid}"),
            *("--init-groups", sys.executable, "-m", "agentctl", *args),
        ],
        env={**d.env, "HOME": "/tmp"},
        capture_output=True,
        timeout=60,
        check=False,
    )


@pytest.fixture
def monitored(make_daemon: Callable[..., DaemonProcess], site: Site) -> DaemonProcess:
    d = make_daemon(
        {
            "AGENTD_DAEMON__SOCKET_GROUP": site.socket_group,
            "AGENTD_ACCESS__SOCKET_GROUP_ROLE": "none",
            "AGENTD_ACCESS__READ_GROUPS": site.read_group,
            "AGENTD_ACCESS__CHAT_GROUPS": site.chat_group,
        }
    )
    open_path_to_others(Path(d.socket).parent)
    return d.start()


def test_monitoring_user_reads_status_and_metrics(monitored: DaemonProcess, site: Site) -> None:
    assert os.stat(monitored.socket).st_mode & 0o777 == 0o660
    for command in ("status", "metrics", "health", "logs"):
        result = as_user(monitored, site.monitor, command)
        assert result.returncode == 0, (command, result.stderr)


def test_monitoring_user_may_do_nothing_else(monitored: DaemonProcess, site: Site) -> None:
    session = monitored.call("status")["session_id"]
    for command in (("chat", "hi"), ("sessions",), ("history", session), ("stop",)):
        result = as_user(monitored, site.monitor, *command)
        assert result.returncode == PERMISSION, (command, result.stderr)
        assert b"FORBIDDEN" in result.stderr
    assert monitored.call("status")["state"] == "READY"


def test_chat_users_chat_in_the_same_configuration(monitored: DaemonProcess, site: Site) -> None:
    assert as_user(monitored, site.chatter, "chat", "hello").returncode == DEGRADED


def test_socket_group_alone_grants_no_role(monitored: DaemonProcess, site: Site) -> None:
    result = as_user(monitored, site.member_only, "status")
    assert result.returncode == PERMISSION
    assert b"FORBIDDEN" in result.stderr


def test_read_group_outside_the_socket_group_cannot_connect(
    monitored: DaemonProcess, site: Site
) -> None:
    result = as_user(monitored, site.outsider, "status")
    assert result.returncode == PERMISSION
    assert b"permission denied" in result.stderr
