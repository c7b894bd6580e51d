"""Whose sessions a peer may touch, each uid's current session, and the audit subject.

A session belongs to the uid that created it. A chat-role peer sees only its
own: another user's session is not found (NOT_FOUND, as if it did not exist).
Admins may name any session by id; when they touch another user's data,
the handler records whose it was (`call.facts.owner`), and dispatch puts that
uid in the request's audit row (`owner_uid`; ALL_USERS for a listing of
everyone's sessions).
"""

from __future__ import annotations

from typing import Final

from agentd.access import Peer, Role
from agentd.store import state
from agentd.store.database import Database
from agentd.store.sessions import Owner, current_key

ALL_USERS: Final = -1  # the audit subject of a request that touched every user's data


def owner_for(peer: Peer, role: Role) -> Owner:
    """How `peer` looks sessions up: its own, or (admins) any by id."""
    return Owner(peer.uid, any_by_id=role >= Role.ADMIN)


class CurrentSessions:
    """Each uid's current session: where its chats go unless told otherwise.

    Kept in memory for lookups (status reads it) and in the state table, one
    key per uid, so a restart restores every user's.
    """

    def __init__(self, db: Database, initial: dict[int, str]) -> None:
        self._db = db
        self._by_uid = dict(initial)

    def get(self, uid: int) -> str | None:
        return self._by_uid.get(uid)

    async def set(self, uid: int, session_id: str) -> None:
        await self._db.run(state.put_values, {current_key(uid): session_id})
        self._by_uid[uid] = session_id

    async def forget_session(self, session_id: str) -> None:
        """A deleted session is no one's current session any more."""
        for uid in [uid for uid, sid in self._by_uid.items() if sid == session_id]:
            await self._db.run(state.delete_value, current_key(uid))
            del self._by_uid[uid]
