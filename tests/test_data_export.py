"""export, import and search: each user's own conversations out, back in, and found.

Real daemon, real SQLCipher file, agentctl as a real process under real uids
(throw-away members of the chat role). With no Gemini key a chat still stores
its prompt and a degraded answer: enough text to export and search.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from agentd.store import messages
from agentd.store.database import Connection
from tests.conftest import DaemonProcess
from tests.peers import (
    Member,
    Peers,
    as_member,
    needs_root,
    on_tty,
    peers_fixture,  # noqa: F401 (the `peers` fixture)
    start_group_daemon,
    with_store,
)
from tests.test_access import open_path_to_others

pytestmark = needs_root


@pytest.fixture
def d(make_daemon: Callable[..., DaemonProcess], peers: Peers) -> DaemonProcess:
    return start_group_daemon(make_daemon(), peers)


@pytest.fixture
def shared_tmp(tmp_path: Path) -> Path:
    """A temporary directory the members can reach (to read or, in their own, write)."""
    open_path_to_others(tmp_path)
    return tmp_path


def chat(d: DaemonProcess, member: Member, session: str, text: str) -> None:
    result = as_member(d, member, "chat", "--new-session", "--name", session, text)
    assert result.returncode == 5, result.stderr  # degraded: no API key, but stored


def exported(d: DaemonProcess, member: Member | None, *args: str) -> list[dict[str, Any]]:
    result = as_member(d, member, "export", *args) if member else d.agentctl("export", *args)
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.decode().splitlines()]


def of_type(records: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [r for r in records if r["type"] == kind]


def audit_rows(d: DaemonProcess, command: str) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = json.loads(
        d.agentctl("audit", "--command", command, "--json").stdout
    )
    return rows


def test_a_member_exports_only_their_own_sessions(d: DaemonProcess, peers: Peers) -> None:
    chat(d, peers.alice, "alice-notes", "alice's secret plan")
    chat(d, peers.bob, "bob-notes", "bob's grocery list")
    records = exported(d, peers.alice)
    assert records[0]["type"] == "agentd-export" and records[0]["version"] == 1
    assert [s["name"] for s in of_type(records, "session")] == ["alice-notes"]
    texts = [m["content"] for m in of_type(records, "message")]
    assert "alice's secret plan" in texts and "bob's grocery list" not in texts
    message = of_type(records, "message")[0]
    assert {"created_at", "model", "status", "role", "tool_calls"} <= message.keys()

    bobs = of_type(exported(d, peers.bob), "session")[0]["id"]
    refused = as_member(d, peers.alice, "export", bobs)
    assert refused.returncode == 1 and b"(NOT_FOUND)" in refused.stderr
    assert b"grocery" not in refused.stdout
    forbidden = as_member(d, peers.alice, "export", "--all")
    assert forbidden.returncode == 6 and b"(FORBIDDEN)" in forbidden.stderr


def test_an_admin_exports_everyones_sessions_audited_with_the_owner(
    d: DaemonProcess, peers: Peers
) -> None:
    chat(d, peers.alice, "a", "alpha text")
    chat(d, peers.bob, "b", "bravo text")
    owners = {s["owner_uid"] for s in of_type(exported(d, None, "--all"), "session")}
    assert {peers.alice.uid, peers.bob.uid} <= owners
    alices = of_type(exported(d, peers.alice), "session")[0]["id"]
    only = of_type(exported(d, None, alices), "session")
    assert [s["owner_uid"] for s in only] == [peers.alice.uid]
    rows = [r for r in audit_rows(d, "export") if r["peer_uid"] == 0]
    assert {r["owner_uid"] for r in rows} == {-1, peers.alice.uid}
    assert all(r["outcome"] == "ok" for r in rows)
    assert d.agentctl("audit", "verify").returncode == 0


def test_an_export_imports_back_as_new_sessions_of_the_caller(
    d: DaemonProcess, peers: Peers, shared_tmp: Path
) -> None:
    """1. Alice exports to a file (0600). 2. Bob imports it: new sessions, his own.
    3. Bob's export of them holds the same messages. 4. The import is audited."""
    chat(d, peers.alice, "trip", "pack the tent\x1b[31m and the stove")
    home = shared_tmp / "alice"
    home.mkdir(mode=0o755)
    home.chmod(0o755)  # bob reads the file from it
    os.chown(home, peers.alice.uid, peers.alice.gid)
    target = home / "out.jsonl"
    assert as_member(d, peers.alice, "export", "-o", str(target)).returncode == 0
    assert stat.S_IMODE(target.stat().st_mode) == 0o600 and target.stat().st_uid == peers.alice.uid
    original = [json.loads(line) for line in target.read_text().splitlines()]

    target.chmod(0o644)
    imported = as_member(d, peers.bob, "import", str(target), "--json")
    assert imported.returncode == 0, imported.stderr
    result = json.loads(imported.stdout)
    assert [s["name"] for s in result["sessions"]] == ["trip"]
    assert result["messages"] == len(of_type(original, "message"))

    again = exported(d, peers.bob, result["sessions"][0]["id"])
    assert of_type(again, "session")[0]["owner_uid"] == peers.bob.uid
    fields = ("role", "content", "status", "model", "created_at", "request_id")
    assert [tuple(m[f] for f in fields) for m in of_type(again, "message")] == [
        tuple(m[f] for f in fields) for m in of_type(original, "message")
    ]
    assert "pack the tent\x1b[31m and the stove" in [
        m["content"] for m in of_type(again, "message")
    ]
    commits = [r for r in audit_rows(d, "import_commit") if r["peer_uid"] == peers.bob.uid]
    assert [r["outcome"] for r in commits] == ["ok"]

    twice = json.loads(as_member(d, peers.bob, "import", str(target), "--json").stdout)
    assert [s["name"] for s in twice["sessions"]] == ["trip (imported)"]


def test_a_malformed_import_names_the_line_and_imports_nothing(
    d: DaemonProcess, peers: Peers, shared_tmp: Path
) -> None:
    chat(d, peers.alice, "one", "first")
    lines = exported(d, peers.alice)
    good = [json.dumps(r) for r in lines]
    before = len(json.loads(as_member(d, peers.bob, "sessions", "--json").stdout)["sessions"])
    cases = {
        "not JSON": [*good[:3], "{oops", *good[3:]],
        "'role' must be one of": [*good, json.dumps({**lines[-1], "role": "system"})],
        "a session name": [*good, json.dumps({**lines[1], "id": "x", "name": "\x1b[2J"})],
        "which no line above": [*good, json.dumps({**lines[-1], "session": "nope"})],
        "not an agentd export": good[1:],
    }
    bad_line = {"not JSON": 4, "not an agentd export": 1}
    for reason, content in cases.items():
        path = shared_tmp / "bad.jsonl"
        path.write_text("\n".join(content) + "\n")
        path.chmod(0o644)
        result = as_member(d, peers.bob, "import", str(path))
        assert result.returncode == 2, (reason, result.stderr)
        line = bad_line.get(reason, len(content))
        assert f"line {line}: ".encode() in result.stderr, (reason, result.stderr)
        assert reason.encode() in result.stderr and b"INTERNAL" not in result.stderr
    after = json.loads(as_member(d, peers.bob, "sessions", "--json").stdout)["sessions"]
    assert len(after) == before


def test_export_refuses_an_existing_file_and_a_directory_others_write(
    d: DaemonProcess, tmp_path: Path
) -> None:
    existing = tmp_path / "there.jsonl"
    existing.write_text("keep me")
    refused = d.agentctl("export", "-o", str(existing))
    assert refused.returncode == 1 and b"--force" in refused.stderr
    assert existing.read_text() == "keep me"
    assert d.agentctl("export", "-o", str(existing), "--force").returncode == 0
    assert existing.read_text().startswith('{"type": "agentd-export"')
    assert stat.S_IMODE(existing.stat().st_mode) == 0o600

    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    refused = d.agentctl("export", "-o", str(shared / "x.jsonl"))
    assert refused.returncode == 1 and b"writable by others" in refused.stderr
    assert not list(shared.iterdir())


HUGE = "é✓😀 " * 1_200_000 + "".join(f"line {n:07d}\n" for n in range(300_000))


def store_huge(conn: Connection, session_id: str) -> None:
    turn = messages.record_user_turn(conn, session_id, "r-huge", "give me everything")
    messages.record_model_turn(
        conn, session_id, "r-huge", turn, messages.ModelTurn(HUGE, "complete", "m", 1, 1)
    )


def test_a_10_mb_message_is_exported_through_frames_and_imported_back(
    d: DaemonProcess, peers: Peers, shared_tmp: Path
) -> None:
    created = as_member(d, peers.bob, "sessions", "new", "big", "--json")
    session_id = json.loads(created.stdout)["session"]["id"]
    d.signal(15)
    assert d.wait_exit() == 0
    with_store(d.state_dir, store_huge, session_id)
    d.start()
    assert len(HUGE.encode()) > 10_000_000

    result = as_member(d, peers.bob, "export", "big")
    assert result.returncode == 0, result.stderr[-500:]
    records = [json.loads(line) for line in result.stdout.decode().splitlines()]
    contents = [m["content"] for m in of_type(records, "message")]
    digest = hashlib.sha256(HUGE.encode()).hexdigest()
    assert [hashlib.sha256(c.encode()).hexdigest() for c in contents][1] == digest

    path = shared_tmp / "big.jsonl"
    path.write_bytes(result.stdout)
    path.chmod(0o644)
    imported = as_member(d, peers.bob, "import", str(path), "--json")
    assert imported.returncode == 0, imported.stderr[-500:]
    new_id = json.loads(imported.stdout)["sessions"][0]["id"]
    again = of_type(exported(d, peers.bob, new_id), "message")
    assert hashlib.sha256(again[1]["content"].encode()).hexdigest() == digest


HOSTILE = "look\x1b]0;pwned\x07\x1b[2J\x1b[31mred\u202eevil\x9b"


def test_markdown_export_escapes_controls_on_a_terminal_and_jsonl_stays_exact(
    d: DaemonProcess, peers: Peers
) -> None:
    chat(d, peers.bob, "hostile", HOSTILE)
    status, screen = on_tty(d, "export", "--format", "markdown", member=peers.bob)
    assert status == 0
    assert b"\x1b" not in screen and b"\x07" not in screen and "\u202e".encode() not in screen
    assert b"look\\x1b]0;pwned\\x07\\x1b[2J" in screen and b"# hostile" in screen
    piped = as_member(d, peers.bob, "export", "--format", "markdown")
    assert HOSTILE.encode() in piped.stdout  # a file or a pipe gets the text exactly
    texts = [m["content"] for m in of_type(exported(d, peers.bob), "message")]
    assert HOSTILE in texts


def search(d: DaemonProcess, member: Member | None, *args: str) -> list[dict[str, Any]]:
    result = (
        as_member(d, member, "search", *args, "--json")
        if member
        else d.agentctl("search", *args, "--json")
    )
    assert result.returncode == 0, result.stderr
    hits: list[dict[str, Any]] = json.loads(result.stdout)["results"]
    return hits


def snippet(hit: dict[str, Any]) -> str:
    return "".join(f"[{s['text']}]" if s["match"] else s["text"] for s in hit["snippet"])


def test_search_finds_only_the_callers_own_messages(d: DaemonProcess, peers: Peers) -> None:
    chat(d, peers.alice, "zoo", "the purple giraffe eats leaves")
    chat(d, peers.bob, "farm", "a purple giraffe on the farm")
    hits = search(d, peers.alice, "purple", "giraffe")
    assert [h["session_name"] for h in hits] == ["zoo"]
    assert "the [purple] [giraffe] eats leaves" in snippet(hits[0])
    assert search(d, peers.bob, "leaves") == []
    bobs = of_type(exported(d, peers.bob), "session")[0]["id"]
    refused = as_member(d, peers.alice, "search", "giraffe", "--session", bobs)
    assert refused.returncode == 1 and b"(NOT_FOUND)" in refused.stderr
    assert as_member(d, peers.alice, "search", "giraffe", "--all").returncode == 6

    piped = as_member(d, peers.alice, "search", "giraffe")
    assert b"[giraffe]" in piped.stdout and b"\x1b" not in piped.stdout

    everyone = search(d, None, "giraffe", "--all")
    assert {h["owner_uid"] for h in everyone} == {peers.alice.uid, peers.bob.uid}
    rows = [r for r in audit_rows(d, "search") if r["peer_uid"] == 0]
    assert [r["owner_uid"] for r in rows] == [-1]


def test_search_takes_quotes_as_words_and_refuses_bad_raw_syntax(
    d: DaemonProcess, peers: Peers
) -> None:
    chat(d, peers.alice, "q", 'she said "hello" (twice) AND left* NEAR the door')
    for words in (['"hello"'], ["(twice"], ["AND"], ["left*"], ['"', "door"], ["NEAR("]):
        result = as_member(d, peers.alice, "search", *words, "--json")
        assert result.returncode == 0, (words, result.stderr)
    assert len(search(d, peers.alice, '"hello"')) == 1
    for raw in ('"unterminated', "a AND", "(", "nosuchcolumn:x", "*", "NEAR(a b"):
        refused = as_member(d, peers.alice, "search", "--raw", raw)
        assert refused.returncode == 2, (raw, refused.stderr)
        assert b"(BAD_REQUEST)" in refused.stderr and b"INTERNAL" not in refused.stderr
    assert search(d, peers.alice, "--raw", "hello AND door")
    assert as_member(d, peers.alice, "search", " ").returncode == 2


def drop_search_index(conn: Connection) -> None:
    for trigger in ("insert", "delete", "update"):
        conn.execute(f"DROP TRIGGER messages_fts_{trigger}")
    conn.execute("DROP TABLE messages_fts")
    conn.execute("DELETE FROM schema_migrations WHERE name = '0007_search'")


def test_the_search_migration_indexes_messages_written_before_it(
    d: DaemonProcess, peers: Peers
) -> None:
    chat(d, peers.alice, "old", "an archived walrus")
    d.signal(15)
    assert d.wait_exit() == 0
    with_store(d.state_dir, drop_search_index)
    d.start()
    assert [h["session_name"] for h in search(d, peers.alice, "walrus")] == ["old"]
