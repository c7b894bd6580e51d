"""tokens_create, tokens_list, tokens_revoke: bearer tokens for HTTP over loopback TCP.

Admins only. A token's secret is in tokens_create's reply and nowhere else: the
store keeps its hash (store/tokens.py), and the audit row only the command.
"""

from __future__ import annotations

import time
from typing import Any, Final

from agentd.access import Role
from agentd.commands import Audit, Call, CommandSet
from agentd.commands.args import optional_or_none, required
from agentd.errors import BadRequest, NotFound
from agentd.runtime import Runtime
from agentd.store import tokens

SPECS = CommandSet()
command = SPECS.command

MAX_NAME: Final = 64


@command("tokens_create", role=Role.ADMIN, args=("name", "role", "expires_s"), audit=Audit.CHANGE)
async def tokens_create(runtime: Runtime, call: Call) -> dict[str, Any]:
    name = required(call.args, "name", str)
    role = required(call.args, "role", str)
    expires_s = optional_or_none(call.args, "expires_s", float)
    if not 0 < len(name) <= MAX_NAME or not name.isprintable():
        raise BadRequest(f"a token name is 1 to {MAX_NAME} printable characters")
    if role not in tokens.ROLES:
        raise BadRequest(f"role must be one of {', '.join(tokens.ROLES)}, got {role!r}")
    if expires_s is not None and expires_s <= 0:
        raise BadRequest("expires_s must be positive")
    if await runtime.db.run(tokens.name_taken, name):
        raise BadRequest(f"a token named {name!r} exists already")
    now = time.time()
    expires_at = None if expires_s is None else now + expires_s
    token, secret = await runtime.db.run(tokens.create, name, role, call.peer.uid, now, expires_at)
    return {"token": token.as_dict(), "secret": secret}


@command("tokens_list", role=Role.ADMIN, audit=Audit.READ)
async def tokens_list(runtime: Runtime, call: Call) -> dict[str, Any]:
    now = time.time()
    listed = await runtime.db.run(tokens.listed)
    return {"tokens": [{**t.as_dict(), "usable": t.usable(now)} for t in listed]}


@command("tokens_revoke", role=Role.ADMIN, args=("token",), audit=Audit.CHANGE)
async def tokens_revoke(runtime: Runtime, call: Call) -> dict[str, Any]:
    ref = required(call.args, "token", str)
    token = await runtime.db.run(tokens.revoke, ref, time.time())
    if token is None:
        raise NotFound(f"no token {ref!r}; `agentctl tokens list` lists them")
    return {"token": token.as_dict()}
