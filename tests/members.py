"""For tests with real peers under other uids: a daemon open to the group `users`, and
runs of the hostile peer (tests/peer.py) under setpriv. Needs root."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import DaemonProcess
from tests.peer import peer_argv
from tests.test_access import GROUP, open_path_to_others

needs_root = pytest.mark.skipif(
    os.geteuid() != 0, reason="needs root to run a client under another uid"
)


def start_member_daemon(
    make_daemon: Callable[..., DaemonProcess], env: dict[str, str]
) -> DaemonProcess:
    """A daemon whose socket members of `users` reach (they may chat), with `env` on top."""
    d = make_daemon({"AGENTD_DAEMON__SOCKET_GROUP": GROUP, **env})
    open_path_to_others(Path(d.socket).parent)
    return d.start()


def peer_env(d: DaemonProcess) -> dict[str, str]:
    return {**d.env, "HOME": "/tmp"}


def run_peer(d: DaemonProcess, user: str, *args: str) -> Any:
    """Run the peer to its end as `user`; what it printed (JSON)."""
    result = subprocess.run(
        peer_argv(user, GROUP, d.socket, *args),
        env=peer_env(d),
        capture_output=True,
        timeout=120,
        check=True,
    )
    return json.loads(result.stdout)
