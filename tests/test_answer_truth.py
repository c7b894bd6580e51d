"""Gemini's real answers, handled truthfully: the real daemon, the real SDK, the fake over HTTP.

Every shape here is one the real API sends (tests/fake_gemini.py cites where
each is documented or reported). The rules, streamed and not alike: an answer
is stored `complete` only when it is the model's whole answer; anything else
says what it is (status, a note, exit 5) and never "not from the model" when
the text is the model's.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import pytest

from agentctl.client import Client
from tests.conftest import DaemonProcess, gemini_env, wait_until
from tests.fake_gemini import (
    FakeGemini,
    Reply,
    answer,
    blocked_after_text,
    endless,
    no_candidates,
    no_parts,
    no_text,
    not_found,
    quota_exhausted,
    rejected_field,
    stream_cut,
    unfinished,
    unused_port,
)


def ask(d: DaemonProcess, message: str, *, stream: bool) -> tuple[dict[str, Any], str, list[dict]]:
    """(result, the streamed text, every event) of one chat over the socket."""
    events: list[dict[str, Any]] = []
    with Client(d.socket, timeout=60) as client:
        result = client.call("chat", {"message": message, "stream": stream},
                             on_event=events.append)
    streamed = "".join(e["text"] for e in events if e.get("event") == "chunk")
    return result, streamed, events


def last_model_turn(d: DaemonProcess) -> dict[str, Any]:
    messages = d.call("history", {"limit": 1})["messages"]
    assert messages[-1]["role"] == "model"
    return messages[-1]  # type: ignore[no-any-return]


def both_modes(d: DaemonProcess, fake: FakeGemini, reply: Reply) -> list[dict[str, Any]]:
    """The same reply asked streamed, then not: each result with its stored status."""
    outcomes = []
    for stream in (True, False):
        fake.push(reply)
        result, streamed, _ = ask(d, "hello", stream=stream)
        if stream:
            assert streamed == result["answer"]  # what the user read is what is stored
        outcomes.append({**result, "stored": last_model_turn(d)["status"]})
    return outcomes


def same_in_both(outcomes: list[dict[str, Any]]) -> dict[str, Any]:
    streamed, whole = outcomes
    for key in ("answer", "status", "stored", "notice", "degraded", "error_kind"):
        assert streamed[key] == whole[key], key
    return streamed


# -- no text -------------------------------------------------------------------------


@pytest.mark.parametrize(("reply", "why"), [
    (no_text("OTHER"), "finish reason OTHER"),
    (no_text("LANGUAGE"), "finish reason LANGUAGE"),
    (no_parts(), "no text parts"),
    (no_candidates(), "no candidates"),
], ids=["other", "language", "no-parts", "no-candidates"])
def test_an_answer_without_text_says_so_and_is_never_stored_complete(
    gemini_daemon: DaemonProcess, fake_gemini: FakeGemini, reply: Reply, why: str
) -> None:
    outcome = same_in_both(both_modes(gemini_daemon, fake_gemini, reply))

    assert (outcome["status"], outcome["stored"], outcome["degraded"]) == ("empty", "empty", True)
    assert "produced no text" in outcome["answer"] and why in outcome["answer"]
    assert len(fake_gemini.requests) == 2  # one per mode: an answer is not retried
    fake_gemini.push(reply)
    shown = gemini_daemon.agentctl("chat", "hello")
    assert shown.returncode == 5
    assert b"no answer: the model produced no text" in shown.stderr
    assert b"not from the model" not in shown.stderr


# -- the model's text, but not all of it ----------------------------------------------


def test_an_answer_without_a_finish_reason_is_stored_incomplete(
    gemini_daemon: DaemonProcess, fake_gemini: FakeGemini
) -> None:
    outcome = same_in_both(both_modes(gemini_daemon, fake_gemini, unfinished(("Once ", "upon "))))

    assert outcome["answer"] == "Once upon "
    assert (outcome["status"], outcome["stored"], outcome["degraded"]) == (
        "incomplete", "incomplete", True)
    assert "without a finish reason" in outcome["notice"]
    fake_gemini.push(unfinished(("Once ", "upon ")))
    shown = gemini_daemon.agentctl("chat", "tell me")
    assert (shown.returncode, shown.stdout) == (5, b"Once upon \n")
    assert b"incomplete answer" in shown.stderr and b"without a finish reason" in shown.stderr


def test_a_stream_cut_mid_way_keeps_the_models_text_marked_incomplete(
    gemini_daemon: DaemonProcess, fake_gemini: FakeGemini
) -> None:
    fake_gemini.push(stream_cut(after=2))

    shown = gemini_daemon.agentctl("chat", "tell me")

    assert (shown.returncode, shown.stdout) == (5, b"Once upon \n")
    assert b"incomplete answer" in shown.stderr and b"not from the model" not in shown.stderr
    assert last_model_turn(gemini_daemon)["status"] == "incomplete"


def test_a_block_after_some_text_keeps_the_text_marked_and_names_the_filter(
    gemini_daemon: DaemonProcess, fake_gemini: FakeGemini
) -> None:
    outcome = same_in_both(both_modes(gemini_daemon, fake_gemini, blocked_after_text()))

    assert outcome["answer"] == "Step one: mix "
    assert (outcome["status"], outcome["stored"]) == ("incomplete", "incomplete")
    assert "SAFETY" in outcome["notice"]
    fake_gemini.push(blocked_after_text())
    shown = gemini_daemon.agentctl("chat", "how?")
    assert (shown.returncode, shown.stdout) == (5, b"Step one: mix \n")
    assert b"not from the model" not in shown.stderr


# -- the answer's size ---------------------------------------------------------------------


def test_an_endless_stream_is_cut_at_max_answer_bytes_and_stored_truncated(
    make_daemon: Callable[..., DaemonProcess], fake_gemini: FakeGemini
) -> None:
    """1. The endpoint streams forever: the answer stops at chat.max_answer_bytes, the
    stream is closed (the fake sees the client go), exit 5 with a note. 2. The stored
    answer is that text, marked truncated, and history still reads it."""
    limit = 64 * 1024
    d = make_daemon(gemini_env(fake_gemini, AGENTD_CHAT__MAX_ANSWER_BYTES=str(limit))).start()
    fake_gemini.push(endless())

    shown = d.agentctl("chat", "sing", timeout=30)

    assert shown.returncode == 5
    assert len(shown.stdout) == limit + 1  # and the newline agentctl adds
    assert b"truncated answer" in shown.stderr and b"max_answer_bytes" in shown.stderr
    turn = last_model_turn(d)
    assert (turn["status"], len(turn["content"].encode())) == ("truncated", limit)


def test_a_whole_answer_over_the_limit_is_cut_the_same_way(
    make_daemon: Callable[..., DaemonProcess], fake_gemini: FakeGemini
) -> None:
    limit = 1000
    d = make_daemon(gemini_env(fake_gemini, AGENTD_CHAT__MAX_ANSWER_BYTES=str(limit))).start()
    outcome = same_in_both(both_modes(d, fake_gemini, answer("é" * 5000)))

    assert outcome["answer"] == "é" * (limit // 2)
    assert (outcome["status"], outcome["stored"], outcome["degraded"]) == (
        "truncated", "truncated", True)


def test_a_whole_answer_that_never_ends_is_not_read_past_a_bound(
    make_daemon: Callable[..., DaemonProcess], fake_gemini: FakeGemini
) -> None:
    """Not streamed, the SDK reads the body whole: an endless body is cut at a bound
    derived from chat.max_answer_bytes, answered degraded at once, not retried."""
    d = make_daemon(gemini_env(fake_gemini, AGENTD_CHAT__MAX_ANSWER_BYTES="1000",
                               AGENTD_GEMINI__FALLBACK_MODEL="")).start()
    fake_gemini.push(endless())

    shown = d.agentctl("chat", "--no-stream", "sing", timeout=30)

    assert shown.returncode == 5
    assert b"too large to read whole" in shown.stdout
    assert len(fake_gemini.requests) == 1
    assert last_model_turn(d)["status"] == "degraded"
    assert d.call("status")["state"] == "READY"


def check_config(env: dict[str, str]) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-m", "agentd", "--check-config"], env=env,
                          capture_output=True, timeout=30, check=False)


def test_max_answer_bytes_must_fit_in_a_frame(make_daemon: Callable[..., DaemonProcess]) -> None:
    """Set too large: refused, naming both keys. Unset with small frames: half a frame."""
    d = make_daemon({"AGENTD_CHAT__MAX_ANSWER_BYTES": str(1024 * 1024)})
    refused = check_config(d.env)
    assert refused.returncode == 78
    assert b"chat.max_answer_bytes must be at most half of daemon.max_frame_bytes" in (
        refused.stderr)

    small_frames = {**d.env, "AGENTD_DAEMON__MAX_FRAME_BYTES": "65536"}
    del small_frames["AGENTD_CHAT__MAX_ANSWER_BYTES"]
    derived = check_config(small_frames)
    assert derived.returncode == 0
    assert b"max_answer_bytes = 32768  # default (half of daemon.max_frame_bytes)" in (
        derived.stdout)


# -- quota -----------------------------------------------------------------------------


def test_a_quota_429_is_waited_out_without_opening_the_breaker(
    make_daemon: Callable[..., DaemonProcess], fake_gemini: FakeGemini
) -> None:
    """Two quota 429s (RetryInfo in the body, no Retry-After) with a breaker that opens
    after two failures: the chat waits as asked and gets its answer; never ERROR."""
    d = make_daemon(gemini_env(fake_gemini, AGENTD_GEMINI__BREAKER_FAILURE_THRESHOLD="2",
                               AGENTD_GEMINI__FALLBACK_MODEL="")).start()
    fake_gemini.push(quota_exhausted(0.2), quota_exhausted(0.2), answer("at last"))

    shown = d.agentctl("chat", "hello")

    assert (shown.returncode, shown.stdout) == (0, b"at last\n")
    status = d.call("status")
    assert status["state"] == "READY" and status["healthy"]
    assert d.call("metrics")["summary"]["provider"]["breaker_trips"] == 0


def test_a_spent_quota_is_not_called_unreachable_anywhere(
    make_daemon: Callable[..., DaemonProcess], fake_gemini: FakeGemini
) -> None:
    """A retryDelay past the deadline: a degraded answer that says quota, a key check that
    says rate-limited (degraded, not failed), and health still exits 0."""
    d = make_daemon(gemini_env(fake_gemini, AGENTD_GEMINI__FALLBACK_MODEL="")).start()
    fake_gemini.set_default(quota_exhausted(3600))

    shown = d.agentctl("chat", "hello")
    health = d.agentctl("--json", "health")

    assert shown.returncode == 5
    assert b"quota" in shown.stdout and b"unreachable" not in shown.stdout
    gemini = json.loads(health.stdout)["components"]["gemini"]
    assert health.returncode == 0, gemini
    assert gemini["status"] == "degraded" and "unreachable" not in gemini["reason"]


def read_all(fd: int) -> bytes:
    chunks = []
    while True:
        try:
            chunk = os.read(fd, 4096)
        except OSError:  # EIO: the pty's other end is closed
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


def test_agentctl_on_a_terminal_says_what_it_waits_for_and_a_pipe_stays_quiet(
    gemini_daemon: DaemonProcess, fake_gemini: FakeGemini
) -> None:
    """1. Over the socket, streamed or not, a long wait arrives as a `wait` event.
    2. agentctl with stderr on a real pseudo-terminal prints what it waits for and how
    long. 3. With stderr in a pipe it prints nothing of the sort."""
    fake_gemini.push(quota_exhausted(1.5), answer("one"))
    _, _, events = ask(gemini_daemon, "hello", stream=False)
    waits = [e for e in events if e.get("event") == "wait"]
    assert len(waits) == 1
    assert waits[0]["seconds"] == pytest.approx(1.5)
    assert waits[0]["reason"] == "RESOURCE_EXHAUSTED" and "quota" in waits[0]["message"]

    fake_gemini.push(quota_exhausted(1.5), answer("two"))
    master, slave = os.openpty()
    try:
        process = subprocess.Popen([sys.executable, "-m", "agentctl", "chat", "hello"],
                                   env=gemini_daemon.env, stdin=subprocess.DEVNULL,
                                   stdout=subprocess.PIPE, stderr=slave)
        os.close(slave)
        terminal = read_all(master)
        assert process.stdout is not None
        assert (process.wait(30), process.stdout.read()) == (0, b"two\n")
    finally:
        os.close(master)
    assert b"waiting 2s" in terminal and b"quota" in terminal

    fake_gemini.push(quota_exhausted(1.5), answer("three"))
    piped = gemini_daemon.agentctl("chat", "hello")
    assert (piped.returncode, piped.stdout, piped.stderr) == (0, b"three\n", b"")


# -- responses the SDK rejects, missing models, named causes -----------------------------


def test_a_response_the_sdk_rejects_is_not_retried_and_does_not_open_the_breaker(
    make_daemon: Callable[..., DaemonProcess], fake_gemini: FakeGemini
) -> None:
    d = make_daemon(gemini_env(fake_gemini, AGENTD_GEMINI__BREAKER_FAILURE_THRESHOLD="1",
                               AGENTD_GEMINI__FALLBACK_MODEL="")).start()
    fake_gemini.set_default(rejected_field())

    shown = d.agentctl("chat", "hello")

    assert shown.returncode == 5
    assert b"ValidationError" in shown.stdout and b"unreachable" not in shown.stdout
    assert len(fake_gemini.requests) == 1
    assert d.call("status")["state"] == "READY"


def test_a_missing_model_is_named_and_the_fallback_note_says_once_who_answered_and_why(
    make_daemon: Callable[..., DaemonProcess], fake_gemini: FakeGemini
) -> None:
    d = make_daemon(gemini_env(fake_gemini, AGENTD_GEMINI_MODEL="gemini-nope")).start()
    fake_gemini.set_default(not_found("gemini-nope"), model="gemini-nope")

    result, _, _ = ask(d, "hello", stream=True)

    notice = result["notice"]
    assert (result["fallback_used"], result["status"]) == (True, "complete")
    assert notice.lower().count("fallback") == 1, notice
    assert "gemini-flash-lite-latest" in notice
    assert "'gemini-nope' was not found" in notice


def test_a_degraded_answer_and_the_log_name_the_cause_not_only_transient(
    make_daemon: Callable[..., DaemonProcess], fake_gemini: FakeGemini
) -> None:
    """Refused connections: the answer and the log's `reason` say ConnectError; once the
    breaker is open, its degraded answer still names it."""
    d = make_daemon({**gemini_env(fake_gemini, AGENTD_GEMINI__BREAKER_FAILURE_THRESHOLD="3",
                                  AGENTD_GEMINI__FALLBACK_MODEL=""),
                     "AGENTD_GEMINI_BASE_URL": f"http://127.0.0.1:{unused_port()}"}).start()

    first = d.agentctl("chat", "hello")
    wait_until(lambda: d.call("status")["state"] == "ERROR", 10, "the breaker to open")
    second = d.agentctl("chat", "hello again")

    assert first.returncode == second.returncode == 5
    assert b"ConnectError" in first.stdout and b"ConnectError" in second.stdout
    records = d.call("logs", {"lines": 500})["records"]
    outcomes = [r for r in records if r.get("outcome") == "degraded"]
    assert [r.get("reason") for r in outcomes] == ["ConnectError", "ConnectError"]
