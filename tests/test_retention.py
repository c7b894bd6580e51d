"""Deleting a session forgets it: its text leaves the database file, an audit
tombstone stays, and the [retention] policy and `sessions prune` use the same path.

The proof of forgetting reads the file as an attacker holding the key would:
every page of the stopped daemon's database decrypted (SQLCipher 4 defaults:
AES-256-CBC, 4096-byte pages, a 16-byte IV and 64-byte HMAC reserved at each
page's end; a raw key is the AES key itself), free pages and freed cells
included, then searched for a phrase planted in the deleted session only.
"""

from __future__ import annotations

import json
import secrets
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import sqlcipher3
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from agentd.store.database import Connection
from tests.conftest import DaemonProcess, gemini_env, wait_until
from tests.fake_gemini import FakeGemini
from tests.peers import (
    Peers,
    as_member,
    needs_root,
    peers_fixture,  # noqa: F401 (the `peers` fixture)
    start_group_daemon,
    with_store,
)

PAGE_SIZE = 4096
RESERVE = 80  # IV (16) + HMAC-SHA512 (64)
SALT_SIZE = 16


def decrypted_pages(state_dir: Path) -> bytes:
    """Every page of the database file, decrypted with the daemon's key."""
    key = bytes.fromhex((state_dir / "db.key").read_text().strip())
    raw = (state_dir / "agentd.db").read_bytes()
    out = bytearray()
    for start in range(0, len(raw), PAGE_SIZE):
        page = raw[start : start + PAGE_SIZE]
        skip = SALT_SIZE if start == 0 else 0
        iv = page[PAGE_SIZE - RESERVE : PAGE_SIZE - RESERVE + 16]
        decryptor = Cipher(algorithms.AES(key), modes.CBC(iv)).decryptor()
        out += decryptor.update(page[skip : PAGE_SIZE - RESERVE]) + decryptor.finalize()
    # Page 1's header after the salt: page size 4096, then the reserve size at byte 20.
    assert out[0:2] == PAGE_SIZE.to_bytes(2, "big") and out[4] == RESERVE, "not decrypted"
    return bytes(out)


def exported_plaintext(state_dir: Path, target: Path) -> bytes:
    """sqlcipher_export of the database into a plaintext copy: its logical content."""
    key = (state_dir / "db.key").read_text().strip()
    conn = sqlcipher3.connect(str(state_dir / "agentd.db"))
    try:
        conn.execute(f"PRAGMA key = \"x'{key}'\"")
        conn.execute(f"ATTACH DATABASE '{target}' AS plain KEY ''")
        conn.execute("SELECT sqlcipher_export('plain')")
        conn.execute("DETACH DATABASE plain")
    finally:
        conn.close()
    return target.read_bytes()


def phrase() -> str:
    return f"planted-{secrets.token_hex(8)}"


def chat_in_new_session(d: DaemonProcess, name: str, text: str, pages: int = 1) -> None:
    # Filler spreads the text over cells and (pages > 1) overflow pages of their own.
    filler = f"{text} words to fill a page " * (200 * pages)
    prompt = f"{text} {filler} {text}".encode()
    result = d.agentctl("chat", "--new-session", "--name", name, input=prompt)
    assert result.returncode == 0, result.stderr


def stop(d: DaemonProcess) -> None:
    d.signal(signal.SIGTERM)
    assert d.wait_exit() == 0, d.stderr()


def tombstones(d: DaemonProcess) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = d.call("audit", {"command": "session_tombstone"})["rows"]
    return rows


def session_ids(d: DaemonProcess) -> set[str]:
    return {s["id"] for s in d.call("sessions", {"all": True})["sessions"]}


def test_a_deleted_sessions_text_is_in_no_decrypted_page(
    make_daemon: Callable[..., DaemonProcess], fake_gemini: FakeGemini, tmp_path: Path
) -> None:
    d = make_daemon(gemini_env(fake_gemini)).start()
    gone, kept = phrase(), phrase()
    chat_in_new_session(d, "doomed", gone, pages=8)
    chat_in_new_session(d, "kept", kept)
    assert d.agentctl("sessions", "delete", "doomed").returncode == 0
    stop(d)

    pages = decrypted_pages(d.state_dir)
    assert kept.encode() in pages  # the search would find it
    assert gone.encode() not in pages
    raw = (d.state_dir / "agentd.db").read_bytes()
    assert gone.encode() not in raw and kept.encode() not in raw
    plain = exported_plaintext(d.state_dir, tmp_path / "plain.db")
    assert kept.encode() in plain and gone.encode() not in plain
    # The freed pages went back to the filesystem, not onto the free list.
    assert with_store(d.state_dir, _freelist_count) == 0


def test_each_deletion_leaves_a_tombstone_and_the_chain_verifies(
    gemini_daemon: DaemonProcess,
) -> None:
    d = gemini_daemon
    chat_in_new_session(d, "doomed", phrase())
    doomed = d.call("session_use", {"session": "doomed"})["session"]["id"]
    assert d.agentctl("sessions", "delete", doomed).returncode == 0

    (row,) = tombstones(d)
    assert row["session_id"] == doomed and row["model"] == "reason=user messages=2"
    assert row["outcome"] == "ok" and row["owner_uid"] is not None
    verify = d.agentctl("audit", "verify")
    assert verify.returncode == 0, verify.stdout + verify.stderr


def test_prune_dry_run_deletes_nothing_then_prune_deletes(daemon: DaemonProcess) -> None:
    made = {daemon.call("session_new", {"name": n})["session"]["id"] for n in ("a", "b")}
    dry = daemon.agentctl("sessions", "prune", "--older-than", "0s", "--dry-run", "--json")
    assert dry.returncode == 0, dry.stderr
    assert made <= {s["id"] for s in json.loads(dry.stdout)["sessions"]}
    assert made <= session_ids(daemon)
    assert tombstones(daemon) == []

    done = daemon.agentctl("sessions", "prune", "--older-than", "0s")
    assert done.returncode == 0, done.stderr
    assert "deleted" in done.stdout.decode()
    assert not made & session_ids(daemon)
    assert {r["model"].split()[0] for r in tombstones(daemon)} == {"reason=user"}


def test_prune_keeps_sessions_used_more_recently(daemon: DaemonProcess) -> None:
    made = daemon.call("session_new", {"name": "recent"})["session"]["id"]
    result = daemon.agentctl("sessions", "prune", "--older-than", "30d", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["sessions"] == []
    assert made in session_ids(daemon)


def test_prune_refuses_an_age_that_is_no_age(daemon: DaemonProcess) -> None:
    result = daemon.agentctl("sessions", "prune", "--older-than", "soon")
    assert result.returncode == 2
    assert b"soon" in result.stderr


def test_the_schedule_keeps_each_users_newest_sessions(
    make_daemon: Callable[..., DaemonProcess],
) -> None:
    d = make_daemon(
        {
            "AGENTD_RETENTION__MAX_SESSIONS_PER_USER": "2",
            "AGENTD_RETENTION__INTERVAL_S": "0.2",
        }
    ).start()
    made = [d.call("session_new", {"name": n})["session"]["id"] for n in ("a", "b", "c", "d")]
    wait_until(
        lambda: set(made[:2]) <= {r["session_id"] for r in tombstones(d)}, 10, "two tombstones"
    )
    assert session_ids(d) == set(made[2:])
    reasons = {r["session_id"]: r["model"] for r in tombstones(d)}
    assert reasons[made[0]] == "reason=retention messages=0"
    assert made[1] in reasons


def test_the_schedule_deletes_sessions_past_the_maximum_age(
    make_daemon: Callable[..., DaemonProcess],
) -> None:
    d = make_daemon(
        {
            "AGENTD_RETENTION__MAX_AGE_DAYS": "0.00002",  # 1.7 s
            "AGENTD_RETENTION__INTERVAL_S": "0.2",
        }
    ).start()
    made = d.call("session_new", {"name": "old"})["session"]["id"]
    wait_until(
        lambda: made in {r["session_id"] for r in tombstones(d)}, 10, "the old session's tombstone"
    )
    assert made not in session_ids(d)


def _freelist_count(conn: Connection) -> int:
    count: int = conn.execute("PRAGMA freelist_count").fetchone()[0]
    return count


def _set_auto_vacuum_none(conn: Connection) -> None:
    conn.execute("PRAGMA auto_vacuum = NONE")
    conn.execute("VACUUM")


def _auto_vacuum(conn: Connection) -> int:
    mode: int = conn.execute("PRAGMA auto_vacuum").fetchone()[0]
    return mode


def test_an_existing_database_is_switched_to_incremental_vacuum(daemon: DaemonProcess) -> None:
    stop(daemon)
    with_store(daemon.state_dir, _set_auto_vacuum_none)  # as a database made before
    assert with_store(daemon.state_dir, _auto_vacuum) == 0
    daemon.start()
    stop(daemon)
    assert with_store(daemon.state_dir, _auto_vacuum) == 2  # INCREMENTAL


@needs_root
def test_a_user_prunes_only_their_own_sessions(
    make_daemon: Callable[..., DaemonProcess], peers: Peers
) -> None:
    d = start_group_daemon(make_daemon(), peers)
    ids = {}
    for member in (peers.alice, peers.bob):
        made = as_member(d, member, "sessions", "new", f"{member.name}-s", "--json")
        assert made.returncode == 0, made.stderr
        ids[member.uid] = json.loads(made.stdout)["session"]["id"]

    refused = as_member(d, peers.alice, "sessions", "prune", "--older-than", "0s", "--all")
    assert refused.returncode == 6, refused.stderr  # FORBIDDEN
    result = as_member(d, peers.alice, "sessions", "prune", "--older-than", "0s", "--json")
    assert result.returncode == 0, result.stderr
    pruned = json.loads(result.stdout)["sessions"]
    assert [s["id"] for s in pruned] == [ids[peers.alice.uid]]
    assert ids[peers.bob.uid] in session_ids(d)
    (row,) = tombstones(d)
    assert row["peer_uid"] == peers.alice.uid and row["owner_uid"] == peers.alice.uid


@needs_root
def test_an_admin_prunes_one_users_sessions(
    make_daemon: Callable[..., DaemonProcess], peers: Peers
) -> None:
    d = start_group_daemon(make_daemon(), peers)
    made = as_member(d, peers.bob, "sessions", "new", "bob-s", "--json")
    bobs = json.loads(made.stdout)["session"]["id"]
    mine = d.call("session_new", {"name": "admin-s"})["session"]["id"]
    result = d.agentctl("sessions", "prune", "--older-than", "0s", "--user", str(peers.bob.uid))
    assert result.returncode == 0, result.stderr
    assert bobs not in session_ids(d) and mine in session_ids(d)
