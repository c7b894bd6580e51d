"""What command handlers work with: the daemon's running components, wired once."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from agentd import __version__
from agentd.access import AccessPolicy
from agentd.chat import ChatPipeline
from agentd.config import Config
from agentd.lifecycle import Lifecycle
from agentd.paths import Paths
from agentd.providers.resilience import ResilientProvider
from agentd.store.database import Database
from agentd.telemetry.health import HealthBoard
from agentd.telemetry.logs import LogSinks


@dataclass
class Runtime:
    config: Config
    paths: Paths
    lifecycle: Lifecycle
    db: Database
    health: HealthBoard
    logs: LogSinks
    access: AccessPolicy
    provider: ResilientProvider
    chat: ChatPipeline
    agent_id: str
    session_id: str  # the current session: chat uses it unless told otherwise
    request_stop: Callable[[str], None]
    lifetime: Counter[str] = field(default_factory=Counter)  # survives restarts
    started_monotonic: float = field(default_factory=time.monotonic)
    started_wall: float = field(default_factory=time.time)
    version: str = __version__

    @property
    def uptime_s(self) -> float:
        return time.monotonic() - self.started_monotonic

    def store_size_bytes(self) -> int:
        total = 0
        for suffix in ("", "-wal", "-shm"):
            try:
                total += self.paths.database.with_name(self.paths.database.name + suffix).stat().st_size
            except FileNotFoundError:
                pass
        return total
