"""`import`: an export (JSON lines) brought back as new sessions of the caller.

The file crosses the socket in chunks (no frame may exceed the frame limit),
so an import is staged across requests, validated line by line as it comes,
and written in one transaction at the end: a bad line is an error naming it,
and nothing of that import is written.

    import_begin ──▶ import_data (n times) (each line parsed and checked) ──▶ import_commit
                          └── a bad line: BadRequest "line N: ...", staging dropped

The file's shape (docs/data.md)::

    line 1   {"type": "agentd-export", "version": 1, ...}
    then     {"type": "session", "id": ..., "name": ..., "created_at": ..., ...}
             {"type": "message", "session": <an id above>, "role": ..., "content": ..., ...}

Staged imports are held in memory: at most `max_bytes` each, one open per
uid, MAX_OPEN in all, and forgotten after IDLE_S without a request.
"""

from __future__ import annotations

import json
import math
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

from agentd.chat import MAX_SESSION_NAME, validate_session_name
from agentd.errors import BadRequest, Busy, NotFound, RequestError
from agentd.protocol import MAX_EPOCH_S
from agentd.store.database import Connection, transaction
from agentd.store.sessions import name_taken, new_session_id

FORMAT: Final = "agentd-export"
VERSION: Final = 1
MAX_IMPORT_BYTES: Final = 64 * 1024 * 1024
MAX_OPEN: Final = 8
IDLE_S: Final = 600.0
MAX_REQUEST_ID_CHARS: Final = 100
MAX_MODEL_CHARS: Final = 200
ROLES: Final = frozenset({"user", "model"})
STATUSES: Final = frozenset(
    {"answered", "interrupted", "complete", "incomplete", "truncated", "empty", "blocked",
     "degraded"}
)  # fmt: skip


@dataclass
class ImportedSession:
    ref: str  # its id in the file
    name: str | None
    created_at: float
    last_used_at: float
    system_prompt: str | None
    messages: list[tuple[Any, ...]] = field(default_factory=list)  # rows of messages


class Parser:
    """Turns the file's bytes, in any chunks, into checked sessions and messages."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.size = 0
        self.line = 0
        self.sessions: dict[str, ImportedSession] = {}
        self._tail = bytearray()

    def feed(self, data: bytes) -> None:
        self.size += len(data)
        if self.size > self.max_bytes:
            raise BadRequest(f"the import is larger than its limit of {self.max_bytes} bytes")
        self._tail += data
        start = 0
        while (end := self._tail.find(b"\n", start)) >= 0:
            self._line(bytes(self._tail[start:end]))
            start = end + 1
        del self._tail[:start]

    def finish(self) -> list[ImportedSession]:
        if self._tail:
            self._line(bytes(self._tail))
            self._tail.clear()
        if self.line == 0:
            raise BadRequest("the import is empty")
        return list(self.sessions.values())

    def _line(self, raw: bytes) -> None:
        self.line += 1
        try:
            self._record(_decoded(raw))
        except BadRequest as exc:
            raise BadRequest(f"line {self.line}: {exc.message}") from None

    def _record(self, record: dict[str, Any] | None) -> None:
        if self.line == 1:
            if record is None or record.get("type") != FORMAT:
                raise BadRequest(f"not an agentd export (its first line is no {FORMAT!r} header)")
            if record.get("version") != VERSION:
                raise BadRequest(f"export version {record.get('version')!r}; this agentd reads 1")
            return
        if record is None:
            return  # a blank line
        kind = record.get("type")
        if kind == "session":
            self._session(record)
        elif kind == "message":
            self._message(record)
        else:
            raise BadRequest(f"unknown record type {_shown(kind)}")

    def _session(self, record: dict[str, Any]) -> None:
        ref = _text(record, "id", 100)
        if ref in self.sessions:
            raise BadRequest(f"session {ref!r} appears twice")
        name = _optional_text(record, "name", 1000)
        if name is not None:
            validate_session_name(name)
        self.sessions[ref] = ImportedSession(
            ref,
            name,
            _epoch(record, "created_at"),
            _epoch(record, "last_used_at"),
            _optional_text(record, "system_prompt", self.max_bytes),
        )

    def _message(self, record: dict[str, Any]) -> None:
        ref = _text(record, "session", 100)
        session = self.sessions.get(ref)
        if session is None:
            raise BadRequest(f"message of session {ref!r}, which no line above introduces")
        role = _choice(record, "role", ROLES)
        status = _choice(record, "status", STATUSES | {"pending"})
        if not isinstance(record.get("tool_calls", []), list):
            raise BadRequest("'tool_calls' must be a list")
        session.messages.append(
            (
                _text(record, "request_id", MAX_REQUEST_ID_CHARS),
                role,
                _text(record, "content", self.max_bytes),
                "interrupted" if status == "pending" else status,  # it will never be answered
                _optional_text(record, "model", MAX_MODEL_CHARS),
                _count(record, "tokens_in"),
                _count(record, "tokens_out"),
                _epoch(record, "created_at"),
            )
        )


def _decoded(raw: bytes) -> dict[str, Any] | None:
    if not raw.strip():
        return None
    try:
        record = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise BadRequest("not UTF-8") from None
    except ValueError as exc:
        raise BadRequest(f"not JSON ({exc})") from None
    if not isinstance(record, dict):
        raise BadRequest("not a JSON object")
    return record


def _shown(value: Any) -> str:
    return repr(value)[:60]


def _text(record: dict[str, Any], key: str, max_chars: int) -> str:
    value = record.get(key)
    if not isinstance(value, str):
        raise BadRequest(f"{key!r} must be a string, got {_shown(value)}")
    if len(value) > max_chars:
        raise BadRequest(f"{key!r} is longer than {max_chars} characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise BadRequest(f"{key!r} holds a lone surrogate") from None
    return value


def _optional_text(record: dict[str, Any], key: str, max_chars: int) -> str | None:
    return None if record.get(key) is None else _text(record, key, max_chars)


def _choice(record: dict[str, Any], key: str, allowed: frozenset[str]) -> str:
    value = record.get(key)
    if value not in allowed:
        raise BadRequest(
            f"{key!r} must be one of {', '.join(sorted(allowed))}; got {_shown(value)}"
        )
    return str(value)


def _count(record: dict[str, Any], key: str) -> int:
    value = record.get(key, 0)
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 2**53:
        raise BadRequest(f"{key!r} must be a non-negative integer, got {_shown(value)}")
    return value


def _epoch(record: dict[str, Any], key: str) -> float:
    value = record.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise BadRequest(f"{key!r} must be epoch seconds, got {_shown(value)}")
    if not (math.isfinite(value) and 0 <= value <= MAX_EPOCH_S):
        raise BadRequest(f"{key!r} must be epoch seconds from 0 to {MAX_EPOCH_S:.0f}")
    return float(value)


# -- staging, across requests -------------------------------------------------------------


@dataclass
class Staged:
    uid: int
    parser: Parser
    touched: float


class ImportStaging:
    """The imports under way, by id; each belongs to the uid that began it."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._open: dict[str, Staged] = {}

    def begin(self, uid: int, max_bytes: int) -> str:
        now = self._clock()
        for import_id, staged in list(self._open.items()):
            if staged.uid == uid or now - staged.touched > IDLE_S:
                del self._open[import_id]  # one open import per uid: a new one replaces it
        if len(self._open) >= MAX_OPEN:
            raise Busy(f"{MAX_OPEN} imports are under way; try again when one ends")
        import_id = "i-" + secrets.token_hex(8)
        self._open[import_id] = Staged(uid, Parser(max_bytes), now)
        return import_id

    def feed(self, uid: int, import_id: str, data: bytes) -> int:
        """Parse `data`; a bad line drops the whole import. Returns the lines read so far."""
        staged = self._find(uid, import_id)
        try:
            staged.parser.feed(data)
        except RequestError:
            del self._open[import_id]
            raise
        staged.touched = self._clock()
        return staged.parser.line

    def finish(self, uid: int, import_id: str) -> list[ImportedSession]:
        """The whole import, checked; it is no longer staged."""
        staged = self._find(uid, import_id)
        del self._open[import_id]
        return staged.parser.finish()

    def _find(self, uid: int, import_id: str) -> Staged:
        staged = self._open.get(import_id)
        if staged is None or staged.uid != uid:
            raise NotFound(f"no import {import_id!r} under way (it may have expired)")
        return staged


# -- on the store thread --------------------------------------------------------------------


def write_imported(
    conn: Connection, owner_uid: int, imported: list[ImportedSession]
) -> list[dict[str, Any]]:
    """Every imported session and its messages as new sessions of `owner_uid`, in one
    transaction. A name the owner uses already gets a suffix, "(imported)", "(imported 2)"..."""
    created: list[dict[str, Any]] = []
    with transaction(conn):
        for session in imported:
            session_id = new_session_id()
            name = _free_name(conn, owner_uid, session.name)
            turns = sum(1 for row in session.messages if row[1] == "model")
            conn.execute(
                "INSERT INTO sessions (id, owner_uid, name, created_at, last_used_at, "
                "system_prompt, turns) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (session_id, owner_uid, name, session.created_at, session.last_used_at,
                 session.system_prompt, turns),
            )  # fmt: skip
            conn.executemany(
                "INSERT INTO messages (session_id, request_id, role, content, status, model, "
                "tokens_in, tokens_out, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [(session_id, *row) for row in session.messages],
            )
            created.append(
                {"from": session.ref, "id": session_id, "name": name,
                 "messages": len(session.messages)}
            )  # fmt: skip
    return created


def _free_name(conn: Connection, owner_uid: int, name: str | None) -> str | None:
    if name is None:
        return None
    suffixes = ["", " (imported)", *(f" (imported {n})" for n in range(2, 100))]
    for suffix in suffixes:
        candidate = name[: MAX_SESSION_NAME - len(suffix)] + suffix
        if not name_taken(conn, owner_uid, candidate):
            return candidate
    return None  # a hundred sessions of that name: this one goes unnamed
