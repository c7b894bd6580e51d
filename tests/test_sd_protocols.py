"""systemd's protocols without a booted systemd: a real NOTIFY_SOCKET and real socket
activation through systemd-socket-activate."""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import DaemonProcess, run_agentctl, wait_until


@pytest.fixture
def notify_socket(short_tmp: Path) -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(short_tmp / "notify.sock"))
    sock.settimeout(10)
    yield sock
    sock.close()


def messages_until(sock: socket.socket, wanted: str, timeout: float = 10) -> list[str]:
    """Datagrams received until one carries `wanted` (each datagram is one message)."""
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        seen.append(sock.recv(4096).decode())
        if wanted in seen[-1].splitlines():
            return seen
    raise AssertionError(f"no {wanted} in {seen}")


def test_notify_ready_status_watchdog_and_stopping(
    make_daemon: Callable[..., DaemonProcess], notify_socket: socket.socket
) -> None:
    d = make_daemon({"NOTIFY_SOCKET": notify_socket.getsockname(), "WATCHDOG_USEC": "200000"})
    d.start(wait=False)
    ready = messages_until(notify_socket, "READY=1")
    assert any(line.startswith("STATUS=READY") for line in ready[-1].splitlines())
    assert f"MAINPID={d.process.pid}" in ready[-1].splitlines()  # type: ignore[union-attr]
    messages_until(notify_socket, "WATCHDOG=1")
    messages_until(notify_socket, "WATCHDOG=1")  # keeps pinging from the loop
    d.signal(signal.SIGTERM)
    stopping = messages_until(notify_socket, "STOPPING=1")
    assert not any("READY=1" in m for m in stopping)
    assert d.wait_exit() == 0


def test_every_state_change_is_sent_as_status(
    make_daemon: Callable[..., DaemonProcess], notify_socket: socket.socket
) -> None:
    d = make_daemon({"NOTIFY_SOCKET": notify_socket.getsockname()})
    d.start(wait=False)
    messages_until(notify_socket, "READY=1")
    d.wait_ready()
    d.agentctl("chat", "hello")  # READY -> PROCESSING -> READY, even in degraded mode
    statuses = [
        m
        for m in messages_until(notify_socket, "STATUS=READY: no chat in flight")
        if "STATUS=" in m
    ]
    assert any(m.startswith("STATUS=PROCESSING") for m in statuses)


def test_watchdog_meant_for_another_pid_is_ignored(
    make_daemon: Callable[..., DaemonProcess], notify_socket: socket.socket
) -> None:
    d = make_daemon(
        {
            "NOTIFY_SOCKET": notify_socket.getsockname(),
            "WATCHDOG_USEC": "100000",
            "WATCHDOG_PID": "1",
        }
    )
    d.start(wait=False)
    messages_until(notify_socket, "READY=1")
    d.wait_ready()
    notify_socket.settimeout(0.5)
    with pytest.raises(TimeoutError):
        while True:
            assert "WATCHDOG=1" not in notify_socket.recv(4096).decode()


@pytest.mark.skipif(
    shutil.which("systemd-socket-activate") is None, reason="systemd-socket-activate not installed"
)
def test_socket_activation_adopts_the_passed_socket(
    make_daemon: Callable[..., DaemonProcess],
) -> None:
    """1. systemd-socket-activate listens; no agentd runs. 2. The first agentctl status
    starts agentd on that socket, which adopts it (LISTEN_FDS) instead of binding.
    3. SIGTERM: agentd exits 0 and leaves the socket file to its owner."""
    d = make_daemon()
    activator = subprocess.Popen(
        [
            "systemd-socket-activate",
            "-l",
            d.socket,
            "-E",
            "PYTHONPATH",
            "-E",
            "HOME",
            "-E",
            "AGENTD_CONFIG",
            "-E",
            "AGENTD_STATE_DIR",
            "-E",
            "AGENTD_SOCKET",
            "-E",
            "XDG_RUNTIME_DIR",
            sys.executable,
            "-m",
            "agentd",
        ],
        env=d.env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=d.stderr_path.open("ab"),
    )
    try:
        wait_until(lambda: Path(d.socket).exists(), 10, "the activator's socket")
        assert not (d.state_dir / "agentd.db").exists()  # nothing started yet
        status = run_agentctl(d.env, "status", "--json")
        assert status.returncode == 0, status.stderr
        wait_until(
            lambda: "adopted the socket passed by systemd" in d.stderr(),
            10,
            "the adoption log line",
        )
        activator.send_signal(signal.SIGTERM)  # exec'd: the activator *is* agentd now
        assert activator.wait(30) == 0
        assert Path(d.socket).exists()  # not ours to remove
    finally:
        if activator.poll() is None:
            activator.kill()
            activator.wait()


@pytest.mark.skipif(shutil.which("systemd-socket-activate") is None, reason="systemd-socket-activate not installed")
@pytest.mark.parametrize("breakage", ["config", "db-key"])
def test_fatal_start_under_activation_answers_the_waiting_client(
    make_daemon: Callable[..., DaemonProcess], short_tmp: Path, breakage: str
) -> None:
    """The client that triggered activation gets one clear error, not a hang or a reset,
    and agentd exits 78 (so systemd's socket is not re-triggered in a loop)."""
    d = make_daemon()
    if breakage == "config":
        Path(d.env["AGENTD_CONFIG"]).write_text("[daemon]\nno_such_key = 1\n")
    else:
        (short_tmp / "bad.key").write_text("zz")
        d.env["AGENTD_DB_KEY_FILE"] = str(short_tmp / "bad.key")
    activator = subprocess.Popen(
        ["systemd-socket-activate", "-l", d.socket, "-E", "PYTHONPATH", "-E", "HOME", "-E", "AGENTD_CONFIG",
         "-E", "AGENTD_STATE_DIR", "-E", "AGENTD_SOCKET", "-E", "AGENTD_DB_KEY_FILE",
         sys.executable, "-m", "agentd"],
        env=d.env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        wait_until(lambda: Path(d.socket).exists(), 10, "the activator's socket")
        status = run_agentctl(d.env, "status")
        assert status.returncode == 1
        assert b"agentd cannot start" in status.stderr
        assert activator.wait(30) == 78
    finally:
        if activator.poll() is None:
            activator.kill()
            activator.wait()
