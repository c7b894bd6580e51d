"""Component health checks: run in the background, reported into the HealthBoard.

    component   ok                        degraded                   failed
    store       a real read and write     -                          the read or write failed
    encryption  cipher on, not plaintext, -                          plaintext header, no cipher,
                every page authenticates                             a page fails its HMAC
    disk        free space above the      below disk_min_free_bytes  under 1 MiB
                threshold
    gemini      the key works             no key (degraded mode),    key rejected, unreachable,
                                          recent failures            misconfigured, breaker open
    event_loop  lag under the threshold   over loop_lag_degraded_s   over loop_lag_failed_s
    memory      RSS under rss_max_bytes   over it                    -

A failed store, encryption or disk, and an open circuit breaker, put the
agent in ERROR (lifecycle.component_failed); it returns to READY when they
pass again. While the store fails, the local checks back off
(daemon.health_interval_s doubling up to daemon.recovery_max_backoff_s).

Costly checks are paced: the Gemini key check is one authenticated call,
repeated every health.gemini_check_interval_s while it passes and with
backoff while it fails; PRAGMA cipher_integrity_check reads every page, at
start-up and every health.integrity_check_interval_s.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final

from agentd.errors import StoreError
from agentd.providers.resilience import (
    BreakerState,
    HealthStatus,
    KeyCheck,
    KeyStatus,
    ResilientProvider,
)
from agentd.store import state
from agentd.store.database import SQLITE_PLAINTEXT_HEADER, Connection
from agentd.telemetry.alerts import AlertInputs, evaluate_rules
from agentd.telemetry.health import Level
from agentd.telemetry.instruments import save_counters
from agentd.telemetry.metrics import Clock, process_rss_bytes
from agentd.telemetry.settings import MIB

if TYPE_CHECKING:
    from agentd.runtime import Runtime

logger = logging.getLogger(__name__)

DISK_FAILED_BYTES: Final = 1 * MIB
# Components whose failure puts the agent in ERROR.
CRITICAL: Final = frozenset({"store", "encryption", "disk"})
_KEY_LEVELS: Final = {
    KeyStatus.OK: Level.OK,
    KeyStatus.MISSING: Level.DEGRADED,
    KeyStatus.REJECTED: Level.FAILED,
    KeyStatus.UNREACHABLE: Level.FAILED,
    KeyStatus.MISCONFIGURED: Level.FAILED,
}
_PROVIDER_LEVELS: Final = {
    HealthStatus.OK: Level.OK,
    HealthStatus.DEGRADED: Level.DEGRADED,
    HealthStatus.FAILED: Level.FAILED,
}
_ORDER: Final = (Level.OK, Level.DEGRADED, Level.FAILED)


@dataclass(frozen=True)
class EncryptionFacts:
    cipher_version: str | None
    plaintext_header: bool | None  # None: the file could not be read
    integrity_problems: tuple[str, ...] | None  # None: not checked this time


def read_encryption_facts(conn: Connection, path: Path, deep: bool) -> EncryptionFacts:
    """On the store thread: the cipher in use, the file's first bytes, optionally every page."""
    row = conn.execute("PRAGMA cipher_version").fetchone()
    try:
        with path.open("rb") as handle:
            plaintext: bool | None = handle.read(len(SQLITE_PLAINTEXT_HEADER)) == SQLITE_PLAINTEXT_HEADER
    except OSError:
        plaintext = None
    problems = None
    if deep:
        # Reads every page from disk and checks its HMAC with our key.
        problems = tuple(str(r[0]) for r in conn.execute("PRAGMA cipher_integrity_check"))
    return EncryptionFacts(row[0] if row and row[0] else None, plaintext, problems)


def store_probe(conn: Connection) -> None:
    """A real read and a real write through SQLCipher."""
    state.probe(conn)


class HealthChecks:
    """The background checks of one daemon; `run()` until cancelled."""

    def __init__(self, runtime: Runtime, *, clock: Clock = time.monotonic) -> None:
        self._rt = runtime
        self._settings = runtime.config.health
        self._clock = clock
        self._next_integrity = 0.0  # clock time of the next deep check; 0: at once
        self._integrity: tuple[str, ...] = ()
        self._key: KeyCheck | None = None
        self._disk_free: int | None = None
        self._disk_detail = ""

    async def run(self) -> None:
        async with asyncio.TaskGroup() as group:
            group.create_task(self._run_local(), name="health-local")
            group.create_task(self._run_key_checks(), name="health-gemini-key")

    async def _run_local(self) -> None:
        interval = self._rt.config.daemon.health_interval_s
        delay = interval
        while True:
            store_ok = await self.run_once()
            delay = interval if store_ok else min(delay * 2, self._rt.config.daemon.recovery_max_backoff_s)
            await asyncio.sleep(delay)  # the checking cadence, not synchronisation

    async def run_once(self) -> bool:
        """Every local check once; returns whether the store works."""
        store_ok = await self.check_store()
        if store_ok:
            await self.check_encryption()
        self.check_disk()
        self.check_event_loop()
        self.check_memory()
        self.check_gemini()
        self.evaluate_alerts()
        return store_ok

    # -- store and encryption

    async def check_store(self) -> bool:
        try:
            await self._rt.db.run(store_probe)
            await save_counters(self._rt)
        except StoreError as exc:
            self._set("store", Level.FAILED, str(exc))
            return False
        self._set("store", Level.OK, "read and write ok")
        return True

    async def check_encryption(self) -> None:
        deep = self._clock() >= self._next_integrity
        try:
            facts = await self._rt.db.run(read_encryption_facts, self._rt.paths.database, deep)
        except StoreError as exc:
            self._set("encryption", Level.FAILED, str(exc))
            return
        if facts.integrity_problems is not None:
            self._integrity = facts.integrity_problems
            every = self._settings.integrity_check_interval_s
            self._next_integrity = self._clock() + every if every > 0 else float("inf")
        self._set("encryption", *self._encryption_verdict(facts))

    def _encryption_verdict(self, facts: EncryptionFacts) -> tuple[Level, str]:
        if facts.cipher_version is None:
            return Level.FAILED, "no cipher: the store is not encrypted"
        if facts.plaintext_header is None:
            return Level.FAILED, f"cannot read {self._rt.paths.database}"
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
        self._set("disk", level, self._disk_detail)

    def _watched_dirs(self) -> list[Path]:
        paths = self._rt.paths
        return sorted({paths.database.parent, paths.log_file.parent})

    def check_event_loop(self) -> None:
        lag = self._rt.metrics.loop_lag_statistics().max_recent_s
        s = self._settings
        if lag > s.loop_lag_failed_s:
            level = Level.FAILED
        elif lag > s.loop_lag_degraded_s:
            level = Level.DEGRADED
        else:
            level = Level.OK
        self._set("event_loop", level, f"lag {lag * 1000:.1f} ms (degraded over "
                  f"{s.loop_lag_degraded_s * 1000:.0f} ms)")

    def check_memory(self) -> None:
        rss = int(process_rss_bytes())
        limit = self._settings.rss_max_bytes
        level = Level.DEGRADED if limit and rss > limit else Level.OK
        self._set("memory", level, f"RSS {_mib(rss)}" + (f" (limit {_mib(limit)})" if limit else ""))

    # -- gemini

    async def _run_key_checks(self) -> None:
        interval = self._settings.gemini_check_interval_s
        backoff = self._rt.config.daemon.health_interval_s
        while True:
            ok = await self.check_key()
            delay = interval if ok else min(backoff, interval)
            backoff = self._rt.config.daemon.health_interval_s if ok else min(
                backoff * 2, self._rt.config.daemon.recovery_max_backoff_s)
            await asyncio.sleep(delay)  # the checking cadence, not synchronisation

    async def check_key(self) -> bool:
        """One authenticated call (cached by the caller's cadence); True when it passed."""
        provider = self._rt.provider
        if provider.configuration_problem() is not None:
            return True  # nothing to call: check_gemini reports the missing key
        self._key = await provider.check_key()
        self.check_gemini()
        return self._key.status is KeyStatus.OK

    def check_gemini(self) -> None:
        # Health only: the breaker itself moves the lifecycle (Daemon._on_breaker_change).
        level, reason = self._gemini_verdict(self._rt.provider)
        self._set("gemini", level, reason)

    def _gemini_verdict(self, provider: ResilientProvider) -> tuple[Level, str]:
        if provider.configuration_problem() is not None:
            return Level.DEGRADED, ("no API key: chat answers in degraded mode "
                                    "(set the credential gemini-api-key or GEMINI_API_KEY)")
        health = provider.statistics().health
        live = (_PROVIDER_LEVELS[health.status], health.reason)
        if self._key is None or self._key.status is KeyStatus.OK:
            return live
        checked = (_KEY_LEVELS[self._key.status], f"key check: {self._key.status}: {self._key.detail}")
        return max(live, checked, key=lambda verdict: _ORDER.index(verdict[0]))

    # -- alerts

    def evaluate_alerts(self) -> None:
        errors, requests = self._rt.metrics.errors.counts()
        breaker = self._rt.provider.statistics().breaker
        inputs = AlertInputs(
            errors=errors,
            requests=requests,
            chat_p95_s=self._rt.metrics.chat_p95_s(),
            breaker_open=breaker.state is BreakerState.OPEN,
            breaker_detail=(f"circuit breaker open after {breaker.trips} trip(s); last failure: "
                            f"{breaker.last_failure_kind}"),
            disk_free_bytes=self._disk_free,
            disk_detail=self._disk_detail,
        )
        evaluate_rules(self._rt.alerts, inputs, self._settings)

    # -- reporting

    def _set(self, component: str, level: Level, reason: str) -> None:
        previous = self._rt.health.get(component)
        self._rt.health.report(component, level, reason)
        if previous is None or previous.level is not level:
            _log_change(component, level, reason, first=previous is None)
        if component not in CRITICAL:
            return
        if level is Level.FAILED:
            self._rt.lifecycle.component_failed(component, reason)
        else:
            self._rt.lifecycle.component_recovered(component)


def _log_change(component: str, level: Level, reason: str, *, first: bool) -> None:
    if level is Level.OK and first:
        return  # a component that starts healthy is not news
    log_level = {Level.OK: logging.INFO, Level.DEGRADED: logging.WARNING,
                 Level.FAILED: logging.ERROR}[level]
    logger.log(log_level, "%s is %s: %s", component, level, reason,
               extra={"component": component, "health": str(level)})


def _free_bytes(path: Path) -> int:
    try:
        stats = os.statvfs(path)
    except OSError:
        return 0
    return stats.f_bavail * stats.f_frsize


def _mib(size: float) -> str:
    return f"{size / MIB:.1f} MiB"
