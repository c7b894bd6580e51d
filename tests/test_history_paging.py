"""No reply exceeds the frame limit: `history` of a session holding 10 MB answers.

The answers are written into the real SQLCipher file with the daemon stopped
(the store API and the daemon's own key), so this does not depend on any cap
on what a model may answer.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
from collections.abc import Callable
from typing import Any

import pytest

from agentd.protocol import DEFAULT_MAX_FRAME, HEADER, decode_body, encode_frame, make_request
from agentd.store import messages
from agentd.store.database import Connection
from tests import peers as lab
from tests.conftest import DaemonProcess
from tests.peers import peers_fixture  # noqa: F401 (the `peers` fixture)

pytestmark = lab.needs_root

# Two answers of ~10 MB: together past what any frame may hold, as in the report
# (`frame of 20000693 bytes exceeds the limit`). The second one is multi-byte
# text, so pieces must be cut between characters, not inside one.
BIG_ASCII = "".join(f"line {n:07d} of a very long answer\n" for n in range(300_000))
BIG_UTF8 = "é✓😀 " * 900_000


def store_answers(conn: Connection, session_id: str, answers: list[str]) -> None:
    for number, text in enumerate(answers):
        request_id = f"r-big{number}"
        turn = messages.record_user_turn(conn, session_id, request_id, f"question {number}")
        messages.record_model_turn(
            conn, session_id, request_id, turn, messages.ModelTurn(text, "complete", "m", 1, 1)
        )


@pytest.fixture
def big_history(
    make_daemon: Callable[..., DaemonProcess], peers: lab.Peers
) -> tuple[DaemonProcess, str]:
    """A daemon whose member bob has a session holding two 10 MB answers."""
    d = lab.start_group_daemon(make_daemon(), peers)
    created = lab.as_member(d, peers.bob, "sessions", "new", "big", "--json")
    session_id: str = json.loads(created.stdout)["session"]["id"]
    d.signal(15)
    assert d.wait_exit() == 0
    lab.with_store(d.state_dir, store_answers, session_id, [BIG_ASCII, BIG_UTF8])
    d.start()
    return d, session_id


def digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def test_history_of_huge_answers_reaches_agentctl_whole(
    big_history: tuple[DaemonProcess, str], peers: lab.Peers
) -> None:
    d, session_id = big_history
    result = lab.as_member(d, peers.bob, "history", "big", "--json")
    assert result.returncode == 0, result.stderr[-500:]
    history = json.loads(result.stdout)
    assert history["session"]["id"] == session_id
    contents = [m["content"] for m in history["messages"]]
    assert contents[0::2] == ["question 0", "question 1"]
    assert [digest(c) for c in contents[1::2]] == [digest(BIG_ASCII), digest(BIG_UTF8)]
    assert all("more" not in m for m in history["messages"])

    plain = lab.as_member(d, peers.bob, "history", "big")
    assert plain.returncode == 0
    assert BIG_ASCII.encode() in plain.stdout and BIG_UTF8.encode() in plain.stdout


def frames_of(d: DaemonProcess, cmd: str, args: dict[str, Any]) -> list[dict[str, Any]]:
    """Every frame the daemon sends for one request, each checked against the frame limit."""
    received: list[dict[str, Any]] = []
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(30)
        sock.connect(d.socket)
        sock.sendall(encode_frame(make_request(1, cmd, args)))
        stream = sock.makefile("rb")
        while not received or "event" in received[-1]:
            (length,) = HEADER.unpack(stream.read(HEADER.size))
            assert length <= DEFAULT_MAX_FRAME, f"a frame of {length} bytes"
            received.append(decode_body(stream.read(length)))
    return received


def test_a_streamed_history_splits_a_message_larger_than_a_frame(
    big_history: tuple[DaemonProcess, str],
) -> None:
    d, session_id = big_history
    frames = frames_of(d, "history", {"session": session_id, "stream": True})
    *events, reply = frames
    assert reply["ok"] and reply["result"]["count"] == 4
    pieces = [e["message"] for e in events]
    assert len(pieces) > 4  # the 10 MB answers came in several pieces each
    assert sum(not p["more"] for p in pieces) == 4
    big = [p["content"] for p in pieces if p["id"] == pieces[-1]["id"]]
    assert digest("".join(big)) == digest(BIG_UTF8)


def test_history_without_streaming_still_fits_one_frame(
    big_history: tuple[DaemonProcess, str],
) -> None:
    """A client that does not stream gets what fits: the newest message, cut and
    marked, and a count of the older ones left out."""
    d, session_id = big_history
    (reply,) = frames_of(d, "history", {"session": session_id})
    result = reply["result"]
    (newest,) = result["messages"]
    assert newest["truncated"] is True
    assert BIG_UTF8.startswith(newest["content"])
    assert result["omitted"] == 3


def many_long_names(conn: Connection, owner_uid: int) -> None:
    for number in range(3000):  # 100 four-byte characters each: ~1.5 MB of names alone
        lab.insert_session(conn, f"s-{number:016x}", f"{number:04d}" + "😀" * 96, owner_uid)


def test_a_long_session_listing_fits_one_frame(daemon: DaemonProcess) -> None:
    daemon.signal(15)
    assert daemon.wait_exit() == 0
    lab.with_store(daemon.state_dir, many_long_names, os.getuid())
    daemon.start()
    (reply,) = frames_of(daemon, "sessions", {"limit": 10_000})
    result = reply["result"]
    assert 0 < len(result["sessions"]) < 3000
    assert result["omitted"] == 3001 - len(result["sessions"])  # and the daemon's first one
    listed = daemon.agentctl("sessions", "-n", "10000", "--json")
    assert listed.returncode == 0
    assert len(json.loads(listed.stdout)["sessions"]) == len(result["sessions"])
