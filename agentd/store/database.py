"""The encrypted database: SQLCipher 4 with a raw 256-bit key, on its own thread.

All SQL runs on one dedicated thread (never on the event loop); callers await
`Database.run(fn, *args)` where `fn(conn, *args)` does the work. sqlcipher3
errors are translated to StoreError here, where they enter.

Data model (see migrations.py for the exact schema)::

    sessions  id, owner_uid, name (unique per owner), created_at, last_used_at, system_prompt, turns
    messages  id, session_id -> sessions, request_id, role, content, status, model, tokens...
    audit     seq, ts, request_id, peer, command, outcome, ..., prev_hash, hash (a hash chain)
    state     key -> JSON value (agent id, each uid's current session, lifetime counters)
    schema_migrations  name, applied_at
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Final, ParamSpec, TypeVar

import sqlcipher3

from agentd.errors import ConfigError, StoreError, WrongKeyError
from agentd.secrets import Secret

logger = logging.getLogger(__name__)

P = ParamSpec("P")
T = TypeVar("T")
Connection = Any  # sqlcipher3.Connection has no type stubs
SQLITE_PLAINTEXT_HEADER: Final = b"SQLite format 3\x00"

# sqlcipher3 binds str, int, float and bytes directly, but sends every None
# through its adapter lookup, which builds and discards two AttributeErrors
# (~2.5 us a None, under the GIL). Each audit row binds three Nones, which was
# half of the row's insert cost. An identity adapter for None makes that
# lookup find an answer at once; the value bound is still NULL.
sqlcipher3.register_adapter(type(None), lambda value: value)


class Database:
    def __init__(self, path: Path, key: Secret, *, busy_timeout_ms: int = 5000) -> None:
        self.path = path
        self._key = key
        self._busy_timeout_ms = busy_timeout_ms
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._conn: Connection | None = None

    async def open(self) -> None:
        self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="store")
        try:
            await self._submit(self._open)
        except BaseException:
            self._executor.shutdown(wait=True)
            self._executor = None
            raise

    async def close(self) -> None:
        if self._executor is None:
            return
        await self._submit(self._close)
        self._executor.shutdown(wait=True)
        self._executor = None

    def close_nowait(self) -> None:
        """Close from outside the loop (forced exit); waits for the running statement."""
        if self._executor is not None:
            self._executor.submit(self._close).result()
            self._executor.shutdown(wait=True)
            self._executor = None

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run fn(conn, *args) on the store thread; sqlcipher3 errors become StoreError."""
        return await self._submit(self._call, fn, *args)

    async def _submit(self, fn: Callable[..., T], *args: Any) -> T:
        if self._executor is None:
            raise StoreError("the store is closed")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, lambda: fn(*args))

    def _call(self, fn: Callable[..., T], *args: Any) -> T:
        if self._conn is None:
            raise StoreError("the store is closed")
        try:
            return fn(self._conn, *args)
        except sqlcipher3.Error as exc:
            raise StoreError(f"{exc.__class__.__name__}: {exc}") from exc

    # -- on the store thread ---------------------------------------------------

    def _open(self) -> None:
        refuse_plaintext(self.path)
        if not self.path.exists():
            # Created 0600 before SQLite sees it; the -wal/-shm files inherit the mode.
            os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        conn = sqlcipher3.connect(str(self.path), isolation_level=None, check_same_thread=False)
        try:
            self._configure(conn)
        except BaseException:
            conn.close()
            raise
        self._conn = conn

    def _configure(self, conn: Connection) -> None:
        conn.execute("PRAGMA cipher_log_level = NONE")
        conn.execute(f"PRAGMA key = \"x'{self._key.reveal()}'\"")
        try:
            conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
        except sqlcipher3.DatabaseError:
            raise WrongKeyError(f"the database key does not open {self.path}") from None
        cipher = conn.execute("PRAGMA cipher_version").fetchone()
        if not cipher or not cipher[0]:
            raise ConfigError(
                "sqlcipher3 is not linked against SQLCipher: refusing a plaintext store"
            )
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = FULL")
        conn.execute("PRAGMA foreign_keys = ON")
        conn.execute("PRAGMA temp_store = MEMORY")  # no temp files on disk
        conn.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout_ms)}")

    def _close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(sqlcipher3.Error):
                self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            self._conn.close()
            self._conn = None


def refuse_plaintext(path: Path) -> None:
    """An existing file with SQLite's plaintext header is never opened as our store."""
    try:
        with path.open("rb") as handle:
            header = handle.read(len(SQLITE_PLAINTEXT_HEADER))
    except FileNotFoundError:
        return
    except OSError as exc:
        raise StoreError(f"cannot read {path}: {exc.strerror}") from exc
    if header == SQLITE_PLAINTEXT_HEADER:
        raise ConfigError(
            f"{path} is a plaintext SQLite database; agentd only opens encrypted ones"
        )


@contextlib.contextmanager
def transaction(conn: Connection) -> Iterator[Connection]:
    """BEGIN IMMEDIATE ... COMMIT, rolled back on any error."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        with contextlib.suppress(sqlcipher3.Error):
            conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
