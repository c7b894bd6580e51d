"""Recognisable DB and API keys never appear in any output channel."""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from tests.conftest import DaemonProcess, gemini_env
from tests.fake_gemini import FakeGemini, answer, unauthorized

DB_KEY = "dbdbdbdb" + "5ec7e7" * 8 + "c0ffee" + "00"  # 64 hex characters
API_KEY = "AIzaSy-LEAK-MARKER-0123456789abcdef"


def leaks(text: str | bytes) -> list[str]:
    data = text.encode() if isinstance(text, str) else text
    found = []
    for name, secret in (("db key", DB_KEY), ("api key", API_KEY)):
        if secret.encode() in data or secret.upper().encode() in data:
            found.append(name)
    return found


def test_keys_appear_in_no_output_channel(
    make_daemon: Callable[..., DaemonProcess], fake_gemini: FakeGemini, short_tmp: Path
) -> None:
    key_file = short_tmp / "db.key"
    key_file.write_text(DB_KEY + "\n")
    d = make_daemon(
        gemini_env(
            fake_gemini,
            GEMINI_API_KEY=API_KEY,
            AGENTD_DB_KEY_FILE=str(key_file),
            AGENTD_LOG_LEVEL="DEBUG",
        )
    )
    d.start()
    outputs: list[bytes] = []

    def run(*args: str, input: bytes | None = None) -> None:
        result = d.agentctl(*args, input=input)
        outputs.extend([result.stdout, result.stderr])

    fake_gemini.push(answer("fine"))
    run("chat", "hello")
    fake_gemini.set_default(unauthorized())  # the key is rejected: errors must not echo it
    run("chat", "--json", "again")
    for args in (
        ("status", "--json"),
        ("status",),
        ("health", "--json"),
        ("metrics", "--json"),
        ("metrics", "--prometheus"),
        ("logs", "-n", "1000", "--json"),
        ("audit", "--json"),
        ("history", "--json"),
        ("sessions", "--json"),
    ):
        run(*args)
    run("chat", "--session", "no-such-session", "x")  # an error reply
    check = subprocess.run(
        [sys.executable, "-m", "agentd", "--check-config"],
        env=d.env,
        capture_output=True,
        timeout=30,
        check=False,
    )
    outputs.extend([check.stdout, check.stderr])
    d.signal(signal.SIGTERM)
    assert d.wait_exit() == 0

    assert all(o is not None for o in outputs)
    for output in outputs:
        assert leaks(output) == [], output[:400]
    assert leaks(d.stderr()) == []
    for path in d.state_dir.rglob("*"):
        if path.is_file() and path != key_file:
            assert leaks(path.read_bytes()) == [], path
