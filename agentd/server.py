"""The Unix socket server: bind or adopt, accept, peer credentials, framing, dispatch.

One connection carries any number of requests in turn. Bad bytes are answered
with an error code and, when the stream can no longer be trusted (a frame too
large, a frame never finished), the connection is closed. Nothing a client
sends can stop the server from serving the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import grp
import logging
import os
import socket
from collections.abc import Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agentd.access import Peer, peer_credentials
from agentd.config import DaemonSettings
from agentd.dispatch import Dispatcher
from agentd.errors import AlreadyRunning, ConfigError
from agentd.paths import ensure_private_dir
from agentd.protocol import (
    HEADER,
    ErrorCode,
    ProtocolError,
    decode_body,
    encode_frame,
    error_reply,
    event,
    frame_length,
    parse_request,
    request_id_of,
)

logger = logging.getLogger(__name__)

LISTEN_BACKLOG = 1024


@dataclass(frozen=True)
class ServerStatistics:
    connections: int
    connections_total: int
    refused_total: int
    protocol_errors_total: int


def bind_socket(path: Path, group: str) -> socket.socket:
    """Bind a fresh socket: 0600 from birth (0660 with a group); never steal a live one."""
    _ensure_socket_dir(path.parent, group)
    _clear_stale(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    old_umask = os.umask(0o177)  # no window where the socket is wider than 0600
    try:
        sock.bind(str(path))
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot bind {path}: {exc.strerror}") from exc
    finally:
        os.umask(old_umask)
    if group:
        _open_to_group(path, group)
    sock.listen(LISTEN_BACKLOG)
    sock.setblocking(False)
    return sock


def _ensure_socket_dir(directory: Path, group: str) -> None:
    """A directory we create is 0700, or 0750 for the socket group so members can reach it."""
    if directory.exists() or not group:
        ensure_private_dir(directory)
        return
    ensure_private_dir(directory)
    os.chown(directory, -1, _gid(group))
    os.chmod(directory, 0o750)


def _open_to_group(path: Path, group: str) -> None:
    os.chown(path, -1, _gid(group))
    os.chmod(path, 0o660)


def _gid(group: str) -> int:
    try:
        return int(group) if group.isdigit() else grp.getgrnam(group).gr_gid
    except KeyError:
        raise ConfigError(f"daemon.socket_group: unknown group {group!r}") from None


def _clear_stale(path: Path) -> None:
    if not path.exists() and not path.is_symlink():
        return
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(1.0)
        probe.connect(str(path))
    except (ConnectionRefusedError, FileNotFoundError):
        logger.info("replacing a stale socket at %s", path)
        path.unlink(missing_ok=True)
        return
    except OSError as exc:
        if exc.errno == errno.ENOTSOCK:
            raise ConfigError(f"{path} exists and is not a socket") from exc
        raise AlreadyRunning(f"{path} is in use ({exc.strerror})") from exc
    finally:
        probe.close()
    raise AlreadyRunning(f"another agentd is already running on {path}")


def refuse_waiting_clients(sock: socket.socket, message: str) -> int:
    """Answer every connection already queued on a socket we cannot serve, then close it.

    Under socket activation a fatal start-up error would otherwise leave the
    triggering client in the queue, and systemd would start us again and again.
    """
    sock.setblocking(False)
    refused = 0
    while True:
        try:
            conn, _ = sock.accept()
        except (BlockingIOError, InterruptedError):
            return refused
        with conn:
            conn.settimeout(1.0)
            with contextlib.suppress(OSError):
                conn.sendall(encode_frame(error_reply(None, ErrorCode.INTERNAL, message)))
        refused += 1


class Server:
    def __init__(self, settings: DaemonSettings, dispatcher: Dispatcher) -> None:
        self._settings = settings
        self._dispatcher = dispatcher
        self._server: asyncio.AbstractServer | None = None
        self._connections: set[asyncio.Task[None]] = set()
        self._total = 0
        self._refused = 0
        self._protocol_errors = 0
        self._finishing = 0  # requests that must finish (reply sent) before a graceful stop
        self._drained = asyncio.Event()
        self._drained.set()

    async def start(self, sock: socket.socket) -> None:
        self._server = await asyncio.start_unix_server(
            self._serve,
            sock=sock,
            limit=self._settings.max_frame_bytes + HEADER.size,
            backlog=LISTEN_BACKLOG,  # asyncio would listen() again with its default of 100
        )

    def stop_accepting(self) -> None:
        if self._server is not None:
            self._server.close()

    async def close_connections(self) -> None:
        """Cancel connection tasks (idle or finishing) and wait for them to end."""
        for task in list(self._connections):
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)

    async def wait_drained(self) -> None:
        """Until every request that must finish (chat) has sent its reply."""
        await self._drained.wait()

    def statistics(self) -> ServerStatistics:
        return ServerStatistics(
            len(self._connections), self._total, self._refused, self._protocol_errors
        )

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._total += 1
        try:
            if len(self._connections) >= self._settings.max_connections:
                self._refused += 1
                await _send(writer, error_reply(None, ErrorCode.BUSY, "too many connections"))
                return
            self._connections.add(task)
            peer = peer_credentials(writer.get_extra_info("socket"))
            await self._serve_requests(reader, writer, peer)
        except (ConnectionError, asyncio.IncompleteReadError, TimeoutError):
            pass  # the peer went away or went silent: nothing to answer
        finally:
            self._connections.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _serve_requests(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, peer: Peer
    ) -> None:
        while True:
            header = await _read(reader, HEADER.size, self._settings.idle_timeout_s)
            message: Any = None
            try:
                length = frame_length(header, self._settings.max_frame_bytes)
                body = await _read(reader, length, self._settings.frame_timeout_s)
                message = decode_body(body)
                request = parse_request(message)
            except ProtocolError as exc:
                self._protocol_errors += 1
                await _send(writer, error_reply(request_id_of(message), exc.code, exc.message))
                if exc.fatal:
                    return
                continue

            async def emit(kind: str, fields: dict[str, Any], rid: int | str = request.id) -> None:
                await _send(writer, event(rid, kind, **fields))

            handling = self._dispatcher.handle(request, peer, emit)
            if not self._dispatcher.is_long_running(request.cmd):
                await _send(writer, await handling)
                continue
            must_finish = self._dispatcher.must_finish(request.cmd)  # a chat, not a log follow
            if must_finish:
                self._begin_finishing()
            try:
                reply = await _unless_peer_leaves(handling, reader)
                if reply is None:
                    return
                await _send(writer, reply)
            finally:
                if must_finish:
                    self._end_finishing()

    def _begin_finishing(self) -> None:
        self._finishing += 1
        self._drained.clear()

    def _end_finishing(self) -> None:
        self._finishing -= 1
        if self._finishing == 0:
            self._drained.set()


async def _unless_peer_leaves(
    handling: Coroutine[Any, Any, dict[str, Any]], reader: asyncio.StreamReader
) -> dict[str, Any] | None:
    """Run a long request, cancelling it if the client hangs up meanwhile (None then).

    A client does not send while it waits for its reply, so end-of-file on the
    reader means it is gone; a chat must not keep the model busy for nobody.
    """
    task = asyncio.create_task(handling)
    hangup = asyncio.create_task(reader.read(1))
    try:
        await asyncio.wait({task, hangup}, return_when=asyncio.FIRST_COMPLETED)
        if not task.done() and hangup.done() and not hangup.cancelled() and hangup.result() == b"":
            logger.info("client hung up: cancelling its request")
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            return None
        return await task
    finally:
        task.cancel()  # when the connection itself is cancelled (shutdown)
        hangup.cancel()
        await asyncio.gather(task, hangup, return_exceptions=True)


async def _read(reader: asyncio.StreamReader, size: int, timeout: float) -> bytes:
    # asyncio.timeout, not wait_for: no task per read on the hot path.
    async with asyncio.timeout(timeout):
        return await reader.readexactly(size)


async def _send(writer: asyncio.StreamWriter, message: dict[str, Any]) -> None:
    writer.write(encode_frame(message))
    await writer.drain()
