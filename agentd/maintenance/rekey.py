"""Offline key rotation: the database re-encrypted under a new key, swapped in whole.

    1. the state directory locked (no daemon may run meanwhile)
    2. the database opened with the old key, its WAL checkpointed into it, checked
    3. exported under the new key (`sqlcipher_export`) into a temporary file
       beside it, which is checked under the new key and must hold the same
       rows and audit head
    4. the old -wal and -shm removed (they are the old key's), the new file
       renamed over agentd.db, the directory fsync'd: the old file's pages are
       freed, and nothing left in the state directory opens with the old key
    5. a key the daemon generated itself (<state dir>/db.key) replaced by the
       new one; a key file or credential is the operator's to replace

Backups made before stay encrypted with the old key: keep it for them, or make
new ones (docs/backup.md).
"""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agentd.errors import MaintenanceError
from agentd.maintenance import files
from agentd.maintenance.backup import seal
from agentd.maintenance.checks import Contents, check_contents
from agentd.maintenance.offline import daemon_stopped
from agentd.maintenance.sqlcipher import copy_snapshot, open_keyed, translated
from agentd.paths import Paths
from agentd.secrets import Secret

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RekeyReport:
    database: Path
    contents: Contents
    key_file: Path | None  # the daemon's own key file, now holding the new key
    old_key_files: tuple[Path, ...]  # databases kept aside by restores: still the old key's

    def as_dict(self) -> dict[str, Any]:
        return {
            "database": str(self.database),
            "key_file_replaced": str(self.key_file) if self.key_file else None,
            "old_key_files": [str(p) for p in self.old_key_files],
            **self.contents.as_dict(),
        }


def rekey(
    paths: Paths, old_key: Secret, new_key: Secret, *, own_key_file: Path | None
) -> RekeyReport:
    """Re-encrypt the database under `new_key`. `own_key_file`: the key file the daemon
    generated and reads, to be replaced too (None: the operator installs the new key)."""
    if new_key.reveal() == old_key.reveal():
        raise MaintenanceError("the new key is the key in use: nothing to rekey")
    database = paths.database
    with daemon_stopped(paths, "rekey"):
        if not database.exists():
            raise MaintenanceError(f"{database} does not exist: nothing to rekey")
        temp = files.create_temp(database)
        try:
            with translated("the rekey", temp):
                before = _export(database, old_key, temp, new_key)
                after = seal(temp, new_key, f"the re-encrypted copy {temp}", thorough=True)
            if after != before:
                raise MaintenanceError(f"the re-encrypted copy differs: {after} != {before}")
            _swap(temp, database)
        except BaseException:
            files.remove_with_sidecars(temp)
            raise
        if own_key_file is not None:
            files.replace_private_file(own_key_file, new_key.reveal() + "\n")
    logger.info("rekeyed %s (audit head seq %d)", database, after.head.seq)
    aside = tuple(sorted(database.parent.glob(f"{database.name}.replaced-*")))
    return RekeyReport(database, after, own_key_file, aside)


def _export(database: Path, old_key: Secret, temp: Path, new_key: Secret) -> Contents:
    what = f"the database {database}"
    source = open_keyed(database, old_key, what)
    try:
        source.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        before = check_contents(source, what, thorough=True)
        copy_snapshot(source, temp, new_key, same_key=False)
    finally:
        source.close()
    return before


def _swap(temp: Path, database: Path) -> None:
    # Checkpointed and closed, the WAL holds nothing the export lacks; left beside the
    # new file it would be the old key's, and SQLite would try to replay it.
    for suffix in ("-wal", "-shm"):
        with contextlib.suppress(FileNotFoundError):
            database.with_name(database.name + suffix).unlink()
    os.replace(temp, database)
    files.fsync_dir(database.parent)
