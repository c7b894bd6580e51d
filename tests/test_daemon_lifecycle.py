"""The daemon as a real process: start, status, stop, signals, restarts, refusals."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from agentd.protocol import default_socket_path
from tests.conftest import DaemonProcess, clean_environ, run_agentctl, wait_until


def test_start_status_stop_round_trip_through_agentctl(
    make_daemon: Callable[..., DaemonProcess],
) -> None:
    """1. status before start exits 3 naming the socket. 2. start launches and reports.
    3. status exits 0 with the fields. 4. stop waits until gone. 5. status exits 3 again."""
    d = make_daemon()
    before = d.agentctl("status")
    assert before.returncode == 3
    assert d.socket in before.stderr.decode()
    assert before.stderr.decode().count("\n") == 1

    started = d.agentctl("start")
    assert started.returncode == 0, started.stderr
    out = started.stdout.decode()
    for word in ("agent", "session", "READY", "pid", "version"):
        assert word in out

    status = d.agentctl("status", "--json")
    assert status.returncode == 0, status.stderr
    fields = json.loads(status.stdout)
    assert fields["state"] == "READY"
    assert fields["healthy"] is True
    assert fields["socket"] == d.socket
    assert fields["store"]["size_bytes"] > 0
    assert {"store", "encryption"} <= set(fields["components"])

    again = d.agentctl("start", "--json")
    assert json.loads(again.stdout)["already_running"] is True
    assert json.loads(again.stdout)["pid"] == fields["pid"]

    stopped = d.agentctl("stop")
    assert stopped.returncode == 0, stopped.stderr
    assert not os.path.exists(d.socket)
    assert process_gone(fields["pid"])
    after = d.agentctl("status")
    assert after.returncode == 3
    assert "not running" in after.stderr.decode()


def process_gone(pid: int) -> bool:
    """Gone, or a zombie nobody reaped yet (agentctl start's child is reparented)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


def test_sigterm_exits_zero_and_removes_the_socket(daemon: DaemonProcess) -> None:
    daemon.signal(signal.SIGTERM)
    assert daemon.wait_exit() == 0
    assert not os.path.exists(daemon.socket)
    assert "STOPPED" in daemon.stderr()


def test_restart_restores_session_and_lifetime_counters(
    make_daemon: Callable[..., DaemonProcess],
) -> None:
    d = make_daemon().start()
    first = d.call("status")
    d.signal(signal.SIGTERM)
    assert d.wait_exit() == 0
    d.start()
    second = d.call("status")
    assert second["session_id"] == first["session_id"]
    assert second["agent_id"] == first["agent_id"]
    assert second["lifetime"]["starts"] == first["lifetime"]["starts"] + 1
    assert second["lifetime"]["requests_total"] > first["lifetime"]["requests_total"]


def test_second_daemon_refuses_to_steal_a_live_socket(
    daemon: DaemonProcess, short_tmp: Path
) -> None:
    env = {**daemon.env, "AGENTD_STATE_DIR": str(short_tmp / "other-state")}
    second = subprocess.run(
        [sys.executable, "-m", "agentd"], env=env, capture_output=True, timeout=30, check=False
    )
    assert second.returncode == 1
    assert "already running" in second.stderr.decode()
    assert daemon.call("ping")["pong"] is True


def test_stale_socket_of_a_killed_daemon_is_replaced(
    make_daemon: Callable[..., DaemonProcess],
) -> None:
    d = make_daemon().start()
    d.kill()
    assert os.path.exists(d.socket)  # SIGKILL leaves the file behind
    d.start()
    assert d.call("ping")["pong"] is True


def test_socket_is_private_to_its_owner(daemon: DaemonProcess) -> None:
    assert os.stat(daemon.socket).st_mode & 0o777 == 0o600
    assert os.stat(daemon.state_dir / "agentd.db").st_mode & 0o777 == 0o600
    assert os.stat(daemon.state_dir / "db.key").st_mode & 0o777 == 0o600


def test_wrong_db_key_exits_78_with_one_clean_line(
    make_daemon: Callable[..., DaemonProcess], short_tmp: Path
) -> None:
    d = make_daemon().start()
    d.signal(signal.SIGTERM)
    d.wait_exit()
    wrong = short_tmp / "wrong.key"
    wrong.write_text("ab" * 32 + "\n")
    wrong.chmod(0o600)  # a key file others can read adds a warning line (tests/test_security_disk.py)
    env = {**d.env, "AGENTD_DB_KEY_FILE": str(wrong)}
    result = subprocess.run(
        [sys.executable, "-m", "agentd"], env=env, capture_output=True, timeout=30, check=False
    )
    assert result.returncode == 78
    lines = result.stderr.decode().strip().splitlines()
    assert len(lines) == 1, lines
    assert "key does not open" in lines[0]
    assert "ab" * 32 not in lines[0]


def test_malformed_db_key_file_exits_78(
    make_daemon: Callable[..., DaemonProcess], short_tmp: Path
) -> None:
    bad = short_tmp / "bad.key"
    bad.write_text("not-hex")
    d = make_daemon({"AGENTD_DB_KEY_FILE": str(bad)})
    result = subprocess.run(
        [sys.executable, "-m", "agentd"], env=d.env, capture_output=True, timeout=30, check=False
    )
    assert result.returncode == 78
    assert "64 hex characters" in result.stderr.decode()


def test_production_profile_requires_a_db_key(make_daemon: Callable[..., DaemonProcess]) -> None:
    d = make_daemon({"AGENTD_ENV": "production"})
    result = subprocess.run(
        [sys.executable, "-m", "agentd"], env=d.env, capture_output=True, timeout=30, check=False
    )
    assert result.returncode == 78
    assert "db-key" in result.stderr.decode()
    assert not (d.state_dir / "agentd.db").exists()


def test_database_is_not_readable_as_plain_sqlite(daemon: DaemonProcess) -> None:
    db = daemon.state_dir / "agentd.db"
    daemon.signal(signal.SIGTERM)
    daemon.wait_exit()
    assert not db.read_bytes().startswith(b"SQLite format 3")
    conn = sqlite3.connect(db)
    try:
        try:
            conn.execute("SELECT * FROM sqlite_master").fetchall()
        except sqlite3.DatabaseError as exc:
            assert "not a database" in str(exc)
        else:
            raise AssertionError("stdlib sqlite3 read the encrypted database")
    finally:
        conn.close()


def test_plaintext_database_in_place_is_refused(make_daemon: Callable[..., DaemonProcess]) -> None:
    d = make_daemon()
    d.state_dir.mkdir(parents=True)
    conn = sqlite3.connect(d.state_dir / "agentd.db")
    conn.execute("CREATE TABLE t (x)")
    conn.commit()
    conn.close()
    result = subprocess.run(
        [sys.executable, "-m", "agentd"], env=d.env, capture_output=True, timeout=30, check=False
    )
    assert result.returncode == 78
    assert "plaintext" in result.stderr.decode()


def test_default_socket_path_is_shared_by_daemon_and_client(short_tmp: Path) -> None:
    env = clean_environ(short_tmp)
    del env["AGENTD_SOCKET"]
    assert default_socket_path(env) == str(short_tmp / "run" / "agentd" / "agentd.sock")
    result = run_agentctl(env, "start")
    try:
        assert result.returncode == 0, result.stderr
        wait_until(lambda: Path(default_socket_path(env)).exists(), 5, "the default socket")
    finally:
        run_agentctl(env, "stop")


def test_open_log_follow_does_not_hold_up_a_graceful_stop(
    make_daemon: Callable[..., DaemonProcess],
) -> None:
    d = make_daemon({"AGENTD_DAEMON__SHUTDOWN_GRACE_S": "60"}).start()
    follower = subprocess.Popen(
        [sys.executable, "-m", "agentctl", "logs", "--follow", "-n", "1"],
        env=d.env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert follower.stdout is not None
        assert follower.stdout.readline()  # streaming
        d.signal(signal.SIGTERM)
        assert d.wait_exit(timeout=15) == 0  # far below the 60 s grace
        follower.wait(15)
    finally:
        follower.kill()
        follower.wait()
