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
import time
from dataclasses import dataclass
from pathlib import Path

from agentd.access import AccessPolicy, Peer, Role
from agentd.config import DaemonSettings
from agentd.connection import ClientConnection
from agentd.dispatch import Dispatcher
from agentd.errors import AlreadyRunning, ConfigError
from agentd.limits import ConnectionSlots, Throttle
from agentd.paths import ensure_private_dir
from agentd.protocol import (
    ErrorCode,
    encode_frame,
    error_reply,
    path_problem,
    private_socket_dir,
)
from agentd.telemetry.metrics import Counter

logger = logging.getLogger(__name__)

LISTEN_BACKLOG = 1024
REFUSAL_LOG_INTERVAL_S = 10.0  # at most one line per this long about refused connections


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
    """Accepts connections (each a ClientConnection) within the connection limits, and
    knows which requests a graceful stop must wait for.

    Limits (limits.ConnectionSlots): `max_connections` in all, `max_connections_per_uid`
    per peer uid, and the last `admin_reserved_connections` free slots for admins, so
    that root's `agentctl stop` gets in whatever one member holds open.
    """

    def __init__(
        self,
        settings: DaemonSettings,
        dispatcher: Dispatcher,
        access: AccessPolicy,
        refused: Counter,
    ) -> None:
        self._settings = settings
        self._dispatcher = dispatcher
        self._access = access
        self._refused_metric = refused  # connections_refused_total, by limit
        self._server: asyncio.AbstractServer | None = None
        self._connections: set[ClientConnection] = set()
        self._slots = ConnectionSlots[int](
            settings.max_connections,
            settings.max_connections_per_uid,
            settings.admin_reserved_connections,
        )
        self._refusal_log = Throttle(REFUSAL_LOG_INTERVAL_S, time.monotonic)
        self._total = 0
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
        slots = self._slots.statistics()
        return ServerStatistics(
            len(self._connections), self._total, slots.refused, self._protocol_errors
        )

    # -- for connections -----------------------------------------------------------------

    def admit(self, connection: ClientConnection, peer: Peer) -> str | None:
        """Count a new connection and take a slot for it: None when admitted, else
        why not (the BUSY message). Every admitted connection is `forget`-ed once."""
        self._total += 1
        limit = self._slots.try_acquire(peer.uid, lambda: self._access.role_of(peer) >= Role.ADMIN)
        if limit is not None:
            return self._refuse(peer, limit)
        self._connections.add(connection)
        return None

    def forget(self, connection: ClientConnection, peer: Peer) -> None:
        """The connection ended (whichever way): give its slot back, if it had one."""
        if connection in self._connections:
            self._connections.remove(connection)
            self._slots.release(peer.uid)

    def count_protocol_error(self) -> None:
        self._protocol_errors += 1

    def begin_finishing(self) -> None:
        self._finishing += 1
        self._drained.clear()

    def end_finishing(self) -> None:
        self._finishing -= 1
        if self._finishing == 0:
            self._drained.set()

    def _refuse(self, peer: Peer, limit: str) -> str:
        self._refused_metric.inc(limit=limit)
        message = _refusal_message(limit, self._settings, self._slots.held(peer.uid))
        if self._refusal_log.should_log():
            logger.warning(
                "refused a connection from uid %d: %s (%d more refusals held back)",
                peer.uid,
                message,
                self._refusal_log.suppressed,
                extra={"refused_uid": peer.uid, "limit": limit},
            )
        return message


def _refusal_message(limit: str, settings: DaemonSettings, held: int) -> str:
    if limit == ConnectionSlots.PER_KEY:
        return (
            f"too many connections from this user ({held} open; "
            f"daemon.max_connections_per_uid = {settings.max_connections_per_uid})"
        )
    if limit == ConnectionSlots.RESERVED:
        return (
            f"too many connections: the last {settings.admin_reserved_connections} of "
            f"daemon.max_connections = {settings.max_connections} are reserved for admins"
        )
    return f"too many connections (daemon.max_connections = {settings.max_connections})"
