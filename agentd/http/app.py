"""The HTTP server: aiohttp on agentd's own loop, on agentd-http.sock beside the control socket.

Started after READY and only with [http] enabled (this module imports aiohttp);
closed in the daemon's shutdown after in-flight chats are drained. Routes:

    GET  /healthz /readyz /metrics           probes and the Prometheus scrape
    GET  /api/v1/{status,health,sessions,...} the REST API (openapi.py documents it)
    POST /v1/chat/completions, GET /v1/models  OpenAI-compatible (openai.py)
"""

from __future__ import annotations

import contextlib
import logging
import socket
import time
from pathlib import Path
from typing import Any

from aiohttp import web

from agentd.config import Config
from agentd.dispatch import Dispatcher
from agentd.errors import ConfigError
from agentd.http import openai, openapi
from agentd.http.bearer import Bearer
from agentd.http.bridge import (
    BRIDGE,
    MODELS,
    SETTINGS,
    Bridge,
    Finishing,
    Handler,
    HttpError,
    error_response,
    peer,
    peer_of,
)
from agentd.http.openai import DEFAULT_MODEL
from agentd.http.settings import HTTP_SOCKET_NAME, HttpSettings, loopback_address
from agentd.lifecycle import SERVING, Lifecycle
from agentd.paths import Paths
from agentd.protocol import ErrorCode
from agentd.runtime import Runtime
from agentd.server import bind_socket

logger = logging.getLogger(__name__)

LIFECYCLE = web.AppKey("lifecycle", Lifecycle)
BEARER = web.AppKey("bearer", Bearer)


class HttpServer:
    def __init__(
        self,
        settings: HttpSettings,
        dispatcher: Dispatcher,
        finishing: Finishing,
        runtime: Runtime,
        models: list[str],
    ) -> None:
        self._settings = settings
        self._app = build_app(
            settings,
            Bridge(dispatcher, finishing, runtime.access, settings.max_requests_per_uid),
            runtime.lifecycle,
            Bearer(runtime.db, time.time),
            models,
        )
        self._runner: web.AppRunner | None = None
        self._path: Path | None = None

    async def start(self, sock: socket.socket, path: Path | None) -> None:
        """Serve on a listening socket; `path` is the file to remove on close (ours)."""
        self._runner = web.AppRunner(
            self._app,
            handle_signals=False,  # the daemon owns SIGTERM/SIGINT
            access_log=None,  # requests are audited and counted; no per-request log line
            keepalive_timeout=self._settings.keepalive_timeout_s,
            handler_cancellation=True,  # a client that hangs up cancels its chat, as on the socket
            shutdown_timeout=self._settings.shutdown_timeout_s,
        )
        await self._runner.setup()
        await web.SockSite(self._runner, sock).start()
        self._path = path
        if self._settings.listen:
            host, port = loopback_address(self._settings.listen)
            try:
                await web.TCPSite(self._runner, host, port).start()
            except OSError as exc:
                raise ConfigError(
                    f"http.listen: cannot listen on {self._settings.listen}: {exc.strerror}"
                ) from exc

    async def close(self) -> None:
        """Stop accepting, give open requests shutdown_timeout_s, then cut them."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._path is not None:
            with contextlib.suppress(FileNotFoundError):
                self._path.unlink()


def build_app(
    settings: HttpSettings, bridge: Bridge, lifecycle: Lifecycle, bearer: Bearer, models: list[str]
) -> web.Application:
    app = web.Application(client_max_size=settings.max_body_bytes, middlewares=[_errors])
    app[BRIDGE] = bridge
    app[LIFECYCLE] = lifecycle
    app[BEARER] = bearer
    app[SETTINGS] = settings
    app[MODELS] = models
    app[openai.CONVERSATIONS] = openai.Conversations()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/api/v1/status", _command("status"))
    app.router.add_get("/api/v1/health", _command("health"))
    app.router.add_get("/api/v1/sessions", _command("sessions", limit=int, all=bool, user=str))
    app.router.add_get("/api/v1/sessions/{session}/history", _command("history", limit=int))
    app.router.add_get(
        "/api/v1/search", _command("search", q=str, session=str, limit=int, all=bool)
    )
    app.router.add_get("/api/v1/openapi.json", openapi.document)
    app.router.add_post("/v1/chat/completions", openai.chat_completions)
    app.router.add_get("/v1/models", openai.models)
    return app


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every error as the socket's {code, message}: ours, and aiohttp's (404, 405...)."""
    try:
        caller = peer_of(request)
        if caller is None:  # loopback TCP: the bearer token says who
            caller = await request.app[BEARER].peer(request)
        request["peer"] = caller
        with request.app[BRIDGE].slot(caller):
            return await handler(request)
    except HttpError as exc:
        return error_response(exc.error, exc.status)
    except web.HTTPRequestEntityTooLarge as exc:
        return error_response(
            {"code": ErrorCode.FRAME_TOO_LARGE, "message": exc.text or "too large"}, 413
        )
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = ErrorCode.NOT_FOUND if exc.status == 404 else ErrorCode.BAD_REQUEST
        return error_response({"code": code, "message": exc.reason}, exc.status)


async def healthz(request: web.Request) -> web.Response:
    """Liveness: the process answers on its loop."""
    return web.json_response({"alive": True, "state": str(request.app[LIFECYCLE].state)})


async def readyz(request: web.Request) -> web.Response:
    """Readiness: 200 while READY or PROCESSING, 503 otherwise (starting, stopping, ERROR)."""
    state = request.app[LIFECYCLE].state
    return web.json_response(
        {"ready": state in SERVING, "state": str(state)}, status=200 if state in SERVING else 503
    )


async def metrics(request: web.Request) -> web.Response:
    """The Prometheus text of `agentctl metrics --prometheus` (the metrics command)."""
    reply = await request.app[BRIDGE].call(peer(request), "metrics", {"format": "prometheus"})
    if not reply.get("ok"):
        return error_response(reply["error"])
    result = reply["result"]
    return web.Response(
        body=result["text"].encode("utf-8"), headers={"Content-Type": result["content_type"]}
    )


_QUERY_ARG = {"q": "query"}  # a query parameter named otherwise than the command's argument


def _command(cmd: str, **query: type) -> Handler:
    """A GET route answering one command with JSON; path and query parameters are its args."""

    async def handle(request: web.Request) -> web.StreamResponse:
        args: dict[str, Any] = dict(request.match_info)
        for name, value in request.query.items():
            kind = query.get(name)
            if kind is None:
                raise HttpError(ErrorCode.BAD_REQUEST, f"unknown query parameter {name[:64]!r}")
            args[_QUERY_ARG.get(name, name)] = _parse(name, value, kind)
        reply = await request.app[BRIDGE].call(peer(request), cmd, args)
        if not reply.get("ok"):
            return error_response(reply["error"])
        return web.json_response(reply["result"])

    return handle


def _parse(name: str, value: str, kind: type) -> Any:
    if kind is bool:
        if value not in ("true", "false", "1", "0"):
            raise HttpError(ErrorCode.BAD_REQUEST, f"{name} must be true or false")
        return value in ("true", "1")
    if kind is int:
        try:
            return int(value)
        except ValueError:
            raise HttpError(ErrorCode.BAD_REQUEST, f"{name} must be an integer") from None
    return value


async def start_http(
    config: Config, paths: Paths, dispatcher: Dispatcher, finishing: Finishing, runtime: Runtime
) -> HttpServer:
    """Bind agentd-http.sock beside the control socket (same mode and group) and serve."""
    path = paths.socket.parent / HTTP_SOCKET_NAME
    sock = bind_socket(path, config.daemon.socket_group)
    models = [DEFAULT_MODEL, config.gemini.model]
    server = HttpServer(config.http, dispatcher, finishing, runtime, models)
    try:
        await server.start(sock, path)
    except ConfigError:
        await server.close()
        raise
    logger.info(
        "serving HTTP on %s%s", path, f" and {config.http.listen}" if config.http.listen else ""
    )
    return server
