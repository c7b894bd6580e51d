"""The `[audit]` config section (minimal: the lead reconciles it with the policy levels)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class AuditSettings:
    retention_days: float = 0.0  # 0: keep every row forever
    prune_interval_s: float = 3600.0

    def problems(self) -> list[tuple[str, str]]:
        out = []
        if self.retention_days < 0:
            out.append(("retention_days", "must be 0 (keep forever) or more"))
        if self.prune_interval_s <= 0:
            out.append(("prune_interval_s", "must be more than 0"))
        return out
