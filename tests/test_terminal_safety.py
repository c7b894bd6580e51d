"""Text from others never drives an operator's terminal.

Session names, audit fields, log records and model answers may hold escape
sequences (cursor moves, erase-line, OSC window titles and OSC 52 clipboard
writes), C1 controls, bidi overrides and NULs. On a real pseudo-terminal
agentctl shows them escaped; `--json` and chat answers in a pipe stay exact.
Session names with such characters are refused when created.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from agentd.store.database import Connection
from tests.conftest import DaemonProcess, gemini_env
from tests.fake_gemini import FakeGemini, answer
from tests.peers import (
    Peers,
    as_member,
    insert_session,
    needs_root,
    on_tty,
    peers_fixture,  # noqa: F401 (the `peers` fixture)
    raw_call_as,
    start_group_daemon,
    with_store,
)

pytestmark = needs_root

# What must never reach a terminal raw: ESC (CSI, OSC), BEL (ends an OSC), the C1
# CSI (U+009B), NUL, and the bidi override/isolate characters, as UTF-8.
RAW = [b"\x1b", b"\x07", b"\xc2\x9b", b"\x00", "\u202e".encode(), "\u2066".encode()]

HOSTILE = "ok\x1b]0;owned\x07\x1b]52;c;cHduZWQ=\x07\x1b[1A\x1b[2K\x9b31m\u202eevil\u2066\x00end"


@pytest.fixture
def d(make_daemon: Callable[..., DaemonProcess], peers: Peers) -> DaemonProcess:
    return start_group_daemon(make_daemon({"AGENTD_LOG__LEVEL": "DEBUG"}), peers)


def assert_nothing_raw(screen: bytes) -> None:
    for raw in RAW:
        assert raw not in screen, (raw, screen[-400:])


@pytest.mark.parametrize(
    "name",
    [
        "\x1b]0;title\x07",
        "x\x1b[2K",
        "a\x00b",
        "c1\x9b31m",
        "\u202eevil",
        "iso\u2066late",
        "tab\there",
        "line\nbreak",
        "x" * 101,
        " ",
    ],
)
def test_a_session_name_with_controls_or_bidi_is_refused(
    d: DaemonProcess, peers: Peers, name: str
) -> None:
    assert raw_call_as(d, peers.bob, "session_new", {"name": "mine"}) == ""
    assert raw_call_as(d, peers.bob, "session_new", {"name": name}) == "BAD_REQUEST"
    chat = {"message": "hi", "new_session": True, "session_name": name}
    assert raw_call_as(d, peers.bob, "chat", chat) == "BAD_REQUEST"
    rename = {"session": "mine", "name": name}
    assert raw_call_as(d, peers.bob, "session_rename", rename) == "BAD_REQUEST"
    listed = json.loads(as_member(d, peers.bob, "sessions", "--json").stdout)["sessions"]
    assert [s["name"] for s in listed] == ["mine"]


def test_agentctl_refuses_a_hostile_name_with_exit_2_and_keeps_a_printable_one(
    d: DaemonProcess, peers: Peers
) -> None:
    for args in (("sessions", "new", HOSTILE[:40]), ("chat", "--new-session", "--name", "\x1b[2J", "hi")):
        refused = as_member(d, peers.bob, *args)
        assert refused.returncode == 2, (args, refused.stderr)
        assert b"(BAD_REQUEST)" in refused.stderr
        assert_nothing_raw(refused.stderr)
    for name in ("café ✓ notes", "n" * 100):
        made = json.loads(as_member(d, peers.bob, "sessions", "new", name, "--json").stdout)
        assert made["session"]["name"] == name


def hostile_session(conn: Connection) -> None:
    insert_session(conn, "s-00000000000000e1", HOSTILE, owner_uid=0)


def test_sessions_shows_a_stored_hostile_name_escaped_on_a_terminal(d: DaemonProcess) -> None:
    d.signal(15)
    assert d.wait_exit() == 0
    with_store(d.state_dir, hostile_session)
    d.start()
    status, screen = on_tty(d, "sessions")
    assert status == 0
    assert_nothing_raw(screen)
    assert b"ok\\x1b]0;owned\\x07" in screen and b"\\u202eevil" in screen
    names = [s["name"] for s in json.loads(d.agentctl("sessions", "--json").stdout)["sessions"]]
    assert HOSTILE in names  # --json stays exact
    status, screen = on_tty(d, "history", "s-00000000000000e1")
    assert status == 0
    assert_nothing_raw(screen)


def test_audit_shows_a_hostile_command_name_escaped_on_a_terminal(
    d: DaemonProcess, peers: Peers
) -> None:
    """A member sends a request whose command name is an escape sequence; root reads the
    audit trail on a terminal."""
    assert raw_call_as(d, peers.bob, HOSTILE, {}) == "UNKNOWN_COMMAND"
    status, screen = on_tty(d, "audit", "--outcome", "error")
    assert status == 0
    assert_nothing_raw(screen)
    assert b"ok\\x1b]0;owned\\x07\\x1b]52;c;cHduZWQ=" in screen
    rows = json.loads(d.agentctl("audit", "--outcome", "error", "--json").stdout)
    assert HOSTILE in [r["command"] for r in rows]


def test_logs_show_a_hostile_record_escaped_on_a_terminal(d: DaemonProcess, peers: Peers) -> None:
    assert raw_call_as(d, peers.bob, HOSTILE, {}) == "UNKNOWN_COMMAND"
    records = [json.loads(line) for line in d.agentctl("logs", "--json").stdout.splitlines()]
    # The daemon already escapes a client's string in its own log lines (agentd.untrusted);
    # agentctl escapes whatever else a record holds: neither lets a control through.
    hostile = [str(r.get("message")) for r in records if "owned" in str(r.get("message"))]
    assert hostile and not any("\x1b" in m or "\u202e" in m for m in hostile)
    status, screen = on_tty(d, "logs")
    assert status == 0
    assert_nothing_raw(screen)
    assert b"ok\\x1b]0;owned\\x07" in screen


@pytest.fixture
def hostile_model(
    make_daemon: Callable[..., DaemonProcess], peers: Peers, fake_gemini: FakeGemini
) -> DaemonProcess:
    """A model whose answer carries escapes, split across stream chunks mid-sequence."""
    text = f"first\tline\n{HOSTILE}\nlast"
    fake_gemini.set_default(answer(chunks=(text[:14], text[14:20], text[20:])))
    return start_group_daemon(make_daemon(gemini_env(fake_gemini)), peers)


def test_a_hostile_answer_is_escaped_on_a_terminal_and_exact_in_a_pipe(
    hostile_model: DaemonProcess, peers: Peers
) -> None:
    """1. On a terminal: chat (streamed, and not) and history show the controls escaped,
    keeping newlines and tabs. 2. In a pipe and in --json the answer is byte-exact."""
    for args in (("chat", "hi"), ("chat", "--no-stream", "hi"), ("history",)):
        status, screen = on_tty(hostile_model, *args, member=peers.bob)
        assert status == 0, (args, screen)
        assert_nothing_raw(screen)
        assert b"first\tline\r\nok\\x1b]0;owned\\x07\\x1b]52;c;cHduZWQ=\\x07\\x1b[1A" in screen
        assert b"\\u202eevil\\u2066\\x00end\r\nlast" in screen
    expected = f"first\tline\n{HOSTILE}\nlast\n".encode()
    assert as_member(hostile_model, peers.bob, "chat", "hi").stdout == expected
    assert as_member(hostile_model, peers.bob, "chat", "--no-stream", "hi").stdout == expected
    history: dict[str, Any] = json.loads(
        as_member(hostile_model, peers.bob, "history", "--json").stdout
    )
    answers = [m["content"] for m in history["messages"] if m["role"] == "model"]
    assert answers == [expected.decode()[:-1]] * 4  # two chats on the terminal, two here
    status, screen = on_tty(hostile_model, "history", "--json", member=peers.bob)
    assert status == 0
    assert_nothing_raw(screen)  # JSON escapes them itself: \u001b
