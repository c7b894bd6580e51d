"""A blocking client for agentd's socket (standard library, msgpack, agentd.protocol)."""

from __future__ import annotations

import itertools
import os
import socket
from collections.abc import Callable
from typing import Any, NamedTuple

from agentd.protocol import (
    DEFAULT_MAX_FRAME,
    HEADER,
    ProtocolError,
    decode_body,
    encode_frame,
    frame_length,
    make_request,
    path_problem,
    private_socket_dir,
)


class ClientError(Exception):
    """Root of what the client raises."""


class NotRunning(ClientError):
    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"agentd is not running (socket {path}: {reason})")
        self.path = path


class ConnectionLost(ClientError):
    pass


class PermissionRefused(ClientError):
    pass


class UntrustedSocket(PermissionRefused):
    """The socket's directory could have been made by someone else: nothing is sent."""


class DaemonError(ClientError):
    """The daemon answered with an error reply."""

    def __init__(self, error: dict[str, Any]) -> None:
        self.code = str(error.get("code", "INTERNAL"))
        self.message = str(error.get("message", ""))
        self.details = {k: v for k, v in error.items() if k not in ("code", "message")}
        super().__init__(f"{self.code}: {self.message}")


OnEvent = Callable[[dict[str, Any]], None]


class Limits(NamedTuple):
    """What the daemon accepts (from its `ping` reply)."""

    max_frame_bytes: int
    max_prompt_bytes: int


class Client:
    def __init__(self, path: str, timeout: float | None = 30.0) -> None:
        self.path = path
        self._timeout = timeout
        self._sock: socket.socket | None = None
        self._ids = itertools.count(1)

    def __enter__(self) -> Client:
        self.connect()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def connect(self) -> None:
        self._check_private_dir()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self._timeout)
        try:
            sock.connect(self.path)
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            sock.close()
            raise NotRunning(
                self.path,
                "no socket" if isinstance(exc, FileNotFoundError) else "connection refused",
            ) from None
        except PermissionError:
            sock.close()
            raise PermissionRefused(f"permission denied on {self.path}") from None
        except OSError as exc:
            sock.close()
            raise NotRunning(self.path, exc.strerror or str(exc)) from None
        self._sock = sock

    def _check_private_dir(self) -> None:
        """The per-user fallback directory must be ours and closed to others (as tmux checks
        /tmp/tmux-UID): else another user could be listening there for our prompts."""
        directory = private_socket_dir(self.path)
        if directory is None:
            return
        # Group r-x is allowed: agentd opens its directory to daemon.socket_group.
        problem = path_problem(
            directory, owners=(os.getuid(),), forbidden_mode=0o027, directory=True
        )
        if problem is not None:
            raise UntrustedSocket(
                f"refusing {self.path}: its directory {directory} {problem}; "
                "another user may have made it: remove it and start agentd again"
            )

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def call(
        self, cmd: str, args: dict[str, Any] | None = None, on_event: OnEvent | None = None
    ) -> dict[str, Any]:
        """Send one request; deliver events to on_event; return the result or raise DaemonError."""
        if self._sock is None:
            self.connect()
        request_id = next(self._ids)
        self._send(make_request(request_id, cmd, args))
        while True:
            message = self._receive()
            if "event" in message:
                if on_event is not None:
                    on_event(message)
                continue
            if message.get("ok"):
                result: dict[str, Any] = message.get("result") or {}
                return result
            raise DaemonError(message.get("error") or {})

    def send_approval(self, request: str, answer: str) -> None:
        """Answer a chat's tool_request while its reply is awaited (no reply of its own)."""
        self._send(make_request(next(self._ids), "tool_approval", {"request": request, "answer": answer}))

    def limits(self) -> Limits | None:
        """The daemon's size limits, or None from a daemon that does not say."""
        found: Any = self.call("ping").get("limits")
        try:
            return Limits(int(found["max_frame_bytes"]), int(found["max_prompt_bytes"]))
        except (TypeError, KeyError, ValueError):
            return None

    def _send(self, message: dict[str, Any]) -> None:
        assert self._sock is not None
        try:
            self._sock.sendall(encode_frame(message))
        except OSError as exc:
            # A connection over the daemon's limits is answered BUSY and closed before
            # our request goes out: that answer is still ours to read, and says why.
            refusal = self._answered_error()
            if refusal is not None:
                raise DaemonError(refusal) from None
            raise ConnectionLost(f"lost the connection to agentd: {exc.strerror or exc}") from None

    def _answered_error(self) -> dict[str, Any] | None:
        """The error the daemon sent before it closed the connection, if any."""
        try:
            error = self._receive().get("error")
        except ConnectionLost:
            return None
        return error if isinstance(error, dict) else None

    def _receive(self) -> dict[str, Any]:
        try:
            length = frame_length(self._read_exactly(HEADER.size), DEFAULT_MAX_FRAME * 16)
            message = decode_body(self._read_exactly(length))
        except ProtocolError as exc:
            raise ConnectionLost(f"bad reply from agentd: {exc.message}") from None
        if not isinstance(message, dict):
            raise ConnectionLost("bad reply from agentd: not a map")
        return message

    def _read_exactly(self, size: int) -> bytes:
        assert self._sock is not None
        chunks = bytearray()
        while len(chunks) < size:
            try:
                chunk = self._sock.recv(size - len(chunks))
            except TimeoutError:
                raise ConnectionLost("agentd did not answer in time") from None
            except OSError as exc:
                raise ConnectionLost(
                    f"lost the connection to agentd: {exc.strerror or exc}"
                ) from None
            if not chunk:
                raise ConnectionLost("agentd closed the connection")
            chunks += chunk
        return bytes(chunks)
