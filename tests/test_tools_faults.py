"""Tool servers that fail: the daemon stays up and the chat ends with a clear outcome.
Also what every call leaves behind: an audit row, and results scanned for secrets."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.conftest import DaemonProcess, wait_until
from tests.fake_gemini import FakeGemini, answer, function_call
from tests.test_tools_loop import chat, pytestmark, start_with_tools, wait_running

__all__ = ["pytestmark"]

FAULT_SERVER = f"""
[[tools.servers]]
name = "faults"
command = "{sys.executable}"
args = ["{Path(__file__).with_name("tools_fault_server.py")}"]
policy = "allow"
"""


def faults_daemon(
    make_daemon: Callable[..., DaemonProcess], fake: FakeGemini, tools: str = ""
) -> DaemonProcess:
    daemon = start_with_tools(
        make_daemon, fake, FAULT_SERVER, tools=tools, AGENTD_TOOLS__RESTART_BACKOFF_S="0.2"
    )
    wait_running(daemon, "faults")
    return daemon


def server(daemon: DaemonProcess) -> dict[str, Any]:
    (found,) = daemon.call("tools")["servers"]
    return dict(found)


def test_a_server_that_crashes_mid_call_fails_the_call_and_is_restarted(
    make_daemon: Callable[..., DaemonProcess], fake_gemini: FakeGemini
) -> None:
    daemon = faults_daemon(make_daemon, fake_gemini)
    fake_gemini.push(function_call("crash", {}), answer("The tool broke."))

    reply = chat(daemon)

    assert reply["answer"] == "The tool broke."
    assert reply["tools"][0]["outcome"] == "error"
    assert "error" in fake_gemini.requests[-1].function_responses[0]["response"]
    wait_until(lambda: server(daemon)["restarts"] >= 1, 30, "the server to be restarted")
    wait_running(daemon, "faults")
    fake_gemini.push(function_call("echo", {"text": "back"}), answer("Working again."))
    assert chat(daemon)["tools"][0]["outcome"] == "ok"


def test_a_call_that_hangs_past_the_timeout_is_abandoned(
    make_daemon: Callable[..., DaemonProcess], fake_gemini: FakeGemini
) -> None:
    daemon = faults_daemon(make_daemon, fake_gemini, tools="call_timeout_s = 0.5")
    fake_gemini.push(function_call("hang", {}), answer("It took too long."))

    reply = chat(daemon)

    assert reply["answer"] == "It took too long."
    assert reply["tools"][0]["outcome"] == "timeout"
    error = fake_gemini.requests[-1].function_responses[0]["response"]["error"]
    assert "did not finish within 0.5 s" in error
    assert daemon.call("status")["state"] in ("READY", "PROCESSING")


def test_a_ten_megabyte_result_reaches_the_model_cut_to_the_cap(
    make_daemon: Callable[..., DaemonProcess], fake_gemini: FakeGemini
) -> None:
    daemon = faults_daemon(make_daemon, fake_gemini)
    fake_gemini.push(function_call("big", {"megabytes": 10}), answer("Large."))

    reply = chat(daemon)

    assert reply["tools"][0]["outcome"] == "truncated"
    assert reply["tools"][0]["result_bytes"] == 10 * 1024 * 1024
    output = fake_gemini.requests[-1].function_responses[0]["response"]["output"]
    assert len(output.encode()) < 65536 + 200
    assert "(tools.max_result_bytes)" in output


def test_secrets_in_a_tool_result_are_redacted_before_the_model_sees_them(
    make_daemon: Callable[..., DaemonProcess], fake_gemini: FakeGemini
) -> None:
    daemon = faults_daemon(make_daemon, fake_gemini)
    key = "AKIA" + "Q3EGKZ7VNWPLT5XH"
    fake_gemini.push(function_call("echo", {"text": f"aws key {key} here"}), answer("Ok."))

    chat(daemon)

    output = fake_gemini.requests[-1].function_responses[0]["response"]["output"]
    assert key not in output
    assert "[REDACTED:" in output


def test_every_call_and_refusal_leaves_an_audit_row_without_its_content(
    make_daemon: Callable[..., DaemonProcess], fake_gemini: FakeGemini
) -> None:
    daemon = faults_daemon(make_daemon, fake_gemini)
    fake_gemini.push(
        function_call("echo", {"text": "private words"}),
        function_call("nope", {}),
        answer("Done."),
    )

    reply = chat(daemon)

    rows = daemon.call("audit", {"limit": 20})["rows"]
    tool_rows = [r for r in rows if r["command"].startswith("tool:")]
    assert {(r["command"], r["error_code"]) for r in tool_rows} == {
        ("tool:echo", None),
        ("tool:nope", "TOOL_UNKNOWN"),
    }
    assert {r["request_id"] for r in tool_rows} == {reply["request_id"]}
    assert "private words" not in str(rows)
    assert "private words" not in daemon.stderr()
    text = daemon.call("metrics", {"format": "prometheus"})["text"]
    assert 'tool_calls_total{tool="echo",decision="allow",outcome="ok"} 1' in text
    assert 'tool_calls_total{tool="(unknown)",decision="unknown",outcome="not_run"} 1' in text
    assert "agentd_tool_servers_running 1" in text


def test_a_tool_gemini_cannot_be_told_of_is_left_out_and_named(
    make_daemon: Callable[..., DaemonProcess], fake_gemini: FakeGemini
) -> None:
    daemon = faults_daemon(make_daemon, fake_gemini)
    fake_gemini.push(answer("Fine."))

    chat(daemon)

    listed = server(daemon)
    assert listed["skipped"] == ["bad name!"]
    assert "bad name!" in listed["last_error"]
    assert set(fake_gemini.requests[-1].declared_tools) == {"echo", "crash", "hang", "big"}
