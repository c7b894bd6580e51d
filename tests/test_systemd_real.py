"""agentd under a real systemd (PID 1 in throw-away namespaces, see systemd_lab.py).

Each test boots its own lab and installs agentd with systemd/install.sh, so the
units, sysusers/tmpfiles entries, credentials and hardening are the shipped ones.
The lab has no network: the daemon has no Gemini key, except in the drain test,
where tests/fake_gemini.py answers inside the lab.
"""

from __future__ import annotations

import json
import re
import stat
from typing import Any

import pytest

from tests.systemd_lab import (  # noqa: F401  (fixtures)
    REPO,
    SystemdLab,
    agentd_lab_fixture,
    systemd_lab_fixture,
)

pytestmark = pytest.mark.systemd

SERVICE = "agentd.service"
SOCKET_UNIT = "agentd.socket"
SOCKET = "/run/agentd/agentd.sock"
INSTALL_SH = str(REPO / "systemd" / "install.sh")
EX_CONFIG = 78
EXIT_CREDENTIALS = 243  # systemd: a LoadCredential= source could not be read
NOT_RUNNING = 3
PERMISSION = 6


def status(lab: SystemdLab, socket: str = SOCKET, *, user: str | None = None) -> tuple[int, str]:
    result = lab.agentctl("--socket", socket, "status", user=user)
    return result.returncode, result.stdout + result.stderr


def status_json(lab: SystemdLab, socket: str = SOCKET) -> dict[str, Any]:
    result = lab.agentctl("--socket", socket, "--json", "status")
    assert result.returncode == 0, result.stdout + result.stderr
    reply: dict[str, Any] = json.loads(result.stdout)
    return reply


def main_pid(lab: SystemdLab, unit: str = SERVICE) -> int:
    return int(lab.show(unit, "MainPID"))


def start(lab: SystemdLab, unit: str = SERVICE) -> int:
    """systemctl start (returns once READY=1 arrived for Type=notify); the main pid."""
    result = lab.systemctl("start", unit)
    assert result.returncode == 0, result.stderr + lab.journal_text("-u", unit)
    return main_pid(lab, unit)


def wait_restarted(lab: SystemdLab, old_pid: int, restarts: int, timeout: float = 15.0) -> int:
    """Wait until Restart= brought the service back READY with a new pid; that pid."""
    lab.wait_for_property(SERVICE, "NRestarts", str(restarts), timeout)

    def serving_again() -> int:
        pid = main_pid(lab)
        ready = lab.show(SERVICE, "ActiveState") == "active" and pid not in (0, old_pid)
        return pid if ready else 0

    return lab.wait_for(serving_again, timeout, what="the restarted daemon")


def assert_failed_for_good(lab: SystemdLab, exit_status: int) -> None:
    """Failed with exit_status and no restart scheduled: 'failed', not 'auto-restart'."""
    props = {
        p: lab.show(SERVICE, p)
        for p in ("ActiveState", "SubState", "Result", "ExecMainStatus", "NRestarts")
    }
    assert props == {
        "ActiveState": "failed",
        "SubState": "failed",
        "Result": "exit-code",
        "ExecMainStatus": str(exit_status),
        "NRestarts": "0",
    }, lab.journal_text("-u", SERVICE)


def add_users(lab: SystemdLab, *, member: str, outsider: str) -> None:
    for user in (member, outsider):
        lab.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", user],
            check=True,
        )
    lab.run(["usermod", "-aG", "agentd", member], check=True)


# ---------------------------------------------------------------- socket activation


def test_first_client_connection_starts_the_daemon(agentd_lab: SystemdLab) -> None:
    """1. agentd.socket listens on /run/agentd/agentd.sock (0660 root:agentd), the
    service is not running. 2. `agentctl status` starts it and gets READY (exit 0).
    """
    lab = agentd_lab
    lab.systemctl("start", SOCKET_UNIT, check=True)
    sock = lab.path(SOCKET).stat()

    assert lab.show(SOCKET_UNIT, "ActiveState") == "active"
    assert lab.show(SERVICE, "ActiveState") == "inactive"
    assert stat.S_ISSOCK(sock.st_mode) and stat.S_IMODE(sock.st_mode) == 0o660
    assert lab.run(["stat", "-c", "%G", SOCKET]).stdout.strip() == "agentd"

    code, out = status(lab)

    assert code == 0, out
    assert lab.show(SERVICE, "ActiveState") == "active"
    assert main_pid(lab) > 0
    lab.wait_for_journal(
        SERVICE, lambda e: "adopted the socket" in e.get("MESSAGE", ""), what="socket adoption"
    )


def test_group_members_may_use_the_socket_and_others_may_not(agentd_lab: SystemdLab) -> None:
    lab = agentd_lab
    add_users(lab, member="alice", outsider="mallory")
    lab.systemctl("start", SOCKET_UNIT, check=True)

    assert status(lab, user="alice")[0] == 0
    assert status(lab, user="mallory")[0] == PERMISSION


def test_agentctl_finds_the_system_socket_without_flags(agentd_lab: SystemdLab) -> None:
    """An operator's `agentctl status` (no --socket, no AGENTD_SOCKET, no
    XDG_RUNTIME_DIR, as over `sudo` or ssh) reaches the system service.
    """
    lab = agentd_lab
    lab.systemctl("start", SOCKET_UNIT, check=True)

    result = lab.agentctl("status")

    assert result.returncode == 0, result.stdout + result.stderr


# ---------------------------------------------------------------- start, stop, status


def test_start_returns_when_ready_and_shows_the_lifecycle_state(agentd_lab: SystemdLab) -> None:
    """Type=notify: `systemctl start` returns after READY=1; STATUS= carries the state."""
    lab = agentd_lab
    start(lab)

    assert lab.show(SERVICE, "ActiveState") == "active"
    assert lab.show(SERVICE, "StatusText").startswith("READY"), lab.show(SERVICE, "StatusText")
    assert lab.show(SOCKET_UNIT, "ActiveState") == "active"
    shown = lab.systemctl("status", SERVICE)
    assert shown.returncode == 0
    assert 'Status: "READY' in shown.stdout


def test_daemon_runs_as_agentd_with_its_state_dir_and_credentials(agentd_lab: SystemdLab) -> None:
    lab = agentd_lab
    pid = start(lab)

    assert lab.run(["stat", "-c", "%U", f"/proc/{pid}"]).stdout.strip() == "agentd"
    assert lab.run(["stat", "-c", "%a %U", "/var/lib/agentd"]).stdout.split() == ["700", "agentd"]
    assert status_json(lab)["store"]["path"] == "/var/lib/agentd/agentd.db"
    creds = lab.run(["ls", f"/run/credentials/{SERVICE}"]).stdout.split()
    assert creds == ["db-key", "gemini-api-key"]


def test_the_gemini_key_is_optional(agentd_lab: SystemdLab) -> None:
    """No /etc/agentd/gemini-api-key: the SetCredential= default (a newline) stands in,
    the daemon starts and is healthy, and says the key is missing.
    """
    lab = agentd_lab
    start(lab)

    assert lab.path(f"/run/credentials/{SERVICE}/gemini-api-key").read_text() == "\n"
    reply = status_json(lab)
    assert reply["healthy"] is True
    assert "key configured" not in reply["components"]["gemini"]["reason"]


def test_a_gemini_key_file_reaches_the_daemon_as_a_credential(agentd_lab: SystemdLab) -> None:
    lab = agentd_lab
    lab.write_file("/etc/agentd/gemini-api-key", "test-key-not-real\n", mode=0o600)
    start(lab)

    assert (
        lab.path(f"/run/credentials/{SERVICE}/gemini-api-key").read_text() == "test-key-not-real\n"
    )
    assert status_json(lab)["components"]["gemini"]["reason"].startswith("key configured")


@pytest.mark.parametrize("command", [["--json", "metrics"], ["logs"]])
def test_metrics_and_logs_work_inside_the_sandbox(
    agentd_lab: SystemdLab, command: list[str]
) -> None:
    """The hardening leaves no system-wide /proc files (ProcSubset=pid: no /proc/stat,
    /proc/meminfo, /proc/loadavg): what metrics and logs read must not need them.
    """
    lab = agentd_lab
    start(lab)

    result = lab.agentctl("--socket", SOCKET, *command)

    assert result.returncode == 0, result.stdout + result.stderr
    assert lab.journal("-u", SERVICE, "-p", "err") == []


def test_stop_exits_zero_and_the_socket_starts_it_again(agentd_lab: SystemdLab) -> None:
    """1. `systemctl stop agentd` exits 0; the daemon exited 0 (Result=success).
    2. The socket unit and its file outlive the service (RuntimeDirectoryPreserve=,
    the daemon does not unlink an adopted socket). 3. The next client restarts it.
    """
    lab = agentd_lab
    first = start(lab)

    assert lab.systemctl("stop", SERVICE).returncode == 0

    props = {
        p: lab.show(SERVICE, p) for p in ("ActiveState", "Result", "ExecMainCode", "ExecMainStatus")
    }
    assert props == {
        "ActiveState": "inactive",
        "Result": "success",
        "ExecMainCode": "1",
        "ExecMainStatus": "0",
    }
    assert lab.show(SOCKET_UNIT, "ActiveState") == "active"
    assert lab.path(SOCKET).is_socket()
    code, out = status(lab)
    assert code == 0, out
    assert main_pid(lab) not in (0, first)


def test_stop_lets_an_in_flight_chat_finish_first(agentd_lab: SystemdLab) -> None:
    """1. A fake Gemini in the lab answers after 2 s; the daemon has a key for it.
    2. `agentctl chat` is in flight (StatusText PROCESSING) when `systemctl stop` comes.
    3. The chat gets its answer, then the daemon exits 0.
    """
    lab = agentd_lab
    url = lab.start_fake_gemini(delay_s=2.0)
    lab.write_dropin(SERVICE, f"[Service]\nEnvironment=AGENTD_GEMINI_BASE_URL={url}\n")
    lab.write_file("/etc/agentd/gemini-api-key", "test-key-not-real\n", mode=0o600)
    start(lab)
    chat = lab.popen(["/usr/local/bin/agentctl", "--socket", SOCKET, "chat", "hello"])
    lab.wait_for(
        lambda: lab.show(SERVICE, "StatusText").startswith("PROCESSING"), 10, what="PROCESSING"
    )

    stopped = lab.systemctl("stop", SERVICE)
    out, err = chat.communicate(timeout=30)

    assert (chat.returncode, out) == (0, "This is a fake Gemini answer.\n"), err
    assert stopped.returncode == 0
    props = {p: lab.show(SERVICE, p) for p in ("Result", "ExecMainStatus")}
    assert props == {"Result": "success", "ExecMainStatus": "0"}


def test_status_exits_3_when_the_service_and_socket_are_stopped(agentd_lab: SystemdLab) -> None:
    lab = agentd_lab
    start(lab)
    lab.systemctl("stop", SOCKET_UNIT, check=True)

    assert lab.show(SERVICE, "ActiveState") == "inactive"
    assert status(lab)[0] == NOT_RUNNING


# ---------------------------------------------------------------- failures and restarts


@pytest.mark.parametrize("signal_name", ["SEGV", "KILL"])
def test_a_crash_is_restarted(agentd_lab: SystemdLab, signal_name: str) -> None:
    lab = agentd_lab
    crashed = start(lab)

    lab.run(["kill", f"-{signal_name}", str(crashed)], check=True)

    wait_restarted(lab, crashed, restarts=1)
    code, out = status(lab)
    assert code == 0, out


def test_a_frozen_event_loop_is_killed_by_the_watchdog_and_restarted(
    agentd_lab: SystemdLab,
) -> None:
    """1. WatchdogSec=2s (a drop-in), the daemon pings every second. 2. SIGSTOP freezes
    it. 3. systemd kills it (Result=watchdog) and Restart= brings it back READY.
    """
    lab = agentd_lab
    lab.write_dropin(SERVICE, "[Service]\nWatchdogSec=2s\n", name="60-watchdog.conf")
    frozen = start(lab)
    assert lab.show(SERVICE, "WatchdogUSec") == "2s"

    lab.run(["kill", "-STOP", str(frozen)], check=True)

    wait_restarted(lab, frozen, restarts=1)
    lab.wait_for_journal(
        SERVICE, lambda e: "Watchdog timeout" in e.get("MESSAGE", ""), what="watchdog kill"
    )
    lab.wait_for_journal(
        SERVICE, lambda e: "result 'watchdog'" in e.get("MESSAGE", ""), what="watchdog result"
    )
    code, out = status(lab)
    assert code == 0, out


def test_a_config_error_exits_78_and_is_not_restarted(agentd_lab: SystemdLab) -> None:
    lab = agentd_lab
    lab.write_file("/etc/agentd/agentd.toml", "[daemon]\nno_such_key = 1\n", mode=0o640)

    assert lab.systemctl("start", SERVICE).returncode != 0

    assert_failed_for_good(lab, EX_CONFIG)
    lab.wait_for_journal(
        SERVICE,
        lambda e: e.get("SYSLOG_IDENTIFIER") == "agentd" and "no_such_key" in e.get("MESSAGE", ""),
        what="the config error",
    )


def test_a_wrong_db_key_exits_78_and_is_not_restarted(agentd_lab: SystemdLab) -> None:
    """1. The first start creates the database with the installed key. 2. The key file
    is replaced by another valid key. 3. The next start exits 78, for good.
    """
    lab = agentd_lab
    start(lab)
    lab.systemctl("stop", SERVICE, check=True)
    lab.write_file("/etc/agentd/db-key", "ab" * 32 + "\n", mode=0o600)

    assert lab.systemctl("start", SERVICE).returncode != 0

    assert_failed_for_good(lab, EX_CONFIG)


def test_a_missing_db_key_fails_at_credentials_and_is_not_restarted(agentd_lab: SystemdLab) -> None:
    lab = agentd_lab
    lab.path("/etc/agentd/db-key").unlink()

    assert lab.systemctl("start", SERVICE).returncode != 0

    assert_failed_for_good(lab, EXIT_CREDENTIALS)


def test_a_config_error_under_socket_activation_fails_once(agentd_lab: SystemdLab) -> None:
    """1. With a bad config, a client connection starts the daemon, which exits 78.
    2. The client is told (non-zero exit), the daemon is not started again and again
    for the same pending connection, and agentd.socket keeps listening.
    """
    lab = agentd_lab
    lab.write_file("/etc/agentd/agentd.toml", "[daemon]\nno_such_key = 1\n", mode=0o640)
    lab.systemctl("start", SOCKET_UNIT, check=True)

    code, out = status(lab)

    assert code != 0, out
    lab.wait_for_property(SERVICE, "ActiveState", "failed")
    config_exits = lab.journal(
        "-u", SERVICE, "MESSAGE=agentd.service: Main process exited, code=exited, status=78/CONFIG"
    )
    assert len(config_exits) == 1, lab.journal_text("-u", SERVICE)
    assert lab.show(SOCKET_UNIT, "ActiveState") == "active", lab.journal_text("-u", SOCKET_UNIT)


# ---------------------------------------------------------------- journal


def test_journal_shows_the_daemon_records_filterable_by_request_id(agentd_lab: SystemdLab) -> None:
    """1. Under journald the daemon logs natively: request_id becomes REQUEST_ID.
    2. `journalctl -u agentd REQUEST_ID=<id of one status call>` finds that call only.
    """
    lab = agentd_lab
    lab.write_dropin(
        SERVICE, "[Service]\nEnvironment=AGENTD_LOG_LEVEL=DEBUG\n", name="60-debug.conf"
    )
    start(lab)
    request_id = str(status_json(lab)["request_id"])

    entry = lab.wait_for_journal(
        SERVICE, lambda e: e.get("REQUEST_ID") == request_id, what=f"REQUEST_ID={request_id}"
    )
    matching = lab.journal("-u", SERVICE, f"REQUEST_ID={request_id}")

    assert entry["SYSLOG_IDENTIFIER"] == "agentd"
    assert entry["_TRANSPORT"] == "journal"
    assert matching and all(e["REQUEST_ID"] == request_id for e in matching)
    assert any(
        re.search(r"\bready\b", e.get("MESSAGE", ""))
        for e in lab.journal("-u", SERVICE, "SYSLOG_IDENTIFIER=agentd")
    )


# ---------------------------------------------------------------- templates


def test_instances_are_isolated_agents(agentd_lab: SystemdLab) -> None:
    """Two instances: own socket, process, state dir, database and DB key."""
    lab = agentd_lab
    for name in ("work", "home"):
        lab.run(["/bin/bash", INSTALL_SH, "instance", name], check=True)
        lab.systemctl("start", f"agentd@{name}.socket", check=True)

    for name in ("work", "home"):
        code, out = status(lab, f"/run/agentd-{name}/agentd.sock")
        assert code == 0, out
        assert lab.path(f"/var/lib/agentd-{name}/agentd.db").is_file()
        assert lab.show(f"agentd@{name}.service", "StatusText").startswith("READY")
    assert main_pid(lab, "agentd@work.service") != main_pid(lab, "agentd@home.service")
    assert lab.show(SERVICE, "ActiveState") == "inactive"
    assert not lab.path("/var/lib/agentd/agentd.db").exists()


def test_an_instance_reads_its_own_config(agentd_lab: SystemdLab) -> None:
    """A broken /etc/agentd/bad.toml fails agentd@bad (78) and nothing else."""
    lab = agentd_lab
    for name in ("good", "bad"):
        lab.run(["/bin/bash", INSTALL_SH, "instance", name], check=True)
    lab.write_file("/etc/agentd/bad.toml", "[daemon]\nno_such_key = 1\n", mode=0o640)

    assert lab.systemctl("start", "agentd@good.service").returncode == 0
    assert lab.systemctl("start", "agentd@bad.service").returncode != 0

    assert lab.show("agentd@bad.service", "ExecMainStatus") == str(EX_CONFIG)
    assert lab.show("agentd@good.service", "ActiveState") == "active"


def test_an_unconfigured_instance_does_not_start(agentd_lab: SystemdLab) -> None:
    lab = agentd_lab

    assert lab.systemctl("start", "agentd@nobody.socket").returncode != 0
    assert lab.systemctl("start", "agentd@nobody.service").returncode != 0

    assert lab.show("agentd@nobody.service", "AssertResult") == "no"
    assert not lab.path("/var/lib/agentd-nobody").exists()
    assert not lab.path("/run/agentd-nobody").exists()
