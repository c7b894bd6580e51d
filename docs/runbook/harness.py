"""What a runbook scenario runs against, and how it writes down what it saw.

A `Lab` starts real daemons (tests/conftest.py's DaemonProcess: a subprocess in a
short temporary directory) beside the fake Gemini (tests/fake_gemini.py), runs
agentctl as a real process, and records each step twice: as a transcript block for
the page (normalised: no pid, time, id or temporary path) and as a `fact` (exit
codes, states, key line fragments) that tests/test_runbook.py compares with the
facts committed in docs/runbook.md.
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.conftest import DaemonProcess, clean_environ, gemini_env
from tests.fake_gemini import FakeGemini

# Short waits: the page shows recovery, not the production defaults' patience.
FAST_RECOVERY = {
    "AGENTD_DAEMON__HEALTH_INTERVAL_S": "0.1",
    "AGENTD_DAEMON__RECOVERY_MAX_BACKOFF_S": "0.3",
}


class Skipped(Exception):
    """A scenario that cannot run yet (or here): its reason goes on the page."""


@dataclass
class Block:
    """One transcript block: a command line and what it printed."""

    command: str
    output: str
    code: int | None = None
    lang: str = "console"

    def render(self) -> str:
        lines = [f"$ {self.command}"] if self.command else []
        if self.output:
            lines.append(self.output.rstrip("\n"))
        if self.code is not None:
            lines.append(f"[exit {self.code}]")
        return f"```{self.lang}\n" + "\n".join(lines) + "\n```"


@dataclass
class Record:
    """What one scenario saw: blocks for the page, facts for the test."""

    name: str
    parts: dict[str, list[Block]] = field(default_factory=dict)
    facts: list[str] = field(default_factory=list)
    skipped: str | None = None
    seconds: float = 0.0


class Lab:
    """One scenario's temporary world: daemons, fake Gemini, its record."""

    def __init__(self, record: Record) -> None:
        self.record = record
        self.base = Path(tempfile.mkdtemp(prefix="rb-", dir="/tmp"))
        (self.base / "run").mkdir(mode=0o700)
        (self.base / "home").mkdir()
        self.daemons: list[DaemonProcess] = []
        self.fakes: list[FakeGemini] = []
        self.part = "symptom"
        self.pids: dict[int, str] = {}

    # -- the world -------------------------------------------------------------------

    def fake_gemini(self, port: int = 0) -> FakeGemini:
        fake = FakeGemini(port=port)
        fake.start()
        self.fakes.append(fake)
        return fake

    def daemon(self, env: dict[str, str] | None = None, *, fake: FakeGemini | None = None,
               base: Path | None = None, start: bool = True) -> DaemonProcess:
        root = base or self.base
        merged = {**clean_environ(root), **(gemini_env(fake) if fake else {}), **(env or {})}
        d = DaemonProcess(root, merged)
        self.daemons.append(d)
        if start:
            d.start()
            self.pid_of(d)
        return d

    def pid_of(self, d: DaemonProcess) -> None:
        assert d.process is not None
        self.pids[d.process.pid] = f"<pid{len(self.pids) + 1}>"

    def close(self) -> None:
        for d in self.daemons:
            d.kill()
        for fake in self.fakes:
            fake.stop()
        subprocess.run(["umount", "-l", str(self.base / "tiny")], capture_output=True, check=False)
        shutil.rmtree(self.base, ignore_errors=True)

    # -- recording ---------------------------------------------------------------------

    def section(self, part: str) -> None:
        """Blocks from here on go to `part` (symptom, recovery...) of the page's section."""
        self.part = part

    def show(self, command: str, output: str, code: int | None = None, lang: str = "console"
             ) -> None:
        block = Block(self.normalise(command), self.normalise(output), code, lang)
        self.record.parts.setdefault(self.part, []).append(block)

    def fact(self, text: str) -> None:
        self.record.facts.append(text)

    def says(self, text: str, *fragments: str) -> None:
        """Record whether each key fragment is in `text` (a fact, not an assertion:
        the test compares it with the page)."""
        for fragment in fragments:
            found = fragment in text
            self.fact(f"says {fragment!r}" if found else f"MISSING {fragment!r}")

    def ctl(self, d: DaemonProcess, *args: str, says: tuple[str, ...] = (),
            shown: str | None = None, timeout: float = 60) -> subprocess.CompletedProcess[bytes]:
        """Run agentctl for real, show it, and record its exit code and key fragments."""
        result = d.agentctl(*args, timeout=timeout)
        text = result.stdout.decode(errors="replace") + result.stderr.decode(errors="replace")
        command = shown or "agentctl " + " ".join(_quote(a) for a in args)
        self.show(command, text, result.returncode)
        self.fact(f"{command} -> exit {result.returncode}")
        self.says(text, *says)
        return result

    def sh(self, command: str, note: str = "") -> None:
        """Run a shell command for real (rm, cp, stat, kill) and show it, normalised."""
        done = subprocess.run(["bash", "-c", command], capture_output=True, timeout=30,
                              check=False)
        output = done.stdout.decode(errors="replace") + done.stderr.decode(errors="replace")
        shown = f"{command}    # {note}" if note else command
        self.show(shown, output, done.returncode or None)

    def agentd(self, d: DaemonProcess, *args: str, says: tuple[str, ...] = (),
               shown: str = "") -> int:
        """Start agentd expecting it to exit at once: show its stderr and exit status."""
        before = len(d.stderr())
        d.start(*args, wait=False)
        code = d.wait_exit(30)
        text = d.stderr()[before:]
        command = shown or " ".join(["agentd", *args])
        self.show(command, text, code)
        self.fact(f"{command} -> exit {code}")
        self.says(text, *says)
        return code

    def offline(self, d: DaemonProcess, *args: str, says: tuple[str, ...] = ()) -> int:
        """Run an offline `agentd` command (restore, rekey) with the daemon's environment:
        show what it printed (stdout and stderr) and record its exit status."""
        done = subprocess.run([sys.executable, "-m", "agentd", *args], env=d.env,
                              capture_output=True, timeout=60, check=False)
        text = done.stdout.decode(errors="replace") + done.stderr.decode(errors="replace")
        command = " ".join(["agentd", *(_quote(a) for a in args)])
        self.show(command, text, done.returncode)
        self.fact(f"{self.normalise(command)} -> exit {done.returncode}")
        self.says(text, *says)
        return done.returncode

    def state(self, d: DaemonProcess) -> str:
        return str(d.call("status")["state"])

    def wait_state(self, d: DaemonProcess, state: str, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        seen = ""
        while time.monotonic() < deadline:
            seen = self.state(d)
            if seen == state:
                self.fact(f"state becomes {state}")
                return
            time.sleep(0.05)
        self.fact(f"state stays {seen}, not {state} within {timeout:g}s")

    def wait_component(self, d: DaemonProcess, name: str, status: str,
                       timeout: float = 10) -> None:
        """Poll `health` until component `name` has `status`; record whether it did."""
        deadline = time.monotonic() + timeout
        seen = ""
        while time.monotonic() < deadline:
            component = d.call("health")["components"].get(name, {})  # not checked yet: absent
            seen = str(component.get("status", "unchecked"))
            if seen == status:
                self.fact(f"{name} becomes {status}")
                return
            time.sleep(0.05)
        self.fact(f"{name} stays {seen}, not {status} within {timeout:g}s")

    def log(self, d: DaemonProcess, *fragments: str) -> None:
        """Show the daemon's stderr log lines (JSON) whose message holds one of the
        fragments, the first of each, abridged to time, level, logger and message."""
        records = list(_records(d.stderr_path))
        picked: list[dict[str, Any]] = []
        for fragment in fragments:
            hits = [r for r in records if fragment in str(r.get("message", ""))]
            self.fact(f"log {hits[0]['level']} {fragment!r}" if hits else
                      f"log MISSING {fragment!r}")
            picked.extend(r for r in hits[:1] if r not in picked)
        picked.sort(key=records.index)
        text = "\n".join(json.dumps({k: r[k] for k in ("time", "level", "logger", "message")
                                     if k in r}) for r in picked)
        self.show("", text, None, "json")

    # -- normalising ---------------------------------------------------------------

    def normalise(self, text: str) -> str:
        text = text.replace(str(self.base), "<tmp>")
        for pid, name in self.pids.items():
            text = re.sub(rf"\b{pid}\b", name, text)
        for pattern, replacement in _VOLATILE:
            text = pattern.sub(replacement, text)
        return text


_VOLATILE: list[tuple[re.Pattern[str], str | Callable[[re.Match[str]], str]]] = [
    (re.compile(r"\b(a|s|r)-[0-9a-f]{16}\b"), r"\1-…"),
    (re.compile(r"\b\d{8}T\d{6}\.\d{3}Z"), "<time>"),
    (re.compile(r"\bhash [0-9a-f]{64}\b"), "hash <hash>"),
    (re.compile(r"\btook( +)\d+(\.\d+)?s"), r"took\1Ns"),
    (re.compile(r"\bsize( +)\d+(\.\d+)? (KiB|MiB|B)\b"), r"size\1N \3"),
    (re.compile(r"\d{4}-\d\d-\d\d[T ]\d\d:\d\d:\d\d(\.\d+)?(\+0000|Z)?"), "<time>"),
    (re.compile(r"\b\d+(\.\d+)? (MiB|KiB|GiB|B) free"), r"N \2 free"),
    (re.compile(r"RSS \d+(\.\d+)? MiB"), "RSS N MiB"),
    (re.compile(r"\(\d+(\.\d+)? (KiB|MiB|B)\)"), r"(N \2)"),
    (re.compile(r"lag \d+(\.\d+)? ms"), "lag N ms"),
    (re.compile(r"uptime( +)\d+\S*"), r"uptime\1Ns"),
    (re.compile(r"\b\d+s ago\b"), "Ns ago"),
    (re.compile(r"pid \d+"), "pid <pid>"),
    (re.compile(r"127\.0\.0\.1:\d+"), "127.0.0.1:<port>"),
    (re.compile(r"\bin \d+(\.\d+)?s\b"), "in Ns"),
    (re.compile(r"after \d+ trip\(s\)"), "after N trip(s)"),
]


def _records(path: Path) -> Iterator[dict[str, Any]]:
    """The log file's records; a line cut short (the disk filled up mid-write) is skipped."""
    if not path.exists():
        return
    for line in path.read_text(errors="replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            yield record


def _quote(arg: str) -> str:
    return arg if re.fullmatch(r"[\w./=:-]+", arg) else repr(arg).replace("'", '"')


@contextmanager
def lab(record: Record) -> Iterator[Lab]:
    world = Lab(record)
    try:
        yield world
    finally:
        world.close()


def run(name: str, scenario: Callable[[Lab], None]) -> Record:
    """Run one scenario in its own world; a Skipped scenario records its reason."""
    record = Record(name)
    started = time.monotonic()
    with lab(record) as world:
        try:
            scenario(world)
        except Skipped as why:
            record.skipped = str(why)
    record.seconds = time.monotonic() - started
    return record


def stop(d: DaemonProcess) -> int:
    d.signal(signal.SIGTERM)
    return d.wait_exit()
