"""The daemon: startup(), main_loop(), shutdown() around one asyncio loop.

Signal handlers only record intent. The first SIGTERM/SIGINT (or `agentctl
stop`) starts a graceful stop; a second one forces a fast exit that still
closes the store.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import resource
import signal
import socket
import uuid
from collections.abc import Coroutine, MutableMapping
from typing import TYPE_CHECKING, Any

from agentd.access import AccessPolicy, build_policy
from agentd.audit.retention import AuditRetention
from agentd.audit.rows import settle_anchor
from agentd.audit.writer import AuditWriter
from agentd.chat import ChatPipeline
from agentd.commands.table import command_table
from agentd.config import Config
from agentd.dispatch import Dispatcher
from agentd.errors import AlreadyRunning, ConfigError, StoreError
from agentd.governance.budgets import BudgetLedger
from agentd.governance.gate import Gate
from agentd.lifecycle import Lifecycle, State
from agentd.ownership import CurrentSessions
from agentd.paths import Paths
from agentd.providers import create_provider
from agentd.providers.resilience import ResilientProvider
from agentd.ratelimit import RequestLimiter
from agentd.refusals import RefusalAudit
from agentd.retention import run_schedule, scheduled_selection
from agentd.runtime import Runtime
from agentd.secrets import load_db_key, load_gemini_key
from agentd.server import Server, bind_socket, refuse_waiting_clients
from agentd.statelock import StateLock
from agentd.store import messages, sessions, state
from agentd.store.anchor import ANCHOR_NAME, AnchorFile, refuse_missing_database
from agentd.store.database import Database
from agentd.store.migrations import migrate
from agentd.store.retention import enable_incremental_vacuum
from agentd.systemd import Notifier, adopt_listen_socket, run_watchdog, watchdog_interval
from agentd.telemetry.alerts import AlertBoard
from agentd.telemetry.checks import HealthChecks, Verdicts
from agentd.telemetry.gemini import GeminiHealth
from agentd.telemetry.health import HealthBoard, Level
from agentd.telemetry.instruments import Instruments, restore_counters, save_counters
from agentd.telemetry.logs import LogSinks, add_log_file, detach_stderr
from agentd.telemetry.loop_lag import LoopLagMonitor
from agentd.telemetry.metrics import Registry
from agentd.tools.toolbox import ToolServers
from agentd.trust import check_state_dir

if TYPE_CHECKING:
    from agentd.http.app import HttpServer  # aiohttp: imported at run time only when enabled

logger = logging.getLogger(__name__)


class Daemon:
    def __init__(
        self,
        config: Config,
        paths: Paths,
        environ: MutableMapping[str, str],
        log_sinks: LogSinks,
        *,
        detached: bool = False,
        accept_rollback: bool = False,
    ) -> None:
        self.config = config
        self.paths = paths
        self._environ = environ
        self._log_sinks = log_sinks
        self._detached = detached
        self._accept_rollback = accept_rollback  # a database older than the anchor may open
        self._lock = StateLock(paths.state_dir)
        self._anchor = AnchorFile(paths.state_dir / ANCHOR_NAME)
        self.lifecycle = Lifecycle()
        self._notifier = Notifier(environ.get("NOTIFY_SOCKET"))
        self._stop = asyncio.Event()
        self._force = asyncio.Event()
        self._stop_reason = ""
        self._tasks: list[asyncio.Task[Any]] = []
        self._db: Database | None = None
        self._server: Server | None = None
        self._refusals: RefusalAudit | None = None
        self._bound_socket = False
        self._adopted: socket.socket | None = None
        self._gemini: GeminiHealth | None = None
        self.runtime: Runtime | None = None
        self._verdicts: Verdicts | None = None
        self._http: HttpServer | None = None  # [http] enabled: served after READY

    async def run(self) -> None:
        try:
            await self.startup()
        except BaseException as exc:
            await self._abort_startup(exc)
            raise
        try:
            await self.main_loop()
        finally:
            await self.shutdown()

    async def _abort_startup(self, exc: BaseException) -> None:
        """Undo a half-done start quietly: the caller prints the one line that matters."""
        if self._server is not None:
            self._server.stop_accepting()
        if self._adopted is not None:
            refuse_waiting_clients(self._adopted, f"agentd cannot start: {exc}")
        await self._close_store()
        self._release_state_dir()
        self._remove_socket()

    # -- startup ----------------------------------------------------------------

    async def startup(self) -> None:
        self.lifecycle.add_listener(
            lambda old, new, reason: self._notifier.status(f"{new}: {reason}")
        )
        self._install_signal_handlers()
        _raise_fd_limit()
        check_state_dir(self.paths)  # before any file in it is opened
        add_log_file(
            self._log_sinks,
            self.paths.log_file,
            self.config.log.file_max_bytes,
            self.config.log.file_backups,
        )
        sock = self._listen_socket()  # first: a second daemon stops here, before the store
        self._lock.acquire()  # ... or here, when it listens elsewhere on the same state dir
        runtime = await self._open_store()
        self._refusals = RefusalAudit(
            runtime.audit,
            runtime.metrics.refusals_aggregated,
            audited_each=self.config.limits.refusals_audited_each,
            interval_s=self.config.limits.refusal_interval_s,
        )
        dispatcher = self._dispatcher(runtime, self._refusals)
        self._server = Server(
            self.config.daemon, dispatcher, runtime.access, runtime.metrics.connections_refused
        )
        await self._server.start(sock)
        self.lifecycle.transition(State.READY, "listening")
        self._notifier.ready(f"{State.READY}: listening on {self.paths.socket}")
        logger.info(
            "agentd %s ready on %s (pid %d)",
            runtime.version,
            self.paths.socket,
            os.getpid(),
        )
        self._start_background_tasks()
        if self.config.http.enabled:
            await self._start_http(dispatcher, runtime)
        if self._detached:
            detach_stderr(self._log_sinks)

    def _dispatcher(self, runtime: Runtime, refusals: RefusalAudit) -> Dispatcher:
        return Dispatcher(
            command_table(),
            runtime,
            access=runtime.access,
            lifecycle=self.lifecycle,
            limiter=runtime.limiter,
            metrics=runtime.metrics,
            audit=runtime.audit,
            refusals=refusals,
            policy=self.config.audit,
        )

    async def _start_http(self, dispatcher: Dispatcher, runtime: Runtime) -> None:
        """aiohttp costs its import here, after READY, and only when [http] is enabled."""
        from agentd.http.app import start_http  # only when enabled: aiohttp costs its import

        assert self._server is not None
        try:
            self._http = await start_http(
                self.config, self.paths, dispatcher, self._server, runtime
            )
        except (ConfigError, AlreadyRunning) as exc:  # the control socket still serves
            logger.error("HTTP not served: %s", exc)
            runtime.health.report("http", Level.FAILED, str(exc))

    async def _open_store(self) -> Runtime:
        key = load_db_key(self.config, self.paths, self._environ)
        anchored = self._anchor.open()
        refuse_missing_database(self.paths.database, anchored, accept=self._accept_rollback)
        self._db = Database(
            self.paths.database,
            key.secret,
            busy_timeout_ms=self.config.store.busy_timeout_ms,
            on_lost=self._on_store_lost,
        )
        try:
            await self._db.open()
        except ConfigError as exc:
            raise ConfigError(f"{exc} (key from {key.source})") from None
        applied = await self._db.run(migrate)
        await self._db.run(enable_incremental_vacuum)  # one VACUUM on an older database
        await self._db.run(settle_anchor, self._anchor, self._accept_rollback)  # or exit 78
        agent_id, current, interrupted = await self._db.run(_restore, self.config.profile)
        logger.info(
            "store open: %s (%d migrations applied now, key from %s)",
            self.paths.database,
            len(applied),
            key.source,
        )
        if interrupted:
            logger.warning(
                "%d chats cut off by the previous run are marked interrupted", interrupted
            )
        provider = self._create_provider()
        metrics = Instruments(
            prices=self.config.pricing.prices(),
            loop_lag=LoopLagMonitor(),
            error_window_s=self.config.health.error_window_s,
        )
        limiter = RequestLimiter(self.config.limits)
        gate = self._gate(metrics)
        await gate.restore()
        chat = ChatPipeline(
            self.config.chat,
            self.config.gemini,
            self._db,
            provider,
            self.lifecycle,
            limiter,
            metrics,
            gate,
            self.config.tools,
        )
        health = HealthBoard()
        self._verdicts = Verdicts(health, self.lifecycle)
        self._gemini = GeminiHealth(
            provider,
            health,
            self.lifecycle,
            model=self.config.gemini.model,
            check_interval_s=self.config.health.gemini_check_interval_s,
            recovery_max_backoff_s=self.config.daemon.recovery_max_backoff_s,
        )
        self.runtime = Runtime(
            config=self.config,
            paths=self.paths,
            lifecycle=self.lifecycle,
            db=self._db,
            health=health,
            logs=self._log_sinks,
            access=self._access_policy(),
            provider=provider,
            chat=chat,
            agent_id=agent_id,
            current=CurrentSessions(self._db, current),
            request_stop=self.request_stop,
            metrics=metrics,
            alerts=AlertBoard(),
            audit=AuditWriter(self._db, anchor=self._anchor),
            limiter=limiter,
            gemini_health=self._gemini,
            gate=gate,
            tools=_tool_servers(self.config, health, metrics.registry),
        )
        await restore_counters(self._db, metrics)
        self.runtime.metrics.starts.inc()
        await self.runtime.audit.start()
        self.runtime.health.report("store", Level.OK, "opened; migrations current")
        self.runtime.health.report("encryption", Level.OK, "SQLCipher, raw 256-bit key")
        self._gemini.report_start()
        return self.runtime

    def _on_store_lost(self, reason: str) -> None:
        """The database files were deleted or replaced under us: ERROR at once."""
        if self._verdicts is not None:
            self._verdicts.report("store", Level.FAILED, reason)

    def _gate(self, metrics: Instruments) -> Gate:
        assert self._db is not None
        c = self.config
        ledger = BudgetLedger(c.budgets, c.pricing.prices())
        return Gate(c.secrets_scan, c.model_policy, c.gemini, ledger, self._db, metrics.registry)

    def _create_provider(self) -> ResilientProvider:
        key = load_gemini_key(self.config, self.paths, self._environ)
        return create_provider(
            self.config.gemini,
            key.reveal() if key else None,
            on_health_change=self._on_provider_health,
        )

    def _on_provider_health(self) -> None:
        """New evidence of Gemini's health: its one owner reassesses."""
        if self._gemini is not None:
            self._gemini.reassess()

    def _access_policy(self) -> AccessPolicy:
        a = self.config.access
        try:
            return build_policy(
                admin_users=a.admin_users,
                admin_groups=a.admin_groups,
                chat_groups=a.chat_groups,
                read_groups=a.read_groups,
                socket_group=self.config.daemon.socket_group,
                socket_group_role=a.socket_group_role,
            )
        except LookupError as exc:
            raise ConfigError(f"[access]: {exc.args[0]}") from None

    def _listen_socket(self) -> socket.socket:
        self._adopted = adopt_listen_socket(self._environ)
        if self._adopted is not None:
            logger.info("adopted the socket passed by systemd")
            return self._adopted
        sock = bind_socket(self.paths.socket, self.config.daemon.socket_group)
        self._bound_socket = True  # only now is the file ours to remove
        return sock

    def _start_background_tasks(self) -> None:
        assert self.runtime is not None
        interval = watchdog_interval(self._environ)
        if interval:
            self._spawn(run_watchdog(self._notifier, interval), "watchdog")
        self._spawn(self._health_checks(self.runtime).run(), "health")
        self._spawn(self.runtime.metrics.run_loop_lag(), "loop-lag")
        if scheduled_selection(self.config.retention, 0.0) is not None:
            self._spawn(run_schedule(self.runtime), "retention")
        if self._refusals is not None:
            self._spawn(self._refusals.run(), "refusal-audit")
        if self.config.audit.retention_days > 0:
            retention = AuditRetention(
                self.runtime.db,
                retention_days=self.config.audit.retention_days,
                prune_interval_s=self.config.audit.prune_interval_s,
            )
            self._spawn(retention.run(), "audit-retention")
        if self.runtime.provider.configuration_problem() is None:
            # google-genai costs ~0.85 s to import: pay it now, after READY, not on the first chat.
            self._spawn(self.runtime.provider.warm_up(), "gemini-warm-up")
        if self.runtime.tools is not None:
            # After READY: spawning servers and importing `mcp` (~0.8 s) must not delay it.
            self.runtime.tools.start()

    def _health_checks(self, runtime: Runtime) -> HealthChecks:
        return HealthChecks(
            self.config.health,
            self.config.daemon,
            db=runtime.db,
            paths=self.paths,
            metrics=runtime.metrics,
            alerts=runtime.alerts,
            verdicts=self._verdicts or Verdicts(runtime.health, self.lifecycle),
            gemini=runtime.gemini_health,
            save_counters=self._save_counters,
        )

    async def _save_counters(self) -> None:
        """Persist the lifetime counters (a real write: the store check's too)."""
        assert self.runtime is not None
        await save_counters(self.runtime.db, self.runtime.metrics, self.runtime.readings())

    def _spawn(self, work: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.create_task(work, name=name)
        task.add_done_callback(self._report_crash)
        self._tasks.append(task)

    def _report_crash(self, task: asyncio.Task[None]) -> None:
        """A background task must not die silently: log it and show it in health."""
        if task.cancelled() or task.exception() is None:
            return
        exc = task.exception()
        logger.critical("background task %s crashed", task.get_name(), exc_info=exc)
        if self.runtime is not None:
            self.runtime.health.report(task.get_name(), Level.FAILED, f"crashed: {exc!r}")

    # -- main loop ------------------------------------------------------------------

    async def main_loop(self) -> None:
        await self._stop.wait()

    def request_stop(self, reason: str) -> None:
        if not self._stop.is_set():
            self._stop_reason = reason
            logger.info("stopping: %s", reason)
            self._stop.set()

    def _on_signal(self, signum: int) -> None:
        name = signal.Signals(signum).name
        if self._stop.is_set():
            logger.warning("%s again: forcing a fast exit", name)
            self._force.set()
        else:
            self.request_stop(name)

    def _install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self._on_signal, signum)

    # -- shutdown ---------------------------------------------------------------------

    async def shutdown(self) -> None:
        if self.lifecycle.state is State.STOPPED:
            return
        stats = self.lifecycle.statistics()
        if stats.state is not State.STOPPING:
            self.lifecycle.transition(State.STOPPING, self._stop_reason)
        self._notifier.stopping()
        # 1. STOPPING: new work is answered SHUTTING_DOWN; status and health still answer.
        drained = await self._drain()  # 2. in-flight chats finish within the grace period
        if self._http is not None:
            await self._http.close()  # 3a. HTTP: no new requests; what is left is cut
        if self._server is not None:
            self._server.stop_accepting()  # 3. no new connections
            await self._server.close_connections()  # 4. cut what is left (marked interrupted)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._gemini is not None:
            await self._gemini.aclose()
        if self.runtime is not None:
            await self.runtime.provider.aclose()
            if self.runtime.tools is not None:
                await self.runtime.tools.aclose()
        await self._close_store()  # 5. persist state and close the store
        self._release_state_dir()  # 6. the next daemon may start on this state dir
        self._remove_socket()  # 7. the socket file goes last: clients see "not running"
        self.lifecycle.transition(State.STOPPED, self._stop_reason)
        logger.info(
            "stopped: %s; in-flight chats %s; %d connections served in this run",
            self._stop_reason,
            "drained" if drained else "interrupted",
            self._server.statistics().connections_total if self._server else 0,
        )
        self._notifier.close()

    async def _drain(self) -> bool:
        if self._server is None:
            return True
        grace = self.config.daemon.shutdown_grace_s
        if self.lifecycle.statistics().in_flight:
            logger.info(
                "draining %d in-flight chats (up to %.1fs)",
                self.lifecycle.statistics().in_flight,
                grace,
            )
        idle = asyncio.create_task(self._server.wait_drained())
        force = asyncio.create_task(self._force.wait())
        done, pending = await asyncio.wait(
            {idle, force}, timeout=grace, return_when=asyncio.FIRST_COMPLETED
        )
        for task in pending:
            task.cancel()
        return idle in done

    async def _close_store(self) -> None:
        if self._db is None:
            return
        if self.runtime is not None:
            if self._refusals is not None:
                await self._refusals.flush()  # refusals counted so far: their rows, too
            await self.runtime.audit.close()  # queued audit rows go in before the store closes
            with contextlib.suppress(StoreError):
                await self._save_counters()
        await self._db.close()

    def _release_state_dir(self) -> None:
        self._anchor.close()
        self._lock.release()

    def _remove_socket(self) -> None:
        if self._bound_socket:
            with contextlib.suppress(FileNotFoundError):
                self.paths.socket.unlink()


def _restore(conn: Any, profile: str) -> tuple[str, dict[int, str], int]:
    """The agent id and each uid's current session of the previous run, or new ones;
    chats the previous run left pending (a crash) are marked interrupted."""
    agent_id = state.get_value(conn, "agent_id") or "a-" + uuid.uuid4().hex[:16]
    state.put_values(conn, {"agent_id": agent_id})
    current = sessions.restore_current(conn, os.getuid())
    return agent_id, current, messages.interrupt_pending(conn)


def _raise_fd_limit() -> None:
    """Many clients at once need more descriptors than the common soft limit of 1024."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _tool_servers(config: Config, health: HealthBoard, registry: Registry) -> ToolServers | None:
    """The configured tool servers, or None when no enabled one is (nothing to start)."""
    if not any(server.enabled for server in config.tools.servers):
        return None
    return ToolServers(config.tools, health, registry)
