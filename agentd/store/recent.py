"""A session's recent complete exchanges, kept in memory for building the context.

Building a chat's context read the session's latest exchanges from the store
(a join over the messages table, every page decrypted) on every chat. The
store is the truth; this is a bounded read cache of one query
(`messages.context_exchanges`), on the event loop only (no locks):

    lookup(session, limit)      the cached exchanges, or None (then read the store)
    reserve(session) → token    before reading the store on a miss
    fill(token, exchanges, n)   after the read: kept only if nothing wrote meanwhile
    added(session, exchange)    after a complete model turn is committed
    forget(session)             THE invalidation call: any other change to a
                                session's messages (deletion of the session or
                                of some of its turns, retention, interrupted marks)
    clear()                     everything (e.g. after a bulk deletion)

Whoever deletes or rewrites messages outside the chat path must call
`forget(session_id)` (or `clear()`) once the change is committed. A miss
costs one store read; a stale hit would send the model a deleted turn, so
when in doubt, forget.

Bounded: at most MAX_SESSIONS sessions (least recently used evicted) and
MAX_CHARS characters of text in all; each session keeps its latest `limit`
exchanges (chat.history_max_turns).
"""

from __future__ import annotations

import bisect
from collections import OrderedDict
from typing import Final, NamedTuple

MAX_SESSIONS: Final = 256
MAX_CHARS: Final = 8_000_000  # ~8-32 MB of str, whatever the prompts' sizes


class Exchange(NamedTuple):
    """A complete exchange: the model turn's message id (its order) and both texts."""

    model_id: int
    user_text: str
    model_text: str
    model_tokens: int = 0  # the answer's tokens_out as the service reported it (0: unknown)

    @property
    def chars(self) -> int:
        return len(self.user_text) + len(self.model_text)


class _Entry:
    """One session's exchanges, oldest first; not `ready` while a store read is out."""

    __slots__ = ("chars", "dirty", "exchanges", "limit", "ready")

    def __init__(self) -> None:
        self.exchanges: list[Exchange] = []
        self.limit = 0
        self.chars = 0
        self.ready = False
        self.dirty = False  # written while the store read was out: that read is stale


class RecentTurns:
    def __init__(self, max_sessions: int = MAX_SESSIONS, max_chars: int = MAX_CHARS) -> None:
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._max_sessions = max_sessions
        self._max_chars = max_chars
        self._chars = 0

    def lookup(self, session_id: str, limit: int) -> list[Exchange] | None:
        """The session's latest `limit` exchanges, oldest first; None when not cached."""
        entry = self._entries.get(session_id)
        if entry is None or not entry.ready or entry.limit < limit:
            return None
        self._entries.move_to_end(session_id)
        return entry.exchanges[-limit:] if limit else []

    def reserve(self, session_id: str) -> object:
        """Start a store read for `session_id`; pass the token to `fill`."""
        self.forget(session_id)
        entry = _Entry()
        self._entries[session_id] = entry
        self._evict()
        return entry

    def fill(self, token: object, session_id: str, exchanges: list[Exchange], limit: int) -> None:
        """Keep what the store read returned, unless the session was written or
        forgotten since `reserve` (the read may not hold that write)."""
        entry = self._entries.get(session_id)
        if entry is not token or entry is None or entry.dirty:
            if entry is token:
                self.forget(session_id)
            return
        entry.exchanges, entry.limit, entry.ready = list(exchanges), limit, True
        self._count(entry, sum(exchange.chars for exchange in exchanges))
        self._evict()

    def added(self, session_id: str, exchange: Exchange) -> None:
        """A complete exchange of `session_id` was committed."""
        entry = self._entries.get(session_id)
        if entry is None:
            return
        if not entry.ready:
            entry.dirty = True
            return
        # In id order, whatever order concurrent chats of one session finish in.
        self._entries.move_to_end(session_id)
        bisect.insort(entry.exchanges, exchange)
        self._count(entry, exchange.chars)
        while len(entry.exchanges) > entry.limit:
            self._count(entry, -entry.exchanges.pop(0).chars)
        self._evict()

    def forget(self, session_id: str) -> None:
        """Drop what is cached of `session_id`: its messages changed outside the chat path."""
        entry = self._entries.pop(session_id, None)
        if entry is not None:
            self._chars -= entry.chars

    def clear(self) -> None:
        self._entries.clear()
        self._chars = 0

    @property
    def sessions(self) -> int:
        return len(self._entries)

    def _count(self, entry: _Entry, chars: int) -> None:
        entry.chars += chars
        self._chars += chars

    def _evict(self) -> None:
        while self._entries and (
            len(self._entries) > self._max_sessions or self._chars > self._max_chars
        ):
            _session, entry = self._entries.popitem(last=False)
            self._chars -= entry.chars
