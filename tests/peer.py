"""A hostile peer, run as a real process under another uid (setpriv), for the limit tests.

    python -m tests.peer SOCKET hold N       open N connections, ping on each, print the
                                             outcomes (JSON), hold them until stdin closes
    python -m tests.peer SOCKET churn N      open and end N connections, each its own way
                                             (hang up, a frame too large, end-of-file)
    python -m tests.peer SOCKET flood CMD N  send N requests of CMD on one connection,
                                             pipelined; print the replies' codes, counted

Standard library, msgpack and agentd.protocol only.
"""

from __future__ import annotations

import collections
import contextlib
import grp
import json
import pwd
import socket
import struct
import sys
from typing import Any

import msgpack

from agentd.protocol import HEADER, encode_frame, make_request

FLOOD_BATCH = 200  # requests written before their replies are read (flow control)


def peer_argv(user: str, group: str, *args: str) -> list[str]:
    """The command that runs this peer under `user`'s uid with `group` as its only group."""
    uid, gid = pwd.getpwnam(user).pw_uid, grp.getgrnam(group).gr_gid
    setpriv = ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups"]
    return [*setpriv, sys.executable, "-m", "tests.peer", *args]


def connect(path: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(20)
    sock.connect(path)
    return sock


def read_reply(sock: socket.socket) -> dict[str, Any] | None:
    """The next frame, or None when the daemon closed the connection."""
    header = _recv_exactly(sock, HEADER.size)
    if header is None:
        return None
    (length,) = struct.unpack(">I", header)
    body = _recv_exactly(sock, length)
    return None if body is None else dict(msgpack.unpackb(body, raw=False))


def _recv_exactly(sock: socket.socket, size: int) -> bytes | None:
    data = b""
    while len(data) < size:
        try:
            chunk = sock.recv(size - len(data))
        except ConnectionResetError:
            return None
        if not chunk:
            return None
        data += chunk
    return data


def outcome(reply: dict[str, Any] | None) -> dict[str, Any]:
    if reply is None:
        return {"code": "CLOSED", "message": ""}
    if reply.get("ok"):
        return {"code": "ok", "message": ""}
    return {"code": reply["error"]["code"], "message": reply["error"]["message"]}


def ping(sock: socket.socket) -> dict[str, Any]:
    """A refused connection is answered BUSY at once and closed: the ping may not go out."""
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        sock.sendall(encode_frame(make_request(1, "ping")))
    return outcome(read_reply(sock))


def hold(path: str, count: int) -> None:
    held = [connect(path) for _ in range(count)]
    print(json.dumps([ping(sock) for sock in held]), flush=True)
    sys.stdin.read()  # hold them until the test closes our stdin
    for sock in held:
        sock.close()


def churn(path: str, count: int) -> None:
    """End connections every way a client can: each must give its slot back."""
    outcomes = []
    for n in range(count):
        with connect(path) as sock:
            way = n % 3
            if way == 0:
                outcomes.append(ping(sock))  # then hang up
            elif way == 1:
                sock.sendall(struct.pack(">I", 0xFFFFFFF0))  # a frame too large: the daemon cuts
                outcomes.append(outcome(read_reply(sock)))
                read_reply(sock)  # until the daemon has closed it
            else:
                sock.shutdown(socket.SHUT_WR)  # end-of-file: the daemon closes
                outcomes.append(outcome(read_reply(sock)))
    print(json.dumps(outcomes), flush=True)


def flood(path: str, cmd: str, count: int) -> None:
    codes: collections.Counter[str] = collections.Counter()
    with connect(path) as sock:
        for start in range(0, count, FLOOD_BATCH):
            batch = range(start, min(start + FLOOD_BATCH, count))
            sock.sendall(b"".join(encode_frame(make_request(i, cmd)) for i in batch))
            for _ in batch:
                codes[outcome(read_reply(sock))["code"]] += 1
    print(json.dumps(dict(codes)), flush=True)


def main(argv: list[str]) -> None:
    path, mode = argv[0], argv[1]
    if mode == "hold":
        hold(path, int(argv[2]))
    elif mode == "churn":
        churn(path, int(argv[2]))
    elif mode == "flood":
        flood(path, argv[2], int(argv[3]))
    else:
        raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
