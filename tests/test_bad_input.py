"""Hostile and broken clients against the real daemon: each gets a clear error or is
closed, and the daemon keeps serving everyone else."""

from __future__ import annotations

import select
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import msgpack
import psutil
import pytest

from agentd.protocol import encode_frame, make_request
from tests.conftest import DaemonProcess


@pytest.fixture
def quick_daemon(make_daemon: Callable[..., DaemonProcess]) -> Iterator[DaemonProcess]:
    """Short idle and frame timeouts so silent clients are cut within the test."""
    d = make_daemon(
        {"AGENTD_DAEMON__IDLE_TIMEOUT_S": "0.5", "AGENTD_DAEMON__FRAME_TIMEOUT_S": "0.5"}
    )
    yield d.start()


def connect(d: DaemonProcess) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(10)
    sock.connect(d.socket)
    return sock


def read_reply(sock: socket.socket) -> dict[str, Any]:
    header = recv_exactly(sock, 4)
    (length,) = struct.unpack(">I", header)
    reply: dict[str, Any] = msgpack.unpackb(recv_exactly(sock, length))
    return reply


def recv_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionError("closed")
        data += chunk
    return data


def is_closed(sock: socket.socket) -> bool:
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


def send_body(sock: socket.socket, body: bytes) -> None:
    sock.sendall(struct.pack(">I", len(body)) + body)


def assert_still_serving(d: DaemonProcess) -> None:
    assert d.call("status")["state"] == "READY"


def test_garbage_bytes_are_refused_and_the_connection_closed(quick_daemon: DaemonProcess) -> None:
    with connect(quick_daemon) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        reply = read_reply(sock)
        assert reply["error"]["code"] == "FRAME_TOO_LARGE"
        assert is_closed(sock)
    assert_still_serving(quick_daemon)


def test_four_gib_length_prefix_is_refused_without_reading_it(quick_daemon: DaemonProcess) -> None:
    with connect(quick_daemon) as sock:
        sock.sendall(struct.pack(">I", 0xFFFFFFFF))
        assert read_reply(sock)["error"]["code"] == "FRAME_TOO_LARGE"
        assert is_closed(sock)
    assert_still_serving(quick_daemon)


def test_truncated_frame_is_dropped_after_the_frame_timeout(quick_daemon: DaemonProcess) -> None:
    with connect(quick_daemon) as sock:
        sock.sendall(struct.pack(">I", 100) + b"\x81\xa1v")
        assert_still_serving(quick_daemon)  # served while this one hangs
        assert is_closed(sock)


def test_client_that_hangs_up_mid_frame_does_not_hurt(quick_daemon: DaemonProcess) -> None:
    sock = connect(quick_daemon)
    sock.sendall(struct.pack(">I", 1000) + b"\x81")
    sock.close()
    assert_still_serving(quick_daemon)


def test_silent_client_is_closed_after_the_idle_timeout(quick_daemon: DaemonProcess) -> None:
    with connect(quick_daemon) as sock:
        assert_still_serving(quick_daemon)
        assert is_closed(sock)


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (msgpack.packb([1, 2, 3]), "BAD_REQUEST"),
        (msgpack.packb("status"), "BAD_REQUEST"),
        (b"\xc1", "BAD_REQUEST"),  # a byte msgpack never uses
        (b"\x81\xa1", "BAD_REQUEST"),  # a map cut short
        (
            msgpack.packb({"v": 1, "id": 1, "cmd": "status"}) + b"\x00",
            "BAD_REQUEST",
        ),  # trailing bytes
        (b"\x81\xa1v\xa2\xff\xfe", "BAD_REQUEST"),  # invalid UTF-8
        (msgpack.packb({"v": 2, "id": 1, "cmd": "status"}), "UNSUPPORTED_VERSION"),
        (msgpack.packb({"v": 1, "id": True, "cmd": "status"}), "BAD_REQUEST"),
        (msgpack.packb({"v": 1, "id": 1, "cmd": 7}), "BAD_REQUEST"),
        (msgpack.packb({"v": 1, "id": 1, "cmd": "status", "args": [1]}), "BAD_REQUEST"),
        (msgpack.packb({"v": 1, "id": 1, "cmd": "status", "args": {"x": 1}}), "BAD_REQUEST"),
        (msgpack.packb({"v": 1, "id": 1, "cmd": "no-such-thing"}), "UNKNOWN_COMMAND"),
        (b"\x91" * 5000 + b"\xc0", "BAD_REQUEST"),  # nested 5000 deep
        (msgpack.packb({1: "integer key"}), "BAD_REQUEST"),
    ],
    ids=[
        "array",
        "string",
        "reserved-byte",
        "cut-map",
        "trailing",
        "bad-utf8",
        "version",
        "bool-id",
        "int-cmd",
        "args-array",
        "unknown-arg",
        "unknown-cmd",
        "deep-nesting",
        "int-key",
    ],
)
def test_bad_request_gets_its_code_and_the_connection_goes_on(
    quick_daemon: DaemonProcess, body: bytes, code: str
) -> None:
    with connect(quick_daemon) as sock:
        send_body(sock, body)
        reply = read_reply(sock)
        assert reply["ok"] is False
        assert reply["error"]["code"] == code
        assert "Traceback" not in reply["error"]["message"]
        sock.sendall(encode_frame(make_request(2, "ping")))  # same connection, next request
        assert read_reply(sock)["result"]["pong"] is True


def test_one_connection_serves_many_requests(quick_daemon: DaemonProcess) -> None:
    with connect(quick_daemon) as sock:
        for request_id in range(50):
            sock.sendall(encode_frame(make_request(request_id, "ping")))
            reply = read_reply(sock)
            assert reply["id"] == request_id
            assert reply["ok"] is True


def test_five_hundred_clients_at_once_are_all_answered(daemon: DaemonProcess) -> None:
    count = 500
    barrier = threading.Barrier(count)
    answers: list[str] = []
    errors: list[BaseException] = []

    def client() -> None:
        try:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(30)
            barrier.wait(30)
            sock.connect(daemon.socket)
            with sock:
                sock.sendall(encode_frame(make_request(1, "status")))
                answers.append(read_reply(sock)["result"]["state"])
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=client) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    assert answers == ["READY"] * count
    assert_still_serving(daemon)


def test_connections_over_the_limit_are_refused_busy(
    make_daemon: Callable[..., DaemonProcess],
) -> None:
    d = make_daemon(
        {"AGENTD_DAEMON__MAX_CONNECTIONS": "3", "AGENTD_DAEMON__ADMIN_RESERVED_CONNECTIONS": "1"}
    ).start()
    held = [connect(d) for _ in range(3)]
    try:
        for sock in held:  # each is accepted and answered
            sock.sendall(encode_frame(make_request(1, "ping")))
            assert read_reply(sock)["ok"] is True
        with connect(d) as extra:
            assert read_reply(extra)["error"]["code"] == "BUSY"
            assert is_closed(extra)
    finally:
        for sock in held:
            sock.close()
    assert_still_serving(d)


def test_pipelined_requests_are_answered_in_order(quick_daemon: DaemonProcess) -> None:
    """Frames sent together are served in turn: a request whose handler waits on the
    store (`sessions`) is answered before the `status` sent after it."""
    frames = [
        encode_frame(make_request(1, "ping")),
        encode_frame(make_request(2, "sessions")),
        encode_frame(make_request(3, "status")),
        encode_frame(make_request(4, "no-such-thing")),
        encode_frame(make_request(5, "ping")),
    ]
    with connect(quick_daemon) as sock:
        sock.sendall(b"".join(frames))
        replies = [read_reply(sock) for _ in frames]
    assert [r["id"] for r in replies] == [1, 2, 3, 4, 5]
    assert "sessions" in replies[1]["result"]
    assert replies[3]["error"]["code"] == "UNKNOWN_COMMAND"


def test_a_client_that_never_reads_is_paused_not_buffered(daemon: DaemonProcess) -> None:
    """1. A client pipelines status requests and never reads a reply.
    2. Once its replies fill the socket buffers the daemon stops serving and reading
       it: the client's send stays blocked (were the daemon still reading, the
       socket would turn writable again within milliseconds).
    3. Everyone else is served meanwhile; the daemon's memory stays flat.
    (Not quick_daemon: its 0.5 s idle timeout rightly cuts a client that stops reading.)"""
    assert daemon.process is not None
    daemon_process = psutil.Process(daemon.process.pid)
    rss_before = daemon_process.memory_info().rss
    request = encode_frame(make_request(1, "status"))
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as flood:
        flood.connect(daemon.socket)
        flood.setblocking(False)
        assert send_until_blocked_for(flood, request, seconds=1.0, give_up_after=20.0)
        assert_still_serving(daemon)
        assert daemon_process.memory_info().rss - rss_before < 32 * 1024 * 1024


def test_a_client_that_stops_reading_is_cut_after_the_idle_timeout(
    quick_daemon: DaemonProcess,
) -> None:
    request = encode_frame(make_request(1, "status"))
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as flood:
        flood.connect(quick_daemon.socket)
        flood.setblocking(False)
        with pytest.raises((BrokenPipeError, ConnectionResetError)):
            send_until_blocked_for(flood, request, seconds=5.0, give_up_after=20.0)
    assert_still_serving(quick_daemon)


def send_until_blocked_for(
    sock: socket.socket, frame: bytes, seconds: float, give_up_after: float
) -> bool:
    """Send `frame` over and over; True once the socket stays unwritable for `seconds`."""
    deadline = time.monotonic() + give_up_after
    pending = b""
    while time.monotonic() < deadline:
        pending = pending or frame * 64
        try:
            pending = pending[sock.send(pending) :]
        except BlockingIOError:
            _, writable, _ = select.select([], [sock], [], seconds)
            if not writable:
                return True
    return False
