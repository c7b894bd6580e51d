"""One daemon per state directory: an exclusive lock held for the process's life.

Two daemons on one state directory (another XDG_RUNTIME_DIR, another
--socket) would both write one database. The socket check cannot see that,
so the state directory itself is locked: flock(2) on `agentd.lock`, which
holds the owner's pid for the message a second daemon prints.

flock, not fcntl record locks: closing any other descriptor of the file
would drop a record lock. The kernel drops the lock when the process dies
however it dies (kill -9, watchdog abort), so a restart by systemd or by
hand never finds a stale lock; the pid in the file is only for the message.
The descriptor is close-on-exec, so nothing we run inherits the lock.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import Final

from agentd.errors import AlreadyRunning
from agentd.privatefile import open_private

LOCK_NAME: Final = "agentd.lock"
_MAX_PID_BYTES: Final = 32


class StateLock:
    """acquire() once at start-up; release() after the store is closed."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> None:
        """Lock the state directory; AlreadyRunning naming the holder's pid if taken."""
        fd = open_private(self.path, "the lock file")
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_pid(fd)
            os.close(fd)
            who = f"pid {holder}" if holder else "another process"
            raise AlreadyRunning(
                f"another agentd ({who}) is using the state directory {self.path.parent} "
                f"(it holds {self.path})"
            ) from None
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
        self._fd = fd

    def release(self) -> None:
        """Let the next daemon in (the file stays: unlinking it would race a new locker)."""
        if self._fd is not None:
            os.close(self._fd)  # the pid left in the file is only read while locked
            self._fd = None


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, _MAX_PID_BYTES, 0).decode("ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return int(text) if text.isdigit() else None
