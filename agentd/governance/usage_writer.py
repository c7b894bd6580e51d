"""Budget charges written to the store, many chats to one commit.

Each answered chat charges its tokens to two budgets (its uid's and the global
one). A commit of its own per chat would add an fsync to every chat (the store
runs synchronous=FULL); instead each charge is a job of the store's group
commit (`Database.write`): it goes in the next transaction with whatever other
chats' turns and charges are queued. A caller still waits until its own charge
is committed, so usage a reply reported survives a crash; a chat cancelled
meanwhile does not cancel the charge.
"""

from __future__ import annotations

from agentd.governance import store
from agentd.governance.budgets import Usage
from agentd.store.database import Database


class UsageWriter:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def write(self, day: str, scopes: tuple[str, ...], added: Usage) -> None:
        """Add `added` to each scope's row of `day`; returns once it is committed."""
        await self._db.write(store.add_usages, {(day, scope): added for scope in scopes})
