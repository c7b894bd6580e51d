"""sessions_prune: delete sessions unused for a while, on demand (agentd/retention.py).

A user prunes their own sessions; admins anyone's (`user`) or everyone's (`all`).
`dry_run` lists what would go and deletes nothing.
"""

from __future__ import annotations

import math
import time
from typing import Any

from agentd.access import Role
from agentd.commands import Audit, Call, CommandSet
from agentd.commands.args import optional, required
from agentd.commands.chat import _listed_owner
from agentd.errors import BadRequest
from agentd.retention import BY_USER, forget
from agentd.runtime import Runtime
from agentd.store import retention
from agentd.store.retention import Selection

SPECS = CommandSet()
command = SPECS.command


@command("sessions_prune", role=Role.CHAT, audit=Audit.CHANGE, args=("older_than_s", "all", "user", "dry_run"))
async def sessions_prune(runtime: Runtime, call: Call) -> dict[str, Any]:
    older_than_s = required(call.args, "older_than_s", float)
    if not (math.isfinite(older_than_s) and older_than_s >= 0):
        raise BadRequest("older_than_s must be a number of seconds, 0 or more")
    dry_run = optional(call.args, "dry_run", bool, False)
    selection = Selection(_listed_owner(runtime, call), used_before=time.time() - older_than_s)
    doomed = await runtime.db.run(retention.select, selection)
    listed = [
        {"id": s.id, "owner_uid": s.owner_uid, "name": s.name, "last_used_at": s.last_used_at}
        for s in doomed
    ]
    if dry_run:
        return {"dry_run": True, "sessions": listed, "messages": None}
    forgotten = await forget(runtime, doomed, call.peer, BY_USER)
    kept = {g.session_id for g in forgotten}
    return {
        "dry_run": False,
        "sessions": [s for s in listed if s["id"] in kept],
        "messages": sum(g.messages for g in forgotten),
        "current": runtime.current.get(call.peer.uid),
    }
