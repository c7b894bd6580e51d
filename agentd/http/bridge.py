"""From an HTTP request to the command layer and back: peer, dispatch, status codes.

The msgpack connection (agentd/connection.py) is the model: the peer is the
kernel's word (SO_PEERCRED on the request's own connection), the request goes
through the same Dispatcher (roles, states, rate limits, audit), and an error
reply keeps its stable code; only the HTTP status is added.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import socket
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any, Final, Protocol

from aiohttp import web

from agentd.access import AccessPolicy, Peer, Role, peer_credentials
from agentd.commands import Emit
from agentd.dispatch import Dispatcher
from agentd.http.settings import HttpSettings
from agentd.protocol import ErrorCode, Request

STATUS: Final[dict[str, int]] = {
    ErrorCode.BAD_REQUEST: 400,
    ErrorCode.UNKNOWN_COMMAND: 404,
    ErrorCode.UNSUPPORTED_VERSION: 400,
    ErrorCode.FRAME_TOO_LARGE: 413,
    ErrorCode.FORBIDDEN: 403,
    ErrorCode.NOT_READY: 503,
    ErrorCode.RATE_LIMITED: 429,
    ErrorCode.BUSY: 503,
    ErrorCode.SHUTTING_DOWN: 503,
    ErrorCode.NOT_FOUND: 404,
    ErrorCode.PROVIDER_ERROR: 502,
    ErrorCode.DISK_FULL: 507,
    ErrorCode.STORE_UNAVAILABLE: 503,
    ErrorCode.INTERNAL: 500,
    ErrorCode.SECRET_REFUSED: 422,
    ErrorCode.BUDGET_EXCEEDED: 429,
    ErrorCode.UNAUTHENTICATED: 401,
}


# curl -d sends its default form type: the body is read as JSON all the same.
JSON_TYPES: Final = frozenset({"application/json", "application/x-www-form-urlencoded"})


class Finishing(Protocol):
    """What a graceful stop waits for (server.Server): requests that must finish."""

    def begin_finishing(self) -> None: ...

    def end_finishing(self) -> None: ...


async def no_events(kind: str, fields: dict[str, Any]) -> None:
    """A request answered in one JSON body: events (a chat's wait notices) are dropped."""


def peer_of(request: web.Request) -> Peer | None:
    """SO_PEERCRED of the connection this request came on, read per request;
    None for a TCP connection (its peer is its bearer token's)."""
    transport = request.transport
    if transport is None:  # the client is gone already
        raise ConnectionResetError("connection lost")
    sock = transport.get_extra_info("socket")
    if sock.family != socket.AF_UNIX:
        return None
    return peer_credentials(sock)


class Bridge:
    """Runs one command for an HTTP request and turns its reply into a response."""

    def __init__(
        self,
        dispatcher: Dispatcher,
        finishing: Finishing,
        access: AccessPolicy,
        max_per_uid: int,
    ) -> None:
        self._dispatcher = dispatcher
        self._finishing = finishing
        self._access = access
        self._max_per_uid = max_per_uid
        self._open: Counter[int] = Counter()  # requests in progress per uid
        self._ids = itertools.count(1)

    async def call(
        self, peer: Peer, cmd: str, args: dict[str, Any], emit: Emit = no_events
    ) -> dict[str, Any]:
        """The command's wire reply ({ok, result} or {ok: false, error})."""
        request = Request(next(self._ids), cmd, args)
        reply = self._dispatcher.answer_now(request, peer)
        if reply is not None:
            return reply
        spec = self._dispatcher.spec(cmd)
        drained = spec is not None and spec.drained  # a chat: a graceful stop waits for it
        if drained:
            self._finishing.begin_finishing()
        try:
            return await self._dispatcher.handle(request, peer, emit)
        finally:
            if drained:
                self._finishing.end_finishing()

    @contextmanager
    def slot(self, peer: Peer) -> Iterator[None]:
        """One of the uid's concurrent requests; BUSY past the limit (admins are not held)."""
        if self._open[peer.uid] >= self._max_per_uid and self._access.role_of(peer) < Role.ADMIN:
            raise HttpError(
                ErrorCode.BUSY,
                f"too many HTTP requests at once from this user (http.max_requests_per_uid"
                f" = {self._max_per_uid})",
            )
        self._open[peer.uid] += 1
        try:
            yield
        finally:
            self._open[peer.uid] -= 1
            if not self._open[peer.uid]:
                del self._open[peer.uid]


class HttpError(Exception):
    """An error answered before or outside dispatch (bad JSON, body too large...)."""

    def __init__(self, code: str, message: str, status: int | None = None, **details: Any) -> None:
        super().__init__(message)
        self.error = {"code": code, "message": message, **details}
        self.status = status if status is not None else STATUS.get(code, 500)


def error_response(error: dict[str, Any], status: int | None = None) -> web.Response:
    """The socket's error object, under "error" (also what OpenAI clients read)."""
    code = str(error.get("code", ErrorCode.INTERNAL))
    headers = {}
    retry_after = error.get("retry_after")
    if isinstance(retry_after, int | float):
        headers["Retry-After"] = str(max(1, math.ceil(retry_after)))
    if code == ErrorCode.UNAUTHENTICATED:
        headers["WWW-Authenticate"] = 'Bearer realm="agentd"'
    return web.json_response(
        {"error": {**error, "type": code.lower()}},
        status=status if status is not None else STATUS.get(code, 500),
        headers=headers,
    )


async def read_json(request: web.Request) -> dict[str, Any]:
    """The request's JSON object body: 415 not JSON, 413 too large, 408 too slow, 400 bad."""
    if request.content_type not in JSON_TYPES:
        raise HttpError(
            ErrorCode.BAD_REQUEST,
            f"Content-Type must be application/json, not {request.content_type[:64]!r}",
            415,
        )
    try:
        async with asyncio.timeout(request.app[SETTINGS].read_timeout_s):
            raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise HttpError(
            ErrorCode.FRAME_TOO_LARGE,
            f"request body larger than http.max_body_bytes = {request.app[SETTINGS].max_body_bytes}",
        ) from None
    except TimeoutError:
        raise HttpError(ErrorCode.BAD_REQUEST, "request body not received in time", 408) from None
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise HttpError(ErrorCode.BAD_REQUEST, f"malformed JSON: {exc}") from None
    if not isinstance(body, dict):
        raise HttpError(ErrorCode.BAD_REQUEST, "the body must be a JSON object")
    return body


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

BRIDGE: Final = web.AppKey("bridge", Bridge)
SETTINGS: Final = web.AppKey("settings", HttpSettings)
MODELS: Final = web.AppKey("models", list[str])


def peer(request: web.Request) -> Peer:
    """The request's peer, read once by the middleware."""
    found: Peer = request["peer"]
    return found
