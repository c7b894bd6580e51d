"""Issue 11, on-disk and launch trust: what another local user could plant is refused.

The daemon runs as root (the suite's uid) and the attacker is `nobody`, or the
daemon itself runs as `nobody` where an unreadable file must be one clean line.
docs/security.md states the rules these tests pin down.
"""

from __future__ import annotations

import os
import pwd
import signal
import socket
import stat
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import REPO, DaemonProcess, run_agentctl, wait_until

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0, reason="needs root to plant files as, and run agentd as, another uid"
)

EX_CONFIG = 78
PERMISSION = 6
NOBODY = pwd.getpwnam("nobody").pw_uid
NOGROUP = pwd.getpwnam("nobody").pw_gid


def refusal(d: DaemonProcess) -> str:
    """Start agentd, expect exit 78, and return its one line on stderr."""
    d.start(wait=False)
    assert d.wait_exit(timeout=30) == EX_CONFIG, d.stderr()
    lines = d.stderr().strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


def owned_by_nobody(path: Path, mode: int) -> Path:
    os.chown(path, NOBODY, NOGROUP)
    os.chmod(path, mode)
    return path


# -- 1. `agentctl start` runs the installed agentd, not one from the current directory --


def test_start_never_runs_an_agentd_package_from_the_current_directory(
    make_daemon: Callable[..., DaemonProcess], short_tmp: Path
) -> None:
    """1. /tmp/.../agentd/__init__.py writes a marker when imported.
    2. `agentctl start` (not putting its own cwd on sys.path, like the installed script)
       runs in that directory: the real daemon starts, the planted code never runs.
    3. The detached daemon does not keep that directory as its working directory.
    """
    d = make_daemon()
    planted = short_tmp / "cwd"
    marker = short_tmp / "planted-code-ran"
    (planted / "agentd").mkdir(parents=True)
    (planted / "agentd" / "__init__.py").write_text(
        f"import os\nopen({str(marker)!r}, 'w').close()\nos._exit(0)\n"
    )
    start = subprocess.run(
        [sys.executable, "-P", "-m", "agentctl", "--json", "start"],
        cwd=planted,
        env=d.env,
        capture_output=True,
        timeout=60,
        check=False,
    )
    pid = d.call("status")["pid"] if start.returncode == 0 else 0
    try:
        assert not marker.exists()
        assert start.returncode == 0, start.stderr
        wait_until(lambda: os.readlink(f"/proc/{pid}/cwd") == "/", 10, "the daemon to chdir /")
    finally:
        if pid:
            os.kill(pid, signal.SIGKILL)


# -- 2. the fallback socket directory $TMPDIR/agentd-<uid> ------------------------------


def fallback_env(base: Path) -> dict[str, str]:
    """No AGENTD_SOCKET and no runtime directory: agentd and agentctl use $TMPDIR/agentd-0."""
    tmp = base / "tmp"
    tmp.mkdir(exist_ok=True)
    os.chmod(tmp, 0o1777)  # like /tmp: anyone may create entries
    return {"TMPDIR": str(tmp)}


def fallback_daemon(make_daemon: Callable[..., DaemonProcess], base: Path) -> DaemonProcess:
    d = make_daemon(fallback_env(base))
    for name in ("AGENTD_SOCKET", "XDG_RUNTIME_DIR"):
        d.env.pop(name)
    return d


@pytest.mark.parametrize(
    ("plant", "problem"),
    [
        (lambda p: owned_by_nobody(p, 0o777), "is owned by uid 65534"),
        (lambda p: os.chmod(p, 0o755), "is open to group or others (mode 0755)"),
        (lambda p: os.chmod(p, 0o770), "is writable by group or others (mode 0770)"),
    ],
    ids=["another-users", "open-to-others", "group-writable"],
)
def test_agentd_refuses_a_fallback_socket_directory_it_cannot_trust(
    make_daemon: Callable[..., DaemonProcess],
    short_tmp: Path,
    plant: Callable[[Path], object],
    problem: str,
) -> None:
    d = fallback_daemon(make_daemon, short_tmp)
    directory = short_tmp / "tmp" / "agentd-0"
    directory.mkdir()
    plant(directory)

    line = refusal(d)

    assert str(directory) in line and problem in line
    assert not (directory / "agentd.sock").exists()


def test_agentd_refuses_a_symlink_as_its_fallback_socket_directory(
    make_daemon: Callable[..., DaemonProcess], short_tmp: Path
) -> None:
    d = fallback_daemon(make_daemon, short_tmp)
    elsewhere = short_tmp / "attacker"
    elsewhere.mkdir()
    owned_by_nobody(elsewhere, 0o777)
    (short_tmp / "tmp" / "agentd-0").symlink_to(elsewhere)

    line = refusal(d)

    assert "is a symbolic link" in line
    assert not (elsewhere / "agentd.sock").exists()


def test_agentctl_sends_nothing_to_a_socket_in_another_users_fallback_directory(
    make_daemon: Callable[..., DaemonProcess], short_tmp: Path
) -> None:
    """1. `nobody` made $TMPDIR/agentd-0 (0777) and listens on agentd.sock in it.
    2. root's agentctl refuses with exit 6 and one line naming the directory,
       and never connects: the listener has no connection waiting.
    """
    env = fallback_daemon(make_daemon, short_tmp).env
    directory = short_tmp / "tmp" / "agentd-0"
    directory.mkdir()
    owned_by_nobody(directory, 0o777)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind(str(directory / "agentd.sock"))
        listener.listen(8)
        listener.setblocking(False)

        result = run_agentctl(env, "status", timeout=20)

        with pytest.raises(BlockingIOError):
            listener.accept()
    assert result.returncode == PERMISSION
    err = result.stderr.decode()
    assert f"its directory {directory} is owned by uid 65534" in err
    assert len(err.strip().splitlines()) == 1


def test_a_regular_file_at_the_socket_path_is_never_deleted(
    make_daemon: Callable[..., DaemonProcess],
) -> None:
    d = make_daemon()
    precious = Path(d.socket)
    precious.write_text("not a socket\n")

    line = refusal(d)

    assert f"{precious} exists and is not a socket" in line
    assert precious.read_text() == "not a socket\n"


def test_agentd_refuses_a_socket_directory_others_can_write(
    make_daemon: Callable[..., DaemonProcess], short_tmp: Path
) -> None:
    """A group-shared directory is fine when only the daemon's uid can write it
    (tests/test_access.py); a group-writable one would let members swap the socket."""
    shared = short_tmp / "shared"
    shared.mkdir()
    os.chown(shared, 0, 100)  # group `users`
    os.chmod(shared, 0o770)
    d = make_daemon(
        {"AGENTD_SOCKET": str(shared / "agentd.sock"), "AGENTD_DAEMON__SOCKET_GROUP": "users"}
    )

    line = refusal(d)

    assert f"socket directory {shared} is writable by group or others (mode 0770)" in line


# -- 6. a state directory, database, key or log file someone else controls -------------


@pytest.mark.parametrize(
    ("plant", "problem"),
    [
        (lambda p: os.chmod(p, 0o777), "is writable by group or others (mode 0777)"),
        (lambda p: owned_by_nobody(p, 0o700), "is owned by uid 65534"),
    ],
    ids=["world-writable", "another-users"],
)
def test_agentd_refuses_a_state_directory_it_cannot_trust(
    make_daemon: Callable[..., DaemonProcess], plant: Callable[[Path], object], problem: str
) -> None:
    d = make_daemon()
    d.state_dir.mkdir()
    plant(d.state_dir)

    line = refusal(d)

    assert f"state directory {d.state_dir} {problem}" in line
    assert not (d.state_dir / "agentd.db").exists()


def test_agentd_refuses_a_state_directory_that_is_a_symlink(
    make_daemon: Callable[..., DaemonProcess], short_tmp: Path
) -> None:
    d = make_daemon()
    (short_tmp / "real-state").mkdir(mode=0o700)
    d.state_dir.symlink_to(short_tmp / "real-state")

    assert f"state directory {d.state_dir} is a symbolic link" in refusal(d)


def test_agentd_refuses_a_database_planted_by_another_user(
    make_daemon: Callable[..., DaemonProcess],
) -> None:
    d = make_daemon()
    d.state_dir.mkdir(mode=0o700)
    planted = d.state_dir / "agentd.db"
    planted.touch()
    owned_by_nobody(planted, 0o644)

    line = refusal(d)

    assert f"state file {planted} is owned by uid 65534" in line
    assert planted.stat().st_size == 0


def test_agentd_never_appends_through_a_symlink_at_the_log_path(
    make_daemon: Callable[..., DaemonProcess], short_tmp: Path
) -> None:
    d = make_daemon()
    d.state_dir.mkdir(mode=0o700)
    target = short_tmp / "etc-shadow-stand-in"
    target.write_text("root-owned file\n")
    (d.state_dir / "agentd.log").symlink_to(target)

    line = refusal(d)

    assert f"state file {d.state_dir / 'agentd.log'} is a symbolic link" in line
    assert target.read_text() == "root-owned file\n"


def test_files_are_created_0600_whatever_the_umask(
    make_daemon: Callable[..., DaemonProcess],
) -> None:
    """Under umask 0777 the database, its WAL and SHM, the log and the generated key
    are still exactly 0600: usable by the daemon, by no one else."""
    d = make_daemon()
    d.process = subprocess.Popen(
        [sys.executable, "-m", "agentd"],
        env=d.env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=d.stderr_path.open("ab"),
        umask=0o777,
    )
    d.wait_ready()
    d.agentctl("chat", "hello")  # a write: the WAL and SHM exist now

    names = ("agentd.db", "agentd.db-wal", "agentd.db-shm", "agentd.log", "db.key")
    modes = {name: stat.S_IMODE(os.stat(d.state_dir / name).st_mode) for name in names}
    assert modes == dict.fromkeys(names, 0o600)
    assert stat.S_IMODE(os.stat(d.state_dir).st_mode) == 0o700


def test_own_state_files_others_could_read_are_made_0600(
    make_daemon: Callable[..., DaemonProcess],
) -> None:
    d = make_daemon().start()
    d.signal(signal.SIGTERM)
    assert d.wait_exit() == 0
    database = d.state_dir / "agentd.db"
    database.chmod(0o644)

    d.start()

    assert stat.S_IMODE(database.stat().st_mode) == 0o600
    assert f"{database} was readable by group or others (mode 0644): now 0600" in d.stderr()


def key_file(base: Path, mode: int) -> Path:
    path = base / "db.key"
    path.write_text("cd" * 32 + "\n")
    os.chmod(path, mode)
    return path


def test_production_refuses_a_key_file_others_can_read(
    make_daemon: Callable[..., DaemonProcess], short_tmp: Path
) -> None:
    key = key_file(short_tmp, 0o644)
    d = make_daemon({"AGENTD_ENV": "production", "AGENTD_DB_KEY_FILE": str(key)})

    line = refusal(d)

    assert f"key file {key} is open to group or others (mode 0644)" in line
    assert "cd" * 32 not in line


def test_development_warns_about_a_key_file_others_can_read(
    make_daemon: Callable[..., DaemonProcess], short_tmp: Path
) -> None:
    key = key_file(short_tmp, 0o644)
    d = make_daemon({"AGENTD_DB_KEY_FILE": str(key)}).start()

    assert f"key file {key} is open to group or others (mode 0644)" in d.stderr()
    assert "cd" * 32 not in d.stderr()


def test_agentd_refuses_a_key_file_another_user_owns(
    make_daemon: Callable[..., DaemonProcess], short_tmp: Path
) -> None:
    key = owned_by_nobody(key_file(short_tmp, 0o600), 0o600)
    d = make_daemon({"AGENTD_DB_KEY_FILE": str(key)})

    assert f"key file {key} is owned by uid 65534, not 0" in refusal(d)


# -- 10. an unreadable key ends in one line and exit 78, not a traceback ----------------


def test_an_unreadable_credentials_directory_exits_78_with_one_line(
    make_daemon: Callable[..., DaemonProcess], short_tmp: Path
) -> None:
    """agentd as `nobody`, its db-key credential in a directory it may not enter."""
    d = make_daemon()
    os.chmod(short_tmp, 0o711)
    for name in ("state", "run"):
        (short_tmp / name).mkdir(exist_ok=True)
        owned_by_nobody(short_tmp / name, 0o700)
    credentials = short_tmp / "credentials"
    credentials.mkdir(mode=0o700)
    key_file(credentials, 0o600).rename(credentials / "db-key")

    result = subprocess.run(
        [
            *("setpriv", f"--reuid={NOBODY}", f"--regid={NOGROUP}", "--clear-groups"),
            *(sys.executable, "-m", "agentd"),
        ],
        env={**d.env, "CREDENTIALS_DIRECTORY": str(credentials), "HOME": "/tmp"},
        cwd=REPO,
        capture_output=True,
        timeout=60,
        check=False,
    )

    err = result.stderr.decode()
    assert result.returncode == EX_CONFIG, err
    assert err.strip().splitlines() == [
        f"agentd: cannot read DB key file {credentials / 'db-key'}: Permission denied"
    ]
