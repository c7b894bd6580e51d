"""Component health checks: run in the background, reported into the HealthBoard.

    component   ok                        degraded                   failed
    store       a real read and write     -                          the read or write failed,
                to the files opened                                  the disk is full, the files
                                                                     were deleted or replaced
    encryption  cipher on, not plaintext, -                          plaintext header, no cipher,
                every page authenticates                             a page fails its HMAC
    disk        free space above the      below disk_min_free_bytes  under 1 MiB
                threshold
    gemini      the key works, or a call  no key (degraded mode),    key rejected, unreachable,
                succeeded since the       recent failures, quota     misconfigured, breaker open
                failed key check          exhausted (429)
    event_loop  lag under the threshold   over loop_lag_degraded_s   over loop_lag_failed_s
    memory      RSS under rss_max_bytes   over it                    -

A failed store, encryption or disk, and an open circuit breaker, put the
agent in ERROR (lifecycle.component_failed); it returns to READY when they
pass again. While the store fails, the local checks back off
(daemon.health_interval_s doubling up to daemon.recovery_max_backoff_s).

Costly checks are paced. The Gemini key check is one authenticated call:
made when `agentctl health` asks and the latest result is older than
health.gemini_check_interval_s, and in the background at that interval
(with backoff while it fails) - never at start-up, where it would race the
first chats for the provider, and never on `status`. PRAGMA
cipher_integrity_check reads every page: at start-up and every
health.integrity_check_interval_s.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Final, NamedTuple

from agentd.errors import StoreError
from agentd.lifecycle import Lifecycle
from agentd.providers.breaker import BreakerState
from agentd.providers.health import KeyStatus
from agentd.store import state
from agentd.store.database import SQLITE_PLAINTEXT_HEADER, Connection
from agentd.telemetry.alerts import AlertInputs, evaluate_rules
from agentd.telemetry.gemini import GeminiHealth
from agentd.telemetry.health import HealthBoard, Level, log_change
from agentd.telemetry.instruments import Instruments
from agentd.telemetry.metrics import Clock, process_rss_bytes
from agentd.telemetry.settings import MIB, HealthSettings

if TYPE_CHECKING:
    from agentd.config import DaemonSettings
    from agentd.paths import Paths
    from agentd.store.database import Database
    from agentd.telemetry.alerts import AlertBoard

logger = logging.getLogger(__name__)

DISK_FAILED_BYTES: Final = 1 * MIB
# Components whose failure puts the agent in ERROR.
CRITICAL: Final = frozenset({"store", "encryption", "disk"})


# A NamedTuple, not a frozen dataclass: cheaper to define on the path to READY
# (see agentd/providers/base.py).
class EncryptionFacts(NamedTuple):
    cipher_version: str | None
    plaintext_header: bool | None  # None: the file could not be read
    integrity_problems: tuple[str, ...] | None  # None: not checked this time


def read_encryption_facts(conn: Connection, path: Path, deep: bool) -> EncryptionFacts:
    """On the store thread: the cipher in use, the file's first bytes, optionally every page."""
    row = conn.execute("PRAGMA cipher_version").fetchone()
    try:
        with path.open("rb") as handle:
            plaintext: bool | None = (
                handle.read(len(SQLITE_PLAINTEXT_HEADER)) == SQLITE_PLAINTEXT_HEADER
            )
    except OSError:
        plaintext = None
    problems = None
    if deep:
        # Reads every page from disk and checks its HMAC with our key.
        problems = tuple(str(r[0]) for r in conn.execute("PRAGMA cipher_integrity_check"))
    return EncryptionFacts(row[0] if row and row[0] else None, plaintext, problems)


class Verdicts:
    """Where component verdicts go: the health board, and the lifecycle for critical ones."""

    def __init__(self, health: HealthBoard, lifecycle: Lifecycle) -> None:
        self._health = health
        self._lifecycle = lifecycle

    def report(self, component: str, level: Level, reason: str) -> None:
        """Record a verdict; log when a component changes level; move the lifecycle for
        critical ones."""
        previous = self._health.get(component)
        self._health.report(component, level, reason)
        if previous is None or previous.level is not level:
            log_change(component, level, reason, first=previous is None)
        if component in CRITICAL:
            self.move_lifecycle(component, reason if level is Level.FAILED else None)

    def move_lifecycle(self, component: str, failure: str | None) -> None:
        """Into ERROR while `component` fails (`failure` says why); back once it recovers."""
        if failure is not None:
            self._lifecycle.component_failed(component, failure)
        else:
            self._lifecycle.component_recovered(component)


class HealthChecks:
    """The background checks of one daemon; `run()` until cancelled."""

    def __init__(
        self,
        settings: HealthSettings,
        daemon: DaemonSettings,
        *,
        db: Database,
        paths: Paths,
        metrics: Instruments,
        alerts: AlertBoard,
        verdicts: Verdicts,
        gemini: GeminiHealth,
        save_counters: Callable[[], Awaitable[None]],
        clock: Clock = time.monotonic,
    ) -> None:
        self._settings = settings
        self._daemon = daemon
        self._db = db
        self._paths = paths
        self._metrics = metrics
        self._alerts = alerts
        self._verdicts = verdicts
        self._gemini = gemini
        self._save_counters = save_counters
        self._clock = clock
        self._next_integrity = 0.0  # clock time of the next deep check; 0: at once
        self._integrity: tuple[str, ...] = ()
        self._disk_free: int | None = None
        self._disk_detail = ""

    async def run(self) -> None:
        async with asyncio.TaskGroup() as group:
            group.create_task(self._run_local(), name="health-local")
            group.create_task(self._run_key_checks(), name="health-gemini-key")

    async def _run_local(self) -> None:
        daemon = self._daemon
        delay = daemon.health_interval_s
        while True:
            store_ok = await self.run_once()
            delay = (
                daemon.health_interval_s
                if store_ok
                else min(delay * 2, daemon.recovery_max_backoff_s)
            )
            await asyncio.sleep(delay)  # the checking cadence, not synchronisation

    async def run_once(self) -> bool:
        """Every local check once; returns whether the store works."""
        store_ok = await self.check_store()
        if store_ok:
            await self.check_encryption()
        self.check_disk()
        self.check_event_loop()
        self.check_memory()
        self._gemini.reassess()
        self.evaluate_alerts()
        return store_ok

    # -- store and encryption

    async def check_store(self) -> bool:
        try:
            # A real read and a real write, to the files opened (not replaced since).
            await self._db.run_checked(state.probe)
            await self._save_counters()
        except StoreError as exc:
            self._verdicts.report("store", Level.FAILED, str(exc))
            return False
        self._verdicts.report("store", Level.OK, "read and write ok")
        return True

    async def check_encryption(self) -> None:
        deep = self._clock() >= self._next_integrity
        try:
            facts = await self._db.run(read_encryption_facts, self._paths.database, deep)
        except StoreError as exc:
            self._verdicts.report("encryption", Level.FAILED, str(exc))
            return
        if facts.integrity_problems is not None:
            self._integrity = facts.integrity_problems
            every = self._settings.integrity_check_interval_s
            self._next_integrity = self._clock() + every if every > 0 else float("inf")
        self._verdicts.report("encryption", *self._encryption_verdict(facts))

    def _encryption_verdict(self, facts: EncryptionFacts) -> tuple[Level, str]:
        if facts.cipher_version is None:
            return Level.FAILED, "no cipher: the store is not encrypted"
        if facts.plaintext_header is None:
            return Level.FAILED, f"cannot read {self._paths.database}"
        if facts.plaintext_header:
            return Level.FAILED, "the database file starts with the plaintext SQLite header"
        if self._integrity:
            more = f" (+{len(self._integrity) - 1} more)" if len(self._integrity) > 1 else ""
            return Level.FAILED, f"{self._integrity[0]}{more}"
        return Level.OK, f"SQLCipher {facts.cipher_version}; every page authenticates with the key"

    # -- the machine

    def check_disk(self) -> None:
        readings = [(path, _free_bytes(path)) for path in self._watched_dirs()]
        path, free = min(readings, key=lambda r: r[1])
        threshold = self._settings.disk_min_free_bytes
        self._disk_free = free
        self._disk_detail = f"{_mib(free)} free in {path} (threshold {_mib(threshold)})"
        if free < min(DISK_FAILED_BYTES, threshold) or free == 0:
            level = Level.FAILED
        elif free < threshold:
            level = Level.DEGRADED
        else:
            level = Level.OK
        self._verdicts.report("disk", level, self._disk_detail)

    def _watched_dirs(self) -> list[Path]:
        paths = self._paths
        return sorted({paths.database.parent, paths.log_file.parent})

    def check_event_loop(self) -> None:
        lag = self._metrics.loop_lag_statistics().max_recent_s
        s = self._settings
        # The reason names the threshold that decided the level.
        if lag > s.loop_lag_failed_s:
            level, threshold = Level.FAILED, f"failed over {s.loop_lag_failed_s * 1000:.0f} ms"
        elif lag > s.loop_lag_degraded_s:
            level, threshold = Level.DEGRADED, f"degraded over {s.loop_lag_degraded_s * 1000:.0f} ms"
        else:
            level, threshold = Level.OK, f"degraded over {s.loop_lag_degraded_s * 1000:.0f} ms"
        self._verdicts.report("event_loop", level, f"lag {lag * 1000:.1f} ms ({threshold})")

    def check_memory(self) -> None:
        rss = int(process_rss_bytes())
        limit = self._settings.rss_max_bytes
        level = Level.DEGRADED if limit and rss > limit else Level.OK
        self._verdicts.report(
            "memory",
            level,
            f"RSS {_mib(rss)}" + (f" (limit {_mib(limit)})" if limit else ""),
        )

    # -- gemini

    async def _run_key_checks(self) -> None:
        """At the check interval while the key works; with backoff while it does not."""
        interval = self._settings.gemini_check_interval_s
        daemon = self._daemon
        delay = interval
        while True:
            await asyncio.sleep(delay)  # the checking cadence, not synchronisation
            if self._gemini.provider.configuration_problem() is not None:
                continue  # no key: nothing to call
            result = await self._gemini.check_key()  # the verdict follows it
            if result.status is KeyStatus.OK:
                delay = interval
            else:
                retry = daemon.health_interval_s if delay >= interval else delay * 2
                delay = min(retry, daemon.recovery_max_backoff_s, interval)

    # -- alerts

    def evaluate_alerts(self) -> None:
        errors, requests = self._metrics.errors.counts()
        breaker = self._gemini.provider.statistics().breaker
        inputs = AlertInputs(
            errors=errors,
            requests=requests,
            chat_p95_s=self._metrics.chat_p95_s(),
            breaker_open=breaker.state is BreakerState.OPEN,
            breaker_detail=(
                f"circuit breaker open after {breaker.trips} trip(s); last failure: "
                f"{breaker.last_failure_kind}"
            ),
            disk_free_bytes=self._disk_free,
            disk_detail=self._disk_detail,
        )
        evaluate_rules(self._alerts, inputs, self._settings)


def _free_bytes(path: Path) -> int:
    try:
        stats = os.statvfs(path)
    except OSError:
        return 0
    return stats.f_bavail * stats.f_frsize


def _mib(size: float) -> str:
    return f"{size / MIB:.1f} MiB"
