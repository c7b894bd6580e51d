"""Approvals fail closed: an `ask` call runs only on a yes from the chatting peer,
on the chat's own connection; a pipe, a timeout, a stranger or a hang-up is a no."""

from __future__ import annotations

import json
import os
import pty
import select
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

from agentctl.client import Client
from tests.conftest import DaemonProcess
from tests.fake_gemini import FakeGemini, answer, function_call
from tests.test_tools_loop import UTC_NOW, pytestmark, start_with_tools, time_server, wait_running

__all__ = ["pytestmark"]


def ask_daemon(
    make_daemon: Callable[..., DaemonProcess], fake: FakeGemini, tools: str = ""
) -> DaemonProcess:
    daemon = start_with_tools(make_daemon, fake, time_server(policy="ask"), tools=tools)
    wait_running(daemon)
    return daemon


def test_in_a_pipe_an_ask_call_is_denied_and_the_model_answers_anyway(
    make_daemon: Callable[..., DaemonProcess], fake_gemini: FakeGemini
) -> None:
    daemon = ask_daemon(make_daemon, fake_gemini)
    fake_gemini.push(function_call(*UTC_NOW), answer("I was not allowed."))

    done = daemon.agentctl("--json", "chat", "what time is it?")

    assert done.returncode == 0, done.stderr
    reply = json.loads(done.stdout)
    assert reply["answer"] == "I was not allowed."
    assert reply["tools"][0]["decision"] == "no"
    assert reply["tools"][0]["outcome"] == "not_run"
    assert b"denied get_current_time" in done.stderr
    assert "error" in fake_gemini.requests[-1].function_responses[0]["response"]


def test_approve_on_the_command_line_lets_the_call_run(
    make_daemon: Callable[..., DaemonProcess], fake_gemini: FakeGemini
) -> None:
    daemon = ask_daemon(make_daemon, fake_gemini)
    fake_gemini.push(function_call(*UTC_NOW), answer("Noon."))

    done = daemon.agentctl("--json", "chat", "--approve", "get_current_time", "time?")

    reply = json.loads(done.stdout)
    assert reply["tools"][0]["decision"] == "yes"
    assert reply["tools"][0]["decided_by"] == f"uid {os.getuid()}"
    assert reply["tools"][0]["outcome"] == "ok"


def read_until(fd: int, marker: bytes, timeout: float = 30.0) -> bytes:
    """Read a pseudo-terminal until `marker` appears (poll with a deadline)."""
    seen = b""
    deadline = time.monotonic() + timeout
    while marker not in seen:
        left = deadline - time.monotonic()
        assert left > 0, f"no {marker!r} on the terminal; saw {seen[-500:]!r}"
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            seen += os.read(fd, 4096)
    return seen


def test_at_a_terminal_the_user_is_asked_and_always_covers_the_rest_of_the_session(
    make_daemon: Callable[..., DaemonProcess], fake_gemini: FakeGemini
) -> None:
    """1. The model calls a tool twice in one chat, with a control character in the arguments.
    2. agentctl, on a real pseudo-terminal, shows the call (escaped) and asks.
    3. `a`: the first call runs; the second is not asked about and runs too."""
    daemon = ask_daemon(make_daemon, fake_gemini)
    fake_gemini.push(
        function_call("get_current_time", {"timezone": "UTC\x1b[2J\u202e"}),
        function_call(*UTC_NOW),
        answer("Done."),
    )
    main, side = pty.openpty()
    process = subprocess.Popen(
        [sys.executable, "-m", "agentctl", "chat", "--no-stream", "time?"],
        env=daemon.env, stdin=side, stdout=subprocess.PIPE, stderr=side,
    )
    os.close(side)
    try:
        shown = read_until(main, b"[a]lways in this session")
        assert b"get_current_time" in shown and b"on server time" in shown
        # Neutralised: the escape sequence and the bidi override arrive as text.
        assert b"\\u001b[2J\\u202e" in shown
        assert b"\x1b" not in shown and "\u202e".encode() not in shown
        os.write(main, b"a\n")
        out, _ = process.communicate(timeout=60)
    finally:
        process.kill()
        os.close(main)
    assert out.decode().strip() == "Done."
    responses = fake_gemini.requests[-1].function_responses
    assert len(responses) == 2 and "output" in responses[1]["response"]


def test_no_answer_within_the_approval_timeout_is_a_denial(
    make_daemon: Callable[..., DaemonProcess], fake_gemini: FakeGemini
) -> None:
    daemon = ask_daemon(make_daemon, fake_gemini, tools="approval_timeout_s = 0.5")
    fake_gemini.push(function_call(*UTC_NOW), answer("Timed out."))
    asked: list[dict[str, Any]] = []

    with Client(daemon.socket, timeout=30) as client:
        reply = client.call("chat", {"message": "time?"}, on_event=asked.append)

    assert [e["event"] for e in asked] == ["tool_request"]
    assert asked[0]["tool"] == "get_current_time" and asked[0]["server"] == "time"
    assert reply["tools"][0]["decision"] == "timeout"
    assert reply["tools"][0]["outcome"] == "not_run"


def test_an_approval_from_another_connection_is_not_taken(
    make_daemon: Callable[..., DaemonProcess], fake_gemini: FakeGemini
) -> None:
    daemon = ask_daemon(make_daemon, fake_gemini, tools="approval_timeout_s = 2")
    fake_gemini.push(function_call(*UTC_NOW), answer("No."))

    def answer_from_elsewhere(event: dict[str, Any]) -> None:
        with Client(daemon.socket, timeout=10) as stranger:
            stranger.send_approval(str(event["request"]), "yes")

    with Client(daemon.socket, timeout=30) as client:
        reply = client.call("chat", {"message": "time?"}, on_event=answer_from_elsewhere)

    assert reply["tools"][0]["decision"] == "timeout"


def test_a_client_gone_while_asked_denies_and_the_daemon_stays_up(
    make_daemon: Callable[..., DaemonProcess], fake_gemini: FakeGemini
) -> None:
    daemon = ask_daemon(make_daemon, fake_gemini)
    fake_gemini.push(function_call(*UTC_NOW), answer("never sent"))

    class Gone(Exception):
        pass

    def hang_up(event: dict[str, Any]) -> None:
        raise Gone

    client = Client(daemon.socket, timeout=30)
    client.connect()
    try:
        client.call("chat", {"message": "time?"}, on_event=hang_up)
    except Gone:
        client.close()
    assert daemon.call("status")["state"] in ("READY", "PROCESSING")
    history = daemon.call("history", {})
    assert [m["status"] for m in history["messages"]][-1:] == ["interrupted"]
    assert len(fake_gemini.requests) == 1  # the model was never asked again: nothing ran


def test_an_approval_with_no_question_waiting_gets_no_reply(daemon: DaemonProcess) -> None:
    with Client(daemon.socket, timeout=10) as client:
        client.send_approval("t-000000000000", "yes")
        reply = client.call("ping")  # the next reply read is ping's, not a refusal

    assert reply["pong"] is True


def test_a_streamed_chat_runs_its_calls_and_streams_the_final_answer(
    make_daemon: Callable[..., DaemonProcess], fake_gemini: FakeGemini
) -> None:
    daemon = ask_daemon(make_daemon, fake_gemini)
    fake_gemini.push(function_call(*UTC_NOW), answer("It is noon in UTC."))

    done = daemon.agentctl("chat", "--approve", "get_current_time", "time?")

    assert done.returncode == 0, done.stderr
    assert done.stdout.decode() == "It is noon in UTC.\n"
    assert fake_gemini.requests[-1].action == "streamGenerateContent"
    assert "output" in fake_gemini.requests[-1].function_responses[0]["response"]
