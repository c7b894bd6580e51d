"""Restore and rekey work only while no daemon runs on the state directory: they hold
its lock (statelock.py) from their first look at the database to their last rename."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from agentd.errors import AlreadyRunning, MaintenanceError
from agentd.paths import Paths
from agentd.statelock import StateLock
from agentd.trust import check_state_dir


@contextlib.contextmanager
def daemon_stopped(paths: Paths, what: str) -> Iterator[None]:
    """Hold the state directory (checked as the daemon checks it) for `what`; a running
    daemon is a MaintenanceError telling to stop it first."""
    check_state_dir(paths)
    lock = StateLock(paths.state_dir)
    try:
        lock.acquire()
    except AlreadyRunning as exc:
        raise MaintenanceError(
            f"{what} needs agentd stopped: {exc}; stop it first "
            "(systemctl stop agentd, or agentctl stop)"
        ) from None
    try:
        yield
    finally:
        lock.release()
