"""What agentd trusts on disk: only what no one but its own uid (or root) could have written.

Checked once at start-up, before anything is opened, the way PostgreSQL checks
its data directory and sshd its keys (docs/security.md)::

    state dir                       a directory (not a symlink), owned by the daemon's
                                    uid, not writable by group or others
    agentd.db, -wal, -shm,          regular files (not symlinks), owned by the daemon's
    agentd.log                      uid, not writable by group or others; readable by
                                    group/others is tightened to 0600 with a warning
    key files (DB key, Gemini key)  regular files owned by the daemon's uid or root, not
                                    writable by group or others; readable by group or
                                    others: refused in staging/production, a warning in
                                    development. systemd credentials are exempt from the
                                    read rule: systemd grants the service user read access
                                    with an ACL, which shows as group bits.

A refusal is a ConfigError: exit 78 with one line naming the path and the problem.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from agentd.errors import ConfigError
from agentd.paths import Paths, ensure_private_dir
from agentd.protocol import path_problem

logger = logging.getLogger(__name__)

_GROUP_OTHER_WRITE = 0o022
_GROUP_OTHER_READ = 0o044


def check_state_dir(paths: Paths) -> None:
    """Create the state directory if needed, then refuse it or its files if someone else
    could have written them."""
    ensure_private_dir(paths.state_dir)
    uid = os.geteuid()
    _refuse_untrusted(paths.state_dir, "state directory", (uid,), directory=True)
    for path in state_files(paths):
        _refuse_untrusted(path, "state file", (uid,), directory=False)
        _tighten(path)


def state_files(paths: Paths) -> tuple[Path, ...]:
    db = paths.database
    return (db, db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm"), paths.log_file)


def check_key_file(path: Path, *, credential: bool, strict: bool) -> None:
    """Refuse a key file someone else could have written; a readable one too when strict."""
    _refuse_untrusted(path, "key file", (os.geteuid(), 0), directory=False)
    if credential:
        return  # systemd's ACL for the service user shows as group bits: not a leak
    loose = path_problem(
        str(path), owners=(os.geteuid(), 0), forbidden_mode=_GROUP_OTHER_READ, directory=False
    )
    if loose is None:
        return
    if strict:
        raise ConfigError(f"key file {path} {loose}: chmod 600 it (refused outside development)")
    logger.warning("key file %s %s: whoever reads it has the key; chmod 600 it", path, loose)


def _refuse_untrusted(path: Path, what: str, owners: tuple[int, ...], *, directory: bool) -> None:
    problem = path_problem(
        str(path), owners=owners, forbidden_mode=_GROUP_OTHER_WRITE, directory=directory
    )
    if problem is not None:
        raise ConfigError(f"{what} {path} {problem}: refusing to use it")


def _tighten(path: Path) -> None:
    """Our own file that others may read (made by an older version, or a loose umask): 0600."""
    try:
        mode = os.lstat(path).st_mode & 0o777
    except FileNotFoundError:
        return
    if mode & _GROUP_OTHER_READ:
        os.chmod(path, 0o600)
        logger.warning("%s was readable by group or others (mode %04o): now 0600", path, mode)
