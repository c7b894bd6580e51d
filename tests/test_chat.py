"""Chat end to end: agentctl as a process, the real daemon, the real SDK over HTTP to the fake."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import psutil
import pytest

from agentctl.client import Client
from agentd.protocol import encode_frame, make_request
from tests.conftest import DaemonProcess, gemini_env, wait_until
from tests.fake_gemini import FakeGemini, answer, echo, hang, server_error


def chat_json(d: DaemonProcess, *args: str, input: bytes | None = None) -> tuple[int, dict]:
    result = d.agentctl("chat", "--json", *args, input=input)
    return result.returncode, json.loads(result.stdout)


def test_answer_is_streamed_to_stdout_as_plain_text(
    gemini_daemon: DaemonProcess, fake_gemini: FakeGemini
) -> None:
    fake_gemini.push(answer(chunks=("Write-ahead ", "logging ", "keeps readers going.")))
    result = gemini_daemon.agentctl("chat", "Explain WAL mode")
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"Write-ahead logging keeps readers going.\n"
    assert b"\x1b[" not in result.stdout + result.stderr
    assert fake_gemini.requests[-1].action == "streamGenerateContent"


def test_stdin_and_argument_combine_argument_first(
    gemini_daemon: DaemonProcess, fake_gemini: FakeGemini
) -> None:
    fake_gemini.set_default(echo())
    result = gemini_daemon.agentctl("chat", "summarize", input=b"line one\nline two\n")
    assert result.returncode == 0, result.stderr
    assert result.stdout.decode() == "You said: summarize\n\nline one\nline two\n"


def test_stdin_alone_is_the_prompt(gemini_daemon: DaemonProcess, fake_gemini: FakeGemini) -> None:
    fake_gemini.set_default(echo())
    result = gemini_daemon.agentctl("chat", input=b"question")
    assert result.stdout.decode() == "You said: question\n"


def test_json_reply_has_every_field(gemini_daemon: DaemonProcess, fake_gemini: FakeGemini) -> None:
    fake_gemini.push(answer("forty-two"))
    code, reply = chat_json(gemini_daemon, "the answer?")
    assert code == 0
    assert reply["answer"] == "forty-two"
    assert reply["model"] == "gemini-flash-latest"
    assert reply["degraded"] is False
    assert reply["tokens_in"] > 0 and reply["tokens_out"] > 0
    assert reply["latency_ms"] > 0
    assert reply["turns_left_out"] == 0
    assert reply["request_id"].startswith("r-")
    assert reply["session_id"] == gemini_daemon.call("status")["session_id"]


def test_conversation_continues_across_calls_and_restarts(
    gemini_daemon: DaemonProcess, fake_gemini: FakeGemini
) -> None:
    """1. Two chats: the second carries the first exchange. 2. Restart. 3. A third chat carries both."""
    fake_gemini.set_default(echo())
    gemini_daemon.agentctl("chat", "first")
    gemini_daemon.agentctl("chat", "second")
    assert fake_gemini.requests[-1].texts == ["first", "You said: first", "second"]
    gemini_daemon.signal(signal.SIGTERM)
    assert gemini_daemon.wait_exit() == 0
    gemini_daemon.start()
    gemini_daemon.agentctl("chat", "third")
    assert fake_gemini.requests[-1].texts[:4] == [
        "first",
        "You said: first",
        "second",
        "You said: second",
    ]


def test_sessions_new_named_listed_used_and_deleted(
    gemini_daemon: DaemonProcess, fake_gemini: FakeGemini
) -> None:
    d = gemini_daemon
    original = d.call("status")["session_id"]
    _, reply = chat_json(d, "--new-session", "--name", "ops", "hello ops")
    ops_id = reply["session_id"]
    assert ops_id != original
    assert d.call("status")["session_id"] == ops_id  # a new session becomes current
    chat_json(d, "--session", original, "back in the first")
    listing = json.loads(d.agentctl("sessions", "--json").stdout)
    by_id = {s["id"]: s for s in listing["sessions"]}
    assert by_id[ops_id]["name"] == "ops" and by_id[ops_id]["turns"] == 1
    assert by_id[original]["turns"] == 1
    table = d.agentctl("sessions").stdout.decode()
    assert "ops" in table and "TURNS" in table
    history = json.loads(d.agentctl("history", "ops", "--json").stdout)
    assert [m["role"] for m in history["messages"]] == ["user", "model"]
    assert history["messages"][0]["content"] == "hello ops"
    assert d.agentctl("sessions", "delete", "ops").returncode == 0
    assert d.agentctl("history", "ops").returncode == 1
    assert "no session 'ops'" in d.agentctl("history", "ops").stderr.decode()


def test_no_api_key_answers_degraded_with_exit_5_and_is_recorded(daemon: DaemonProcess) -> None:
    result = daemon.agentctl("chat", "anyone there?")
    assert result.returncode == 5
    assert b"GEMINI_API_KEY" in result.stdout
    assert b"degraded" in result.stderr
    messages = daemon.call("history")["messages"]
    assert [(m["role"], m["status"]) for m in messages] == [
        ("user", "answered"),
        ("model", "degraded"),
    ]


def test_empty_prompt_is_a_usage_error_and_writes_nothing(gemini_daemon: DaemonProcess) -> None:
    for args, stdin in ((("   ",), None), ((), b"")):
        result = gemini_daemon.agentctl("chat", *args, input=stdin)
        assert result.returncode == 2
        assert b"nothing to send" in result.stderr
    error = gemini_daemon.error_of("chat", {"message": "  \n"})
    assert error.code == "BAD_REQUEST"
    assert gemini_daemon.call("history")["messages"] == []


def test_prompt_over_the_limit_is_refused_and_writes_nothing(
    make_daemon: Callable[..., DaemonProcess], fake_gemini: FakeGemini
) -> None:
    d = make_daemon(gemini_env(fake_gemini, AGENTD_CHAT__MAX_PROMPT_BYTES="100")).start()
    result = d.agentctl("chat", "x" * 101)
    assert result.returncode == 2
    assert b"limit is 100" in result.stderr
    assert d.call("history")["messages"] == []
    assert fake_gemini.requests == []


def test_invalid_utf8_on_stdin_is_refused_before_sending(
    gemini_daemon: DaemonProcess, fake_gemini: FakeGemini
) -> None:
    result = gemini_daemon.agentctl("chat", "fix", input=b"caf\xe9\n")
    assert result.returncode == 2
    assert b"not valid UTF-8" in result.stderr
    assert gemini_daemon.call("history")["messages"] == []


def test_unknown_session_is_not_found(gemini_daemon: DaemonProcess) -> None:
    result = gemini_daemon.agentctl("chat", "--session", "nope", "hi")
    assert result.returncode == 1
    assert b"no session 'nope'" in result.stderr
    assert gemini_daemon.error_of("chat", {"message": "hi", "session": "nope"}).code == "NOT_FOUND"


def test_wrong_argument_types_are_bad_requests(gemini_daemon: DaemonProcess) -> None:
    assert gemini_daemon.error_of("chat", {"message": 42}).code == "BAD_REQUEST"
    assert gemini_daemon.error_of("chat", {"message": "hi", "stream": "yes"}).code == "BAD_REQUEST"
    assert gemini_daemon.error_of("history", {"limit": "ten"}).code == "BAD_REQUEST"


def test_small_token_budget_leaves_old_turns_out_and_says_so(
    make_daemon: Callable[..., DaemonProcess], fake_gemini: FakeGemini
) -> None:
    d = make_daemon(
        gemini_env(
            fake_gemini,
            AGENTD_GEMINI__CONTEXT_TOKEN_BUDGET="120",
            AGENTD_GEMINI__SYSTEM_PROMPT="be brief",
            AGENTD_CHAT__CONTEXT_STRATEGY="drop",
        )
    ).start()
    fake_gemini.set_default(echo())
    for n in range(4):
        chat_json(d, f"message number {n} " + "padding " * 20)
    code, reply = chat_json(d, "last")
    assert code == 0
    assert reply["turns_left_out"] > 0
    assert "left out of the context" in reply["notice"]
    assert fake_gemini.requests[-1].texts[-1] == "last"
    assert fake_gemini.requests[-1].system_instruction == "be brief"


def test_breaker_opens_into_error_and_recovers_by_itself(
    make_daemon: Callable[..., DaemonProcess], fake_gemini: FakeGemini
) -> None:
    """1. Gemini fails every call: the breaker opens, the agent is ERROR, status exits 1,
    chat answers degraded (exit 5). 2. Gemini comes back: the recovery probe closes the
    breaker and the agent is READY again without any chat."""
    d = make_daemon(
        gemini_env(
            fake_gemini,
            AGENTD_GEMINI__BREAKER_FAILURE_THRESHOLD="2",
            AGENTD_GEMINI__BREAKER_COOLDOWN_S="0.3",
            AGENTD_GEMINI__MAX_ATTEMPTS="2",
            AGENTD_GEMINI__FALLBACK_MODEL="",
            AGENTD_DAEMON__RECOVERY_MAX_BACKOFF_S="0.5",
        )
    ).start()
    fake_gemini.set_default(server_error(503))
    result = d.agentctl("chat", "hello?")
    assert result.returncode == 5
    wait_until(lambda: d.call("status")["state"] == "ERROR", 10, "ERROR state")
    status = d.agentctl("status", "--json")
    assert status.returncode == 1
    assert json.loads(status.stdout)["components"]["gemini"]["status"] == "failed"
    assert d.agentctl("chat", "still there?").returncode == 5
    fake_gemini.set_default(answer("back"))
    wait_until(lambda: d.call("status")["state"] == "READY", 15, "recovery to READY")
    assert d.agentctl("status").returncode == 0
    assert d.agentctl("chat", "hello again").stdout == b"back\n"


def test_full_queue_answers_busy_with_exit_4(
    make_daemon: Callable[..., DaemonProcess], fake_gemini: FakeGemini
) -> None:
    d = make_daemon(
        gemini_env(
            fake_gemini,
            AGENTD_CHAT__MAX_CONCURRENT="1",
            AGENTD_CHAT__MAX_QUEUE="0",
            AGENTD_GEMINI__ATTEMPT_TIMEOUT_S="30",
        )
    ).start()
    fake_gemini.set_default(hang())
    first = subprocess.Popen(
        [sys.executable, "-m", "agentctl", "chat", "slow one"],
        env=d.env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        wait_until(lambda: len(fake_gemini.requests) >= 1, 10, "the first chat to reach Gemini")
        assert d.call("status")["state"] == "PROCESSING"
        second = d.agentctl("chat", "me too")
        assert second.returncode == 4
        assert b"BUSY" in second.stderr
    finally:
        first.kill()
        first.wait()


def test_client_hanging_up_cancels_the_chat_and_marks_it_interrupted(
    gemini_daemon: DaemonProcess, fake_gemini: FakeGemini
) -> None:
    fake_gemini.set_default(hang())
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(gemini_daemon.socket)
    sock.sendall(encode_frame(make_request(1, "chat", {"message": "never mind"})))
    wait_until(lambda: len(fake_gemini.requests) >= 1, 10, "the chat to reach Gemini")
    assert gemini_daemon.call("status")["in_flight"] == 1
    sock.close()
    wait_until(
        lambda: gemini_daemon.call("status")["in_flight"] == 0, 10, "the chat to be cancelled"
    )
    assert gemini_daemon.call("status")["state"] == "READY"
    statuses = [m["status"] for m in gemini_daemon.call("history")["messages"]]
    assert statuses == ["interrupted"]


@pytest.mark.parametrize(
    ("cmd", "args"), [("chat", {"message": "never mind"}), ("logs", {"follow": True})]
)
def test_a_client_that_hung_up_leaves_no_connection_behind(
    gemini_daemon: DaemonProcess, fake_gemini: FakeGemini, cmd: str, args: dict[str, Any]
) -> None:
    """The daemon's end of a hung-up chat's or log follow's socket is closed, not
    left half-open."""
    assert gemini_daemon.process is not None
    daemon = psutil.Process(gemini_daemon.process.pid)

    def open_sockets() -> int:  # the listening socket and every accepted connection
        return sum(c.laddr == gemini_daemon.socket for c in daemon.net_connections("unix"))

    gemini_daemon.call("status")
    wait_until(lambda: open_sockets() == 1, 10, "only the listening socket")
    fake_gemini.set_default(hang())
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(gemini_daemon.socket)
        sock.sendall(encode_frame(make_request(1, cmd, args)))
        wait_until(lambda: open_sockets() == 2, 10, "the connection")
        if cmd == "chat":
            wait_until(lambda: len(fake_gemini.requests) >= 1, 10, "the chat to reach Gemini")
    wait_until(lambda: open_sockets() == 1, 10, "the daemon to close its end")


def test_sigterm_lets_an_in_flight_chat_finish(
    gemini_daemon: DaemonProcess, fake_gemini: FakeGemini
) -> None:
    """1. A chat is in flight (the fake answers after a delay). 2. SIGTERM. 3. New work is
    refused with SHUTTING_DOWN. 4. The chat still gets its answer. 5. Exit 0."""
    fake_gemini.set_default(answer("worth the wait", delay_s=1.5))
    chat = subprocess.Popen(
        [sys.executable, "-m", "agentctl", "chat", "--json", "slow"],
        env=gemini_daemon.env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    wait_until(lambda: len(fake_gemini.requests) >= 1, 10, "the chat to reach Gemini")
    gemini_daemon.signal(signal.SIGTERM)
    wait_until(lambda: gemini_daemon.call("status")["state"] == "STOPPING", 5, "STOPPING")
    assert gemini_daemon.error_of("chat", {"message": "late"}).code == "SHUTTING_DOWN"
    out, err = chat.communicate(timeout=30)
    assert chat.returncode == 0, err
    assert json.loads(out)["answer"] == "worth the wait"
    assert gemini_daemon.wait_exit() == 0


def test_chat_past_the_grace_period_is_marked_interrupted(
    make_daemon: Callable[..., DaemonProcess], fake_gemini: FakeGemini
) -> None:
    d = make_daemon(gemini_env(fake_gemini, AGENTD_DAEMON__SHUTDOWN_GRACE_S="0.2")).start()
    fake_gemini.set_default(hang())
    client = Client(d.socket, timeout=30)
    client.connect()
    client._send(make_request(1, "chat", {"message": "stuck"}))
    wait_until(lambda: len(fake_gemini.requests) >= 1, 10, "the chat to reach Gemini")
    d.signal(signal.SIGTERM)
    assert d.wait_exit() == 0
    client.close()
    fake_gemini.set_default(answer("ok"))
    d.start()
    messages = d.call("history")["messages"]
    assert [(m["content"], m["status"]) for m in messages] == [("stuck", "interrupted")]


def test_chat_over_the_session_budget_is_rate_limited_and_writes_nothing(
    make_daemon: Callable[..., DaemonProcess], fake_gemini: FakeGemini
) -> None:
    d = make_daemon(
        gemini_env(
            fake_gemini, AGENTD_LIMITS__SESSION_RATE="0.01", AGENTD_LIMITS__SESSION_BURST="2"
        )
    ).start()
    assert d.agentctl("chat", "one").returncode == 0
    assert d.agentctl("chat", "two").returncode == 0
    third = d.agentctl("chat", "three")
    assert third.returncode == 4
    assert b"RATE_LIMITED" in third.stderr and b"retry in" in third.stderr
    assert [m["content"] for m in d.call("history")["messages"] if m["role"] == "user"] == [
        "one",
        "two",
    ]
    assert d.agentctl("chat", "--new-session", "--name", "other", "fresh budget").returncode == 0
