"""Fixtures that start the real daemon as a subprocess and run agentctl as a real process.

Each daemon gets its own short temporary directory (Unix socket paths are
limited to 108 bytes), an environment stripped of the developer's AGENTD_*
and Gemini variables, and an empty config file so /etc/agentd is never read.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from agentctl.client import Client, ConnectionLost, DaemonError, NotRunning

if TYPE_CHECKING:
    from tests.fake_gemini import FakeGemini

pytest_plugins = ["tests.fake_gemini"]

REPO = Path(__file__).resolve().parent.parent
START_TIMEOUT = 15.0


def clean_environ(base: Path) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(
            ("AGENTD_", "GEMINI_", "GOOGLE_", "NOTIFY_", "LISTEN_", "WATCHDOG_", "JOURNAL_")
        )
        and k not in {"STATE_DIRECTORY", "RUNTIME_DIRECTORY", "CREDENTIALS_DIRECTORY", "NO_COLOR"}
    }
    config = base / "empty.toml"
    config.touch()
    env.update(
        {
            "HOME": str(base / "home"),
            "XDG_RUNTIME_DIR": str(base / "run"),
            "AGENTD_CONFIG": str(config),
            "AGENTD_STATE_DIR": str(base / "state"),
            "AGENTD_SOCKET": str(base / "run" / "agentd.sock"),
            "PYTHONPATH": str(REPO),
        }
    )
    return env


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll a condition with a deadline (never a bare sleep as synchronisation)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.01)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


async def async_wait_until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    """wait_until for coroutines: poll with a deadline, yielding to the loop between looks."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(0.01)


@dataclass
class DaemonProcess:
    base: Path
    env: dict[str, str]
    process: subprocess.Popen[bytes] | None = None
    extra_args: list[str] = field(default_factory=list)

    @property
    def socket(self) -> str:
        return self.env["AGENTD_SOCKET"]

    @property
    def state_dir(self) -> Path:
        return Path(self.env["AGENTD_STATE_DIR"])

    @property
    def stderr_path(self) -> Path:
        return self.base / "stderr.log"

    def start(self, *args: str, wait: bool = True) -> DaemonProcess:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "agentd", *self.extra_args, *args],
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=self.stderr_path.open("ab"),
        )
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self) -> dict[str, Any]:
        status: dict[str, Any] = {}

        def ready() -> bool:
            nonlocal status
            assert self.process is not None
            if self.process.poll() is not None:
                raise AssertionError(f"agentd exited {self.process.returncode}: {self.stderr()}")
            try:
                status = self.call("status")
            except (NotRunning, ConnectionLost):
                return False
            return status["state"] in ("READY", "PROCESSING")

        wait_until(ready, START_TIMEOUT, "agentd to be READY")
        return status

    def call(self, cmd: str, args: dict[str, Any] | None = None, **kw: Any) -> dict[str, Any]:
        with Client(self.socket, timeout=30) as client:
            return client.call(cmd, args, **kw)

    def error_of(self, cmd: str, args: dict[str, Any] | None = None) -> DaemonError:
        with pytest.raises(DaemonError) as info:
            self.call(cmd, args)
        return info.value

    def signal(self, signum: int) -> None:
        assert self.process is not None
        self.process.send_signal(signum)

    def wait_exit(self, timeout: float = 30.0) -> int:
        assert self.process is not None
        return self.process.wait(timeout)

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace") if self.stderr_path.exists() else ""

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)

    def agentctl(
        self,
        *args: str,
        input: bytes | None = None,
        timeout: float = 60,
        env: dict[str, str] | None = None,
    ) -> subprocess.CompletedProcess[bytes]:
        return run_agentctl(self.env if env is None else env, *args, input=input, timeout=timeout)


def run_agentctl(
    env: dict[str, str], *args: str, input: bytes | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "agentctl", *args],
        env=env,
        input=input,
        stdin=None if input is not None else subprocess.DEVNULL,
        capture_output=True,
        timeout=timeout,
        check=False,
    )


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="ad-", dir="/tmp"))
    (path / "run").mkdir(mode=0o700)
    (path / "home").mkdir()
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def make_daemon(short_tmp: Path) -> Iterator[Callable[..., DaemonProcess]]:
    """Factory: make_daemon(env_overrides) -> a not-yet-started DaemonProcess; all are killed at the end."""
    made: list[DaemonProcess] = []

    def factory(env: dict[str, str] | None = None, base: Path | None = None) -> DaemonProcess:
        root = base or short_tmp
        daemon = DaemonProcess(root, {**clean_environ(root), **(env or {})})
        made.append(daemon)
        return daemon

    yield factory
    for daemon in made:
        daemon.kill()


@pytest.fixture
def daemon(make_daemon: Callable[..., DaemonProcess]) -> DaemonProcess:
    """A running daemon with development defaults and no Gemini key."""
    return make_daemon().start()


TEST_API_KEY = "test-gemini-key-not-real"


def gemini_env(fake: FakeGemini, **overrides: str) -> dict[str, str]:
    """Point the daemon at the fake Gemini with short, test-sized timeouts."""
    return {
        "GEMINI_API_KEY": TEST_API_KEY,
        "AGENTD_GEMINI_BASE_URL": fake.url,
        "AGENTD_GEMINI__ATTEMPT_TIMEOUT_S": "5",
        "AGENTD_GEMINI__DEADLINE_S": "20",
        "AGENTD_GEMINI__BACKOFF_BASE_S": "0.01",
        "AGENTD_GEMINI__BACKOFF_MAX_S": "0.05",
        # Load tests chat far faster than the default budgets allow; the limits
        # themselves are tested with their own small budgets.
        "AGENTD_LIMITS__CHAT_RATE": "10000",
        "AGENTD_LIMITS__CHAT_BURST": "10000",
        "AGENTD_LIMITS__SESSION_RATE": "10000",
        "AGENTD_LIMITS__SESSION_BURST": "10000",
        **overrides,
    }


@pytest.fixture
def gemini_daemon(
    make_daemon: Callable[..., DaemonProcess], fake_gemini: FakeGemini
) -> DaemonProcess:
    """A running daemon with an API key, talking to the fake Gemini over HTTP."""
    return make_daemon(gemini_env(fake_gemini)).start()
