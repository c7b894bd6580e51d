"""[audit]: which command classes leave a row each, and how long rows are kept.

Levels: `none` (counted in metrics only: agentd_probes_total by command and uid)
or `metadata` (a row: who, what, outcome, sizes, ids; never content). Refused
requests are audited whatever the level (aggregated under flood: refusals.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

NONE: Final = "none"
METADATA: Final = "metadata"
LEVELS: Final = (NONE, METADATA)


@dataclass(frozen=True)
class AuditSettings:
    probe: str = NONE  # ping, status, health, metrics
    read: str = METADATA  # sessions, history, audit, budget, logs
    change: str = METADATA  # session new/use/rename/prompt/delete, configuration, keys
    chat: str = METADATA  # committed before the reply
    admin: str = METADATA  # stop, audit_verify, backup...
    retention_days: float = 0.0  # rows older than this are pruned (0 = keep forever)
    prune_interval_s: float = 3600.0  # how often the retention task runs

    def audited(self, audit_class: str) -> bool:
        """Does a request of this class leave a row of its own?"""
        level: str = getattr(self, audit_class)
        return level == METADATA

    def problems(self) -> list[tuple[str, str]]:
        out = [
            (name, f"must be one of {', '.join(LEVELS)}, got {getattr(self, name)!r}")
            for name in ("probe", "read", "change", "chat", "admin")
            if getattr(self, name) not in LEVELS
        ]
        if self.retention_days < 0:
            out.append(("retention_days", "must not be negative"))
        if self.prune_interval_s <= 0:
            out.append(("prune_interval_s", "must be greater than 0"))
        return out
