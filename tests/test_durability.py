"""Nothing acknowledged is lost, and nothing readable is left on disk."""

from __future__ import annotations

import signal
import threading
from pathlib import Path

from agentctl.client import Client, ClientError
from tests.conftest import DaemonProcess, wait_until
from tests.fake_gemini import FakeGemini, echo

MARKER = "ZEBRA-7f3a-PLAINTEXT-MARKER"


def files_under(*roots: Path) -> list[Path]:
    return [p for root in roots if root.exists() for p in root.rglob("*") if p.is_file()]


def files_containing(marker: str, *roots: Path) -> list[Path]:
    needles = {marker.encode("utf-8"), marker.encode("utf-16-le")}
    return [p for p in files_under(*roots) if any(n in p.read_bytes() for n in needles)]


def test_kill_9_under_load_loses_no_acknowledged_chat(
    gemini_daemon: DaemonProcess, fake_gemini: FakeGemini
) -> None:
    """1. Eight clients chat in a loop; each records the replies it saw. 2. kill -9 mid-load.
    3. Restart. 4. Every acknowledged exchange is in history, prompt and answer intact;
    chats cut off show as interrupted, none is left pending."""
    fake_gemini.set_default(echo())
    acknowledged: dict[str, tuple[str, str]] = {}
    guard = threading.Lock()
    stop = threading.Event()

    def chat_loop(worker: int) -> None:
        n = 0
        try:
            with Client(gemini_daemon.socket, timeout=30) as client:
                while not stop.is_set():
                    message = f"w{worker}-n{n}"
                    reply = client.call("chat", {"message": message})
                    with guard:
                        acknowledged[reply["request_id"]] = (message, reply["answer"])
                    n += 1
        except ClientError:
            pass  # the daemon died under us: expected

    workers = [threading.Thread(target=chat_loop, args=(w,)) for w in range(8)]
    for thread in workers:
        thread.start()
    wait_until(lambda: len(acknowledged) >= 80, 60, "80 acknowledged chats")
    gemini_daemon.signal(signal.SIGKILL)
    gemini_daemon.wait_exit()
    stop.set()
    for thread in workers:
        thread.join(30)
    with guard:
        seen = dict(acknowledged)

    gemini_daemon.start()
    messages = gemini_daemon.call("history", {"limit": 10_000})["messages"]
    by_request: dict[str, dict[str, dict]] = {}
    for m in messages:
        by_request.setdefault(m["request_id"], {})[m["role"]] = m
    for request_id, (prompt, answer) in seen.items():
        turns = by_request[request_id]
        assert turns["user"]["content"] == prompt
        assert turns["user"]["status"] == "answered"
        assert turns["model"]["content"] == answer
    assert not [m for m in messages if m["status"] == "pending"]


def test_no_prompt_or_answer_text_anywhere_on_disk(
    gemini_daemon: DaemonProcess, fake_gemini: FakeGemini
) -> None:
    fake_gemini.set_default(echo())
    result = gemini_daemon.agentctl(
        "chat", "--new-session", "--name", f"name-{MARKER}", f"remember {MARKER}"
    )
    assert result.returncode == 0, result.stderr
    assert MARKER.encode() in result.stdout  # the answer did carry it
    roots = (gemini_daemon.state_dir, gemini_daemon.base / "run")
    assert files_containing(MARKER, *roots) == []  # while running: WAL, db, logs
    gemini_daemon.signal(signal.SIGTERM)
    assert gemini_daemon.wait_exit() == 0
    assert files_containing(MARKER, *roots) == []  # after the checkpoint
    assert MARKER not in gemini_daemon.stderr()  # the log stream
