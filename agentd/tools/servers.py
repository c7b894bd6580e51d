"""One configured MCP server, supervised: connect, list its tools, serve calls, restart.

    starting ─▶ running ─(crash, ping fails, call finds it gone)─▶ backoff ─▶ starting ...
        └─(cannot start)─▶ backoff (last_error kept; a health detail, never a daemon failure)

The official `mcp` SDK is the client. It costs ~0.8 s and tens of MB to
import, so this module imports it only inside `_serve_once`, which runs after
READY and only for configured servers. The SDK's transports are anyio task
groups that must be entered and left by one task: each server's whole
connection lives inside its supervisor task, and calls from chats go through
the session it publishes while running.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import json
import logging
import re
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agentd.errors import AgentdError
from agentd.providers.base import ToolSpec
from agentd.tools.settings import ServerSpec, ToolSettings

if TYPE_CHECKING:
    from mcp import ClientSession

logger = logging.getLogger(__name__)

_PING_INTERVAL_S = 10.0  # how soon an idle server's crash is noticed
# A function name Gemini accepts (API reference, FunctionDeclaration.name); a tool
# named otherwise would make every request of the chat fail, so it is left out.
_FUNCTION_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.:-]{0,63}\Z")


class ServerState(enum.StrEnum):
    STARTING = "starting"
    RUNNING = "running"
    BACKOFF = "backoff"  # failed; restarting after a delay
    STOPPED = "stopped"


class ServerGone(AgentdError):
    """The server is not running (starting, backing off, or it died mid-call)."""


class McpServer:
    """A supervised connection to one MCP server; construct, then `start()`."""

    def __init__(
        self,
        spec: ServerSpec,
        settings: ToolSettings,
        *,
        clock: Callable[[], float] = time.monotonic,
        on_change: Callable[[], None] = lambda: None,
    ) -> None:
        self.spec = spec
        self._settings = settings
        self._clock = clock
        self._on_change = on_change  # told of each state change (health)
        self.state = ServerState.STOPPED
        self.tools: tuple[ToolSpec, ...] = ()
        self.skipped: tuple[str, ...] = ()  # tools left out: their schema was unusable
        self.last_error: str | None = None
        self.restarts = 0
        self.calls = 0
        self._session: ClientSession | None = None
        self._failed: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._supervise(), name=f"mcp-{self.spec.name}")

    async def aclose(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self.state = ServerState.STOPPED

    async def call(self, tool: str, args: dict[str, Any], timeout_s: float) -> tuple[str, bool]:
        """Run one tool: (text, is_error). Raises TimeoutError or ServerGone."""
        session = self._session
        if session is None or self.state is not ServerState.RUNNING:
            raise ServerGone(f"server {self.spec.name!r} is {self.state}")
        self.calls += 1
        async with asyncio.timeout(timeout_s):
            try:
                result = await session.call_tool(tool, args)
            except (asyncio.CancelledError, TimeoutError):
                raise
            except Exception as exc:  # the SDK's own errors: connection closed, McpError
                if self._failed is not None and _is_disconnect(exc):
                    self._failed.set()  # the supervisor restarts it
                raise ServerGone(f"server {self.spec.name!r}: {type(exc).__name__}") from exc
        return _result_text(result), bool(result.is_error)

    def snapshot(self) -> dict[str, Any]:
        """For `agentctl tools`, `status` and health: state, tools, last error."""
        return {
            "name": self.spec.name,
            "transport": self.spec.transport,
            "state": str(self.state),
            "restarts": self.restarts,
            "calls": self.calls,
            "last_error": self.last_error,
            "tools": [
                {"name": t.name, "policy": self.spec.policy(t.name), "description": t.description}
                for t in self.tools
            ],
            "skipped": list(self.skipped),
            "roles": list(self.spec.roles),
        }

    async def _supervise(self) -> None:
        delay = self._settings.restart_backoff_s
        while True:
            self._set_state(ServerState.STARTING)
            started = self._clock()
            try:
                await self._serve_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # any way a server fails: it is restarted, never fatal
                self.last_error = _describe(exc)
            self._session, self.tools = None, ()
            self._set_state(ServerState.BACKOFF)
            if self._clock() - started > self._settings.restart_backoff_max_s:
                delay = self._settings.restart_backoff_s  # it ran a good while: start afresh
            logger.warning(
                "tool server %s stopped (%s); restarting in %.1f s",
                self.spec.name,
                self.last_error,
                delay,
                extra={"server": self.spec.name, "restarts": self.restarts},
            )
            await asyncio.sleep(delay)  # the backoff itself, not synchronisation
            delay = min(delay * 2, self._settings.restart_backoff_max_s)
            self.restarts += 1

    def _set_state(self, state: ServerState) -> None:
        self.state = state
        self._on_change()

    async def _serve_once(self) -> None:
        from mcp import ClientSession

        async with self._connect() as (read, write), ClientSession(read, write) as session:
            async with asyncio.timeout(self._settings.start_timeout_s):
                await session.initialize()
                listed = await session.list_tools()
            self.tools, self.skipped = _specs(listed.tools)
            if self.skipped:
                self.last_error = (
                    f"tools left out (unusable schema or name): {', '.join(self.skipped)}"
                )
            self._failed = asyncio.Event()
            self._session = session
            self._set_state(ServerState.RUNNING)
            logger.info(
                "tool server %s running with %d tools",
                self.spec.name,
                len(self.tools),
                extra={"server": self.spec.name, "tools": len(self.tools)},
            )
            await self._watch(session, self._failed)

    async def _watch(self, session: ClientSession, failed: asyncio.Event) -> None:
        """Return when the server is found gone: a call saw it, or a ping failed."""
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(_PING_INTERVAL_S):
                    await failed.wait()
                    raise ServerGone("the connection closed during a call")
            async with asyncio.timeout(self._settings.start_timeout_s):
                await session.send_ping()

    @contextlib.asynccontextmanager
    async def _connect(self) -> AsyncIterator[tuple[Any, Any]]:
        if self.spec.transport == "http":
            async with self._connect_http() as streams:
                yield streams
            return
        from mcp import StdioServerParameters
        from mcp.client.stdio import stdio_client

        params = StdioServerParameters(
            command=self.spec.command,
            args=list(self.spec.args),
            env=dict(self.spec.env) or None,
            cwd=self.spec.cwd,
        )
        async with stdio_client(params) as (read, write):
            yield read, write

    @contextlib.asynccontextmanager
    async def _connect_http(self) -> AsyncIterator[tuple[Any, Any]]:
        import httpx2
        from mcp.client.streamable_http import streamable_http_client

        headers = {}
        if self.spec.token_file:
            token = Path(self.spec.token_file).read_text().strip()
            headers["Authorization"] = f"Bearer {token}"
        async with (
            httpx2.AsyncClient(headers=headers) as client,
            streamable_http_client(self.spec.url, http_client=client) as streams,
        ):
            yield streams[0], streams[1]


def _specs(tools: list[Any]) -> tuple[tuple[ToolSpec, ...], tuple[str, ...]]:
    """Tools Gemini can be told of (an object schema, a valid name); the names of the others."""
    kept: list[ToolSpec] = []
    skipped: list[str] = []
    for tool in tools:
        schema = tool.input_schema
        if (
            isinstance(schema, dict)
            and schema.get("type") == "object"
            and _FUNCTION_NAME.match(tool.name)
        ):
            kept.append(ToolSpec(tool.name, tool.description or "", schema))
        else:
            skipped.append(tool.name)
    return tuple(kept), tuple(skipped)


def _result_text(result: Any) -> str:
    """The result as text for the model: text parts joined; others named, not sent."""
    pieces: list[str] = []
    for block in result.content:
        text = getattr(block, "text", None)
        pieces.append(text if isinstance(text, str) else f"[{block.type} content omitted]")
    if not pieces and result.structured_content is not None:
        pieces.append(json.dumps(result.structured_content))
    return "\n".join(pieces)


def _is_disconnect(exc: BaseException) -> bool:
    import anyio

    return isinstance(
        exc, anyio.ClosedResourceError | anyio.EndOfStream | anyio.BrokenResourceError
    ) or ("closed" in str(exc).lower())


def _describe(exc: BaseException) -> str:
    """One line for status: the exception's kind and message, cut short (no secrets here:
    server configs hold paths, not keys; a token file's content is never in a message)."""
    if isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        return _describe(exc.exceptions[0])
    message = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {message}"[:300]
