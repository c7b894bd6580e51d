"""Backups, restore and key rotation, end to end: the real daemon, `agentctl backup` and
`agentd restore`/`agentd rekey` as real processes, real SQLCipher files, a real tmpfs.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlcipher3

from tests.conftest import DaemonProcess
from tests.test_ops_health import fill, tiny_fs

__all__ = ["tiny_fs"]  # a fixture, used by name below

KEY_RE = re.compile(r"[0-9a-f]{64}")


def chat(d: DaemonProcess, message: str) -> None:
    d.call("chat", {"message": message})  # degraded (no Gemini key), but both turns stored


def backup(d: DaemonProcess, *args: str) -> subprocess.CompletedProcess[bytes]:
    return d.agentctl("backup", *args, timeout=120)


def backup_json(d: DaemonProcess, *args: str) -> dict[str, Any]:
    result = backup(d, "--json", *args)
    assert result.returncode == 0, result.stderr
    return dict(json.loads(result.stdout))


def agentd(d: DaemonProcess, *args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "agentd", *args],
        env=d.env,
        capture_output=True,
        timeout=120,
        check=False,
    )


def stop(d: DaemonProcess) -> None:
    d.signal(signal.SIGTERM)
    assert d.wait_exit() == 0


def write_key(path: Path, key: str | None = None) -> str:
    key = key or os.urandom(32).hex()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(key + "\n")
    return key


def opens_with(path: Path, key: str) -> bool:
    conn = sqlcipher3.connect(str(path))
    try:
        conn.execute("PRAGMA cipher_log_level = NONE")
        conn.execute(f"PRAGMA key = \"x'{key}'\"")
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except sqlcipher3.DatabaseError:
        return False
    finally:
        conn.close()
    return True


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def history_texts(d: DaemonProcess) -> list[str]:
    return [m["content"] for m in d.call("history", {"limit": 1000})["messages"]]


@pytest.fixture
def private_dir(short_tmp: Path) -> Path:
    path = short_tmp / "backups"
    path.mkdir(mode=0o700)
    return path


UNLIMITED_CHAT = {
    "AGENTD_LIMITS__CHAT_RATE": "10000",
    "AGENTD_LIMITS__CHAT_BURST": "10000",
    "AGENTD_LIMITS__SESSION_RATE": "10000",
    "AGENTD_LIMITS__SESSION_BURST": "10000",
}


@pytest.fixture
def chatted(make_daemon: Callable[..., DaemonProcess]) -> DaemonProcess:
    d = make_daemon(UNLIMITED_CHAT).start()
    for n in range(3):
        chat(d, f"before backup {n}")
    return d


# -- backup ---------------------------------------------------------------------------


def test_a_backup_while_chats_go_on_is_checked_and_reports_its_contents(
    chatted: DaemonProcess,
) -> None:
    """1. Clients chat throughout. 2. `agentctl backup` (no PATH) writes a timestamped
    file in <state dir>/backups, 0600, alone (no temporary file or journal left). 3. It
    reports the path, size, row counts and audit head, which are what the file holds."""
    stop_chatting = threading.Event()
    failures: list[Exception] = []

    def keep_chatting() -> None:
        while not stop_chatting.is_set():
            try:
                chat(chatted, "during backup")
            except Exception as exc:  # reported by the assertion below
                failures.append(exc)

    chatter = threading.Thread(target=keep_chatting)
    chatter.start()
    try:
        report = backup_json(chatted)
    finally:
        stop_chatting.set()
        chatter.join(30)

    assert failures == []
    path = Path(report["path"])
    assert path.parent == chatted.state_dir / "backups"
    assert re.fullmatch(r"agentd-\d{8}T\d{6}\.\d{3}Z\.db", path.name)
    assert os.listdir(path.parent) == [path.name]
    assert path.stat().st_mode & 0o777 == 0o600
    assert report["size_bytes"] == path.stat().st_size
    assert report["rows"]["sessions"] == 1 and report["rows"]["messages"] >= 6
    assert KEY_RE.fullmatch(report["audit_head"]["hash"]) and report["audit_head"]["seq"] >= 3
    key = (chatted.state_dir / "db.key").read_text().strip()
    conn = sqlcipher3.connect(str(path))
    conn.execute(f"PRAGMA key = \"x'{key}'\"")
    assert conn.execute("SELECT count(*) FROM messages").fetchone()[0] == report["rows"]["messages"]
    assert conn.execute("SELECT max(seq) FROM audit").fetchone()[0] == report["audit_head"]["seq"]
    conn.close()


def test_the_human_output_names_path_size_rows_and_audit_head(
    chatted: DaemonProcess, private_dir: Path
) -> None:
    result = backup(chatted, str(private_dir / "one.db"))

    assert result.returncode == 0, result.stderr
    out = result.stdout.decode()
    assert f"backup written: {private_dir / 'one.db'}" in out
    assert re.search(r"rows\s+1 sessions, 6 messages, \d+ audit rows", out)
    assert re.search(r"audit head\s+seq \d+ hash [0-9a-f]{64}", out)


def test_a_backup_into_a_directory_others_can_write_is_refused(
    chatted: DaemonProcess, short_tmp: Path
) -> None:
    shared = short_tmp / "shared"
    shared.mkdir()
    shared.chmod(0o777)

    result = backup(chatted, str(shared / "b.db"))

    assert result.returncode == 2
    assert b"is writable by group or others (mode 0777): refusing to write there" in result.stderr
    assert os.listdir(shared) == []


def test_an_existing_file_is_kept_unless_forced(chatted: DaemonProcess, private_dir: Path) -> None:
    target = private_dir / "b.db"
    target.write_bytes(b"precious")

    refused = backup(chatted, str(target))
    assert refused.returncode == 2
    assert b"exists: give --force to replace it" in refused.stderr
    assert target.read_bytes() == b"precious"

    forced = backup(chatted, "--force", str(target))
    assert forced.returncode == 0, forced.stderr
    assert opens_with(target, (chatted.state_dir / "db.key").read_text().strip())
    assert os.listdir(private_dir) == ["b.db"]


def test_keep_prunes_the_oldest_timestamped_backups_of_the_directory(
    chatted: DaemonProcess, private_dir: Path
) -> None:
    other = private_dir / "not-ours.db"
    other.write_bytes(b"")
    made = [backup_json(chatted, "--keep", "2", str(private_dir))["path"] for _ in range(3)]

    left = sorted(p for p in os.listdir(private_dir) if p != "not-ours.db")
    assert left == sorted(Path(p).name for p in made[1:])
    assert other.exists()


def test_a_backup_with_another_key_opens_only_with_that_key(
    chatted: DaemonProcess, private_dir: Path, short_tmp: Path
) -> None:
    key = write_key(short_tmp / "backup.key")

    report = backup_json(chatted, "--key-file", str(short_tmp / "backup.key"), str(private_dir))

    assert report["key"] == "given"
    assert opens_with(Path(report["path"]), key)
    assert not opens_with(Path(report["path"]), (chatted.state_dir / "db.key").read_text().strip())
    assert key not in (chatted.state_dir / "agentd.log").read_text()


def test_a_full_disk_during_a_backup_removes_the_partial_file_and_spares_the_database(
    chatted: DaemonProcess, tiny_fs: Path
) -> None:
    """1. The backup directory is a full tmpfs. 2. The backup fails with DISK_FULL (exit 1),
    naming the cause. 3. Nothing is left in the directory; the database still answers and
    its audit chain verifies."""
    directory = tiny_fs / "backups"
    directory.mkdir(mode=0o700)
    filler = fill(tiny_fs)

    result = backup(chatted, str(directory))

    assert result.returncode == 1
    assert b"is full; the partial file was removed and the database is untouched" in result.stderr
    assert b"DISK_FULL" in result.stderr
    assert os.listdir(directory) == []
    chat(chatted, "after the failed backup")
    assert chatted.call("audit_verify")["ok"]
    filler.unlink()
    assert backup(chatted, str(directory)).returncode == 0


# -- restore ----------------------------------------------------------------------------


def test_restore_puts_the_backup_back_keeps_the_old_database_and_moves_the_anchor(
    chatted: DaemonProcess, private_dir: Path
) -> None:
    """1. Backup after 3 exchanges; 2 more exchanges; stop. 2. `agentd restore` says what
    it restored and where the replaced database went. 3. The daemon starts without
    --accept-rollback, holds the 3 exchanges only, and `audit verify` passes."""
    report = backup_json(chatted, str(private_dir / "b.db"))
    chat(chatted, "after backup 1")
    chat(chatted, "after backup 2")
    stop(chatted)

    result = agentd(chatted, "restore", str(private_dir / "b.db"))

    assert result.returncode == 0, result.stderr
    out = result.stdout.decode()
    assert f"restored {private_dir / 'b.db'} into {chatted.state_dir / 'agentd.db'}" in out
    assert f"1 sessions, {report['rows']['messages']} messages" in out
    assert f"seq {report['audit_head']['seq']} hash {report['audit_head']['hash']}" in out
    aside = re.search(r"kept as (\S+)", out)
    assert aside and Path(aside.group(1)).is_file()
    chatted.start()
    texts = history_texts(chatted)
    assert "before backup 2" in texts and "after backup 1" not in texts
    verdict = chatted.call("audit_verify")
    assert verdict["ok"], verdict


def test_restore_refuses_while_the_daemon_runs(chatted: DaemonProcess, private_dir: Path) -> None:
    backup_json(chatted, str(private_dir / "b.db"))
    before = digest(chatted.state_dir / "agentd.db")

    result = agentd(chatted, "restore", str(private_dir / "b.db"))

    assert result.returncode == 1
    assert b"restore needs agentd stopped" in result.stderr
    assert digest(chatted.state_dir / "agentd.db") == before
    assert chatted.call("status")["state"] == "READY"


@pytest.fixture
def stopped_with_backup(chatted: DaemonProcess, private_dir: Path) -> Iterator[DaemonProcess]:
    backup_json(chatted, str(private_dir / "b.db"))
    stop(chatted)
    yield chatted


def damage(kind: str, path: Path) -> None:
    data = path.read_bytes()
    if kind == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif kind == "tampered":
        middle = len(data) // 2
        path.write_bytes(
            data[:middle] + bytes(b ^ 0xFF for b in data[middle : middle + 8]) + data[middle + 8 :]
        )


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("truncated", rb"is damaged|cannot be read"),
        ("tampered", rb"is damaged: 1 page\(s\) fail their HMAC"),
    ],
)
def test_restore_refuses_a_damaged_backup_and_changes_nothing(
    stopped_with_backup: DaemonProcess, private_dir: Path, kind: str, message: bytes
) -> None:
    d = stopped_with_backup
    damage(kind, private_dir / "b.db")
    state_before = sorted(os.listdir(d.state_dir))
    db_before = digest(d.state_dir / "agentd.db")
    anchor_before = (d.state_dir / "agentd.anchor").read_bytes()

    result = agentd(d, "restore", str(private_dir / "b.db"))

    assert result.returncode == 1
    assert re.search(message, result.stderr), result.stderr
    assert sorted(os.listdir(d.state_dir)) == state_before
    assert digest(d.state_dir / "agentd.db") == db_before
    assert (d.state_dir / "agentd.anchor").read_bytes() == anchor_before


def test_restore_refuses_a_backup_made_with_another_key_unless_given_that_key(
    chatted: DaemonProcess, private_dir: Path, short_tmp: Path
) -> None:
    write_key(short_tmp / "backup.key")
    made = backup_json(chatted, "--key-file", str(short_tmp / "backup.key"), str(private_dir))
    stop(chatted)
    db_before = digest(chatted.state_dir / "agentd.db")

    refused = agentd(chatted, "restore", made["path"])
    assert refused.returncode == 1
    assert b"it was made with another key" in refused.stderr
    assert digest(chatted.state_dir / "agentd.db") == db_before

    restored = agentd(chatted, "restore", "--key-file", str(short_tmp / "backup.key"), made["path"])
    assert restored.returncode == 0, restored.stderr
    chatted.start()  # with its own key: the restored copy was re-encrypted with it
    assert "before backup 2" in history_texts(chatted)


# -- rekey ---------------------------------------------------------------------------------


def test_rekey_reencrypts_so_only_the_new_key_opens_what_is_left(
    make_daemon: Callable[..., DaemonProcess], short_tmp: Path
) -> None:
    """1. A daemon with an operator's key file chats, then stops. 2. `agentd rekey` with a
    new key file. 3. The old key opens nothing in the state directory, no WAL or SHM is
    left; the daemon started with the new key holds the same conversation and audit."""
    old = write_key(short_tmp / "old.key")
    d = make_daemon({"AGENTD_DB_KEY_FILE": str(short_tmp / "old.key")}).start()
    chat(d, "kept across the rekey")
    head = d.call("audit_verify")["head"]
    stop(d)
    new = write_key(short_tmp / "new.key")

    result = agentd(d, "rekey", "--new-key-file", str(short_tmp / "new.key"))

    assert result.returncode == 0, result.stderr
    assert b"now install the new key where agentd reads it" in result.stdout
    assert not [n for n in os.listdir(d.state_dir) if n.endswith(("-wal", "-shm", ".tmp"))]
    assert not opens_with(d.state_dir / "agentd.db", old)
    assert opens_with(d.state_dir / "agentd.db", new)
    d.env["AGENTD_DB_KEY_FILE"] = str(short_tmp / "new.key")
    d.start()
    assert "kept across the rekey" in history_texts(d)
    verdict = d.call("audit_verify")
    assert verdict["ok"] and verdict["head"]["seq"] > head["seq"]


def test_rekey_replaces_the_key_the_daemon_generated(
    daemon: DaemonProcess, short_tmp: Path
) -> None:
    chat(daemon, "hello")
    stop(daemon)
    new = write_key(short_tmp / "new.key")

    result = agentd(daemon, "rekey", "--new-key-file", str(short_tmp / "new.key"))

    assert result.returncode == 0, result.stderr
    assert (daemon.state_dir / "db.key").read_text().strip() == new
    daemon.start()
    assert "hello" in history_texts(daemon)


def test_rekey_refuses_while_the_daemon_runs(daemon: DaemonProcess, short_tmp: Path) -> None:
    write_key(short_tmp / "new.key")

    result = agentd(daemon, "rekey", "--new-key-file", str(short_tmp / "new.key"))

    assert result.returncode == 1
    assert b"rekey needs agentd stopped" in result.stderr
    assert daemon.call("status")["state"] == "READY"


def test_agentd_offers_restore_and_rekey_beside_running_the_daemon(
    daemon: DaemonProcess,
) -> None:
    """The commands are listed, and `agentd` alone and `--check-config` keep working."""
    assert daemon.call("status")["state"] == "READY"  # started as `agentd`, no command
    helped = agentd(daemon, "--help")
    assert re.search(rb"restore\s+Put a backup in place", helped.stdout)
    assert re.search(rb"rekey\s+Re-encrypt the database", helped.stdout)
    checked = agentd(daemon, "--check-config")
    assert checked.returncode == 0 and b"# state dir:" in checked.stdout


def test_restore_refuses_a_backup_whose_audit_chain_was_edited_with_the_key(
    stopped_with_backup: DaemonProcess, private_dir: Path
) -> None:
    """Pages re-encrypted by someone holding the key pass SQLCipher's checks; the chain
    does not: the edited row is named and nothing changes."""
    d = stopped_with_backup
    key = (d.state_dir / "db.key").read_text().strip()
    conn = sqlcipher3.connect(str(private_dir / "b.db"), isolation_level=None)
    conn.execute(f"PRAGMA key = \"x'{key}'\"")
    conn.execute("UPDATE audit SET command = 'status' WHERE seq = 2")
    conn.close()
    db_before = digest(d.state_dir / "agentd.db")

    result = agentd(d, "restore", str(private_dir / "b.db"))

    assert result.returncode == 1
    assert b"the audit chain is broken at seq 2 (content edited" in result.stderr
    assert digest(d.state_dir / "agentd.db") == db_before
