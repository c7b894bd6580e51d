"""budget: today's usage of each budget and when it resets (a user sees their own)."""

from __future__ import annotations

from typing import Any

from agentd.access import Role
from agentd.commands import Audit, Call, CommandSet
from agentd.runtime import Runtime

SPECS = CommandSet()
command = SPECS.command


@command("budget", role=Role.READ, audit=Audit.READ)
async def budget(runtime: Runtime, call: Call) -> dict[str, Any]:
    """Admins see every uid with usage today; anyone else their own uid. Both see the
    global budgets, since those refuse their chats too."""
    admin = runtime.access.role_of(call.peer) >= Role.ADMIN
    ledger = runtime.gate.ledger
    statuses = ledger.statuses(None if admin else call.peer.uid)
    pricing = runtime.config.pricing
    return {
        "day": ledger.today(),
        "uid": call.peer.uid,
        "all_uids": admin,
        "warn_ratio": runtime.config.budgets.warn_ratio,
        "prices_as_of": pricing.as_of,
        "budgets": [s.as_dict() for s in statuses],
    }
