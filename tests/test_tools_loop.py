"""The tool loop end to end: the daemon, a real MCP server (mcp-server-time from
PyPI, through the official `mcp` SDK), and the fake Gemini speaking the API's
function-calling shapes (tests/fake_gemini.py cites them)."""

from __future__ import annotations

import importlib.util
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import DaemonProcess, gemini_env, wait_until
from tests.fake_gemini import (
    FakeGemini,
    answer,
    function_call,
    function_calls,
    malformed_function_call,
)

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("mcp_server_time") is None,
    reason="mcp-server-time is not installed (dev extras)",
)


def time_server(policy: str = "allow", *, extra: str = "") -> str:
    return f"""
[[tools.servers]]
name = "time"
command = "{sys.executable}"
args = ["-m", "mcp_server_time", "--local-timezone", "UTC"]
policy = "{policy}"
{extra}
"""


def start_with_tools(
    make_daemon: Callable[..., DaemonProcess],
    fake: FakeGemini,
    servers: str,
    tools: str = "",
    **env: str,
) -> DaemonProcess:
    daemon = make_daemon(gemini_env(fake, **env))
    config = Path(daemon.env["AGENTD_CONFIG"])
    config.write_text(f"[tools]\n{tools}\n{servers}")
    daemon.start()
    return daemon


def wait_running(daemon: DaemonProcess, name: str = "time") -> dict[str, Any]:
    found: dict[str, Any] = {}

    def running() -> bool:
        nonlocal found
        found = next(s for s in daemon.call("tools")["servers"] if s["name"] == name)
        return bool(found["state"] == "running")

    wait_until(running, 30, f"tool server {name} to run")
    return found


def chat(daemon: DaemonProcess, message: str = "what time is it?") -> dict[str, Any]:
    return daemon.call("chat", {"message": message})


UTC_NOW = ("get_current_time", {"timezone": "UTC"})


def test_a_single_call_runs_on_the_server_and_its_result_goes_back_to_the_model(
    make_daemon: Callable[..., DaemonProcess], fake_gemini: FakeGemini
) -> None:
    daemon = start_with_tools(make_daemon, fake_gemini, time_server())
    listed = wait_running(daemon)
    assert daemon.call("health")["components"]["tools"]["status"] == "ok"
    assert {t["name"] for t in listed["tools"]} == {"get_current_time", "convert_time"}
    fake_gemini.push(function_call(*UTC_NOW), answer("It is noon."))

    reply = chat(daemon)

    assert reply["answer"] == "It is noon."
    first, second = fake_gemini.requests[-2:]
    assert set(first.declared_tools) == {"get_current_time", "convert_time"}
    assert first.calling_mode == "AUTO"
    (response,) = second.function_responses
    assert response["name"] == "get_current_time"
    assert '"timezone": "UTC"' in response["response"]["output"]  # the server's own JSON
    assert [t["tool"] for t in reply["tools"]] == ["get_current_time"]
    assert reply["tools"][0]["decision"] == "allow"
    assert reply["tools"][0]["outcome"] == "ok"


def test_parallel_calls_in_one_turn_each_get_a_response_in_order(
    make_daemon: Callable[..., DaemonProcess], fake_gemini: FakeGemini
) -> None:
    daemon = start_with_tools(make_daemon, fake_gemini, time_server())
    wait_running(daemon)
    convert = ("convert_time", {"source_timezone": "UTC", "time": "12:00",
                                "target_timezone": "Asia/Tokyo"})
    fake_gemini.push(function_calls(UTC_NOW, convert), answer("Both done."))

    reply = chat(daemon)

    assert reply["answer"] == "Both done."
    names = [r["name"] for r in fake_gemini.requests[-1].function_responses]
    assert names == ["get_current_time", "convert_time"]
    assert "21:00" in fake_gemini.requests[-1].function_responses[1]["response"]["output"]


def test_a_chain_of_calls_sends_every_earlier_round_back(
    make_daemon: Callable[..., DaemonProcess], fake_gemini: FakeGemini
) -> None:
    daemon = start_with_tools(make_daemon, fake_gemini, time_server())
    wait_running(daemon)
    fake_gemini.push(function_call(*UTC_NOW), function_call(*UTC_NOW), answer("Twice."))

    reply = chat(daemon)

    assert reply["answer"] == "Twice."
    assert len(fake_gemini.requests[-1].function_responses) == 2
    assert len(reply["tools"]) == 2


def test_an_unknown_tool_is_answered_with_an_error_and_the_model_answers_anyway(
    make_daemon: Callable[..., DaemonProcess], fake_gemini: FakeGemini
) -> None:
    daemon = start_with_tools(make_daemon, fake_gemini, time_server())
    wait_running(daemon)
    fake_gemini.push(function_call("rm_rf", {"path": "/"}), answer("I cannot do that."))

    reply = chat(daemon)

    assert reply["answer"] == "I cannot do that."
    (response,) = fake_gemini.requests[-1].function_responses
    assert "no tool named 'rm_rf'" in response["response"]["error"]
    assert reply["tools"][0]["decision"] == "unknown"


def test_arguments_the_schema_refuses_come_back_as_the_servers_error(
    make_daemon: Callable[..., DaemonProcess], fake_gemini: FakeGemini
) -> None:
    daemon = start_with_tools(make_daemon, fake_gemini, time_server())
    wait_running(daemon)
    fake_gemini.push(function_call("convert_time", {"time": 7}), answer("Sorry."))

    reply = chat(daemon)

    assert reply["answer"] == "Sorry."
    (response,) = fake_gemini.requests[-1].function_responses
    assert "error" in response["response"]
    assert reply["tools"][0]["outcome"] == "error"


def test_a_malformed_function_call_ends_the_chat_with_a_clear_outcome(
    make_daemon: Callable[..., DaemonProcess], fake_gemini: FakeGemini
) -> None:
    daemon = start_with_tools(make_daemon, fake_gemini, time_server())
    wait_running(daemon)
    fake_gemini.push(malformed_function_call())

    reply = chat(daemon)

    assert reply["status"] == "empty"
    assert "invalid function call" in reply["answer"] + (reply["notice"] or "")
    assert daemon.call("status")["state"] == "READY"


def test_a_model_that_never_stops_calling_is_stopped_at_max_steps(
    make_daemon: Callable[..., DaemonProcess], fake_gemini: FakeGemini
) -> None:
    daemon = start_with_tools(make_daemon, fake_gemini, time_server(), tools="max_steps = 3")
    wait_running(daemon)
    fake_gemini.set_default(function_call(*UTC_NOW))

    reply = chat(daemon)

    assert len(reply["tools"]) == 3
    last = fake_gemini.requests[-1]
    assert last.calling_mode == "NONE"  # the last request may not call
    assert len(last.function_responses) == 3
    assert "stopped after 3 tool steps" in reply["notice"]
    assert reply["answer"]


def test_a_denied_tool_is_not_declared_and_a_call_to_it_is_refused(
    make_daemon: Callable[..., DaemonProcess], fake_gemini: FakeGemini
) -> None:
    servers = time_server(extra='tools = { convert_time = "deny" }')
    daemon = start_with_tools(make_daemon, fake_gemini, servers)
    wait_running(daemon)
    fake_gemini.push(function_call("convert_time", {}), answer("Denied, then."))

    reply = chat(daemon)

    assert fake_gemini.requests[-2].declared_tools == ["get_current_time"]
    assert reply["answer"] == "Denied, then."
    assert reply["tools"][0]["outcome"] == "not_run"


def test_a_result_past_the_byte_cap_is_cut_with_a_note_to_the_model(
    make_daemon: Callable[..., DaemonProcess], fake_gemini: FakeGemini
) -> None:
    daemon = start_with_tools(
        make_daemon, fake_gemini, time_server(), tools="max_result_bytes = 20"
    )
    wait_running(daemon)
    fake_gemini.push(function_call(*UTC_NOW), answer("Cut."))

    reply = chat(daemon)

    output = fake_gemini.requests[-1].function_responses[0]["response"]["output"]
    assert "only the first 20 are shown" in output
    assert reply["tools"][0]["outcome"] == "truncated"


def test_a_server_whose_binary_is_missing_is_a_detail_and_chats_go_on(
    make_daemon: Callable[..., DaemonProcess], fake_gemini: FakeGemini
) -> None:
    servers = """
[[tools.servers]]
name = "ghost"
command = "/nonexistent/mcp-server"
"""
    daemon = start_with_tools(make_daemon, fake_gemini, servers)

    def failed() -> bool:
        (server,) = daemon.call("tools")["servers"]
        return server["state"] == "backoff" and server["last_error"] is not None

    wait_until(failed, 30, "the missing server to fail")
    health = daemon.call("health")
    assert health["healthy"] is True
    assert health["components"]["tools"]["status"] == "degraded"
    assert "ghost: backoff" in health["components"]["tools"]["reason"]
    fake_gemini.push(answer("No tools today."))
    assert chat(daemon)["answer"] == "No tools today."
    assert fake_gemini.requests[-1].declared_tools == []


def test_agentctl_tools_lists_servers_and_each_tools_policy(
    make_daemon: Callable[..., DaemonProcess], fake_gemini: FakeGemini
) -> None:
    servers = time_server(policy="ask", extra='tools = { convert_time = "deny" }')
    daemon = start_with_tools(make_daemon, fake_gemini, servers)
    wait_running(daemon)

    text = daemon.agentctl("tools")
    as_json = daemon.agentctl("--json", "tools")

    assert text.returncode == 0, text.stderr
    lines = text.stdout.decode().splitlines()
    assert any(line.split()[:3] == ["time", "running", "2"] for line in lines)
    assert any(line.split() == ["get_current_time", "time", "ask"] for line in lines)
    assert any(line.split() == ["convert_time", "time", "deny"] for line in lines)
    (listed,) = json.loads(as_json.stdout)["servers"]
    assert listed["state"] == "running" and listed["last_error"] is None
