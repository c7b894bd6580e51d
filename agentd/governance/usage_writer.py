"""Budget charges written to the store, many chats to one commit.

Each answered chat charges its tokens to two budgets (its uid's and the global
one). A commit of its own per chat would add an fsync to every chat (the store
runs synchronous=FULL); instead charges made while a write is in flight are
summed and go in the next single transaction. A caller still waits until its
own charge is committed, so usage a reply reported survives a crash.
"""

from __future__ import annotations

import asyncio

from agentd.governance import store
from agentd.governance.budgets import Usage
from agentd.store.database import Database


class UsageWriter:
    def __init__(self, db: Database) -> None:
        self._db = db
        self._pending: dict[tuple[str, str], Usage] = {}
        self._charged = 0  # charges made so far
        self._written = 0  # charges committed so far
        self._writer: asyncio.Task[None] | None = None

    async def write(self, day: str, scopes: tuple[str, ...], added: Usage) -> None:
        """Add `added` to each scope's row of `day`; returns once it is committed."""
        for scope in scopes:
            key = (day, scope)
            self._pending[key] = self._pending.get(key, Usage()).plus(added)
        self._charged += 1
        mine = self._charged
        while self._written < mine:
            if self._writer is None or self._writer.done():
                self._writer = asyncio.create_task(self._commit_pending())
            # Shielded: a chat cancelled now (its client left) must not cancel the
            # commit that carries other chats' charges too.
            await asyncio.shield(self._writer)

    async def _commit_pending(self) -> None:
        batch, upto = self._pending, self._charged
        self._pending = {}
        try:
            await self._db.run(store.add_usages, batch)
        except BaseException:
            for key, usage in batch.items():  # not written: goes with the next commit
                self._pending[key] = self._pending.get(key, Usage()).plus(usage)
            raise
        self._written = upto
