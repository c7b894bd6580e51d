"""Small files of the daemon's own in the state directory (the lock, the audit anchor)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from agentd.errors import ConfigError


def open_private(path: Path, what: str) -> int:
    """Open `path` read-write, creating it 0600; never through a symlink, only a regular
    file. Returns the descriptor (close-on-exec); ConfigError naming `what` otherwise."""
    flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(path, flags, 0o600)
    except OSError as exc:
        raise ConfigError(f"cannot open {what} {path}: {exc.strerror}") from exc
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise ConfigError(f"{what} {path} is not a regular file")
    return fd
