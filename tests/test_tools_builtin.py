"""The built-in read-only tools (python -m agentd.tools) through agentd and the real
`mcp` SDK: confined to their roots, no symlink escape, arguments validated."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO, DaemonProcess
from tests.fake_gemini import FakeGemini, answer, function_call
from tests.test_tools_loop import chat, start_with_tools, wait_running


@pytest.fixture
def root(tmp_path: Path) -> Path:
    readable = tmp_path / "readable"
    readable.mkdir()
    (readable / "nginx.conf").write_text("worker_processes 4;\n")
    (tmp_path / "secret.txt").write_text("not for the model\n")
    (readable / "escape").symlink_to(tmp_path / "secret.txt")
    return readable


def builtin_daemon(
    make_daemon: Callable[..., DaemonProcess], fake: FakeGemini, root: Path
) -> DaemonProcess:
    servers = f"""
[[tools.servers]]
name = "builtin"
command = "{sys.executable}"
args = ["-m", "agentd.tools", "--root", "{root}", "--max-file-bytes", "1000"]
env = {{ PYTHONPATH = "{REPO}" }}
policy = "allow"
"""
    daemon = start_with_tools(make_daemon, fake, servers)
    wait_running(daemon, "builtin")
    return daemon


def call_once(daemon: DaemonProcess, fake: FakeGemini, tool: str, args: dict[str, Any]
              ) -> dict[str, Any]:
    fake.push(function_call(tool, args), answer("ok"))
    chat(daemon)
    response: dict[str, Any] = fake.requests[-1].function_responses[0]["response"]
    return response


def test_the_builtin_server_declares_its_five_tools(
    make_daemon: Callable[..., DaemonProcess], fake_gemini: FakeGemini, root: Path
) -> None:
    daemon = builtin_daemon(make_daemon, fake_gemini, root)
    (server,) = daemon.call("tools")["servers"]
    assert {t["name"] for t in server["tools"]} == {
        "read_file", "list_directory", "disk_usage", "unit_state", "journal"
    }


def test_a_file_under_a_root_is_read_and_one_outside_or_behind_a_symlink_is_not(
    make_daemon: Callable[..., DaemonProcess], fake_gemini: FakeGemini, root: Path
) -> None:
    daemon = builtin_daemon(make_daemon, fake_gemini, root)

    inside = call_once(daemon, fake_gemini, "read_file", {"path": str(root / "nginx.conf")})
    outside = call_once(daemon, fake_gemini, "read_file",
                        {"path": str(root / ".." / "secret.txt")})
    escape = call_once(daemon, fake_gemini, "read_file", {"path": str(root / "escape")})

    assert inside == {"output": "worker_processes 4;\n"}
    assert "outside the readable roots" in outside["error"]
    assert "outside the readable roots" in escape["error"]
    assert "not for the model" not in str(outside) + str(escape)


def test_a_directory_is_listed_and_a_unit_name_is_validated_before_anything_runs(
    make_daemon: Callable[..., DaemonProcess], fake_gemini: FakeGemini, root: Path
) -> None:
    daemon = builtin_daemon(make_daemon, fake_gemini, root)

    listing = call_once(daemon, fake_gemini, "list_directory", {"path": str(root)})
    unit = call_once(daemon, fake_gemini, "unit_state", {"unit": "nginx; rm -rf /"})
    since = call_once(daemon, fake_gemini, "journal",
                      {"unit": "nginx.service", "since": "--output=export"})

    assert "file\t20\tnginx.conf" in listing["output"]
    assert "link" in listing["output"]
    assert "is not a unit name" in unit["error"]
    assert "since is a time" in since["error"]


def test_a_large_file_is_cut_at_the_servers_cap(
    make_daemon: Callable[..., DaemonProcess], fake_gemini: FakeGemini, root: Path
) -> None:
    (root / "big.log").write_bytes(b"y" * 5000)
    daemon = builtin_daemon(make_daemon, fake_gemini, root)

    read = call_once(daemon, fake_gemini, "read_file", {"path": str(root / "big.log")})

    assert read["output"].startswith("y" * 1000)
    assert "cut at 1000 bytes" in read["output"]
    assert os.path.getsize(root / "big.log") == 5000
