"""Keyed connections to SQLCipher files other than the daemon's own connection, and
consistent copies of a database while it is written.

A copy reads one snapshot: the source connection holds a read transaction for
the whole copy, so in WAL mode the daemon's writers go on, and the copy sees
none of what they commit meanwhile (the backup API restarts from the first
page whenever another connection writes a source it reads outside a
transaction; inside one it never has to). Under the same key the copy is
SQLite's backup API, stepped a few pages at a time; under another key it is
SQLCipher's `ATTACH ... KEY` + `sqlcipher_export()`, the supported way to
re-encrypt (https://www.zetetic.net/sqlcipher/sqlcipher-api/#sqlcipher_export).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

import sqlcipher3

from agentd.errors import DiskFull, MaintenanceError
from agentd.secrets import Secret
from agentd.store.database import SQLITE_FULL, Connection

STEP_PAGES: Final = 1024  # 4 MiB a step: the GIL is let go during each step
BUSY_TIMEOUT_MS: Final = 5000
_EXPORT_SCHEMA: Final = "backup_target"
_FULL_TEXT: Final = "database or disk is full"  # sqlite3_errstr(SQLITE_FULL)


class Stopped(Exception):
    """The copy was told to stop (the request was cancelled); its file is removed."""


def open_keyed(path: Path, key: Secret, what: str) -> Connection:
    """A connection to `path` under `key`; MaintenanceError when the key does not open it."""
    conn = sqlcipher3.connect(str(path), isolation_level=None, check_same_thread=False)
    try:
        conn.execute("PRAGMA cipher_log_level = NONE")
        conn.execute(f"PRAGMA key = \"x'{key.reveal()}'\"")
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except sqlcipher3.DatabaseError:
        conn.close()
        raise MaintenanceError(
            f"the key does not open {what}: it was made with another key, "
            "or it is not an agentd database, or its first page is damaged"
        ) from None
    except BaseException:
        conn.close()
        raise
    return conn


@contextlib.contextmanager
def translated(what: str, path: Path) -> Iterator[None]:
    """sqlcipher3 errors and a full disk while writing `path`, as our own errors."""
    try:
        yield
    except sqlcipher3.Error as exc:
        if _is_full(exc):
            raise _disk_full(what, path) from exc
        raise MaintenanceError(f"{what} failed: {exc.__class__.__name__}: {exc}") from exc
    except OSError as exc:
        if exc.errno == 28:  # ENOSPC, from our own fsync or copy
            raise _disk_full(what, path) from exc
        raise MaintenanceError(f"{what} failed: {path}: {exc.strerror}") from exc


def _is_full(exc: sqlcipher3.Error) -> bool:
    # The backup API's errors carry no sqlite_errorcode, only SQLite's text for it.
    code = getattr(exc, "sqlite_errorcode", None)
    return code == SQLITE_FULL or (code is None and str(exc) == _FULL_TEXT)


def _disk_full(what: str, path: Path) -> DiskFull:
    return DiskFull(
        f"{what}: the disk holding {path.parent} is full; the partial file was removed "
        "and the database is untouched"
    )


def copy_snapshot(
    source: Connection,
    target: Path,
    key: Secret,
    *,
    same_key: bool,
    stop: threading.Event | None = None,
    pages: int = STEP_PAGES,
) -> None:
    """Copy one snapshot of `source` into the new, empty file `target`, encrypted with
    `key` (`same_key`: the key `source` was opened with, so the backup API can copy
    the encrypted pages as they are)."""
    if not same_key:
        _export(source, target, key)
        return
    destination = open_keyed(target, key, f"the new copy {target}")
    try:
        # Not synchronous: the finished copy is checked, then fsync'd once (files.py).
        destination.execute("PRAGMA synchronous = OFF")
        with _snapshot(source):
            source.backup(destination, pages=pages, progress=_progress(stop))
    finally:
        destination.close()


def _export(source: Connection, target: Path, key: Secret) -> None:
    source.execute(
        f"ATTACH DATABASE ? AS {_EXPORT_SCHEMA} KEY ?", (str(target), f"x'{key.reveal()}'")
    )
    try:
        source.execute(f"PRAGMA {_EXPORT_SCHEMA}.synchronous = OFF")
        with _snapshot(source):  # every table from the same snapshot
            source.execute("SELECT sqlcipher_export(?)", (_EXPORT_SCHEMA,)).fetchall()
    finally:
        source.execute(f"DETACH DATABASE {_EXPORT_SCHEMA}")


@contextlib.contextmanager
def _snapshot(conn: Connection) -> Iterator[None]:
    conn.execute("BEGIN")
    try:
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()  # the snapshot starts
        yield
    except BaseException:
        with contextlib.suppress(sqlcipher3.Error):
            conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def _progress(stop: threading.Event | None) -> Any:
    def check(status: int, remaining: int, total: int) -> None:
        if stop is not None and stop.is_set():
            raise Stopped("the copy was cancelled")

    return check
