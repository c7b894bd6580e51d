"""Property-based fuzzing of frame reading and request decoding against the real daemon.

Random bytes, random msgpack, huge lengths, deep nesting and invalid UTF-8 go
to one long-running daemon; it must answer each frame or close the
connection, never crash, keep its memory bounded, and answer status after.
"""

from __future__ import annotations

import shutil
import socket
import struct
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import DaemonProcess, clean_environ

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))

msgpack_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats()
    | st.text(max_size=50)
    | st.binary(max_size=50),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5)
    ),
    max_leaves=30,
)
requests = st.fixed_dictionaries(
    {
        "v": st.one_of(st.just(1), msgpack_values),
        "id": st.one_of(st.integers(0, 2**31), st.text(max_size=8), msgpack_values),
        "cmd": st.one_of(
            st.sampled_from(["status", "ping", "chat", "history", "sessions", "nope"]),
            msgpack_values,
        ),
    },
    optional={
        "args": st.one_of(
            st.dictionaries(st.text(max_size=12), msgpack_values, max_size=4), msgpack_values
        )
    },
)


BASELINE_RSS_KIB: dict[int, int] = {}  # pid -> RSS right after READY, before any fuzzing


@pytest.fixture(scope="module")
def fuzz_daemon() -> Iterator[DaemonProcess]:
    base = Path(tempfile.mkdtemp(prefix="ad-fz-", dir="/tmp"))
    (base / "run").mkdir(mode=0o700)
    (base / "home").mkdir()
    env = {
        **clean_environ(base),
        "AGENTD_DAEMON__FRAME_TIMEOUT_S": "0.2",
        "AGENTD_DAEMON__MAX_FRAME_BYTES": "65536",
    }
    d = DaemonProcess(base, env).start()
    assert d.process is not None
    BASELINE_RSS_KIB[d.process.pid] = rss_kib(d.process.pid)
    yield d
    d.kill()
    shutil.rmtree(base, ignore_errors=True)


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def exchange(d: DaemonProcess, payload: bytes) -> list[dict[str, Any]]:
    """Send raw bytes, half-close, and read every reply until the daemon closes."""
    replies = []
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)
        sock.connect(d.socket)
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
        buffer = b""
        while chunk := sock.recv(65536):
            buffer += chunk
    while len(buffer) >= 4:
        (length,) = struct.unpack(">I", buffer[:4])
        if len(buffer) < 4 + length:
            break
        replies.append(msgpack.unpackb(buffer[4 : 4 + length]))
        buffer = buffer[4 + length :]
    return replies


def framed(body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + body


def check_replies(replies: list[dict[str, Any]]) -> None:
    for reply in replies:
        assert reply["v"] == 1
        if not reply.get("ok"):
            assert reply["error"]["code"] != "INTERNAL", reply
            assert "Traceback" not in reply["error"]["message"]


@FUZZ
@given(payload=st.binary(max_size=300))
def test_random_bytes(fuzz_daemon: DaemonProcess, payload: bytes) -> None:
    check_replies(exchange(fuzz_daemon, payload))


@FUZZ
@given(value=msgpack_values)
def test_random_msgpack_values(fuzz_daemon: DaemonProcess, value: Any) -> None:
    check_replies(exchange(fuzz_daemon, framed(msgpack.packb(value))))


@FUZZ
@given(request=requests)
def test_random_requests(fuzz_daemon: DaemonProcess, request: dict[str, Any]) -> None:
    if (
        request.get("cmd") in ("chat",)
        and isinstance(request.get("args"), dict)
        and "message" in request["args"]
    ):
        request["args"]["message"] = None  # no real chats: keep the store small
    check_replies(exchange(fuzz_daemon, framed(msgpack.packb(request))))


@FUZZ
@given(length=st.integers(65537, 2**32 - 1), tail=st.binary(max_size=64))
def test_huge_lengths(fuzz_daemon: DaemonProcess, length: int, tail: bytes) -> None:
    replies = exchange(fuzz_daemon, struct.pack(">I", length) + tail)
    assert [r["error"]["code"] for r in replies] == ["FRAME_TOO_LARGE"]


@FUZZ
@given(depth=st.integers(1, 20_000), container=st.sampled_from([b"\x91", b"\x81\xa1k"]))
def test_deep_nesting(fuzz_daemon: DaemonProcess, depth: int, container: bytes) -> None:
    body = container * min(depth, 60_000 // len(container)) + b"\xc0"
    check_replies(exchange(fuzz_daemon, framed(body)))


@FUZZ
@given(junk=st.binary(min_size=1, max_size=20).filter(lambda b: not _is_utf8(b)))
def test_invalid_utf8_strings(fuzz_daemon: DaemonProcess, junk: bytes) -> None:
    body = b"\x83\xa1v\x01\xa2id\x01\xa3cmd" + bytes([0xA0 | len(junk)]) + junk
    replies = exchange(fuzz_daemon, framed(body))
    assert [r["error"]["code"] for r in replies] == ["BAD_REQUEST"]


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def test_zz_daemon_survived_with_bounded_memory(fuzz_daemon: DaemonProcess) -> None:
    """Runs after the fuzzers (file order): same process, answers, memory bounded."""
    assert fuzz_daemon.process is not None and fuzz_daemon.process.poll() is None
    pid = fuzz_daemon.process.pid
    assert fuzz_daemon.call("status")["state"] == "READY"
    growth_kib = rss_kib(pid) - BASELINE_RSS_KIB[pid]
    assert growth_kib < 16 * 1024, f"RSS grew {growth_kib} KiB over ~1,800 hostile connections"
