"""Logging: JSON lines (python-json-logger), a ring of recent records, a rotating file.

Configured once at start-up by `setup_logging`. Records carry the request's
context (request_id, session_id, peer_uid) from contextvars, so one request_id
runs through every line a request produces. Records never carry prompt or
answer text, nor secrets: callers log ids, sizes and timings.

Sinks:
    stderr            JSON lines (or the native journal protocol, see journal.py)
    <state>/agentd.log JSON lines, size-capped and rotated, mode 0600
    LogRing           the last N records in memory, for `agentctl logs [--follow]`
"""

from __future__ import annotations

import asyncio
import collections
import contextvars
import json
import logging
import logging.handlers
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, NamedTuple

from pythonjsonlogger.json import JsonFormatter

from agentd.errors import ConfigError

request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "request_id", default=None
)
session_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "session_id", default=None
)
peer_uid_var: contextvars.ContextVar[int | None] = contextvars.ContextVar("peer_uid", default=None)

FORMAT: Final = "%(asctime)s %(levelname)s %(name)s %(message)s"
RENAMES: Final = {"asctime": "time", "levelname": "level", "name": "logger"}


class ContextFilter(logging.Filter):
    """Copies the request context onto each record, where formatters find it."""

    def filter(self, record: logging.LogRecord) -> bool:
        for name, var in (
            ("request_id", request_id_var),
            ("session_id", session_id_var),
            ("peer_uid", peer_uid_var),
        ):
            if not hasattr(record, name):
                value = var.get()
                if value is not None:
                    setattr(record, name, value)
        return True


def json_formatter() -> logging.Formatter:
    return JsonFormatter(
        FORMAT, rename_fields=RENAMES, timestamp=False, datefmt="%Y-%m-%dT%H:%M:%S%z"
    )


# A NamedTuple, not a frozen dataclass: cheaper to define on the path to READY
# (see agentd/providers/base.py).
class LogEntry(NamedTuple):
    created: float
    levelno: int
    request_id: str | None
    line: str  # the JSON line, as written to the file

    def as_dict(self) -> dict[str, Any]:
        parsed: dict[str, Any] = json.loads(self.line)
        return parsed


class LogRing(logging.Handler):
    """The last N records, plus live subscribers for `logs --follow`."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self._entries: collections.deque[LogEntry] = collections.deque(maxlen=size)
        self._subscribers: set[tuple[asyncio.AbstractEventLoop, asyncio.Queue[LogEntry]]] = set()
        self._guard = threading.Lock()  # the store thread logs too

    def emit(self, record: logging.LogRecord) -> None:
        try:
            entry = LogEntry(
                record.created,
                record.levelno,
                getattr(record, "request_id", None),
                self.format(record),
            )
        except Exception:  # logging must never raise into the caller
            self.handleError(record)
            return
        with self._guard:
            self._entries.append(entry)
            subscribers = list(self._subscribers)
        for loop, queue in subscribers:
            loop.call_soon_threadsafe(_offer, queue, entry)

    def entries(self) -> list[LogEntry]:
        with self._guard:
            return list(self._entries)

    def subscribe(self, maxsize: int = 1000) -> asyncio.Queue[LogEntry]:
        queue: asyncio.Queue[LogEntry] = asyncio.Queue(maxsize)
        with self._guard:
            self._subscribers.add((asyncio.get_running_loop(), queue))
        return queue

    def unsubscribe(self, queue: asyncio.Queue[LogEntry]) -> None:
        with self._guard:
            self._subscribers = {s for s in self._subscribers if s[1] is not queue}


def _offer(queue: asyncio.Queue[LogEntry], entry: LogEntry) -> None:
    # A follower that cannot keep up loses records rather than growing memory.
    if not queue.full():
        queue.put_nowait(entry)


class PrivateRotatingFileHandler(logging.handlers.RotatingFileHandler):
    """A rotating file created 0600: logs are for the operator only."""

    def _open(self) -> Any:
        # O_NOFOLLOW: a symlink planted at the log path is refused, never appended through.
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(self.baseFilename, flags, 0o600)
        try:
            os.fchmod(fd, 0o600)  # exactly 0600, whatever the umask
        except OSError:
            os.close(fd)
            raise
        return os.fdopen(fd, self.mode.replace("w", "a"), encoding=self.encoding)


@dataclass
class LogSinks:
    ring: LogRing
    file: logging.Handler | None = None
    stderr: logging.Handler | None = None


def setup_logging(level: str, ring_size: int, *, journal: bool) -> LogSinks:
    """Configure the root logger once: stderr (JSON or journal) and the ring."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    root.setLevel(level.upper())
    for chatty in ("httpx2", "httpcore2", "httpx", "httpcore"):
        # One "HTTP Request: POST ..." line per provider call is noise; our own records
        # already carry model, latency and outcome.
        logging.getLogger(chatty).setLevel(logging.WARNING)
    context = ContextFilter()
    ring = LogRing(ring_size)
    stderr: logging.Handler
    if journal:
        from agentd.telemetry.journal import JournalHandler

        stderr = JournalHandler()
    else:
        stderr = logging.StreamHandler()
        stderr.setFormatter(json_formatter())
    for handler in (ring, stderr):
        if handler is ring:
            handler.setFormatter(json_formatter())
        handler.addFilter(context)
        root.addHandler(handler)
    return LogSinks(ring=ring, stderr=stderr)


def add_log_file(sinks: LogSinks, path: Path, max_bytes: int, backups: int) -> None:
    try:
        handler = PrivateRotatingFileHandler(
            path, maxBytes=max_bytes, backupCount=backups, encoding="utf-8"
        )
    except OSError as exc:  # ELOOP: a symlink at the path
        raise ConfigError(f"cannot open log file {path}: {exc.strerror}") from None
    handler.setFormatter(json_formatter())
    handler.addFilter(ContextFilter())
    logging.getLogger().addHandler(handler)
    sinks.file = handler


def detach_stderr(sinks: LogSinks) -> None:
    """After a detached start: stop writing to a stderr nobody reads."""
    if sinks.stderr is not None:
        logging.getLogger().removeHandler(sinks.stderr)
        sinks.stderr = None
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    os.close(devnull)


def select(
    entries: list[LogEntry],
    *,
    min_level: int = 0,
    since: float | None = None,
    request_id: str | None = None,
) -> Iterator[LogEntry]:
    for entry in entries:
        if matches(entry, min_level=min_level, since=since, request_id=request_id):
            yield entry


def matches(
    entry: LogEntry, *, min_level: int, since: float | None, request_id: str | None
) -> bool:
    return (
        entry.levelno >= min_level
        and (since is None or entry.created >= since)
        and (request_id is None or entry.request_id == request_id)
    )
