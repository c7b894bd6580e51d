"""A real systemd, booted as PID 1 in throw-away namespaces, for tests.

The recipe is shared/systemd-lab/boot-ns.sh, step for step:

1. New pid, mount, uts, ipc, net and cgroup namespaces; inside them an overlay of
   the host's / whose writes land in a tmpfs (host files are never written), fresh
   tmpfs /run, /tmp and /dev, own proc, sysfs and cgroup2 mounts.
2. systemd 252 boots ``--unit=lab.target`` (sysinit + sockets, nothing else) with
   ``container=`` set, so it never touches the host.
3. Tests drive it from the host through ``nsenter``: systemctl, journalctl, agentctl.
   Paths outside /tmp, /run and /dev (the checkout, its .venv) look the same inside.
4. Teardown: ``systemctl poweroff``, SIGKILL as a fallback, then the cgroup and the
   work directory go. ``timeout -s KILL`` bounds the container's life even if the
   test process itself is killed; leftovers of killed runs are reaped at next boot.

One step is added to the recipe: / is made rshared before systemd starts. systemd
in container mode leaves mount propagation as it finds it (private), and then the
credentials mount it prepares in a helper namespace never reaches the service:
every LoadCredential= silently yields an empty $CREDENTIALS_DIRECTORY.

Fixtures ``systemd_lab`` (a booted lab) and ``agentd_lab`` (plus agentd installed by
systemd/install.sh); a test module imports the ones it uses (or conftest.py does)::

    from tests.systemd_lab import SystemdLab, systemd_lab_fixture  # noqa: F401

    @pytest.mark.systemd
    def test_something(systemd_lab: SystemdLab) -> None:
        systemd_lab.install_agentd()
        assert systemd_lab.systemctl("start", "agentd.socket").returncode == 0

``LAB_KEEP=1`` keeps the work directory (with the boot console log) of every lab.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Final, TypeVar

import pytest

T = TypeVar("T")

REPO: Final = Path(__file__).resolve().parent.parent
SYSTEMD: Final = Path("/lib/systemd/systemd")
TOOLS: Final = ("unshare", "nsenter", "setpriv", "script", "timeout", "pivot_root")
NSENTER_NAMESPACES: Final = ("-m", "-u", "-i", "-n", "-p", "-C", "-r", "-w")
LAB_PATH: Final = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
LAB_VENV: Final = "/opt/agentd/venv"
SYSTEM_PYTHON: Final = "/usr/bin/python3"
# Nothing listens there: the daemon must never reach out of the lab for Gemini.
UNREACHABLE_GEMINI: Final = "http://127.0.0.1:9"
FAKE_GEMINI_PORT: Final = 8089  # the lab has its own network namespace: no clash possible

# Runs as PID 1 of the new namespaces (argv: mount point, fixtures dir, checkout), then execs systemd.
INNER_SH: Final = r"""#!/bin/bash
set -euo pipefail
MP=$1 FIX=$2 REPO=$3
mount -t tmpfs -o mode=755,size=1g tmpfs "$MP"
mkdir -p "$MP"/upper "$MP"/work "$MP"/root
mount -t overlay overlay -o lowerdir=/,upperdir="$MP/upper",workdir="$MP/work" "$MP/root"
R=$MP/root
mount -t proc -o nosuid,nodev,noexec proc "$R/proc"
for p in sys sysrq-trigger irq bus; do
  [ -e "$R/proc/$p" ] || continue
  mount --bind "$R/proc/$p" "$R/proc/$p"; mount -o remount,bind,ro "$R/proc/$p"
done
mount -t sysfs -o ro,nosuid,nodev,noexec sysfs "$R/sys"
mount -t cgroup2 -o nosuid,nodev,noexec cgroup2 "$R/sys/fs/cgroup"
mount -t tmpfs -o mode=755,nosuid,size=4m tmpfs "$R/dev"
for n in null:1:3 zero:1:5 full:1:7 random:1:8 urandom:1:9 tty:5:0; do
  IFS=: read -r nm ma mi <<< "$n"; mknod -m 666 "$R/dev/$nm" c "$ma" "$mi"; done
mkdir "$R/dev/pts" "$R/dev/shm"
mount -t devpts -o newinstance,ptmxmode=0666,mode=620,gid=5 devpts "$R/dev/pts"
ln -s pts/ptmx "$R/dev/ptmx"
mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs "$R/dev/shm"
ln -s /proc/self/fd "$R/dev/fd"
for i in 0:stdin 1:stdout 2:stderr; do ln -s "/proc/self/fd/${i%%:*}" "$R/dev/${i#*:}"; done
if t=$(tty 2>/dev/null); then : > "$R/dev/console"; mount --bind "$t" "$R/dev/console"; fi
mount -t tmpfs -o mode=755,nosuid,nodev tmpfs "$R/run"
mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs "$R/tmp"
# A checkout under /tmp or /run (CI clones there) would vanish under the fresh
# tmpfs: show it at its own path, read-only, like every other host path.
case "$REPO" in /tmp/*|/run/*)
  mkdir -p "$R$REPO"; mount --bind "$REPO" "$R$REPO"; mount -o remount,bind,ro "$R$REPO";;
esac
cp "$FIX/lab.target" "$R/etc/systemd/system/"
for u in dev-hugepages.mount sys-fs-fuse-connections.mount sys-kernel-config.mount; do
  ln -sf /dev/null "$R/etc/systemd/system/$u"; done
systemd-id128 new > "$R/etc/machine-id"
echo labct > "$R/etc/hostname"
cd "$R"; mkdir -p oldroot; pivot_root . oldroot; cd /
umount -l /oldroot; rmdir /oldroot
mount --make-rshared /    # or LoadCredential= yields nothing (see the module docstring)
export container=systemd-lab
# systemd (and everything it starts) loses these capabilities for good:
DROP=-sys_module,-sys_time,-sys_rawio,-sys_boot,-mknod,-syslog,-audit_read
DROP=$DROP,-audit_control,-wake_alarm,-block_suspend
exec setpriv --bounding-set "$DROP" \
  /lib/systemd/systemd --unit=lab.target --show-status=yes --log-color=no
"""

LAB_TARGET: Final = """[Unit]
Description=lab minimal boot target
Requires=sysinit.target sockets.target
After=sysinit.target sockets.target
AllowIsolate=yes
"""


class LabError(RuntimeError):
    """The lab could not boot or be driven."""


class LabTimeout(AssertionError):
    """A condition polled by wait_for() did not come true in time."""


def lab_unavailable_reason() -> str | None:
    """Why the lab cannot run here, or None when it can."""
    if os.geteuid() != 0:
        return "systemd lab needs root (it boots systemd as PID 1 in new namespaces)"
    missing = [tool for tool in TOOLS if shutil.which(tool, path=host_path()) is None]
    if missing:
        return f"systemd lab needs {', '.join(missing)} (util-linux, coreutils)"
    if not SYSTEMD.is_file():
        return f"systemd lab needs {SYSTEMD}"
    if cgroup2_root() is None:
        return "systemd lab needs a cgroup2 hierarchy (/sys/fs/cgroup or /sys/fs/cgroup/unified)"
    return None


def host_path() -> str:
    """The caller's PATH, then the sbin directories it lacks: a user's PATH (sudo,
    an IDE, CI) often has no /usr/sbin, where pivot_root and friends live."""
    own = [d for d in os.environ.get("PATH", "").split(os.pathsep) if d]
    return os.pathsep.join(own + [d for d in LAB_PATH.split(os.pathsep) if d not in own])


def cgroup2_root() -> Path | None:
    for candidate in (Path("/sys/fs/cgroup"), Path("/sys/fs/cgroup/unified")):
        if (candidate / "cgroup.procs").exists() and (
            candidate / "cgroup.subtree_control"
        ).exists():
            return candidate
    return None


def wait_until(
    predicate: Callable[[], T], timeout: float, *, interval: float = 0.05, what: str = "condition"
) -> T:
    """Poll predicate until it returns something truthy; raise LabTimeout at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise LabTimeout(f"timed out after {timeout:.1f}s waiting for {what} (last: {value!r})")
        time.sleep(interval)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie still "exists" for kill(0); it is dead for our purposes.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0] != "Z"
    except (OSError, IndexError):
        return False


def _children(pid: int) -> list[int]:
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        try:
            out.extend(int(child) for child in task.read_text().split())
        except OSError:
            continue
    return out


def _is_namespace_init(pid: int) -> bool:
    """True for PID 1 of a child pid namespace (NSpid: <host pid> 1)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    for line in status.splitlines():
        if line.startswith("NSpid:"):
            ids = line.split()[1:]
            return len(ids) == 2 and ids[1] == "1"
    return False


def _remove_cgroup_tree(path: Path) -> None:
    for sub in sorted((p for p in path.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
        sub.rmdir()
    path.rmdir()


def reap_leftovers(cg2: Path) -> None:
    """Remove cgroups and work dirs of earlier labs whose owner process is gone."""
    for cgroup in cg2.glob("systemd-lab-*-*"):
        owner, _, suffix = cgroup.name.removeprefix("systemd-lab-").partition("-")
        if not owner.isdigit() or _pid_alive(int(owner)):
            continue
        try:
            if any(p.read_text().strip() for p in cgroup.rglob("cgroup.procs")):
                continue
            _remove_cgroup_tree(cgroup)
        except OSError:
            continue  # another test process got there first, or it is still in use
        workdir = Path(f"/tmp/systemd-lab-run.{suffix}")
        if workdir.is_dir() and str(workdir) not in Path("/proc/self/mountinfo").read_text():
            shutil.rmtree(workdir, ignore_errors=True)


class SystemdLab:
    """One booted systemd in its own namespaces. Use as a context manager or the fixture."""

    def __init__(self, *, max_lifetime_s: int = 600, boot_timeout_s: float = 30.0) -> None:
        self.max_lifetime_s = max_lifetime_s
        self.boot_timeout_s = boot_timeout_s
        self.pid: int | None = None  # host pid of the lab's systemd (PID 1 inside)
        self.boot_state = ""
        self._workdir: Path | None = None
        self._cgroup: Path | None = None
        self._script: subprocess.Popen[bytes] | None = None
        self._unshare_pid: int | None = None

    # ------------------------------------------------------------------ lifecycle

    def __enter__(self) -> SystemdLab:
        self.boot()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.shutdown()

    def boot(self) -> None:
        """Boot systemd and wait until it is up (is-system-running --wait)."""
        reason = lab_unavailable_reason()
        if reason:
            raise LabError(reason)
        cg2 = cgroup2_root()
        assert cg2 is not None
        reap_leftovers(cg2)
        self._workdir = Path(tempfile.mkdtemp(prefix="systemd-lab-run.", dir="/tmp"))
        suffix = self._workdir.name.removeprefix("systemd-lab-run.")
        self._cgroup = cg2 / f"systemd-lab-{os.getpid()}-{suffix}"
        self._cgroup.mkdir()
        try:
            self._launch()
            self.pid = self._wait_for_systemd()
            self._release_helpers(cg2)
            state = self.run(
                ["systemctl", "is-system-running", "--wait"], timeout=self.boot_timeout_s
            )
            self.boot_state = state.stdout.strip()
        except BaseException:
            self.shutdown()
            raise

    def _launch(self) -> None:
        assert self._workdir is not None and self._cgroup is not None
        work = self._workdir
        (work / "mp").mkdir()
        (work / "fix").mkdir()
        (work / "fix" / "lab.target").write_text(LAB_TARGET)
        (work / "inner.sh").write_text(INNER_SH)
        launch = work / "launch.sh"
        launch.write_text(
            "#!/bin/sh\n"
            f'echo $$ > "{self._cgroup}/cgroup.procs" || exit 97\n'
            f'echo $$ > "{work}/unshare.pid"\n'
            f"exec timeout -s KILL {self.max_lifetime_s} "
            "unshare --pid --fork --kill-child --mount --uts --ipc --net --cgroup "
            "--propagation private "
            f'/bin/bash "{work}/inner.sh" "{work}/mp" "{work}/fix" "{REPO}"\n'
        )
        # script(1) gives systemd a terminal for /dev/console; its log is the boot console.
        self._script = subprocess.Popen(
            ["script", "-qfec", f"/bin/sh {launch}", str(work / "console.log")],
            env={**os.environ, "PATH": host_path()},  # the launch runs pivot_root, mount...
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )

    def _wait_for_systemd(self) -> int:
        assert self._workdir is not None and self._script is not None
        pid_file = self._workdir / "unshare.pid"

        def launched() -> bool:
            if self._script is not None and self._script.poll() is not None:
                raise LabError(f"lab launcher exited early:\n{self.console_log()}")
            return pid_file.is_file() and pid_file.read_text().strip() != ""

        wait_until(launched, self.boot_timeout_s, what="the lab launcher")
        self._unshare_pid = int(pid_file.read_text())

        def systemd_up() -> int | None:
            if self._unshare_pid is None or not _pid_alive(self._unshare_pid):
                raise LabError(f"lab died while booting:\n{self.console_log()}")
            pid = self._find_namespace_init()
            if pid and Path(f"/proc/{pid}/root/run/systemd/private").exists():
                return pid
            return None

        try:
            pid = wait_until(systemd_up, self.boot_timeout_s, what="systemd in the lab")
        except LabTimeout as exc:
            raise LabError(f"{exc}\n{self.console_log()}") from None
        assert pid is not None
        return pid

    def _find_namespace_init(self) -> int | None:
        queue = [self._unshare_pid] if self._unshare_pid else []
        while queue:
            pid = queue.pop(0)
            if _is_namespace_init(pid):
                return pid
            queue.extend(_children(pid))
        return None

    def _helpers(self) -> list[int]:
        """Our processes between script(1) and the lab's init: timeout, unshare, inner.sh."""
        found: list[int] = []
        queue = [self._unshare_pid] if self._unshare_pid else []
        while queue:
            pid = queue.pop(0)
            if _is_namespace_init(pid):
                continue
            found.append(pid)
            queue.extend(_children(pid))
        return found

    def _release_helpers(self, cg2: Path) -> None:
        """The helpers leave the lab's cgroup, which then holds systemd's tree only."""
        for pid in self._helpers():
            with contextlib.suppress(OSError):  # already gone
                (cg2 / "cgroup.procs").write_text(str(pid))

    def shutdown(self) -> None:
        """Power the lab off (SIGKILL if it does not go) and remove every trace of it."""
        init = self.pid or (self._find_namespace_init() if self._unshare_pid else None)
        if init and _pid_alive(init):
            if self.pid:
                with contextlib.suppress(subprocess.TimeoutExpired, LabError):
                    self.run(["systemctl", "poweroff", "--no-block"], timeout=5)
            try:
                wait_until(lambda: not _pid_alive(init), 8.0, what="lab poweroff")
            except LabTimeout:
                os.kill(init, signal.SIGKILL)  # ends every process of the pid namespace
        if self._script is not None:
            try:  # without their init, the helpers and script(1) exit by themselves
                self._script.wait(timeout=3)
            except subprocess.TimeoutExpired:  # a boot that failed before systemd ran
                for pid in self._helpers():
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                self._script.kill()
                self._script.wait()
        self._remove_cgroup()
        self._remove_workdir()
        self.pid = None

    def _remove_cgroup(self) -> None:
        cgroup = self._cgroup
        if cgroup is None:
            return

        def removed() -> bool:
            try:
                if cgroup.exists():
                    _remove_cgroup_tree(cgroup)
            except OSError:
                return False
            return True

        try:
            wait_until(removed, 3.0, interval=0.1, what=f"removal of {cgroup}")
        except LabTimeout:
            print(f"systemd_lab: could not remove {cgroup}", file=sys.stderr)
        self._cgroup = None

    def _remove_workdir(self) -> None:
        work = self._workdir
        if work is None:
            return
        if str(work) in Path("/proc/self/mountinfo").read_text():
            print(
                f"systemd_lab: {work} is mounted in the host namespace, leaving it", file=sys.stderr
            )
        elif os.environ.get("LAB_KEEP") == "1":
            print(f"systemd_lab: kept {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)
        self._workdir = None

    def console_log(self) -> str:
        log = self._workdir / "console.log" if self._workdir else None
        if log is None or not log.exists():
            return "(no console log)"
        return log.read_text(errors="replace")[-4000:]

    @property
    def workdir(self) -> Path | None:
        """Host directory with the boot scripts and console.log (None once shut down)."""
        return self._workdir

    @property
    def cgroup(self) -> Path | None:
        """Host cgroup holding the lab's systemd and everything it runs."""
        return self._cgroup

    # ------------------------------------------------------------------ running things

    @property
    def root(self) -> Path:
        """The lab's / seen from the host (writes land in the lab's overlay)."""
        if self.pid is None:
            raise LabError("the lab is not booted")
        return Path(f"/proc/{self.pid}/root")

    def path(self, inside: str) -> Path:
        """Host path of a path inside the lab."""
        return self.root / inside.lstrip("/")

    def run(
        self,
        cmd: Sequence[str] | str,
        *,
        check: bool = False,
        timeout: float = 30.0,
        input: str | None = None,
        env: Mapping[str, str] | None = None,
        user: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run cmd inside the lab (a string goes through /bin/sh -c), as root or as user.

        The environment is a clean one (PATH, LANG) plus env: nothing leaks in from pytest.
        """
        argv = self._command(cmd, user)
        result = subprocess.run(
            argv,
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=self._environ(env),
            check=False,
        )
        if check and result.returncode != 0:
            raise LabError(
                f"{shlex.join(argv)} exited {result.returncode}\n"
                f"stdout: {result.stdout}\nstderr: {result.stderr}"
            )
        return result

    def popen(
        self,
        cmd: Sequence[str] | str,
        *,
        env: Mapping[str, str] | None = None,
        user: str | None = None,
    ) -> subprocess.Popen[str]:
        """Start cmd inside the lab in the background (stdout and stderr piped); the
        caller waits for it (communicate() with a timeout).
        """
        return subprocess.Popen(
            self._command(cmd, user),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=self._environ(env),
        )

    def _command(self, cmd: Sequence[str] | str, user: str | None) -> list[str]:
        if self.pid is None:
            raise LabError("the lab is not booted")
        argv = ["/bin/sh", "-c", cmd] if isinstance(cmd, str) else list(cmd)
        if user is not None:
            argv = ["setpriv", f"--reuid={user}", f"--regid={user}", "--init-groups", *argv]
        return ["nsenter", "-t", str(self.pid), *NSENTER_NAMESPACES, *argv]

    @staticmethod
    def _environ(env: Mapping[str, str] | None) -> dict[str, str]:
        full = {"PATH": LAB_PATH, "LANG": "C.UTF-8", "SYSTEMD_PAGER": "", "SYSTEMD_COLORS": "0"}
        full.update(env or {})
        return full

    def systemctl(
        self, *args: str, check: bool = False, timeout: float = 60.0
    ) -> subprocess.CompletedProcess[str]:
        return self.run(["systemctl", "--no-pager", *args], check=check, timeout=timeout)

    def show(self, unit: str, prop: str) -> str:
        """One property of a unit (systemctl show -P)."""
        return self.systemctl("show", "-P", prop, unit, check=True).stdout.strip()

    def daemon_reload(self) -> None:
        self.systemctl("daemon-reload", check=True)

    def write_file(self, path: str, text: str, *, mode: int = 0o644) -> None:
        """Write a file inside the lab (its overlay; the host file, if any, is untouched)."""
        target = self.path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
        target.chmod(mode)

    def write_unit(self, name: str, text: str) -> None:
        """Write /etc/systemd/system/NAME and reload systemd."""
        self.write_file(f"/etc/systemd/system/{name}", text)
        self.daemon_reload()

    def write_dropin(self, unit: str, text: str, *, name: str = "50-test.conf") -> None:
        """Write a drop-in /etc/systemd/system/UNIT.d/NAME and reload systemd."""
        self.write_file(f"/etc/systemd/system/{unit}.d/{name}", text)
        self.daemon_reload()

    # ------------------------------------------------------------------ journal

    def journal(self, *args: str) -> list[dict[str, Any]]:
        """Journal entries (journalctl -o json ARGS), after asking journald to flush."""
        self.run(["journalctl", "--sync"], timeout=10)
        out = self.run(["journalctl", "--no-pager", "-o", "json", *args], timeout=20).stdout
        return [_decode_entry(json.loads(line)) for line in out.splitlines() if line.strip()]

    def journal_text(self, *args: str, lines: int = 40) -> str:
        """The last journal lines, for failure messages."""
        result = self.run(
            ["journalctl", "--no-pager", "-o", "short-precise", "-n", str(lines), *args]
        )
        return result.stdout

    def wait_for(
        self,
        predicate: Callable[[], T],
        timeout: float = 10.0,
        *,
        what: str = "condition",
        interval: float = 0.1,
    ) -> T:
        """Poll predicate with a deadline; on timeout the message carries the journal tail."""
        try:
            return wait_until(predicate, timeout, interval=interval, what=what)
        except LabTimeout as exc:
            raise LabTimeout(f"{exc}\n--- journal tail ---\n{self.journal_text()}") from None

    def wait_for_journal(
        self,
        unit: str,
        predicate: Callable[[dict[str, Any]], bool],
        timeout: float = 10.0,
        *,
        what: str = "entry",
    ) -> dict[str, Any]:
        """The first journal entry of unit satisfying predicate; the journal is asynchronous."""

        def find() -> dict[str, Any]:
            return next((e for e in self.journal("-u", unit) if predicate(e)), {})

        return self.wait_for(find, timeout, what=f"journal {what} of {unit}", interval=0.2)

    def wait_for_property(self, unit: str, prop: str, expected: str, timeout: float = 10.0) -> None:
        self.wait_for(
            lambda: self.show(unit, prop) == expected, timeout, what=f"{unit} {prop}={expected}"
        )

    # ------------------------------------------------------------------ agentd

    def install_agentd(self, *, gemini_base_url: str = UNREACHABLE_GEMINI) -> None:
        """Install agentd as documented: systemd/install.sh, run inside the lab as root.

        The venv install.sh would build with pip cannot be built here (no network in
        the lab), so /opt/agentd/venv is prepared first: the system python, the
        checkout's .venv site-packages, and console scripts like pip's. install.sh then
        finds bin/agentd there and uses that venv as it is.
        """
        self._make_lab_venv()
        dropin = f"[Service]\nEnvironment=AGENTD_GEMINI_BASE_URL={gemini_base_url}\n"
        if REPO.is_relative_to("/tmp") or REPO.is_relative_to("/run"):
            # The units' PrivateTmp= would hide a checkout under /tmp (CI clones there),
            # and the lab venv imports agentd from the checkout by its absolute path.
            dropin += f"BindReadOnlyPaths={REPO}\n"
        for unit in ("agentd.service", "agentd@.service", "agentd-backup.service"):
            self.write_file(f"/etc/systemd/system/{unit}.d/50-lab.conf", dropin)
        # install.sh ends with the daemon-reload that loads the units and the drop-ins.
        self.run(
            ["/bin/bash", str(REPO / "systemd" / "install.sh")],
            check=True,
            env={"AGENTD_VENV": LAB_VENV},
        )

    def _make_lab_venv(self) -> None:
        site_packages = checkout_site_packages()
        self.run([SYSTEM_PYTHON, "-m", "venv", "--without-pip", LAB_VENV], check=True)
        version = f"python{sys.version_info.major}.{sys.version_info.minor}"
        pth = f"import site; site.addsitedir({str(site_packages)!r})\n"
        self.write_file(f"{LAB_VENV}/lib/{version}/site-packages/agentd-checkout.pth", pth)
        for name, target in console_scripts().items():
            module, _, func = target.partition(":")
            script = (
                f"#!{LAB_VENV}/bin/python\nimport sys\nfrom {module} import {func}\n"
                f"sys.exit({func}())\n"
            )
            self.write_file(f"{LAB_VENV}/bin/{name}", script, mode=0o755)

    def start_fake_gemini(self, *, port: int = FAKE_GEMINI_PORT, delay_s: float = 0.0) -> str:
        """Run tests/fake_gemini.py in the lab (a transient unit, as root); its URL.

        It answers every request with its default text after delay_s seconds.
        """
        self.run(
            [
                "systemd-run",
                "--unit=fake-gemini",
                "--property=Type=exec",
                str(REPO / ".venv" / "bin" / "python"),
                str(REPO / "tests" / "fake_gemini.py"),
                f"--port={port}",
                f"--delay={delay_s}",
            ],
            check=True,
        )
        self.wait_for_journal(
            "fake-gemini.service", lambda e: "listening" in e.get("MESSAGE", ""), what="start"
        )
        return f"http://127.0.0.1:{port}"

    def agentctl(
        self, *args: str, user: str | None = None, timeout: float = 30.0
    ) -> subprocess.CompletedProcess[str]:
        """Run the installed agentctl (/usr/local/bin/agentctl) inside the lab."""
        return self.run(["/usr/local/bin/agentctl", *args], user=user, timeout=timeout)


def _decode_entry(entry: dict[str, Any]) -> dict[str, Any]:
    """journalctl -o json gives non-UTF-8 or binary values as arrays of bytes."""
    return {
        k: bytes(v).decode(errors="replace") if isinstance(v, list) else v for k, v in entry.items()
    }


def checkout_site_packages() -> Path:
    """site-packages of the checkout's .venv (where `make install` put the dependencies)."""
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    path = REPO / ".venv" / "lib" / version / "site-packages"
    if not path.is_dir():
        raise LabError(f"{path} is missing: run `make install` first")
    return path


def console_scripts() -> dict[str, str]:
    """[project.scripts] of pyproject.toml: name -> 'module:function'."""
    with (REPO / "pyproject.toml").open("rb") as handle:
        scripts: dict[str, str] = tomllib.load(handle)["project"]["scripts"]
    return scripts


def lab_python_mismatch() -> str | None:
    """The lab venv runs the system python with the checkout's packages: same X.Y needed."""
    probe = subprocess.run(
        [SYSTEM_PYTHON, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
        capture_output=True,
        text=True,
        check=False,
    )
    ours = f"{sys.version_info.major}.{sys.version_info.minor}"
    if probe.returncode != 0:
        return f"{SYSTEM_PYTHON} is missing (the lab's venv is built on it)"
    if probe.stdout.strip() != ours:
        return f"{SYSTEM_PYTHON} is {probe.stdout.strip()}, the checkout's venv is {ours}"
    return None


@pytest.fixture(name="systemd_lab")
def systemd_lab_fixture() -> Iterator[SystemdLab]:
    """A freshly booted systemd for one test, torn down after it; skips without root."""
    reason = lab_unavailable_reason()
    if reason:
        pytest.skip(reason)
    with SystemdLab() as lab:
        yield lab


@pytest.fixture(name="agentd_lab")
def agentd_lab_fixture(systemd_lab: SystemdLab) -> SystemdLab:
    """A lab with agentd installed by systemd/install.sh (units loaded, nothing started)."""
    reason = lab_python_mismatch()
    if reason:
        pytest.skip(reason)
    if not (REPO / "agentd" / "cli.py").is_file():
        pytest.skip("agentd is not written yet (agentd/cli.py is missing)")
    systemd_lab.install_agentd()
    return systemd_lab
