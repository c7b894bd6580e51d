"""What command handlers work with: the daemon's running components, wired once.

Only handlers receive it (dispatch passes it through without reading it);
every other component is given the few collaborators it uses.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from agentd import __version__
from agentd.access import AccessPolicy
from agentd.audit.writer import AuditWriter
from agentd.chat import ChatPipeline
from agentd.config import Config
from agentd.governance.gate import Gate
from agentd.lifecycle import Lifecycle
from agentd.ownership import CurrentSessions
from agentd.paths import Paths
from agentd.providers.resilience import ResilientProvider
from agentd.ratelimit import RequestLimiter
from agentd.store.database import Database
from agentd.store.imports import ImportStaging
from agentd.telemetry.alerts import AlertBoard
from agentd.telemetry.gemini import GeminiHealth
from agentd.telemetry.health import HealthBoard
from agentd.telemetry.instruments import Instruments, Readings
from agentd.telemetry.logs import LogSinks
from agentd.tools.toolbox import ToolServers


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
    current: CurrentSessions  # each uid's current session: its chats use it unless told otherwise
    request_stop: Callable[[str], None]
    metrics: Instruments
    alerts: AlertBoard
    audit: AuditWriter  # one row per request; chat rows committed before the reply
    limiter: RequestLimiter  # cheap commands in dispatch; chat calls try_acquire/check
    gemini_health: GeminiHealth  # the one owner of the gemini verdict and its ERROR
    gate: Gate  # model policy, budgets, secret scan (the chat pipeline's governance step)
    imports: ImportStaging = field(default_factory=ImportStaging)  # imports under way
    tools: ToolServers | None = None  # the [[tools.servers]]; None when none is enabled
    started_monotonic: float = field(default_factory=time.monotonic)
    started_wall: float = field(default_factory=time.time)
    version: str = __version__
    _store_size: int = field(default=0, init=False, repr=False)
    _store_size_at: float = field(default=float("-inf"), init=False, repr=False)

    @cached_property
    def identity(self) -> dict[str, Any]:
        """What `status` reports that never changes while the process runs."""
        return {
            "agent_id": self.agent_id,
            "pid": os.getpid(),
            "version": self.version,
            "profile": self.config.profile,
            "started_at": self.started_wall,
            "socket": str(self.paths.socket),
        }

    def readings(self) -> Readings:
        """What `Instruments.refresh()` reads from the other components."""
        return Readings(
            lifecycle=self.lifecycle.statistics(),
            provider=self.provider.statistics(),
            admission=self.chat.queue.statistics(),
            audit=self.audit.statistics(),
            store_size_bytes=self.store_size_bytes(),
        )

    @cached_property
    def store_path(self) -> str:
        return str(self.paths.database)

    @property
    def uptime_s(self) -> float:
        return time.monotonic() - self.started_monotonic

    def store_size_bytes(self) -> int:
        """The database with its WAL and shared-memory files, re-read at most once a second
        (status is a hot path: three stat() calls per request cost a tenth of it)."""
        now = time.monotonic()
        if now - self._store_size_at >= 1.0:
            db = self.paths.database
            files = (db, db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm"))
            self._store_size = sum(_size(f) for f in files)
            self._store_size_at = now
        return self._store_size


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0
