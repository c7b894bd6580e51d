"""Full-text search over messages: an FTS5 index inside the encrypted database.

    messages_fts  FTS5, external content: rowid = messages.id, one column `content`;
                  it stores only the index (in SQLCipher pages, encrypted like
                  the rest), the text stays in `messages`. Triggers on messages
                  keep it in step; migration 0007_search creates and backfills it.

A query is the caller's words, each quoted (so `"`, `*`, `AND`, `(` mean
nothing), unless `raw` asks for FTS5's own syntax; a query FTS5 cannot parse
is a BadRequest, never an internal error. Results are limited to an owner's
sessions (None: every owner's, for admins) and come best first (bm25).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any, Final

import sqlcipher3

from agentd.errors import BadRequest
from agentd.store.database import Connection

MAX_QUERY_CHARS: Final = 1000
SQLITE_ERROR: Final = 1  # what FTS5 answers a query it cannot parse
SNIPPET_TOKENS: Final = 12
MAX_SEGMENT_CHARS: Final = 200  # a "token" may be a megabyte of letters: snippets stay small


def m0007_search(conn: Connection) -> None:
    conn.execute(
        "CREATE VIRTUAL TABLE messages_fts USING fts5("
        "content, content='messages', content_rowid='id', tokenize='unicode61 remove_diacritics 2')"
    )
    # A deleted message leaves no trace in the index, not merely a delete marker.
    conn.execute("INSERT INTO messages_fts (messages_fts, rank) VALUES ('secure-delete', 1)")
    conn.execute(
        "CREATE TRIGGER messages_fts_insert AFTER INSERT ON messages BEGIN "
        "INSERT INTO messages_fts (rowid, content) VALUES (new.id, new.content); END"
    )
    conn.execute(
        "CREATE TRIGGER messages_fts_delete AFTER DELETE ON messages BEGIN "
        "INSERT INTO messages_fts (messages_fts, rowid, content) "
        "VALUES ('delete', old.id, old.content); END"
    )
    # Only a change of the text touches the index: status updates are frequent.
    conn.execute(
        "CREATE TRIGGER messages_fts_update AFTER UPDATE OF content ON messages BEGIN "
        "INSERT INTO messages_fts (messages_fts, rowid, content) "
        "VALUES ('delete', old.id, old.content); "
        "INSERT INTO messages_fts (rowid, content) VALUES (new.id, new.content); END"
    )
    conn.execute("INSERT INTO messages_fts (messages_fts) VALUES ('rebuild')")


@dataclass(frozen=True)
class Hit:
    message_id: int
    session_id: str
    session_name: str | None
    owner_uid: int
    role: str
    created_at: float
    snippet: list[tuple[str, bool]]  # (text, is a match), in order

    def as_dict(self) -> dict[str, Any]:
        return {
            "message_id": self.message_id,
            "session_id": self.session_id,
            "session_name": self.session_name,
            "owner_uid": self.owner_uid,
            "role": self.role,
            "created_at": self.created_at,
            "snippet": [{"text": text, "match": match} for text, match in self.snippet],
        }


class Query:
    """What to look for, where, and how many."""

    def __init__(
        self, text: str, *, raw: bool, owner_uid: int | None, session_id: str | None, limit: int
    ) -> None:
        self.match = text if raw else quoted_terms(text)
        self.owner_uid = owner_uid
        self.session_id = session_id
        self.limit = limit


def quoted_terms(text: str) -> str:
    """The words of `text` as FTS5 strings ("a" "b": both must occur), so nothing in
    them is operator syntax."""
    terms = text.replace("\x00", " ").split()  # FTS5 ends a string at a NUL
    if not terms:
        raise BadRequest("the search query is empty")
    return " ".join('"' + term.replace('"', '""') + '"' for term in terms)


def search(conn: Connection, query: Query) -> list[Hit]:
    if not query.match.strip() or len(query.match) > MAX_QUERY_CHARS * 2:
        raise BadRequest(f"the search query must be 1 to {MAX_QUERY_CHARS} characters")
    # Markers no message can hold by chance: the snippet is split on them.
    nonce = secrets.token_hex(8)
    start, end = f"\x1e{nonce}[", f"]{nonce}\x1e"
    sql, params = _statement(query)
    try:
        rows = conn.execute(sql, (start, end, *params)).fetchall()
    except sqlcipher3.OperationalError as exc:
        if getattr(exc, "sqlite_errorcode", SQLITE_ERROR) & 0xFF != SQLITE_ERROR:
            raise  # I/O, a full disk, corruption: the store's failure, not the query's
        raise BadRequest(f"the search query is not valid FTS5 syntax ({exc})") from None
    return [_hit(row, start, end) for row in rows]


_SNIPPET: Final = f"snippet(messages_fts, 0, ?, ?, '…', {SNIPPET_TOKENS})"
_HIT_COLUMNS: Final = "m.id, m.session_id, s.name, s.owner_uid, m.role, m.created_at"

# Everyone's messages: FTS5 alone ranks and limits (it consumes ORDER BY rank
# LIMIT), so snippets are made and rows read for the results only. Joined
# first, every match would read its message's page (decrypted) to be sorted.
_ALL_SQL: Final = (
    f"SELECT {_HIT_COLUMNS}, f.snip FROM (SELECT rowid AS id, {_SNIPPET} AS snip, rank "
    "FROM messages_fts WHERE messages_fts MATCH ? ORDER BY rank LIMIT ?) f "
    "JOIN messages m ON m.id = f.id JOIN sessions s ON s.id = m.session_id ORDER BY f.rank"
)


def _statement(query: Query) -> tuple[str, list[Any]]:
    """The SQL for `query` and its parameters after the two snippet markers."""
    if query.owner_uid is None and query.session_id is None:
        return _ALL_SQL, [query.match, query.limit]
    where = "messages_fts MATCH ?"
    params: list[Any] = [query.match]
    if query.owner_uid is not None:
        where += " AND s.owner_uid = ?"
        params.append(query.owner_uid)
    if query.session_id is not None:
        where += " AND m.session_id = ?"
        params.append(query.session_id)
    sql = (
        f"SELECT {_HIT_COLUMNS}, {_SNIPPET} FROM messages_fts "
        "JOIN messages m ON m.id = messages_fts.rowid JOIN sessions s ON s.id = m.session_id "
        f"WHERE {where} ORDER BY messages_fts.rank LIMIT ?"
    )
    return sql, [*params, query.limit]


def _hit(row: tuple[Any, ...], start: str, end: str) -> Hit:
    message_id, session_id, name, owner_uid, role, created_at, snippet = row
    return Hit(
        message_id, session_id, name, owner_uid, role, created_at, _segments(snippet, start, end)
    )


def _segments(snippet: str, start: str, end: str) -> list[tuple[str, bool]]:
    """A snippet marked with `start`/`end` as (text, is a match) pieces, each clipped."""
    segments: list[tuple[str, bool]] = []
    for index, part in enumerate(snippet.split(start)):
        inside, _, outside = part.partition(end) if index else ("", "", part)
        for text, match in ((inside, True), (outside, False)):
            if text:
                segments.append((_clip(text), match))
    return segments


def _clip(text: str) -> str:
    return text if len(text) <= MAX_SEGMENT_CHARS else text[: MAX_SEGMENT_CHARS - 1] + "…"
