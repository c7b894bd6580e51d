"""Data loss is never silent: one daemon per state dir, files replaced under the store,
an older database put back, a full disk.

All against the real daemon, its real SQLCipher file and a real tmpfs.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
from collections.abc import Callable
from pathlib import Path

import pytest

from agentctl.client import DaemonError
from agentd.audit.chain import Anchor
from agentd.store.anchor import move_anchor
from tests.conftest import DaemonProcess, wait_until
from tests.test_ops_health import FAST_CHECKS, fill, tiny_fs

__all__ = ["tiny_fs"]  # a fixture, used by name below

EX_CONFIG = 78


def chat(d: DaemonProcess, message: str) -> dict[str, object]:
    return d.call("chat", {"message": message})


def stop(d: DaemonProcess) -> None:
    d.signal(signal.SIGTERM)
    assert d.wait_exit() == 0


def start_fails(d: DaemonProcess, *args: str) -> tuple[int, list[str]]:
    """Start a daemon expected to exit at once: its status and the stderr lines it added."""
    before = len(d.stderr())
    d.start(*args, wait=False)
    status = d.wait_exit(20)
    return status, d.stderr()[before:].strip().splitlines()


def shutdown_head(d: DaemonProcess) -> Anchor:
    """The audit head in the latest shutdown line."""
    found = re.findall(r"audit head at shutdown: seq (\d+) hash ([0-9a-f]{64})", d.stderr())
    assert found, "no shutdown line"
    return Anchor(int(found[-1][0]), found[-1][1])


def audit_head(d: DaemonProcess) -> int:
    return int(d.call("audit_verify")["head"]["seq"])


# -- 1. one daemon per state directory ------------------------------------------------


def test_a_second_daemon_on_the_same_state_dir_exits_1_naming_the_holder(
    daemon: DaemonProcess, make_daemon: Callable[..., DaemonProcess], short_tmp: Path
) -> None:
    """1. A daemon runs. 2. A second one starts on the same state directory, listening on
    another socket (another XDG_RUNTIME_DIR). 3. It exits 1 with one line naming the
    first one's pid, leaves no socket behind, and the first one goes on answering.
    4. kill -9 (a crash, a watchdog abort) leaves no stale lock: a restart comes up."""
    other = short_tmp / "other"
    (other / "run").mkdir(parents=True, mode=0o700)
    second = make_daemon({"AGENTD_STATE_DIR": str(daemon.state_dir)}, base=other)
    assert second.socket != daemon.socket
    status, lines = start_fails(second)
    assert status == 1
    assert len(lines) == 1, lines
    assert daemon.process is not None
    assert f"pid {daemon.process.pid}" in lines[0] and str(daemon.state_dir) in lines[0]
    assert not Path(second.socket).exists()
    assert daemon.call("status")["state"] == "READY"
    daemon.signal(signal.SIGKILL)
    daemon.wait_exit()
    daemon.start()
    assert daemon.call("status")["state"] == "READY"


# -- 2. files deleted or replaced under the store ----------------------------------------


def delete_wal(database: Path) -> None:
    database.with_name(database.name + "-wal").unlink()


def replace_database(database: Path) -> None:
    copy = database.with_name("copy.db")
    shutil.copyfile(database, copy)
    os.replace(copy, database)


@pytest.mark.parametrize("damage", [delete_wal, replace_database], ids=["wal", "database"])
def test_a_store_file_deleted_or_replaced_refuses_chat_and_goes_to_error(
    daemon: DaemonProcess, damage: Callable[[Path], None]
) -> None:
    """1. A chat is answered. 2. The WAL is deleted (or the database replaced) behind
    the daemon's back. 3. The next chat is refused with STORE_UNAVAILABLE (agentctl
    exit 1), the agent is in ERROR, and the log says so at CRITICAL."""
    chat(daemon, "before")
    damage(daemon.state_dir / "agentd.db")
    with pytest.raises(DaemonError) as refused:
        chat(daemon, "after")
    assert refused.value.code == "STORE_UNAVAILABLE"
    assert "while agentd runs" in refused.value.message
    status = daemon.call("status")
    assert status["state"] == "ERROR"
    assert status["components"]["store"]["status"] == "failed"
    result = daemon.agentctl("chat", "again")
    assert result.returncode == 1
    assert b"STORE_UNAVAILABLE" in result.stderr or b"while agentd runs" in result.stderr
    records = daemon.call("logs", {"level": "CRITICAL"})["records"]
    assert any("store lost" in str(record) for record in records), records


def test_the_health_probe_notices_a_deleted_wal_without_any_chat(
    make_daemon: Callable[..., DaemonProcess],
) -> None:
    d = make_daemon(FAST_CHECKS).start()
    delete_wal(d.state_dir / "agentd.db")
    wait_until(lambda: d.call("status")["state"] == "ERROR", 10, "ERROR from the probe")
    assert "deleted" in d.call("health")["components"]["store"]["reason"]


def test_a_missing_database_is_not_replaced_by_a_new_one_silently(
    daemon: DaemonProcess,
) -> None:
    """1. A daemon chats and stops. 2. Its database disappears. 3. Start-up exits 78
    with one line, rather than a new empty database and a new agent id. 4. Told
    explicitly (--accept-rollback), it starts afresh, and `audit verify` names the gap."""
    chat(daemon, "remember me")
    agent_id = daemon.call("status")["agent_id"]
    stop(daemon)
    (daemon.state_dir / "agentd.db").unlink()
    status, lines = start_fails(daemon)
    assert status == EX_CONFIG
    assert len(lines) == 1 and "missing" in lines[0] and "--accept-rollback" in lines[0]
    assert not (daemon.state_dir / "agentd.db").exists()
    daemon.start("--accept-rollback")
    assert daemon.call("status")["agent_id"] != agent_id
    assert daemon.agentctl("audit", "verify").returncode == 1


# -- 3. an older copy of the database put back --------------------------------------------


def test_an_older_database_put_back_is_refused_and_verify_names_the_gap(
    daemon: DaemonProcess,
) -> None:
    """1. Chat, stop, keep a copy of the database. 2. Start, chat more, stop. 3. Put the
    copy back: start-up exits 78 naming the rollback. 4. --accept-rollback starts it;
    `audit verify` exits 1 naming the missing seqs, and keeps doing so after a restart.
    5. Moving the anchor on purpose (what a restore from a backup does) clears it."""
    chat(daemon, "one")
    old_head = audit_head(daemon)
    stop(daemon)
    database = daemon.state_dir / "agentd.db"
    shutil.copyfile(database, daemon.base / "old.db")
    daemon.start()
    for n in range(3):
        chat(daemon, f"later {n}")
    new_head = audit_head(daemon)
    stop(daemon)
    assert new_head > old_head
    shutil.copyfile(daemon.base / "old.db", database)

    status, lines = start_fails(daemon)
    assert status == EX_CONFIG
    assert len(lines) == 1 and "rollback detected" in lines[0], lines
    assert "--accept-rollback" in lines[0]

    daemon.start("--accept-rollback")
    for _ in range(2):
        result = daemon.agentctl("audit", "verify")
        assert result.returncode == 1
        said = result.stdout.decode()
        lost_to = re.search(r"ends at audit seq (\d+), but rows up to seq (\d+)", said)
        assert "rolled back" in said and lost_to is not None, said
        assert int(lost_to[1]) == old_head + 1  # + the row of the audit_verify above
        assert int(lost_to[2]) > new_head
        assert daemon.call("audit_verify")["first_broken_seq"] == old_head + 2
        stop(daemon)
        daemon.start()  # accepted once: later starts go on, and still report it

    # 5. A deliberate restore moves the anchor on purpose: verify passes again.
    stop(daemon)
    move_anchor(daemon.state_dir, shutdown_head(daemon))
    daemon.start()
    assert daemon.agentctl("audit", "verify").returncode == 0


def test_the_anchor_file_is_private_and_matches_the_head_in_the_shutdown_line(
    daemon: DaemonProcess,
) -> None:
    chat(daemon, "hello")
    stop(daemon)
    anchor = daemon.state_dir / "agentd.anchor"
    assert anchor.stat().st_mode & 0o777 == 0o600
    recorded = json.loads(anchor.read_text())
    assert Anchor(recorded["seq"], recorded["hash"]) == shutdown_head(daemon)


# -- 4. a full disk -------------------------------------------------------------------------


def test_a_full_disk_answers_disk_full_and_chat_recovers_when_space_returns(
    make_daemon: Callable[..., DaemonProcess], tiny_fs: Path
) -> None:
    """1. The state dir is a tiny tmpfs; a chat is answered. 2. It fills up: chat is
    refused with DISK_FULL naming the cause (agentctl exit 1), not INTERNAL. 3. Space
    comes back: READY again, and chat is answered."""
    d = make_daemon({**FAST_CHECKS, "AGENTD_STATE_DIR": str(tiny_fs / "state")}).start()
    chat(d, "before")
    filler = fill(tiny_fs)
    with pytest.raises(DaemonError) as refused:
        chat(d, "while full " * 200)
    assert refused.value.code == "DISK_FULL"
    assert "the disk holding the database is full" in refused.value.message
    result = d.agentctl("chat", "still full " * 200)
    assert result.returncode == 1
    assert b"the disk holding the database is full" in result.stderr
    filler.unlink()
    wait_until(lambda: d.call("status")["state"] == "READY", 20, "recovery to READY")
    assert chat(d, "after")["answer"]
    stop(d)
