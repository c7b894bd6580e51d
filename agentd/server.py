"""The Unix socket server: bind or adopt the socket, accept within limits, drain.

One connection (agentd/connection.py) carries any number of requests in turn.
Bad bytes are answered with an error code and, when the stream can no longer
be trusted (a frame too large, a frame never finished), the connection is
closed. Nothing a client sends can stop the server from serving the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import grp
import logging
import os
import socket
import stat
from dataclasses import dataclass
from pathlib import Path

from agentd.config import DaemonSettings
from agentd.connection import ClientConnection
from agentd.dispatch import Dispatcher
from agentd.errors import AlreadyRunning, ConfigError
from agentd.paths import ensure_private_dir
from agentd.protocol import (
    ErrorCode,
    encode_frame,
    error_reply,
    path_problem,
    private_socket_dir,
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
    _ensure_socket_dir(path, group)
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


def _ensure_socket_dir(socket_path: Path, group: str) -> None:
    """A directory we create is 0700, or 0750 for the socket group so members can reach it.
    One we find is used only if no one but us (or root) can have put a socket in it."""
    directory = socket_path.parent
    if ensure_private_dir(directory) and group:
        os.chown(directory, -1, _gid(group))
        os.chmod(directory, 0o750)
    problem = _socket_dir_problem(socket_path, group)
    if problem is not None:
        raise ConfigError(f"socket directory {directory} {problem}: refusing to listen in it")


def _socket_dir_problem(socket_path: Path, group: str) -> str | None:
    private = private_socket_dir(str(socket_path))
    if private is not None:
        # $TMPDIR/agentd-<uid>: anyone may have made it first, so it must be ours and
        # closed to others, as tmux and OpenSSH require of theirs (group r-x for the
        # socket group only).
        forbidden = 0o027 if group else 0o077
        return path_problem(
            private, owners=(os.getuid(),), forbidden_mode=forbidden, directory=True
        )
    # Any other directory (XDG_RUNTIME_DIR, /run/agentd, a configured path, a
    # group-shared one): no one else may be able to add, remove or replace the socket.
    return path_problem(
        str(socket_path.parent), owners=(os.geteuid(), 0), forbidden_mode=0o022, directory=True
    )


def _open_to_group(path: Path, group: str) -> None:
    os.chown(path, -1, _gid(group))
    os.chmod(path, 0o660)


def _gid(group: str) -> int:
    try:
        return int(group) if group.isdigit() else grp.getgrnam(group).gr_gid
    except KeyError:
        raise ConfigError(f"daemon.socket_group: unknown group {group!r}") from None


def _clear_stale(path: Path) -> None:
    """Replace a stale socket; anything else found at the path (a file, a link) is left alone."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(info.st_mode):
        raise ConfigError(f"{path} exists and is not a socket: not removing it")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(1.0)
        probe.connect(str(path))
    except (ConnectionRefusedError, FileNotFoundError):
        logger.info("replacing a stale socket at %s", path)
        path.unlink(missing_ok=True)
        return
    except OSError as exc:
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
    """Accepts connections (each a ClientConnection) within the connection limit, and
    knows which requests a graceful stop must wait for."""

    def __init__(self, settings: DaemonSettings, dispatcher: Dispatcher) -> None:
        self._settings = settings
        self._dispatcher = dispatcher
        self._server: asyncio.AbstractServer | None = None
        self._connections: set[ClientConnection] = set()
        self._total = 0
        self._refused = 0
        self._protocol_errors = 0
        self._finishing = 0  # requests that must finish (reply sent) before a graceful stop
        self._drained = asyncio.Event()
        self._drained.set()

    async def start(self, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_unix_server(
            lambda: ClientConnection(self, self._settings, self._dispatcher),
            sock=sock,
            backlog=LISTEN_BACKLOG,  # asyncio would listen() again with its default of 100
        )

    def stop_accepting(self) -> None:
        if self._server is not None:
            self._server.close()

    async def close_connections(self) -> None:
        """Cut every connection, cancelling requests still running, and wait for them."""
        await asyncio.gather(*(c.close() for c in list(self._connections)))

    async def wait_drained(self) -> None:
        """Until every request that must finish (chat) has sent its reply."""
        await self._drained.wait()

    def statistics(self) -> ServerStatistics:
        return ServerStatistics(
            len(self._connections), self._total, self._refused, self._protocol_errors
        )

    # -- for connections -----------------------------------------------------------------

    def admit(self, connection: ClientConnection) -> bool:
        """Count a new connection; False (refused) beyond the connection limit."""
        self._total += 1
        if len(self._connections) >= self._settings.max_connections:
            self._refused += 1
            return False
        self._connections.add(connection)
        return True

    def forget(self, connection: ClientConnection) -> None:
        self._connections.discard(connection)

    def count_protocol_error(self) -> None:
        self._protocol_errors += 1

    def begin_finishing(self) -> None:
        self._finishing += 1
        self._drained.clear()

    def end_finishing(self) -> None:
        self._finishing -= 1
        if self._finishing == 0:
            self._drained.set()
