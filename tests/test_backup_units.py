"""The scheduled-backup units as files: systemd-analyze verify, what they run, install.sh."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.test_systemd_units import UNITS, analyze, needs_analyze, unit_entries

BACKUP_UNITS = ("agentd-backup.service", "agentd-backup.timer")


@pytest.fixture
def verifiable_units(tmp_path: Path) -> Path:
    """Every unit, with the executables they name replaced by one that exists here."""
    for unit in UNITS.glob("agentd*.*"):
        if unit.suffix not in (".service", ".socket", ".timer"):
            continue
        text = unit.read_text()
        for binary in ("/usr/local/bin/agentd", "/usr/local/bin/agentctl"):
            text = text.replace(f"ExecStart={binary}", "ExecStart=/bin/true")
        (tmp_path / unit.name).write_text(text)
    return tmp_path


@needs_analyze
def test_verify_passes_on_the_backup_service_and_timer(verifiable_units: Path) -> None:
    result = analyze("verify", *BACKUP_UNITS, cwd=verifiable_units)

    assert (result.returncode, result.stderr) == (0, "")


def test_the_service_runs_agentctl_backup_keeping_the_newest_n_as_the_daemons_user() -> None:
    service = {key: value for _, key, value in unit_entries(UNITS / "agentd-backup.service")}
    env = [v for _, k, v in unit_entries(UNITS / "agentd-backup.service") if k == "Environment"]

    assert service["ExecStart"] == "/usr/local/bin/agentctl backup --keep ${AGENTD_BACKUP_KEEP}"
    assert "AGENTD_BACKUP_KEEP=7" in env
    assert "AGENTD_SOCKET=/run/agentd/agentd.sock" in env
    assert service["Type"] == "oneshot" and service["User"] == "agentd"


def test_the_timer_is_daily_and_catches_up_after_downtime() -> None:
    timer = {key: value for _, key, value in unit_entries(UNITS / "agentd-backup.timer")}

    assert timer["OnCalendar"] == "daily"
    assert timer["Persistent"] == "true"
    assert timer["WantedBy"] == "timers.target"


@pytest.mark.skipif(shutil.which("bash") is None, reason="bash is not installed")
def test_install_sh_stages_the_backup_units_and_their_doc(tmp_path: Path) -> None:
    env = {**os.environ, "DESTDIR": str(tmp_path)}
    result = subprocess.run(
        ["bash", str(UNITS / "install.sh")], env=env, capture_output=True, text=True, check=False
    )

    assert result.returncode == 0, result.stderr
    for name in BACKUP_UNITS:
        installed = tmp_path / "usr/local/lib/systemd/system" / name
        assert installed.read_text() == (UNITS / name).read_text()
    assert (tmp_path / "usr/local/share/doc/agentd/backup.md").is_file()
