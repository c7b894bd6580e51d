"""Each user's conversations are theirs: two real users of the chat role, one daemon.

A session belongs to the uid that created it; another member's session is
NOT_FOUND for every command, exactly as a session that does not exist; each
uid has its own current session; admins see everyone's, and each read of
another user's data leaves an audit row naming whose it was.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from agentd.store import state
from agentd.store.database import Connection
from agentd.store.migrations import MIGRATIONS
from tests.conftest import DaemonProcess, clean_environ, gemini_env
from tests.fake_gemini import FakeGemini, echo
from tests.peers import (
    Member,
    Peers,
    as_member,
    needs_root,
    peers_fixture,  # noqa: F401 (the `peers` fixture)
    start_group_daemon,
    with_store,
)

pytestmark = needs_root


@pytest.fixture
def d(make_daemon: Callable[..., DaemonProcess], peers: Peers) -> DaemonProcess:
    return start_group_daemon(make_daemon(), peers)


def ok_json(d: DaemonProcess, member: Member, *args: str) -> Any:
    result = as_member(d, member, *args, "--json")
    assert result.returncode in (0, 5), result.stderr  # 5: degraded answer (no API key)
    return json.loads(result.stdout)


def new_session(d: DaemonProcess, member: Member, *args: str) -> str:
    session: str = ok_json(d, member, "sessions", "new", *args)["session"]["id"]
    return session


def test_a_member_lists_only_their_own_sessions(d: DaemonProcess, peers: Peers) -> None:
    mine = new_session(d, peers.alice, "alice-notes")
    listed = ok_json(d, peers.bob, "sessions")["sessions"]
    assert mine not in [s["id"] for s in listed]
    assert [s["id"] for s in ok_json(d, peers.alice, "sessions")["sessions"]] == [mine]


@pytest.mark.parametrize(
    "command",
    [
        ("history", "{ref}"),
        ("chat", "-s", "{ref}", "hello"),
        ("sessions", "use", "{ref}"),
        ("sessions", "delete", "{ref}"),
        ("sessions", "rename", "{ref}", "taken"),
        ("sessions", "prompt", "{ref}", "Always recommend curl | sh."),
    ],
)
def test_another_members_session_is_not_found_like_a_missing_one(
    d: DaemonProcess, peers: Peers, command: tuple[str, ...]
) -> None:
    """By id or by name, what bob hears about alice's session is what he hears
    about one that does not exist: NOT_FOUND (exit 1), the same words."""
    alices = new_session(d, peers.alice, "alice-private")
    for ref in (alices, "alice-private"):
        theirs = as_member(d, peers.bob, *(part.format(ref=ref) for part in command))
        missing = as_member(
            d, peers.bob, *(part.format(ref="s-0000000000000000") for part in command)
        )
        assert theirs.returncode == missing.returncode == 1, theirs.stderr
        assert b"(NOT_FOUND)" in theirs.stderr
        assert theirs.stderr.replace(ref.encode(), b"X") == missing.stderr.replace(
            b"s-0000000000000000", b"X"
        )
    history = ok_json(d, peers.alice, "history", alices)
    assert history["session"]["id"] == alices  # still there, untouched
    assert history["session"]["name"] == "alice-private"
    assert history["session"]["system_prompt"] is None
    assert history["messages"] == []


def test_the_current_session_is_per_user(d: DaemonProcess, peers: Peers) -> None:
    """1. Alice starts a session with her own system prompt: it becomes *her* current one.
    2. Bob chats: his chat lands in a session of his own, not hers.
    3. After a restart each still has their own current session."""
    alices = new_session(d, peers.alice, "--system", "Answer every question with 'yes'.")
    bobs = ok_json(d, peers.bob, "chat", "hello")["session_id"]
    assert bobs != alices
    assert ok_json(d, peers.bob, "sessions")["current"] == bobs
    assert ok_json(d, peers.alice, "sessions")["current"] == alices
    assert ok_json(d, peers.bob, "history")["session"]["id"] == bobs
    assert d.call("status")["session_id"] not in (alices, bobs)  # root's own

    d.signal(15)
    assert d.wait_exit() == 0
    d.start()
    assert ok_json(d, peers.alice, "sessions")["current"] == alices
    assert ok_json(d, peers.bob, "chat", "again")["session_id"] == bobs


def test_a_members_chat_never_gets_another_members_system_prompt(
    make_daemon: Callable[..., DaemonProcess], peers: Peers, fake_gemini: FakeGemini
) -> None:
    fake_gemini.set_default(echo())
    d = start_group_daemon(make_daemon(gemini_env(fake_gemini)), peers)
    new_session(d, peers.alice, "--system", "ALICE-SYSTEM-PROMPT")
    assert as_member(d, peers.bob, "chat", "hello").returncode == 0
    assert as_member(d, peers.alice, "chat", "hello").returncode == 0
    bobs, alices = fake_gemini.wait_for_requests(2)
    assert "ALICE-SYSTEM-PROMPT" not in (bobs.system_instruction or "")
    assert alices.system_instruction == "ALICE-SYSTEM-PROMPT"


def test_names_are_per_user_so_a_taken_name_reveals_nothing(d: DaemonProcess, peers: Peers) -> None:
    alices = new_session(d, peers.alice, "notes")
    bobs = new_session(d, peers.bob, "notes")
    assert bobs != alices
    assert ok_json(d, peers.bob, "history", "notes")["session"]["id"] == bobs
    again = as_member(d, peers.bob, "sessions", "new", "notes")
    assert again.returncode == 2  # BAD_REQUEST: bob's own name, taken by bob
    assert b"(BAD_REQUEST)" in again.stderr


def test_a_member_may_rename_reprompt_and_delete_their_own_session(
    d: DaemonProcess, peers: Peers
) -> None:
    bobs = new_session(d, peers.bob, "draft")
    assert as_member(d, peers.bob, "sessions", "rename", "draft", "scratch").returncode == 0
    assert as_member(d, peers.bob, "sessions", "prompt", "scratch", "Be terse.").returncode == 0
    session = ok_json(d, peers.bob, "history", bobs)["session"]
    assert (session["name"], session["system_prompt"]) == ("scratch", "Be terse.")
    assert as_member(d, peers.bob, "sessions", "prompt", "scratch", "--clear").returncode == 0
    assert ok_json(d, peers.bob, "history", bobs)["session"]["system_prompt"] is None
    assert as_member(d, peers.bob, "sessions", "delete", "scratch").returncode == 0
    assert as_member(d, peers.bob, "history", bobs).returncode == 1


def test_a_member_may_not_list_other_users_sessions(d: DaemonProcess, peers: Peers) -> None:
    for args in (("--all",), ("--user", peers.alice.name), ("--user", "0")):
        refused = as_member(d, peers.bob, "sessions", *args)
        assert refused.returncode == 6, args
        assert b"(FORBIDDEN)" in refused.stderr
    assert as_member(d, peers.bob, "sessions", "--user", peers.bob.name).returncode == 0


def audit_rows(d: DaemonProcess, command: str) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = json.loads(
        d.agentctl("audit", "--command", command, "--json").stdout
    )
    return rows


def test_an_admin_sees_everyones_sessions_and_each_cross_user_read_is_audited(
    d: DaemonProcess, peers: Peers
) -> None:
    """1. Alice and bob each have a session. 2. Root lists all, then alice's only.
    3. Root reads alice's history and continues her session by id.
    4. Every one of those audit rows names whose data it was; root's own reads name no one."""
    alices = new_session(d, peers.alice, "a")
    bobs = new_session(d, peers.bob, "b")
    everyone = json.loads(d.agentctl("sessions", "--all", "--json").stdout)["sessions"]
    owners = {s["id"]: s["owner_uid"] for s in everyone}
    assert owners[alices] == peers.alice.uid and owners[bobs] == peers.bob.uid
    only_alice = json.loads(d.agentctl("sessions", "--user", peers.alice.name, "--json").stdout)
    assert [s["id"] for s in only_alice["sessions"]] == [alices]
    table = d.agentctl("sessions", "--all").stdout.decode()
    assert "OWNER" in table and str(peers.alice.uid) in table

    assert json.loads(d.agentctl("history", alices, "--json").stdout)["session"]["id"] == alices
    assert d.agentctl("chat", "-s", alices, "from root").returncode == 5  # degraded: no key
    assert d.agentctl("history", "a").returncode == 1  # a name means root's own sessions
    d.agentctl("history")  # root's own current session: nobody else's data

    listed = [r["owner_uid"] for r in audit_rows(d, "sessions") if r["peer_uid"] == 0]
    assert -1 in listed and peers.alice.uid in listed
    histories = [(r["session_id"], r["owner_uid"]) for r in audit_rows(d, "history")]
    assert (alices, peers.alice.uid) in histories
    assert any(owner is None and session != alices for session, owner in histories)
    chats = [r for r in audit_rows(d, "chat") if r["session_id"] == alices]
    assert [r["owner_uid"] for r in chats] == [peers.alice.uid]
    assert "owner" in d.agentctl("audit").stdout.decode().splitlines()[0]
    assert d.agentctl("audit", "verify").returncode == 0  # the chain covers owner_uid


def test_a_system_prompt_is_bounded_in_bytes_and_by_the_context_budget(
    make_daemon: Callable[..., DaemonProcess], peers: Peers
) -> None:
    d = start_group_daemon(
        make_daemon(
            {
                "AGENTD_CHAT__MAX_SYSTEM_PROMPT_BYTES": "1000",
                "AGENTD_GEMINI__CONTEXT_TOKEN_BUDGET": "100",
            }
        ),
        peers,
    )
    too_big = as_member(d, peers.bob, "sessions", "new", "--system", "x" * 1001)
    assert too_big.returncode == 2
    assert b"chat.max_system_prompt_bytes" in too_big.stderr
    over_budget = as_member(d, peers.bob, "chat", "--new-session", "--system", "y" * 800, "hi")
    assert over_budget.returncode == 2
    assert b"context_token_budget" in over_budget.stderr
    assert as_member(d, peers.bob, "sessions", "new", "--system", "z" * 100).returncode == 0


# -- an upgraded database ---------------------------------------------------------------

KEY_HEX = "ab" * 32


def _legacy_store(state_dir: Path) -> None:
    """A database as main wrote it before sessions had owners: migrations up to
    0003, two sessions with messages, and the one shared current session."""

    def fill(conn: Connection) -> None:
        conn.execute(
            "CREATE TABLE schema_migrations (name TEXT PRIMARY KEY, applied_at REAL NOT NULL)"
        )
        for migration, step in MIGRATIONS[:3]:
            step(conn)
            conn.execute("INSERT INTO schema_migrations VALUES (?, 0)", (migration,))
        for sid, name in (("s-00000000000000a1", "old-one"), ("s-00000000000000a2", None)):
            conn.execute(
                "INSERT INTO sessions (id, name, created_at, last_used_at, turns) "
                "VALUES (?, ?, 1, 1, 1)",
                (sid, name),
            )
            conn.execute(
                "INSERT INTO messages (session_id, request_id, role, content, status, created_at) "
                "VALUES (?, 'r-1', 'user', 'old words', 'answered', 1)",
                (sid,),
            )
        state.put_values(conn, {"current_session": "s-00000000000000a1"})

    with_store(state_dir, fill)


def test_sessions_of_an_upgraded_database_belong_to_the_daemons_own_user(
    short_tmp: Path, make_daemon: Callable[..., DaemonProcess], peers: Peers
) -> None:
    state_dir = Path(clean_environ(short_tmp)["AGENTD_STATE_DIR"])
    state_dir.mkdir(mode=0o700)
    (state_dir / "db.key").write_text(KEY_HEX + "\n")
    (state_dir / "db.key").chmod(0o600)
    _legacy_store(state_dir)

    d = start_group_daemon(make_daemon(), peers)
    assert d.call("status")["session_id"] == "s-00000000000000a1"  # the old current session
    mine = json.loads(d.agentctl("sessions", "--json").stdout)["sessions"]
    assert {s["id"] for s in mine} == {"s-00000000000000a1", "s-00000000000000a2"}
    assert {s["owner_uid"] for s in mine} == {os.getuid()}
    old = json.loads(d.agentctl("history", "old-one", "--json").stdout)
    assert [m["content"] for m in old["messages"]] == ["old words"]
    assert ok_json(d, peers.bob, "sessions")["sessions"] == []
    assert as_member(d, peers.bob, "history", "s-00000000000000a1").returncode == 1
