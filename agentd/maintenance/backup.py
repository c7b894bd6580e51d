"""Online backups: a checked, encrypted copy of the store, made while chats go on.

    make_backup (a worker thread, never the store's or the loop's)
      1. the target: PATH, or <state dir>/backups/agentd-<UTC time>.db; its
         directory trusted (ours or root's, not writable by others), an
         existing file refused unless `force`
      2. a temporary file beside it (0600, O_EXCL)
      3. one snapshot of the database copied in (sqlcipher.copy_snapshot) over a
         connection of our own: the store thread and its writers go on; at the
         same time, on a second thread and connection, the audit chain verified
         on a snapshot taken just before (the copy lets go of the GIL while it
         copies pages, so the two overlap)
      4. the copy made one self-contained file (journal_mode DELETE), checked
         (checks.check_contents: every page authenticated; it holds the row the
         chain was verified to, and the rows after it verify) and fsync'd
      5. renamed into place, the directory fsync'd; then, with `keep`, the
         oldest backups of that directory beyond `keep` removed

Any failure removes the temporary file (and its journals) and leaves the
database and the existing backups untouched.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from agentd.audit.chain import GENESIS, Anchor
from agentd.maintenance import files
from agentd.maintenance.checks import Contents, check_contents, verify_chain
from agentd.maintenance.sqlcipher import copy_snapshot, open_keyed, translated
from agentd.paths import ensure_private_dir
from agentd.secrets import Secret

logger = logging.getLogger(__name__)

BACKUP_DIR: Final = "backups"


@dataclass(frozen=True)
class BackupRequest:
    target: Path | None = None  # a file, or a directory for a timestamped name; None:
    # a timestamped name in <state dir>/backups
    key: Secret | None = None  # None: the database's own key
    force: bool = False  # replace an existing file at `target`
    keep: int | None = None  # then keep only the newest `keep` backups of that directory


@dataclass(frozen=True)
class BackupReport:
    path: Path
    size_bytes: int
    contents: Contents
    own_key: bool  # encrypted with the database's key (else with the one given)
    pruned: tuple[Path, ...]
    seconds: float

    def as_dict(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "size_bytes": self.size_bytes,
            **self.contents.as_dict(),
            "key": "database" if self.own_key else "given",
            "pruned": [str(p) for p in self.pruned],
            "seconds": round(self.seconds, 3),
        }


async def run_backup(
    database: Path, db_key: Secret, state_dir: Path, request: BackupRequest
) -> BackupReport:
    """`make_backup` on a worker thread; a cancelled request stops the copy at its next
    step (its partial file removed) before the cancellation goes on."""
    stop = threading.Event()
    work = functools.partial(
        make_backup, database, db_key, state_dir, request, now=time.time(), stop=stop
    )
    future = asyncio.get_running_loop().run_in_executor(None, work)
    future.add_done_callback(_retrieve)  # a stopped copy's error is expected, not news
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        stop.set()
        raise


def _retrieve(future: asyncio.Future[BackupReport]) -> None:
    if not future.cancelled():
        future.exception()


def make_backup(
    database: Path,
    db_key: Secret,
    state_dir: Path,
    request: BackupRequest,
    *,
    now: float,
    stop: threading.Event | None = None,
) -> BackupReport:
    started = time.monotonic()
    target = _target(state_dir, request.target, now)
    files.check_directory(target.parent)
    files.check_target(target, force=request.force)
    key = request.key or db_key
    own_key = request.key is None or request.key.reveal() == db_key.reveal()
    with translated("the backup", target):
        temp = files.create_temp(target)
    try:
        with translated("the backup", temp):
            verified = _copy(database, db_key, temp, key, own_key, stop)
            contents = seal(temp, key, f"the new backup {temp}", verified=verified)
        files.publish(temp, target, replace=request.force)
    except BaseException:
        files.remove_with_sidecars(temp)
        raise
    with translated(f"the backup {target} was written, but pruning older ones", target):
        pruned = tuple(files.prune(target.parent, request.keep)) if request.keep else ()
    report = BackupReport(
        target, target.stat().st_size, contents, own_key, pruned, time.monotonic() - started
    )
    logger.info(
        "backup written: %s (%d bytes, audit head seq %d, %.2fs)",
        target,
        report.size_bytes,
        contents.head.seq,
        report.seconds,
        extra={"backup_path": str(target), "audit_seq": contents.head.seq},
    )
    return report


def _target(state_dir: Path, given: Path | None, now: float) -> Path:
    """`given` names the file, or a directory to put a timestamped one in; None: the
    state directory's backups/ (made 0700 if missing)."""
    if given is None:
        given = state_dir / BACKUP_DIR
        ensure_private_dir(given)
    if given.is_dir() and not given.is_symlink():
        return given / files.backup_name(now)
    return given


def _copy(
    database: Path,
    db_key: Secret,
    temp: Path,
    key: Secret,
    own_key: bool,
    stop: threading.Event | None,
) -> Anchor:
    """Copy a snapshot into `temp` while the chain of an earlier snapshot is verified;
    returns the head verified."""
    what = f"the database {database}"
    source = open_keyed(database, db_key, what)
    chain = open_keyed(database, db_key, what)
    try:
        with concurrent.futures.ThreadPoolExecutor(1, "backup-chain") as pool:
            chain.execute("BEGIN")
            chain.execute("SELECT count(*) FROM sqlite_master").fetchone()  # snapshot now,
            # before the copy's: the copy then holds every row verified, and maybe more
            verified = pool.submit(verify_chain, chain, what)
            try:
                copy_snapshot(source, temp, key, same_key=own_key, stop=stop)
            finally:
                head = verified.result()
                chain.execute("ROLLBACK")
        return head
    finally:
        chain.close()
        source.close()


def seal(
    path: Path, key: Secret, what: str, *, thorough: bool = False, verified: Anchor = GENESIS
) -> Contents:
    """Make the copy at `path` one self-contained file (no -wal beside it), check it
    under `key`, and fsync it."""
    conn = open_keyed(path, key, what)
    try:
        conn.execute("PRAGMA journal_mode = DELETE")  # a copy of a WAL database says WAL
        contents = check_contents(conn, what, thorough=thorough, verified=verified)
    finally:
        conn.close()
    files.fsync_file(path)
    return contents
