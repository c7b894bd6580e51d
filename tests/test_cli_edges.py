"""agentctl's sharp edges, each as a user met it: agentctl as a real process against
the real daemon, at a real pseudo-terminal where the terminal matters."""

from __future__ import annotations

import json
import os
import pty
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from agentctl.client import Client, DaemonError
from tests.conftest import DaemonProcess, clean_environ, run_agentctl

MIB = 1024 * 1024
DEFAULT_MAX_PROMPT = 200_000
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def at_terminal(env: dict[str, str], *args: str) -> tuple[int, str]:
    """Run agentctl with stdout and stderr on a pseudo-terminal; its exit status and output."""
    master, slave = pty.openpty()
    process = subprocess.Popen(
        [sys.executable, "-m", "agentctl", *args],
        env={**env, "TERM": "xterm"},
        stdin=subprocess.DEVNULL,
        stdout=slave,
        stderr=slave,
    )
    os.close(slave)
    output = bytearray()
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: the last writer closed the terminal
            break
        if not chunk:
            break
        output += chunk
    os.close(master)
    return process.wait(30), output.decode()


def one_line(result: subprocess.CompletedProcess[bytes]) -> str:
    lines = result.stderr.decode().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


# -- prompt size ----------------------------------------------------------------------


def test_a_prompt_of_a_mib_on_stdin_exits_2_naming_its_size_and_the_limit(
    daemon: DaemonProcess,
) -> None:
    prompt = b"x" * (MIB + 10)
    result = daemon.agentctl("chat", input=prompt)
    assert result.returncode == 2
    line = one_line(result)
    assert f"{MIB + 10} bytes" in line and str(DEFAULT_MAX_PROMPT) in line, line
    assert "nothing was sent" in line
    assert daemon.call("history")["messages"] == []


def test_the_frame_limit_is_checked_too_when_it_is_the_smaller_one(
    make_daemon: Callable[..., DaemonProcess],
) -> None:
    d = make_daemon(
        {
            "AGENTD_DAEMON__MAX_FRAME_BYTES": str(256 * 1024),
            "AGENTD_CHAT__MAX_PROMPT_BYTES": "4000000",
        }
    ).start()
    result = d.agentctl("chat", input=b"y" * (300 * 1024))
    assert result.returncode == 2
    assert "daemon.max_frame_bytes" in one_line(result)


def test_a_frame_too_large_is_answered_as_such_not_as_a_broken_pipe(
    daemon: DaemonProcess,
) -> None:
    """The daemon answers FRAME_TOO_LARGE and closes while the client still sends:
    the client reads that answer instead of reporting the broken pipe."""
    with Client(daemon.socket) as client, pytest.raises(DaemonError) as info:
        client.call("chat", {"message": "z" * (2 * MIB)})
    assert info.value.code == "FRAME_TOO_LARGE"
    assert str(MIB) in info.value.message


# -- arguments ------------------------------------------------------------------------


def test_invalid_utf8_in_the_message_argument_exits_2_in_one_line(daemon: DaemonProcess) -> None:
    result = subprocess.run(
        [sys.executable.encode(), b"-m", b"agentctl", b"chat", b"caf\xe9 au lait"],
        env=daemon.env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert one_line(result) == (
        "agentctl: MESSAGE is not valid UTF-8 (character 3); nothing was sent"
    )


def test_new_session_is_a_flag_and_the_message_is_still_sent(daemon: DaemonProcess) -> None:
    before = daemon.call("status")["session_id"]
    result = daemon.agentctl("chat", "--new-session", "my question")
    assert result.returncode == 5, result.stderr  # no key: a degraded answer, but an answer
    history = daemon.call("history")
    assert history["session"]["id"] != before and history["session"]["name"] is None
    assert history["messages"][0]["content"] == "my question"


def test_new_session_takes_its_name_from_name(daemon: DaemonProcess) -> None:
    assert daemon.agentctl("chat", "--new-session", "--name", "ops", "hello").returncode == 5
    assert daemon.call("history", {"session": "ops"})["messages"][0]["content"] == "hello"
    alone = daemon.agentctl("chat", "--name", "ops2", "hello")
    assert alone.returncode == 2
    assert one_line(alone) == "agentctl: --name goes with --new-session"


# -- terminal output ------------------------------------------------------------------


@pytest.mark.parametrize(("command", "indent"), [("status", "    "), ("health", "  ")])
def test_colour_does_not_break_the_columns_at_a_terminal(
    daemon: DaemonProcess, command: str, indent: str
) -> None:
    """No Gemini key: gemini is `degraded` beside components that are `ok`, so the
    status words differ in length; the reasons still start in one column."""
    status, output = at_terminal(daemon.env, command)
    assert status == 0, output
    assert ANSI.search(output), "expected colour at a terminal"
    names = ("disk", "encryption", "gemini", "store")
    rows = [
        ANSI.sub("", line)
        for line in output.splitlines()
        if line.startswith(indent) and line.split()[0] in names
    ]
    assert len(rows) == len(names), output
    assert len({reason_column(row) for row in rows}) == 1, rows


def reason_column(row: str) -> int:
    """Where the reason starts: the first text after the status word."""
    found = re.search(r"\b(?:ok|degraded|failed)\s+(\S)", row)
    assert found is not None, row
    return found.start(1)


# -- stop -------------------------------------------------------------------------------


def test_stop_when_nothing_runs_exits_0_and_says_so(short_tmp: Path) -> None:
    env = clean_environ(short_tmp)
    stopped = run_agentctl(env, "stop")
    assert stopped.returncode == 0, stopped.stderr
    assert stopped.stdout.decode().strip() == "agentd is not running"
    as_json = run_agentctl(env, "--json", "stop")
    assert as_json.returncode == 0
    assert json.loads(as_json.stdout) == {"stopped": False, "was_running": False}
    assert run_agentctl(env, "status").returncode == 3  # status still tells scripts


# -- audit ------------------------------------------------------------------------------


@pytest.mark.parametrize("since", [float("nan"), float("inf"), float("-inf"), 1e300, -5.0])
def test_audit_since_out_of_range_is_a_bad_request(daemon: DaemonProcess, since: float) -> None:
    error = daemon.error_of("audit", {"since": since})
    assert error.code == "BAD_REQUEST", error.message
    assert "'since'" in error.message


def test_agentctl_refuses_a_since_too_far_back(daemon: DaemonProcess) -> None:
    result = daemon.agentctl("audit", "--since", "99999999999999999999d")
    assert result.returncode == 2
    assert "out of range" in result.stderr.decode()


def test_audit_and_history_tell_a_degraded_answer_from_a_model_answer(
    daemon: DaemonProcess,
) -> None:
    """No Gemini key: the answer is agentd's placeholder; the audit row's outcome is
    `ok` (the request was answered), and its `answer` says how: degraded."""
    chat = daemon.agentctl("--json", "chat", "hello")
    assert chat.returncode == 5
    request_id = json.loads(chat.stdout)["request_id"]
    rows = json.loads(daemon.agentctl("audit", "--json", "--command", "chat").stdout)
    assert [(r["request_id"], r["outcome"], r["answer"]) for r in rows] == [
        (request_id, "ok", "degraded")
    ]
    table = daemon.agentctl("audit", "--command", "chat").stdout.decode().splitlines()
    header, row = table[0].split(), table[1].split()
    assert row[header.index("answer")] == "degraded"
    statuses = [m["status"] for m in daemon.call("history")["messages"]]
    assert statuses == ["answered", "degraded"]
    assert "[degraded]" in daemon.agentctl("history").stdout.decode()
