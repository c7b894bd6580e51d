"""[audit]: which command classes leave a row each, and how long rows are kept.

Levels: `none` (counted in metrics only: agentd_probes_total by command and uid)
or `metadata` (a row: who, what, outcome, sizes, ids; never content). Refused
requests are audited whatever the level (aggregated under flood: refusals.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from agentd.constraints import bounded

NONE: Final = "none"
METADATA: Final = "metadata"
LEVELS: Final = (NONE, METADATA)


@dataclass(frozen=True)
class AuditSettings:
    probe: str = bounded(NONE, one_of=LEVELS)  # ping, status, health, metrics
    read: str = bounded(METADATA, one_of=LEVELS)  # sessions, history, audit, budget, logs
    change: str = bounded(
        METADATA, one_of=LEVELS
    )  # session new/use/rename/prompt/delete, configuration, keys
    chat: str = bounded(METADATA, one_of=LEVELS)  # committed before the reply
    admin: str = bounded(METADATA, one_of=LEVELS)  # stop, audit_verify, backup...
    retention_days: float = bounded(0.0, ge=0)  # rows older than this are pruned (0 = keep forever)
    prune_interval_s: float = bounded(3600.0, gt=0)  # how often the retention task runs

    def audited(self, audit_class: str) -> bool:
        """Does a request of this class leave a row of its own?"""
        level: str = getattr(self, audit_class)
        return level == METADATA
