"""The scheduled backup in a real systemd (the lab): agentd-backup.service asks the
socket-activated daemon for a backup, as user agentd, and keeps the newest N."""

from __future__ import annotations

import pytest

from tests.systemd_lab import (  # noqa: F401  (fixtures)
    SystemdLab,
    agentd_lab_fixture,
    systemd_lab_fixture,
)

BACKUPS = "/var/lib/agentd/backups"


@pytest.mark.systemd
def test_the_backup_service_writes_backups_as_agentd_and_keeps_the_newest_n(
    agentd_lab: SystemdLab,
) -> None:
    """1. agentd.socket listens; a drop-in keeps 2 backups. 2. agentd-backup.service runs
    three times: each run starts (or reaches) the daemon and succeeds. 3. Two backups are
    left in /var/lib/agentd/backups, 0600 agentd; the journal names the file written."""
    lab = agentd_lab
    lab.systemctl("start", "agentd.socket", check=True)
    lab.write_file(
        "/etc/systemd/system/agentd-backup.service.d/keep.conf",
        "[Service]\nEnvironment=AGENTD_BACKUP_KEEP=2\n",
    )
    lab.daemon_reload()

    for _ in range(3):
        run = lab.systemctl("start", "agentd-backup.service", timeout=90)
        assert run.returncode == 0, (
            run.stderr + lab.run(["journalctl", "-u", "agentd-backup"]).stdout
        )

    listing = lab.run(["sh", "-c", f"stat -c '%n %a %U' {BACKUPS}/*"])
    lines = listing.stdout.splitlines()
    assert len(lines) == 2, lines
    assert all(line.endswith(" 600 agentd") for line in lines), lines
    lab.wait_for_journal(
        "agentd-backup.service",
        lambda e: "backup written: /var/lib/agentd/backups/agentd-" in e.get("MESSAGE", ""),
        10,
        what="the backup's path in the journal",
    )


@pytest.mark.systemd
def test_the_timer_can_be_enabled_and_is_scheduled(agentd_lab: SystemdLab) -> None:
    lab = agentd_lab
    lab.systemctl("enable", "--now", "agentd-backup.timer", check=True)

    assert lab.show("agentd-backup.timer", "ActiveState") == "active"
    assert lab.show("agentd-backup.timer", "NextElapseUSecRealtime") not in ("", "0")
