"""The encrypted database: SQLCipher 4 with a raw 256-bit key, on its own thread.

All SQL runs on one dedicated thread (never on the event loop); callers await
`Database.run(fn, *args)` where `fn(conn, *args)` does the work. sqlcipher3
errors are translated to StoreError here, where they enter (a full disk to
DiskFull).

Writes that acknowledge something (a chat's turns, an audit batch) go through
`Database.run_checked`: it also checks that the database and WAL files on
disk are still the ones opened (st_dev, st_ino recorded at open). SQLite
keeps writing to a file deleted or replaced under it, and those writes are
gone at the next start; once that is seen, every checked write fails with
StoreUnavailable until agentd is restarted.

Writes many callers make at once (chat turns, budget charges) go through
`Database.write`, a group commit: jobs queued while a batch is being committed
run together in the next one, in one transaction (one fsync), each inside its
own SAVEPOINT so a failing job rolls back alone. Each caller's future is
resolved only after that COMMIT and the file check: acknowledged still means
committed. `transaction()` inside a job joins the batch's transaction.

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
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Final, NamedTuple, ParamSpec, TypeVar

import sqlcipher3

from agentd.errors import ConfigError, DiskFull, StoreError, StoreUnavailable, WrongKeyError
from agentd.secrets import Secret
from agentd.store.recent import RecentTurns

logger = logging.getLogger(__name__)

P = ParamSpec("P")
T = TypeVar("T")
Connection = Any  # sqlcipher3.Connection has no type stubs
SQLITE_PLAINTEXT_HEADER: Final = b"SQLite format 3\x00"
SQLITE_FULL: Final = 13
FileId = tuple[int, int]  # (st_dev, st_ino)
READER_NICE: Final = 19

# sqlcipher3 binds str, int, float and bytes directly, but sends every None
# through its adapter lookup, which builds and discards two AttributeErrors
# (~2.5 us a None, under the GIL). Each audit row binds three Nones, which was
# half of the row's insert cost. An identity adapter for None makes that
# lookup find an answer at once; the value bound is still NULL.
sqlcipher3.register_adapter(type(None), lambda value: value)


class Database:
    def __init__(
        self,
        path: Path,
        key: Secret,
        *,
        busy_timeout_ms: int = 5000,
        on_lost: Callable[[str], None] | None = None,
    ) -> None:
        self.path = path
        self._key = key
        self._busy_timeout_ms = busy_timeout_ms
        self._on_lost = on_lost  # called on the loop when the files are found gone
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._conn: Connection | None = None
        self._files: dict[Path, FileId] = {}  # what we opened, by path
        self._lost: str | None = None  # why checked writes are refused, once they are
        # Recent exchanges per session for chat contexts (a read cache of the
        # messages table): whoever changes a session's messages forgets it there.
        self.recent = RecentTurns()
        self._queued: list[_WriteJob] = []  # write() jobs for the next batch (loop side)
        self._committer: asyncio.Task[None] | None = None

    @property
    def key(self) -> Secret:
        """The key the store was opened with (an online backup opens its own connection)."""
        return self._key

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
        if self._committer is not None:
            # What was queued is committed (write()'s promise), then the store closes.
            await asyncio.shield(self._committer)
        await self._submit(self._close)
        self._executor.shutdown(wait=True)
        self._executor = None

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run fn(conn, *args) on the store thread; sqlcipher3 errors become StoreError."""
        return await self._submit(self._call, fn, *args)

    async def run_checked(self, fn: Callable[..., T], *args: Any) -> T:
        """`run`, then a check of the files: StoreUnavailable if the database or its
        WAL on disk are no longer the files opened, so what fn wrote would not
        survive a restart (two stat(2) calls). Once that is seen, fn is not run."""
        try:
            return await self._submit(self._call_checked, fn, *args)
        except StoreUnavailable as exc:
            if self._on_lost is not None:
                self._on_lost(exc.message)
            raise

    async def run_reader(self, fn: Callable[..., T], *args: Any) -> T:
        """Run fn(conn, *args) on a thread of its own, with a read-only connection of its
        own: a long read (a full audit verify) that must not hold up the store thread.
        WAL lets it read a snapshot while the store thread writes; errors as in `run`.
        The thread runs at the lowest CPU priority (nice 19): on a busy machine the
        event loop and the store thread get the CPU first, and the read takes longer.
        A new thread each time, not a pool's, since a thread's nice cannot go back."""
        if self._executor is None:
            raise StoreError("the store is closed")
        reader = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="store-reader")
        try:
            return await asyncio.wrap_future(reader.submit(self._read, fn, *args))
        finally:
            reader.shutdown(wait=False)

    def _read(self, fn: Callable[..., T], *args: Any) -> T:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), READER_NICE)
        try:
            conn = sqlcipher3.connect(str(self.path), isolation_level=None, check_same_thread=False)
        except sqlcipher3.Error as exc:
            raise StoreError(f"{exc.__class__.__name__}: {exc}") from exc
        try:
            self._configure(conn, reader=True)
            return self._translated(conn, fn, *args)
        finally:
            conn.close()

    async def write(self, fn: Callable[..., T], *args: Any) -> T:
        """Run fn(conn, *args) in the next group commit; returns once it is committed.

        Checked as `run_checked` is. fn must not commit on its own: `transaction()`
        inside it joins the batch. A cancelled caller does not cancel its job:
        what was queued is committed (the caller just never hears of it).
        """
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queued.append(_WriteJob(fn, args, future))
        if self._committer is None or self._committer.done():
            self._committer = asyncio.create_task(self._commit_queued())
        return await future  # type: ignore[no-any-return]

    async def _commit_queued(self) -> None:
        """Commit queued jobs, one batch at a time, until none is left."""
        while self._queued:
            batch, self._queued = self._queued, []
            try:
                outcomes = await self._submit(self._commit_batch, [(j.fn, j.args) for j in batch])
            except BaseException as exc:  # the batch as a whole failed: so did every job
                for job in batch:
                    _settle(job.future, exc, None)
                if isinstance(exc, StoreUnavailable) and self._on_lost is not None:
                    self._on_lost(exc.message)
                if not isinstance(exc, Exception):
                    raise
                continue
            for job, (error, value) in zip(batch, outcomes, strict=True):
                _settle(job.future, error, value)

    async def _submit(self, fn: Callable[..., T], *args: Any) -> T:
        if self._executor is None:
            raise StoreError("the store is closed")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, lambda: fn(*args))

    def _call(self, fn: Callable[..., T], *args: Any) -> T:
        if self._conn is None:
            raise StoreError("the store is closed")
        return self._translated(self._conn, fn, *args)

    def _translated(self, conn: Connection, fn: Callable[..., T], *args: Any) -> T:
        try:
            return fn(conn, *args)
        except sqlcipher3.Error as exc:
            raise self._store_error(exc) from exc

    def _store_error(self, exc: sqlcipher3.Error) -> StoreError:
        if getattr(exc, "sqlite_errorcode", None) == SQLITE_FULL:
            return DiskFull(
                f"the disk holding the database is full ({self.path.parent}): "
                "free some space; agentd recovers on its own"
            )
        return StoreError(f"{exc.__class__.__name__}: {exc}")

    def _commit_batch(self, jobs: list[tuple[Callable[..., Any], tuple[Any, ...]]]) -> list[_Outcome]:
        """One transaction for `jobs`, each in its own savepoint; then the file check."""
        if self._lost is not None:
            raise StoreUnavailable(self._lost)
        outcomes = self._call(_run_jobs, jobs, self._store_error)
        self._check_files()
        return outcomes

    def _call_checked(self, fn: Callable[..., T], *args: Any) -> T:
        if self._lost is not None:
            raise StoreUnavailable(self._lost)
        result = self._call(fn, *args)
        self._check_files()
        return result

    def _check_files(self) -> None:
        problem = _changed_file(self._files)
        if problem is None:
            return
        self._lost = (
            f"{problem} while agentd runs: writes since then are not in the database; "
            "refusing to acknowledge more. Restart agentd (it checks the audit anchor)"
        )
        logger.critical("store lost: %s", self._lost, extra={"database": str(self.path)})
        raise StoreUnavailable(self._lost)

    # -- on the store thread ---------------------------------------------------

    def _open(self) -> None:
        refuse_plaintext(self.path)
        if not self.path.exists():
            create_private_file(self.path)
        conn = sqlcipher3.connect(str(self.path), isolation_level=None, check_same_thread=False)
        try:
            self._configure(conn)
            conn.execute("SELECT count(*) FROM sqlite_master").fetchone()  # opens the WAL
            self._files = _file_ids(self.path, wal_path(self.path))
        except BaseException:
            conn.close()
            raise
        self._conn = conn

    def _configure(self, conn: Connection, *, reader: bool = False) -> None:
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
        if reader:
            conn.execute("PRAGMA query_only = ON")  # the file is already in WAL mode
            conn.execute("PRAGMA temp_store = MEMORY")
            conn.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout_ms)}")
            return
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = FULL")
        conn.execute("PRAGMA foreign_keys = ON")
        # Deleted rows' text is overwritten, not left in free space (store/retention.py).
        conn.execute("PRAGMA secure_delete = ON")
        conn.execute("PRAGMA temp_store = MEMORY")  # no temp files on disk
        conn.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout_ms)}")

    def _close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(sqlcipher3.Error):
                self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            self._conn.close()
            self._conn = None


_Outcome = tuple[BaseException | None, Any]  # (the job's error, or None; its value)


class _WriteJob(NamedTuple):
    fn: Callable[..., Any]
    args: tuple[Any, ...]
    future: asyncio.Future[Any]


def _run_jobs(
    conn: Connection,
    jobs: list[tuple[Callable[..., Any], tuple[Any, ...]]],
    translated: Callable[[sqlcipher3.Error], StoreError],
) -> list[_Outcome]:
    """Run each job in a savepoint of one transaction; a failed job is rolled back
    alone and reported as its outcome. An error of the COMMIT fails them all."""
    outcomes: list[_Outcome] = []
    with transaction(conn):
        for fn, args in jobs:
            conn.execute("SAVEPOINT job")
            try:
                value = fn(conn, *args)
            except Exception as exc:  # this job's failure is its caller's, not the batch's
                conn.execute("ROLLBACK TO job")
                conn.execute("RELEASE job")
                error = translated(exc) if isinstance(exc, sqlcipher3.Error) else exc
                outcomes.append((error, None))
                continue
            conn.execute("RELEASE job")
            outcomes.append((None, value))
    return outcomes


def _settle(future: asyncio.Future[Any], error: BaseException | None, value: Any) -> None:
    """Resolve a write's future unless its caller is gone (cancelled)."""
    if future.done():
        return
    if isinstance(error, asyncio.CancelledError):  # the committer was cancelled (shutdown)
        future.cancel()
    elif error is not None:
        future.set_exception(error)
    else:
        future.set_result(value)


def wal_path(path: Path) -> Path:
    return path.with_name(path.name + "-wal")


def _file_ids(*paths: Path) -> dict[Path, FileId]:
    """The identity of each file (SQLite has created the WAL once journal_mode is WAL)."""
    ids = {}
    for path in paths:
        try:
            info = os.stat(path)
        except OSError as exc:
            raise StoreError(f"cannot stat {path}: {exc.strerror}") from exc
        ids[path] = (info.st_dev, info.st_ino)
    return ids


def _changed_file(files: dict[Path, FileId]) -> str | None:
    """How the first of `files` that is no longer the file opened changed, or None."""
    for path, opened in files.items():
        try:
            info = os.stat(path)
        except FileNotFoundError:
            return f"{path} was deleted"
        except OSError as exc:
            return f"{path} cannot be checked ({exc.strerror})"
        if (info.st_dev, info.st_ino) != opened:
            return f"{path} was replaced by another file"
    return None


def create_private_file(path: Path) -> None:
    """Create the database file 0600 before SQLite sees it, whatever the umask: SQLite
    gives the -wal and -shm files it creates the main file's mode."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        os.fchmod(fd, 0o600)  # the umask filtered the mode given to open()
    finally:
        os.close(fd)


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
    """BEGIN IMMEDIATE ... COMMIT, rolled back on any error.

    Inside a transaction already (a `Database.write` batch), it joins it: the
    batch commits, and rolls back the job's savepoint if the job raises."""
    if conn.in_transaction:
        yield conn
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        with contextlib.suppress(sqlcipher3.Error):
            conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
