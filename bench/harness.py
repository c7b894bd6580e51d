"""Real parts for the benches: a private directory, the daemon, the fake Gemini, timings.

The daemon runs as the tests run it (tests/conftest.py): its own short /tmp
directory (Unix socket paths max 108 bytes), an environment stripped of the
developer's AGENTD_*/Gemini/systemd variables, and an empty config file so
/etc/agentd is never read. READY is what systemd sees: a real NOTIFY_SOCKET
(an AF_UNIX datagram socket) and the time until ``READY=1`` arrives on it.
"""

from __future__ import annotations

import json
import os
import re
import selectors
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Any

REPO = Path(__file__).resolve().parent.parent
_VENV_BIN = REPO / ".venv" / "bin"
PYTHON = str(_VENV_BIN / "python") if (_VENV_BIN / "python").exists() else sys.executable
AGENTD = [str(_VENV_BIN / "agentd")] if (_VENV_BIN / "agentd").exists() else [PYTHON, "-m", "agentd"]
AGENTCTL = (
    [str(_VENV_BIN / "agentctl")] if (_VENV_BIN / "agentctl").exists() else [PYTHON, "-m", "agentctl"]
)
FAKE_GEMINI = REPO / "tests" / "fake_gemini.py"
BENCH_API_KEY = "bench-gemini-key-not-real"

_STRIPPED_PREFIXES = ("AGENTD_", "GEMINI_", "GOOGLE_", "NOTIFY_", "LISTEN_", "WATCHDOG_", "JOURNAL_")
_STRIPPED_NAMES = {"STATE_DIRECTORY", "RUNTIME_DIRECTORY", "CREDENTIALS_DIRECTORY", "NO_COLOR"}


def with_interpreter_flags(argv: Sequence[str], *flags: str) -> list[str]:
    """``argv`` (a console script or ``python ...``) run by the venv's python with ``flags``."""
    rest = list(argv[1:]) if argv[0] == PYTHON else list(argv)
    return [PYTHON, *flags, *rest]


class BenchError(Exception):
    """A bench could not measure (the daemon did not start, a client failed...)."""


# -- statistics -------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100), linearly interpolated."""
    if not values:
        raise ValueError("no values")
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def spread(values: Sequence[float]) -> dict[str, float]:
    """min/median/p90/max, rounded, for the JSON file."""
    return {
        "n": len(values), "min": round(min(values), 3), "median": round(median(values), 3),
        "p90": round(percentile(values, 90), 3), "max": round(max(values), 3),
    }


# -- a private directory and environment -------------------------------------------


class Workdir:
    """A short-named temporary directory with run/, home/ and an empty config file."""

    def __init__(self, prefix: str = "ab-") -> None:
        self.path = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
        (self.path / "run").mkdir(mode=0o700)
        (self.path / "home").mkdir()
        (self.path / "empty.toml").touch()
        self._logs = 0

    def __enter__(self) -> Workdir:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)

    @property
    def socket(self) -> str:
        return str(self.path / "run" / "agentd.sock")

    @property
    def state_dir(self) -> Path:
        return self.path / "state"

    def next_log(self, stem: str) -> Path:
        self._logs += 1
        return self.path / f"{stem}-{self._logs}.log"

    def environ(self, **overrides: str) -> dict[str, str]:
        """The environment the tests give the daemon, plus ``overrides``."""
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(_STRIPPED_PREFIXES) and k not in _STRIPPED_NAMES}
        env.update({
            "HOME": str(self.path / "home"),
            "XDG_RUNTIME_DIR": str(self.path / "run"),
            "AGENTD_CONFIG": str(self.path / "empty.toml"),
            "AGENTD_STATE_DIR": str(self.state_dir),
            "AGENTD_SOCKET": self.socket,
        })
        env.update(overrides)
        return env

    def reset_state(self) -> None:
        """An empty store again (the next start creates key and database anew)."""
        shutil.rmtree(self.state_dir, ignore_errors=True)


def gemini_environ(url: str, **overrides: str) -> dict[str, str]:
    """A key and the fake's URL; SDK timeouts short so a stuck bench ends."""
    return {
        "GEMINI_API_KEY": BENCH_API_KEY,
        "AGENTD_GEMINI_BASE_URL": url,
        "AGENTD_GEMINI__ATTEMPT_TIMEOUT_S": "10",
        "AGENTD_GEMINI__DEADLINE_S": "30",
        **overrides,
    }


def limits_overrides(enabled: bool = False) -> tuple[dict[str, str], str]:
    """Environment that switches the daemon's rate limits off (or leaves them on).

    Reads the config schema of the agentd installed here, so the bench follows
    whatever ``[limits]`` looks like when it runs. Returns (env, what was done).
    """
    from agentd import config

    section = config.SECTIONS.get("limits")
    if section is None:
        return {}, "agentd has no [limits] config section: no rate limits to switch off"
    names = [f.name for f in _fields(section)]
    if enabled:
        return {}, "[limits] left at its defaults (on)"
    if "enabled" in names:
        return {"AGENTD_LIMITS__ENABLED": "false"}, "rate limits off: AGENTD_LIMITS__ENABLED=false"
    raised = {f"AGENTD_LIMITS__{n.upper()}": "1000000000" for n in names if _is_budget(n)}
    return raised, "rate limits raised to 1e9: " + ", ".join(sorted(raised))


def _fields(cls: type[Any]) -> tuple[Any, ...]:
    import dataclasses

    return dataclasses.fields(cls)


def _is_budget(name: str) -> bool:
    return any(word in name for word in ("rate", "burst", "per_second", "per_minute"))


# -- the daemon ---------------------------------------------------------------------


class NotifyListener:
    """The systemd side of sd_notify: a datagram socket read on a thread, like PID 1 does.

    It stays bound for the daemon's whole life (an unread socket would fill and
    block the daemon's sendto), records when READY=1 arrived, and counts datagrams.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        path.unlink(missing_ok=True)
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind(str(path))
        self._sock.settimeout(0.1)
        self.ready = threading.Event()
        self.ready_at: float | None = None
        self.datagrams = 0
        self._closing = threading.Event()
        self._thread = threading.Thread(target=self._receive, name="notify", daemon=True)
        self._thread.start()

    def _receive(self) -> None:
        while not self._closing.is_set():
            try:
                datagram = self._sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            now = time.perf_counter()
            self.datagrams += 1
            if not self.ready.is_set() and b"READY=1" in datagram.split(b"\n"):
                self.ready_at = now
                self.ready.set()

    def close(self) -> None:
        self._closing.set()
        self._thread.join(2)
        self._sock.close()
        self.path.unlink(missing_ok=True)


class Daemon:
    """agentd as systemd would run it: Type=notify, timed from exec to READY=1."""

    def __init__(self, workdir: Workdir, env: Mapping[str, str], argv: Sequence[str] = AGENTD) -> None:
        self.workdir = workdir
        self.env = dict(env)
        self.argv = list(argv)
        self.process: subprocess.Popen[bytes] | None = None
        self.stderr_path: Path | None = None
        self.ready_s: float | None = None
        self.notify: NotifyListener | None = None

    def __enter__(self) -> Daemon:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.kill()

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    @property
    def socket(self) -> str:
        return self.env["AGENTD_SOCKET"]

    def start(self, timeout: float = 30.0) -> float:
        """Exec the daemon and return the seconds until READY=1 reached NOTIFY_SOCKET."""
        self.stderr_path = self.workdir.next_log("agentd")
        self.notify = NotifyListener(self.workdir.path / "notify.sock")
        with self.stderr_path.open("wb") as stderr:
            env = {**self.env, "NOTIFY_SOCKET": str(self.notify.path)}
            started = time.perf_counter()
            self.process = subprocess.Popen(
                self.argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                stderr=stderr,
            )
        deadline = started + timeout
        while not self.notify.ready.wait(0.05):
            if self.process.poll() is not None:
                self.notify.close()
                raise BenchError(f"agentd exited {self.process.returncode}: {self.stderr_tail()}")
            if time.perf_counter() > deadline:
                self.kill()
                raise BenchError(f"agentd was not READY within {timeout:.0f}s: {self.stderr_tail()}")
        assert self.notify.ready_at is not None
        self.ready_s = self.notify.ready_at - started
        return self.ready_s

    def stop(self, timeout: float = 60.0) -> int:
        """SIGTERM (graceful stop) and wait for the exit status."""
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else 0
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise BenchError(f"agentd did not stop within {timeout:.0f}s") from None
        finally:
            self._close_notify()

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)
        self._close_notify()

    def _close_notify(self) -> None:
        if self.notify is not None:
            self.notify.close()

    def rss_mb(self) -> float:
        return proc_status_kb(self.pid, "VmRSS") / 1024

    def cpu_s(self) -> float:
        return proc_cpu_s(self.pid)

    def stderr_text(self) -> str:
        if self.stderr_path is None or not self.stderr_path.exists():
            return ""
        return self.stderr_path.read_text(errors="replace")

    def stderr_tail(self, lines: int = 5) -> str:
        return " | ".join(self.stderr_text().strip().splitlines()[-lines:])

    def wait_for_log(self, text: str, timeout: float = 30.0) -> None:
        """Poll the daemon's stderr (JSON lines) for ``text``, with a deadline."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.stderr_text():
                return
            time.sleep(0.05)  # polling a file for a condition, with a deadline
        raise BenchError(f"agentd never logged {text!r} within {timeout:.0f}s")

    def call(self, cmd: str, args: dict[str, Any] | None = None) -> dict[str, Any]:
        from agentctl.client import Client

        with Client(self.socket, timeout=60) as client:
            return client.call(cmd, args)


def save_status_reply(daemon: Daemon) -> Path:
    """The daemon's own `status` result as a JSON file, for the floor server to answer
    with (so the floor's replies are as large as agentd's)."""
    path = daemon.workdir.path / "status.json"
    path.write_text(json.dumps(daemon.call("status")))
    return path


def proc_status_kb(pid: int, key: str) -> int:
    """A ``kB`` field of /proc/PID/status (VmRSS, VmHWM...)."""
    text = Path(f"/proc/{pid}/status").read_text()
    match = re.search(rf"^{key}:\s+(\d+) kB", text, re.MULTILINE)
    if match is None:
        raise BenchError(f"no {key} in /proc/{pid}/status")
    return int(match[1])


def proc_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])  # utime, stime
    return ticks / os.sysconf("SC_CLK_TCK")


def wait_stable_rss(daemon: Daemon, settle_s: float = 1.0, timeout: float = 10.0) -> float:
    """RSS once it stops moving (two readings ``settle_s`` apart within 0.25 MB)."""
    deadline = time.monotonic() + timeout
    previous = daemon.rss_mb()
    while time.monotonic() < deadline:
        time.sleep(settle_s)  # sampling memory at an interval, with a deadline
        current = daemon.rss_mb()
        if abs(current - previous) <= 0.25:
            return current
        previous = current
    return daemon.rss_mb()


# -- the fake Gemini, in its own process ----------------------------------------------


@dataclass(frozen=True)
class FakeGemini:
    url: str
    pid: int


@contextmanager
def fake_gemini(delay_s: float = 0.0) -> Iterator[FakeGemini]:
    """``tests/fake_gemini.py`` as a separate process, so it shares no GIL with anyone."""
    argv = [PYTHON, str(FAKE_GEMINI), "--port", "0"]
    if delay_s:
        argv += ["--delay", str(delay_s)]
    with started_process(argv, ready_text="listening on") as (process, line):
        match = re.search(r"listening on (http://\S+)", line)
        if match is None:
            raise BenchError(f"the fake Gemini printed {line!r}")
        yield FakeGemini(match[1], process.pid)


# -- processes that print one JSON document ------------------------------------------


def run_json(argv: Sequence[str], *, timeout: float = 900.0) -> dict[str, Any]:
    """Run a bench helper (load generator, floor loop) and parse the JSON it prints."""
    return collect_json(spawn_json(argv), timeout=timeout)


def spawn_json(argv: Sequence[str]) -> subprocess.Popen[str]:
    """Start a bench helper that prints one JSON document; collect it with collect_json()."""
    return subprocess.Popen(list(argv), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL, text=True, cwd=REPO)


def collect_json(process: subprocess.Popen[str], *, timeout: float = 900.0) -> dict[str, Any]:
    name = str(process.args)[:100]
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()
        raise BenchError(f"{name} ran over {timeout:.0f}s") from None
    if process.returncode != 0:
        raise BenchError(f"{name} exited {process.returncode}: {err.strip()[-800:]}")
    result: dict[str, Any] = json.loads(out)
    return result


@contextmanager
def started_process(argv: Sequence[str], *, ready_text: str,
                    env: Mapping[str, str] | None = None, timeout: float = 20.0
                    ) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """A helper server that prints ``ready_text`` on stdout once it listens; stopped on exit.

    Yields the process and that first line.
    """
    process = subprocess.Popen(
        list(argv), env=dict(env) if env is not None else None, stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL, text=True, cwd=REPO,
    )
    try:
        line = _read_line(process.stdout, timeout)
        if ready_text not in line:
            raise BenchError(f"{' '.join(argv[:4])}... did not start: {line!r}")
        yield process, line
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)
        if process.stdout is not None:
            process.stdout.close()


def _read_line(stream: IO[str] | None, timeout: float) -> str:
    assert stream is not None
    with selectors.DefaultSelector() as selector:
        selector.register(stream, selectors.EVENT_READ)
        if not selector.select(timeout):
            return ""
    return stream.readline()


def time_runs(argv: Sequence[str], env: Mapping[str, str], *, ok_codes: tuple[int, ...] = (0,)) -> float:
    """Wall time, in ms, of one whole process from fork+exec to its exit."""
    started = time.perf_counter()
    done = subprocess.run(list(argv), env=dict(env), stdin=subprocess.DEVNULL,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, check=False)
    elapsed = (time.perf_counter() - started) * 1000
    if done.returncode not in ok_codes:
        raise BenchError(f"{' '.join(argv)} exited {done.returncode}: {done.stderr.decode()[-400:]}")
    return elapsed


# -- chat load ---------------------------------------------------------------------------

CHAT_CONNECTIONS = 32


def chat_environ(workdir: Workdir, url: str) -> tuple[dict[str, str], str]:
    """The daemon's environment for chat benches: a key, the fake, no queue or rate limit in the way.

    Returns the environment and a note saying what was raised.
    """
    limits_env, limits_note = limits_overrides(enabled=False)
    env = workdir.environ(
        **gemini_environ(url),
        AGENTD_CHAT__MAX_CONCURRENT="64",
        AGENTD_CHAT__MAX_QUEUE="1024",
        **limits_env,
    )
    return env, f"chat.max_concurrent=64, chat.max_queue=1024; {limits_note}"


def run_chats(socket_path: str, count: int, *, connections: int = CHAT_CONNECTIONS,
              stream: bool = False, session_per_connection: bool = True,
              extra: Sequence[str] = ()) -> dict[str, Any]:
    """``count`` chats through the load generator (one JSON document back)."""
    return run_json([
        PYTHON, "-m", "bench.loadgen", "--socket", socket_path, "--connections", str(connections),
        "--cmd", "chat", "--count", str(count), "--args", json.dumps({"stream": stream}),
        *(["--session-per-connection"] if session_per_connection else []), *extra,
    ])
