"""Offline restore: a backup checked, then put in place of the database.

    1. the state directory locked (no daemon may run meanwhile)
    2. the backup copied to a temporary file in the state directory (byte for
       byte; or, when it was made with another key, exported under the
       database's key) and that copy checked thoroughly: the key opens it,
       every page authenticates, integrity_check passes, the audit chain holds
    3. the database it replaces kept aside as agentd.db.replaced-<UTC time>
       (with its -wal: unapplied commits stay with the file they belong to)
    4. the copy renamed to agentd.db, the directory fsync'd
    5. the audit anchor moved to the backup's head on purpose (anchor.py
       move_anchor): the start-up rollback check then accepts it, and the
       next start's `audit verify` reports no gap

A failure before step 3 removes the temporary file and changes nothing.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agentd.errors import MaintenanceError
from agentd.maintenance import files
from agentd.maintenance.backup import seal
from agentd.maintenance.checks import Contents
from agentd.maintenance.offline import daemon_stopped
from agentd.maintenance.sqlcipher import copy_snapshot, open_keyed, translated
from agentd.paths import Paths
from agentd.secrets import Secret
from agentd.store.anchor import move_anchor
from agentd.store.database import wal_path

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RestoreReport:
    backup: Path
    database: Path
    kept_aside: Path | None  # the database replaced, renamed; None if there was none
    contents: Contents

    def as_dict(self) -> dict[str, Any]:
        return {
            "backup": str(self.backup),
            "database": str(self.database),
            "kept_aside": str(self.kept_aside) if self.kept_aside else None,
            **self.contents.as_dict(),
        }


def restore(
    paths: Paths, db_key: Secret, backup: Path, backup_key: Secret | None, *, now: float
) -> RestoreReport:
    """Put `backup` (encrypted with `backup_key`, else with `db_key`) in place of the
    database; MaintenanceError, with nothing changed, when it cannot be trusted."""
    with daemon_stopped(paths, "restore"):
        files.check_source(backup, "backup")
        database = paths.database
        temp = files.create_temp(database)
        try:
            with translated("the restore", temp):
                _copy_in(backup, temp, db_key, backup_key)
                contents = seal(temp, db_key, f"backup {backup}", thorough=True)
            aside = _put_in_place(temp, database, now)
        except BaseException:
            files.remove_with_sidecars(temp)
            raise
        move_anchor(paths.state_dir, contents.head)
    logger.info(
        "restored %s (audit head seq %d); the replaced database is %s",
        backup,
        contents.head.seq,
        aside,
    )
    return RestoreReport(backup, database, aside, contents)


def _copy_in(backup: Path, temp: Path, db_key: Secret, backup_key: Secret | None) -> None:
    if backup_key is None or backup_key.reveal() == db_key.reveal():
        shutil.copyfile(backup, temp)  # temp exists 0600: copyfile keeps its mode
        return
    source = open_keyed(backup, backup_key, f"backup {backup}")
    try:
        copy_snapshot(source, temp, db_key, same_key=False)
    finally:
        source.close()


def _put_in_place(temp: Path, database: Path, now: float) -> Path | None:
    """Rename the old database (and its WAL) aside, then `temp` to `database`."""
    aside: Path | None = None
    if database.exists():
        aside = database.with_name(f"{database.name}.replaced-{_stamp(now)}")
        try:
            os.link(database, aside)  # the old file stays whole under its new name
        except FileExistsError:
            raise MaintenanceError(f"{aside} exists: try again in a moment") from None
        if wal_path(database).exists():
            os.rename(wal_path(database), wal_path(aside))
        with contextlib.suppress(FileNotFoundError):
            database.with_name(database.name + "-shm").unlink()  # rebuilt from the WAL
    os.replace(temp, database)
    files.fsync_dir(database.parent)
    return aside


def _stamp(now: float) -> str:
    millis = int(now * 1000) % 1000
    return time.strftime("%Y%m%dT%H%M%S", time.gmtime(now)) + f".{millis:03d}Z"
