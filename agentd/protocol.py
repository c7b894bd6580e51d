"""Wire protocol v1, shared by agentd and agentctl.

Imports nothing beyond the standard library and msgpack, so the client stays thin.

A frame is a 4-byte unsigned big-endian length followed by that many bytes of
one msgpack map::

    +----------------+---------------------------------------------+
    | length (u32 BE)| msgpack map                                 |
    +----------------+---------------------------------------------+

    request  {"v": 1, "id": <int|str>, "cmd": "<name>", "args": {...}}
    reply    {"v": 1, "id": <same>, "ok": true,  "result": {...}}
             {"v": 1, "id": <same>, "ok": false, "error": {"code": "...", "message": "...", ...}}
    event    {"v": 1, "id": <same>, "event": "chunk" | "log", ...}   (zero or more, before the reply)
"""

from __future__ import annotations

import os
import stat
import struct
from collections.abc import Collection, Mapping
from typing import Any, Final, NamedTuple

import msgpack

VERSION: Final = 1
HEADER = struct.Struct(">I")
DEFAULT_MAX_FRAME: Final = 1024 * 1024
# Time arguments (`since`) are epoch seconds up to 9999-12-31T23:59:59Z, the
# last moment an ISO timestamp holds.
MAX_EPOCH_S: Final = 253_402_300_799.0

# msgpack limits for untrusted input: no single value may exceed the frame, and
# nesting is bounded so a hostile frame cannot blow the stack.
MAX_NESTING: Final = 32


class ErrorCode:
    """Stable error codes carried on the wire (documented in docs/protocol.md)."""

    BAD_REQUEST: Final = "BAD_REQUEST"
    UNKNOWN_COMMAND: Final = "UNKNOWN_COMMAND"
    UNSUPPORTED_VERSION: Final = "UNSUPPORTED_VERSION"
    FRAME_TOO_LARGE: Final = "FRAME_TOO_LARGE"
    FORBIDDEN: Final = "FORBIDDEN"
    NOT_READY: Final = "NOT_READY"
    RATE_LIMITED: Final = "RATE_LIMITED"
    BUSY: Final = "BUSY"
    SHUTTING_DOWN: Final = "SHUTTING_DOWN"
    NOT_FOUND: Final = "NOT_FOUND"
    PROVIDER_ERROR: Final = "PROVIDER_ERROR"
    DISK_FULL: Final = "DISK_FULL"
    STORE_UNAVAILABLE: Final = "STORE_UNAVAILABLE"
    INTERNAL: Final = "INTERNAL"
    SECRET_REFUSED: Final = "SECRET_REFUSED"
    BUDGET_EXCEEDED: Final = "BUDGET_EXCEEDED"
    UNAUTHENTICATED: Final = "UNAUTHENTICATED"  # HTTP over TCP only: no valid bearer token


class ProtocolError(Exception):
    """A frame or request that breaks the protocol; carries its wire code."""

    def __init__(self, code: str, message: str, *, fatal: bool = False) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        # fatal: the byte stream can no longer be trusted, close the connection.
        self.fatal = fatal


class Request(NamedTuple):
    """A parsed request (a NamedTuple: one is built per request, and cheaply)."""

    id: int | str
    cmd: str
    args: dict[str, Any]


# One Packer for every frame: msgpack.packb() builds a new one per call, a
# measurable share of a `status`. Packer.pack runs in C without releasing the
# GIL, so threads sharing it cannot interleave.
_PACKER: Final = msgpack.Packer(use_bin_type=True)


def encode_frame(message: dict[str, Any]) -> bytes:
    body: bytes = _PACKER.pack(message)
    return HEADER.pack(len(body)) + body


def frame_length(header: bytes | bytearray, max_frame: int) -> int:
    """Return the body length announced by a header (the first 4 bytes of `header`),
    refusing oversized frames."""
    (length,) = HEADER.unpack_from(header)
    if length > max_frame:
        raise ProtocolError(
            ErrorCode.FRAME_TOO_LARGE,
            f"frame of {length} bytes exceeds the limit of {max_frame} bytes",
            fatal=True,
        )
    return int(length)


def decode_body(body: bytes) -> Any:
    """Unpack one msgpack body with explicit size limits (input is untrusted)."""
    limit = max(len(body), 1)
    try:
        return msgpack.unpackb(
            body,
            raw=False,
            strict_map_key=True,
            max_str_len=limit,
            max_bin_len=limit,
            max_array_len=limit,
            max_map_len=limit,
            max_ext_len=limit,
        )
    except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as exc:
        raise ProtocolError(ErrorCode.BAD_REQUEST, f"malformed msgpack: {exc}") from exc
    except UnicodeDecodeError as exc:
        raise ProtocolError(ErrorCode.BAD_REQUEST, "invalid UTF-8 in a string") from exc
    except RecursionError as exc:
        raise ProtocolError(ErrorCode.BAD_REQUEST, "msgpack nested too deeply") from exc


def _depth(value: Any, level: int = 0) -> int:
    if level > MAX_NESTING:
        return level
    if isinstance(value, dict):
        return max((_depth(v, level + 1) for v in value.values()), default=level + 1)
    if isinstance(value, list | tuple):
        return max((_depth(v, level + 1) for v in value), default=level + 1)
    return level


def parse_request(message: Any) -> Request:
    """Validate a decoded message as a v1 request."""
    if not isinstance(message, dict):
        raise ProtocolError(ErrorCode.BAD_REQUEST, "a request must be a msgpack map")
    request_id = message.get("id")
    if not isinstance(request_id, int | str) or isinstance(request_id, bool):
        raise ProtocolError(ErrorCode.BAD_REQUEST, "'id' must be an integer or a string")
    version = message.get("v")
    if version != VERSION:
        raise ProtocolError(
            ErrorCode.UNSUPPORTED_VERSION, f"protocol version {version!r} is not supported (v1)"
        )
    cmd = message.get("cmd")
    if not isinstance(cmd, str) or not cmd:
        raise ProtocolError(ErrorCode.BAD_REQUEST, "'cmd' must be a non-empty string")
    args = message.get("args", {})
    if args is None:
        args = {}
    if not isinstance(args, dict):
        raise ProtocolError(ErrorCode.BAD_REQUEST, "'args' must be a map")
    if args and _depth(args) > MAX_NESTING:
        raise ProtocolError(ErrorCode.BAD_REQUEST, "'args' nested too deeply")
    return Request(id=request_id, cmd=cmd, args=args)


def request_id_of(message: Any) -> int | str | None:
    """Best-effort id of a (possibly invalid) request, to echo in an error reply."""
    if isinstance(message, dict):
        rid = message.get("id")
        if isinstance(rid, int | str) and not isinstance(rid, bool):
            return rid
    return None


def make_request(
    request_id: int | str, cmd: str, args: dict[str, Any] | None = None
) -> dict[str, Any]:
    return {"v": VERSION, "id": request_id, "cmd": cmd, "args": args or {}}


def ok_reply(wire_id: int | str | None, result: dict[str, Any]) -> dict[str, Any]:
    return {"v": VERSION, "id": wire_id, "ok": True, "result": result}


def error_reply(
    wire_id: int | str | None, code: str, message: str, /, **details: Any
) -> dict[str, Any]:
    return {
        "v": VERSION,
        "id": wire_id,
        "ok": False,
        "error": {"code": code, "message": message, **details},
    }


def event(wire_id: int | str, kind: str, /, **fields: Any) -> dict[str, Any]:
    return {"v": VERSION, "id": wire_id, "event": kind, **fields}


def default_socket_path(environ: Mapping[str, str]) -> str:
    """Where agentd listens unless told otherwise; agentd and agentctl agree on it.

    AGENTD_SOCKET wins; then systemd's $RUNTIME_DIRECTORY; then
    $XDG_RUNTIME_DIR/agentd; then a per-user directory under /tmp for shells
    without a login session (root over ssh -T, containers).
    """
    explicit = environ.get("AGENTD_SOCKET")
    if explicit:
        return explicit
    runtime = environ.get("RUNTIME_DIRECTORY")
    if runtime:
        return os.path.join(runtime.split(":", 1)[0], "agentd.sock")
    xdg = environ.get("XDG_RUNTIME_DIR")
    if xdg:
        return os.path.join(xdg, "agentd", "agentd.sock")
    import tempfile  # only for shells without a runtime directory: off the client's usual path

    return os.path.join(tempfile.gettempdir(), f"agentd-{os.getuid()}", "agentd.sock")


def private_socket_dir(socket_path: str) -> str | None:
    """The socket's directory when it is the per-user fallback $TMPDIR/agentd-<uid>, else None.

    That directory sits in a world-writable place where anyone could have made it
    first, so agentd and agentctl both check it (path_problem) before trusting it.
    """
    directory = os.path.dirname(os.path.abspath(socket_path))
    if os.path.basename(directory) != f"agentd-{os.getuid()}":
        return None  # the cheap test first: most paths are not the fallback
    import tempfile

    return directory if os.path.dirname(directory) == tempfile.gettempdir() else None


def path_problem(
    path: str, *, owners: Collection[int], forbidden_mode: int, directory: bool
) -> str | None:
    """What makes a path untrustworthy, or None (also when it does not exist).

    The checks tmux and OpenSSH make on their socket directories and sshd on its
    keys: lstat (never follow a symbolic link), the right kind of file, an owner
    we trust, and none of the permission bits in forbidden_mode.
    """
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return None
    except OSError as exc:
        return f"cannot be checked ({exc.strerror})"
    if stat.S_ISLNK(info.st_mode):
        return "is a symbolic link"
    if directory != stat.S_ISDIR(info.st_mode) or not (directory or stat.S_ISREG(info.st_mode)):
        return "is not a directory" if directory else "is not a regular file"
    if info.st_uid not in owners:
        expected = " or ".join(str(uid) for uid in sorted(set(owners)))
        return f"is owned by uid {info.st_uid}, not {expected}"
    mode = stat.S_IMODE(info.st_mode)
    if mode & forbidden_mode & 0o022:
        return f"is writable by group or others (mode {mode:04o})"
    if mode & forbidden_mode:
        return f"is open to group or others (mode {mode:04o})"
    return None


SYSTEM_SOCKET: Final = "/run/agentd/agentd.sock"  # agentd.socket / agentd.service


def client_socket_path(environ: Mapping[str, str]) -> str:
    """The socket agentctl talks to: the user's own daemon, else the system service's.

    A user's daemon (started by `agentctl start`) wins when its socket exists;
    otherwise an operator on a systemd host reaches /run/agentd/agentd.sock
    without flags. With neither, the user's path (for `start` and the error).
    """
    own = default_socket_path(environ)
    if environ.get("AGENTD_SOCKET") or os.path.exists(own) or not os.path.exists(SYSTEM_SOCKET):
        return own
    return SYSTEM_SOCKET
