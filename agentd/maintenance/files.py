"""The files of backups, restores and rekeys: trusted directories, temporary files that
never outlive a failure, fsync, publishing by rename, pruning old backups."""

from __future__ import annotations

import contextlib
import os
import re
import stat
import tempfile
import time
from pathlib import Path
from typing import Final

from agentd.errors import MaintenanceError
from agentd.protocol import path_problem

BACKUP_NAME: Final = re.compile(r"agentd-\d{8}T\d{6}\.\d{3}Z\.db\Z")
SIDECARS: Final = ("-wal", "-shm", "-journal")
_GROUP_OTHER_WRITE: Final = 0o022


def backup_name(now: float) -> str:
    """agentd-YYYYMMDDTHHMMSS.mmmZ.db (UTC): names sort in time order, for `--keep`."""
    millis = int(now * 1000) % 1000
    return time.strftime("agentd-%Y%m%dT%H%M%S", time.gmtime(now)) + f".{millis:03d}Z.db"


def check_directory(directory: Path) -> None:
    """Refuse a directory another user could write: they could swap or read what we put
    there between our checks and our rename."""
    problem = path_problem(
        str(directory),
        owners=(os.geteuid(), 0),
        forbidden_mode=_GROUP_OTHER_WRITE,
        directory=True,
    )
    if problem is not None:
        raise MaintenanceError(f"directory {directory} {problem}: refusing to write there")
    if not directory.is_dir():
        raise MaintenanceError(f"directory {directory} does not exist")


def check_target(path: Path, *, force: bool) -> None:
    """An existing file is replaced only when told (`--force`), and only a regular file."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return
    if not force:
        raise MaintenanceError(f"{path} exists: give --force to replace it")
    if not stat.S_ISREG(info.st_mode):
        raise MaintenanceError(f"{path} exists and is not a regular file: refusing to replace it")


def check_source(path: Path, what: str) -> None:
    """A file we read and then trust: a regular file, ours or root's, not writable by others."""
    if not path.exists():
        raise MaintenanceError(f"{what} {path} does not exist")
    problem = path_problem(
        str(path), owners=(os.geteuid(), 0), forbidden_mode=_GROUP_OTHER_WRITE, directory=False
    )
    if problem is not None:
        raise MaintenanceError(f"{what} {path} {problem}: refusing to use it")


def create_temp(target: Path) -> Path:
    """A new empty file (0600, O_EXCL) beside `target`, hidden, named after it."""
    fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    return Path(name)


def remove_with_sidecars(path: Path) -> None:
    """`path` and the journal files SQLite may have left beside it."""
    for candidate in (path, *(path.with_name(path.name + s) for s in SIDECARS)):
        with contextlib.suppress(FileNotFoundError):
            candidate.unlink()


def fsync_file(path: Path) -> None:
    _fsync(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)


def fsync_dir(directory: Path) -> None:
    """Make a rename or an unlink in `directory` survive a power cut."""
    _fsync(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)


def _fsync(path: Path, flags: int) -> None:
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def publish(temp: Path, target: Path, *, replace: bool) -> None:
    """Rename `temp` to `target` and make it durable. Without `replace`, a file that
    appeared at `target` meanwhile is kept (link(2) never overwrites)."""
    if replace:
        os.replace(temp, target)
    else:
        try:
            os.link(temp, target)
        except FileExistsError:
            raise MaintenanceError(f"{target} exists: give --force to replace it") from None
        temp.unlink()
    fsync_dir(target.parent)


def prune(directory: Path, keep: int) -> list[Path]:
    """Remove all but the newest `keep` backups named by `backup_name` in `directory`."""
    ours = sorted(p for p in directory.iterdir() if BACKUP_NAME.match(p.name) and p.is_file())
    doomed = ours[:-keep] if keep > 0 else ours
    for path in doomed:
        path.unlink()
    if doomed:
        fsync_dir(directory)
    return doomed


def replace_private_file(path: Path, text: str) -> None:
    """Write `text` to `path` atomically: a 0600 temporary file fsync'd, then renamed."""
    temp = create_temp(path)
    try:
        with temp.open("w", encoding="ascii") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            temp.unlink()
        raise
    fsync_dir(path.parent)
