"""Bearer tokens for HTTP over loopback TCP: the request's peer is its token's.

A TCP peer has no SO_PEERCRED, so `Authorization: Bearer <token>` says who it
is: a token made by `agentctl tokens create`, looked up by its hash, neither
expired nor revoked. Its requests run as the token's own uid (store/tokens.py)
with the token's role. A token in the URL is refused even beside a good header:
URLs end up in logs and shell history.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

from aiohttp import web

from agentd.access import Peer, Role
from agentd.http.bridge import HttpError
from agentd.protocol import ErrorCode
from agentd.store import tokens
from agentd.store.database import Database

_URL_NAMES: Final = frozenset({"token", "access_token", "api_key", "key", "auth"})


class Bearer:
    def __init__(self, db: Database, clock: Callable[[], float]) -> None:
        self._db = db
        self._clock = clock

    async def peer(self, request: web.Request) -> Peer:
        for name, value in request.query.items():
            # A token as a parameter's name or value: refused, and never echoed back.
            leaked = name.startswith(tokens.PREFIX) or value.startswith(tokens.PREFIX)
            if name.lower() in _URL_NAMES or leaked:
                raise HttpError(
                    ErrorCode.UNAUTHENTICATED,
                    "a token in the URL is refused: send it as Authorization: Bearer <token>",
                )
        scheme, _, secret = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not secret.strip():
            raise HttpError(
                ErrorCode.UNAUTHENTICATED,
                "HTTP over TCP needs Authorization: Bearer <token> (agentctl tokens create)",
            )
        token = await self._db.run(tokens.find, secret.strip())
        if token is None or not token.usable(self._clock()):
            raise HttpError(ErrorCode.UNAUTHENTICATED, "unknown, expired or revoked token")
        return Peer(pid=0, uid=token.uid, gid=token.uid, role=Role[token.role.upper()])
