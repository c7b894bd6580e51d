"""The unit files and install.sh as files (systemd-analyze), and the systemd lab itself."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.systemd_lab import (  # noqa: F401  (fixtures)
    REPO,
    SystemdLab,
    agentd_lab_fixture,
    systemd_lab_fixture,
)

UNITS = REPO / "systemd"
UNIT_FILES = ("agentd.service", "agentd.socket", "agentd@.service", "agentd@.socket")
MAX_EXPOSURE = 1.5
# What an instance may set differently from agentd.service; everything else must match.
INSTANCE_KEYS = {"Environment", "LoadCredential", "StateDirectory", "RuntimeDirectory"}

needs_analyze = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed"
)


def analyze(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["systemd-analyze", *args], capture_output=True, text=True, cwd=cwd, check=False
    )


def unit_entries(path: Path) -> list[tuple[str, str, str]]:
    """(section, key, value) for every assignment of a unit file, in order."""
    entries: list[tuple[str, str, str]] = []
    section = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        entries.append((section, key, value))
    return entries


@pytest.fixture
def verifiable_units(tmp_path: Path) -> Path:
    """The four units, with ExecStart pointing at an executable that exists on this host."""
    for name in UNIT_FILES:
        text = (
            (UNITS / name)
            .read_text()
            .replace("ExecStart=/usr/local/bin/agentd", "ExecStart=/bin/true")
        )
        (tmp_path / name).write_text(text)
    return tmp_path


@needs_analyze
def test_verify_passes_on_agentd_service_and_socket(verifiable_units: Path) -> None:
    result = analyze("verify", "agentd.service", "agentd.socket", cwd=verifiable_units)

    assert (result.returncode, result.stderr) == (0, "")


@needs_analyze
def test_verify_passes_on_an_instance_of_the_templates(verifiable_units: Path) -> None:
    """The templates are verified through an instance, as systemd loads them."""
    result = analyze("verify", "agentd@lab.service", "agentd@lab.socket", cwd=verifiable_units)

    assert (result.returncode, result.stderr) == (0, "")


@needs_analyze
@pytest.mark.parametrize("unit", ["agentd.service", "agentd@.service"])
def test_security_exposure_is_at_most_1_5(unit: str) -> None:
    result = analyze("security", "--offline=true", "--no-pager", str(UNITS / unit))

    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout)
    assert match, result.stdout + result.stderr
    assert float(match.group(1)) <= MAX_EXPOSURE, result.stdout


@needs_analyze
@pytest.mark.parametrize("unit", ["agentd.service", "agentd@.service"])
def test_network_stays_reachable_for_gemini(unit: str) -> None:
    """The score must not come from cutting the daemon off the network."""
    settings = {key: value for _, key, value in unit_entries(UNITS / unit)}

    assert settings.get("PrivateNetwork", "no") == "no"
    assert "IPAddressDeny" not in settings
    assert set(settings["RestrictAddressFamilies"].split()) >= {"AF_UNIX", "AF_INET", "AF_INET6"}


def test_template_service_is_hardened_like_the_main_service() -> None:
    main = [
        e
        for e in unit_entries(UNITS / "agentd.service")
        if e[0] == "Service" and e[1] not in INSTANCE_KEYS
    ]
    template = [
        e
        for e in unit_entries(UNITS / "agentd@.service")
        if e[0] == "Service" and e[1] not in INSTANCE_KEYS
    ]

    assert template == main


def test_socket_units_agree_with_the_services_on_the_group() -> None:
    for socket_unit, service in (
        ("agentd.socket", "agentd.service"),
        ("agentd@.socket", "agentd@.service"),
    ):
        socket_group = dict((k, v) for _, k, v in unit_entries(UNITS / socket_unit))["SocketGroup"]
        env = [v for _, k, v in unit_entries(UNITS / service) if k == "Environment"]
        assert f"AGENTD_DAEMON__SOCKET_GROUP={socket_group}" in env


def test_install_sh_with_destdir_stages_files_only(tmp_path: Path) -> None:
    """1. DESTDIR install: units, sysusers, tmpfiles, docs, links and config land under it.
    2. No secret is generated into a staging tree.
    """
    env = {**os.environ, "DESTDIR": str(tmp_path)}
    result = subprocess.run(
        ["bash", str(UNITS / "install.sh")], env=env, capture_output=True, text=True, check=False
    )

    assert result.returncode == 0, result.stderr
    for name in UNIT_FILES:
        assert (tmp_path / "usr/local/lib/systemd/system" / name).read_text() == (
            UNITS / name
        ).read_text()
    assert (tmp_path / "usr/local/lib/sysusers.d/agentd.conf").is_file()
    assert (tmp_path / "usr/local/lib/tmpfiles.d/agentd.conf").is_file()
    assert os.readlink(tmp_path / "usr/local/bin/agentd") == "/opt/agentd/venv/bin/agentd"
    assert os.readlink(tmp_path / "usr/local/bin/agentctl") == "/opt/agentd/venv/bin/agentctl"
    assert (tmp_path / "etc/agentd/agentd.toml").is_file()
    assert not (tmp_path / "etc/agentd/db-key").exists()


def test_install_sh_rewrites_paths_for_another_prefix(tmp_path: Path) -> None:
    env = {**os.environ, "DESTDIR": str(tmp_path), "PREFIX": "/usr"}
    subprocess.run(["bash", str(UNITS / "install.sh")], env=env, capture_output=True, check=True)

    service = (tmp_path / "usr/lib/systemd/system/agentd.service").read_text()
    assert "ExecStart=/usr/bin/agentd\n" in service
    assert "/usr/local" not in service
    assert os.readlink(tmp_path / "usr/bin/agentd") == "/opt/agentd/venv/bin/agentd"


# ---------------------------------------------------------------- in the lab


@pytest.mark.systemd
def test_lab_boots_systemd_as_pid_1(systemd_lab: SystemdLab) -> None:
    assert systemd_lab.boot_state == "running"
    assert systemd_lab.run(["cat", "/proc/1/comm"]).stdout.strip() == "systemd"


@pytest.mark.systemd
def test_lab_runs_a_unit_and_journals_its_output(systemd_lab: SystemdLab) -> None:
    systemd_lab.write_unit(
        "hello.service", "[Service]\nType=oneshot\nExecStart=/bin/echo lab-hello\n"
    )

    assert systemd_lab.systemctl("start", "hello.service").returncode == 0
    systemd_lab.wait_for_journal(
        "hello.service", lambda e: e.get("MESSAGE") == "lab-hello", 5, what="echo"
    )


@pytest.mark.systemd
def test_lab_passes_credentials_to_services(systemd_lab: SystemdLab) -> None:
    """Regression: without an rshared / the credentials mount never reaches the service."""
    systemd_lab.write_file("/etc/lab-secret", "s3cret\n", mode=0o600)
    systemd_lab.write_unit(
        "cred.service",
        "[Service]\nType=oneshot\nDynamicUser=yes\nLoadCredential=k:/etc/lab-secret\n"
        'ExecStart=/bin/sh -c "cat $CREDENTIALS_DIRECTORY/k"\n',
    )

    assert systemd_lab.systemctl("start", "cred.service").returncode == 0
    systemd_lab.wait_for_journal(
        "cred.service", lambda e: e.get("MESSAGE") == "s3cret", 5, what="credential"
    )


@pytest.mark.systemd
def test_lab_writes_stay_in_the_lab(systemd_lab: SystemdLab, tmp_path: Path) -> None:
    probe = f"/etc/systemd-lab-probe-{tmp_path.name}"
    systemd_lab.write_file(probe, "inside\n")

    assert systemd_lab.run(["cat", probe]).stdout == "inside\n"
    assert not Path(probe).exists()


@pytest.mark.systemd
def test_lab_shutdown_leaves_no_trace(systemd_lab: SystemdLab) -> None:
    """1. A second lab boots beside the fixture's. 2. Shut down, its systemd is gone,
    and so are its cgroup and its work directory.
    """
    with SystemdLab() as lab:
        pid, workdir, cgroup = lab.pid, lab.workdir, lab.cgroup
        assert pid and workdir and cgroup and workdir.is_dir() and cgroup.is_dir()

    assert not Path(f"/proc/{pid}").exists()
    assert not cgroup.exists()
    assert not workdir.exists() or os.environ.get("LAB_KEEP") == "1"
    assert systemd_lab.boot_state == "running"  # the fixture's lab is unaffected


@pytest.mark.systemd
def test_install_sh_lays_out_config_and_secrets(agentd_lab: SystemdLab) -> None:
    """1. install.sh (run by the fixture) creates user and group agentd, /etc/agentd
    0750 root:agentd, agentd.toml 0640 root:agentd and db-key 0600 root:root with 64
    hex characters. 2. Run again, it keeps the key.
    """
    lab = agentd_lab
    layout = lab.run(
        [
            "stat",
            "-c",
            "%n %a %U %G",
            "/etc/agentd",
            "/etc/agentd/agentd.toml",
            "/etc/agentd/db-key",
        ]
    )
    key = lab.path("/etc/agentd/db-key").read_text()

    assert layout.stdout.splitlines() == [
        "/etc/agentd 750 root agentd",
        "/etc/agentd/agentd.toml 640 root agentd",
        "/etc/agentd/db-key 600 root root",
    ]
    assert re.fullmatch(r"[0-9a-f]{64}\n", key)
    lab.run(
        ["/bin/bash", str(UNITS / "install.sh")],
        check=True,
        env={"AGENTD_VENV": "/opt/agentd/venv"},
    )
    assert lab.path("/etc/agentd/db-key").read_text() == key


@pytest.mark.systemd
def test_install_sh_instance_creates_config_and_own_key(agentd_lab: SystemdLab) -> None:
    lab = agentd_lab
    lab.run(["/bin/bash", str(UNITS / "install.sh"), "instance", "work"], check=True)

    layout = lab.run(
        [
            "stat",
            "-c",
            "%n %a %U %G",
            "/etc/agentd/work.toml",
            "/etc/agentd/work",
            "/etc/agentd/work/db-key",
        ]
    )
    assert layout.stdout.splitlines() == [
        "/etc/agentd/work.toml 640 root agentd",
        "/etc/agentd/work 700 root root",
        "/etc/agentd/work/db-key 600 root root",
    ]
    assert (
        lab.path("/etc/agentd/work/db-key").read_text()
        != lab.path("/etc/agentd/db-key").read_text()
    )


@pytest.mark.systemd
def test_enabling_the_service_enables_its_socket(agentd_lab: SystemdLab) -> None:
    lab = agentd_lab
    lab.systemctl("enable", "agentd.service", check=True)

    assert lab.systemctl("is-enabled", "agentd.socket").stdout.strip() == "enabled"
    assert lab.path("/etc/systemd/system/sockets.target.wants/agentd.socket").is_symlink()
