"""The runbook's scenarios: each breaks one thing under a real daemon and records
what agentctl and the daemon's log say, then what recovery looks like.

Each function takes a `Lab` (docs/runbook/harness.py); its name is the section's
key in docs/runbook/template.md. Blocks go to the part set by `lab.section()`.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from docs.runbook.harness import FAST_RECOVERY, Lab, Skipped, stop
from tests.conftest import wait_until
from tests.fake_gemini import (
    answer,
    forbidden,
    hang,
    invalid_key,
    not_found,
    quota_exhausted,
    unused_port,
)
from tests.test_ops_health import fill

# A breaker that opens after two failures and probes again soon: the outage and the
# recovery fit in seconds. Production keeps the defaults (etc/agentd.toml).
QUICK_BREAKER = {
    **FAST_RECOVERY,
    "AGENTD_GEMINI__BREAKER_FAILURE_THRESHOLD": "2",
    "AGENTD_GEMINI__BREAKER_COOLDOWN_S": "0.3",
    "AGENTD_GEMINI__MAX_ATTEMPTS": "2",
    "AGENTD_GEMINI__FALLBACK_MODEL": "",
}


def gemini_unreachable(lab: Lab) -> None:
    port = unused_port()  # nothing listens there yet: connections are refused
    d = lab.daemon({**QUICK_BREAKER, "AGENTD_GEMINI_BASE_URL": f"http://127.0.0.1:{port}"},
                   fake=lab.fake_gemini())
    lab.ctl(d, "chat", "hello?", says=("[degraded]", "unreachable"))
    lab.wait_state(d, "ERROR")
    lab.ctl(d, "status", says=("ERROR (unhealthy)", "circuit breaker open"))
    lab.ctl(d, "health", says=("gemini      failed",))
    lab.log(d, "circuit breaker closed -> open", "-> ERROR")
    lab.section("recovery")
    lab.fake_gemini(port=port)  # Gemini is back
    lab.wait_state(d, "READY")
    lab.ctl(d, "status", says=("READY (healthy)",))
    lab.ctl(d, "chat", "hello again", says=("This is a fake Gemini answer.",))
    lab.log(d, "ERROR -> READY", "-> closed")


def gemini_quota(lab: Lab) -> None:
    fake = lab.fake_gemini()
    d = lab.daemon({**FAST_RECOVERY, "AGENTD_GEMINI__FALLBACK_MODEL": "",
                    "AGENTD_GEMINI__BREAKER_FAILURE_THRESHOLD": "2"}, fake=fake)
    fake.push(quota_exhausted(0.5), answer("answered after the wait"))
    lab.ctl(d, "chat", "a short wait", says=("answered after the wait",))
    lab.log(d, "RESOURCE_EXHAUSTED")
    fake.set_default(quota_exhausted(3600))
    lab.ctl(d, "chat", "a spent quota", says=("[degraded]", "quota"))
    lab.ctl(d, "health", says=("healthy", "gemini      degraded"))
    lab.fact(f"state stays {lab.state(d)}")
    lab.section("recovery")
    fake.set_default(answer("the quota is back"))
    lab.ctl(d, "chat", "and now?", says=("the quota is back",))
    lab.ctl(d, "health", says=("healthy", "gemini      ok"))


def api_key_rejected(lab: Lab) -> None:
    fake = lab.fake_gemini()
    # The default cool-down: the chat after the breaker opens meets it open.
    d = lab.daemon({**QUICK_BREAKER, "AGENTD_GEMINI__BREAKER_FAILURE_THRESHOLD": "3",
                    "AGENTD_GEMINI__BREAKER_COOLDOWN_S": "30"}, fake=fake)
    fake.set_default(invalid_key())
    lab.ctl(d, "chat", "hello?", says=("[degraded]", "API key was rejected"))
    fake.set_default(forbidden())
    lab.show("# Gemini now answers 403 PERMISSION_DENIED (a key without access to the API)", "")
    lab.ctl(d, "chat", "and now?", says=("[degraded]", "rejected"))
    lab.ctl(d, "chat", "still?", says=("[degraded]",))
    lab.ctl(d, "health", says=("gemini      failed", "rejected"))
    lab.log(d, "API_KEY_INVALID", "PERMISSION_DENIED", "circuit breaker closed -> open")
    lab.ctl(d, "chat", "once the breaker is open",
            says=("[degraded]", "the API key was rejected", "auth"))
    lab.section("recovery")
    fake.set_default(answer())
    stop(d)
    lab.show("# a new key installed (credential or GEMINI_API_KEY), then: systemctl restart agentd",
             "")
    d.start()
    lab.pid_of(d)
    lab.ctl(d, "health", says=("gemini      ok", "verified"))
    lab.ctl(d, "chat", "hello", says=("This is a fake Gemini answer.",))


def model_retired(lab: Lab) -> None:
    fake = lab.fake_gemini()
    d = lab.daemon({**FAST_RECOVERY, "AGENTD_GEMINI_MODEL": "gemini-1.0-pro"}, fake=fake)
    fake.set_default(not_found("gemini-1.0-pro"), model="gemini-1.0-pro")
    lab.ctl(d, "chat", "hello?", says=("fallback model", "was not found"))
    lab.ctl(d, "status", says=("READY (healthy)", "gemini      degraded"))
    lab.log(d, "NOT_FOUND", "gemini-1.0-pro")
    lab.section("recovery")
    stop(d)
    d.env["AGENTD_GEMINI_MODEL"] = "gemini-flash-latest"
    lab.show("# [gemini] model = \"gemini-flash-latest\" in agentd.toml, then: "
             "systemctl restart agentd", "")
    d.start()
    lab.pid_of(d)
    lab.ctl(d, "chat", "hello", says=("This is a fake Gemini answer.",))
    lab.ctl(d, "status", says=("READY (healthy)",))


def mount_tiny(lab: Lab) -> str:
    mount_point = lab.base / "tiny"
    mount_point.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=6m,mode=0700", "tmpfs",
                           str(mount_point)], capture_output=True, check=False)
    if done.returncode != 0:
        raise Skipped(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    return str(mount_point)


def disk_full(lab: Lab) -> None:
    tiny = mount_tiny(lab)
    d = lab.daemon({**FAST_RECOVERY, "AGENTD_STATE_DIR": f"{tiny}/state"})
    d.call("chat", {"message": "before"})
    filler = fill(lab.base / "tiny")
    lab.ctl(d, "chat", "while full " * 20, shown="agentctl chat 'while full …'",
            says=("DISK_FULL", "the disk holding the database is full"))
    lab.wait_state(d, "ERROR")
    lab.ctl(d, "status", says=("ERROR (unhealthy)", "disk        failed"))
    lab.log(d, "disk is failed", "-> ERROR")
    lab.section("recovery")
    lab.sh(f"rm {filler}", "space freed")
    lab.wait_state(d, "READY")
    lab.ctl(d, "status", says=("READY (healthy)",))
    lab.ctl(d, "chat", "after", says=("[degraded]",))
    lab.log(d, "ERROR -> READY")


def db_key(lab: Lab) -> None:
    d = lab.daemon()
    stop(d)
    wrong = lab.base / "wrong.key"
    wrong.write_text("ab" * 32 + "\n")
    wrong.chmod(0o600)
    good = d.env.copy()
    d.env["AGENTD_DB_KEY_FILE"] = str(wrong)
    lab.agentd(d, says=("key does not open",), shown="agentd    # AGENTD_DB_KEY_FILE: another key")
    wrong.write_text("not-hex\n")
    lab.agentd(d, says=("64 hex characters",), shown="agentd    # a key file that is not a key")
    d.env["AGENTD_DB_KEY_FILE"] = str(lab.base / "absent.key")
    lab.agentd(d, shown="agentd    # a key file that is not there", says=("does not exist",))
    lab.ctl(d, "status", says=("not running",))
    lab.section("recovery")
    d.env = good
    d.start()
    lab.pid_of(d)
    lab.ctl(d, "status", says=("READY (healthy)",))


def store_files(lab: Lab) -> None:
    d = lab.daemon(FAST_RECOVERY)
    d.call("chat", {"message": "before"})
    database = d.state_dir / "agentd.db"
    lab.sh(f"rm {database}-wal", "behind the running daemon's back")
    lab.ctl(d, "chat", "after", says=("STORE_UNAVAILABLE", "while agentd runs"))
    lab.wait_state(d, "ERROR")
    lab.ctl(d, "health", says=("store       failed",))
    lab.log(d, "store lost")
    lab.section("recovery")
    lab.fact(f"SIGTERM -> exit {stop(d)}")
    lab.show("# systemctl restart agentd (here: SIGTERM, then agentd again)", "")
    d.start()
    lab.pid_of(d)
    lab.ctl(d, "status", says=("READY (healthy)",))
    lab.section("missing")
    stop(d)
    shutil.copyfile(database, lab.base / "old.db")
    lab.sh(f"rm {database}", "while agentd is stopped")
    lab.agentd(d, says=("missing", "--accept-rollback"))
    lab.section("older")
    shutil.copyfile(lab.base / "old.db", database)
    d.start()
    d.call("chat", {"message": "later"})
    stop(d)
    lab.sh(f"cp {lab.base}/old.db {database}", "an older copy put back")
    lab.agentd(d, says=("rollback detected", "--accept-rollback"))
    lab.section("accept")
    d.start("--accept-rollback")
    lab.pid_of(d)
    lab.show("agentd --accept-rollback    # started in the background", "")
    lab.ctl(d, "audit", "verify", says=("rolled back",))


def crash(lab: Lab) -> None:
    fake = lab.fake_gemini()
    d = lab.daemon(fake=fake)
    fake.set_default(hang())
    chat = subprocess.Popen([sys.executable, "-m", "agentctl", "chat", "--new-session", "--name",
                             "work", "a long question"],
                            env=d.env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    wait_until(lambda: len(fake.requests) >= 1, 15, "the chat to reach Gemini")
    d.signal(signal.SIGKILL)
    out, err = chat.communicate(timeout=30)
    lab.show("agentctl chat --new-session --name work 'a long question'    # meanwhile: kill -9",
             (out + err).decode(), chat.returncode)
    lab.fact(f"chat cut by kill -9 -> exit {chat.returncode}")
    lab.says(err.decode(), "agentd closed the connection")
    lab.ctl(d, "status", says=("not running",))
    lab.section("recovery")
    fake.set_default(answer())
    d.start()
    lab.pid_of(d)
    lab.ctl(d, "status", says=("READY (healthy)",))
    lab.ctl(d, "history", "work", says=("a long question",))


def stuck_loop(lab: Lab) -> None:
    d = lab.daemon({**FAST_RECOVERY, "AGENTD_HEALTH__LOOP_LAG_FAILED_S": "1"})
    assert d.process is not None
    lab.sh(f"kill -STOP {d.process.pid}", "the whole process stands still, as a stuck loop does")
    try:
        d.agentctl("status", timeout=2)
        lab.fact("status answered while stopped")
    except subprocess.TimeoutExpired:
        lab.fact("status: no answer within 2s while stopped")
        lab.show("agentctl status", "(no answer: killed after 2 s)")
    time.sleep(1.5)  # the stall itself: what the loop-lag probe measures
    d.signal(signal.SIGCONT)
    # The first request after the stall may be served before the lag probe's own
    # timer has fired and measured it: wait for the measurement.
    lab.wait_component(d, "event_loop", "failed")
    lab.ctl(d, "health", says=("event_loop  failed",))
    lab.log(d, "event_loop is")
    lab.section("recovery")
    lab.wait_component(d, "event_loop", "ok", timeout=20)
    lab.ctl(d, "health", says=("event_loop  ok",))


def busy(lab: Lab) -> None:
    fake = lab.fake_gemini()
    d = lab.daemon({"AGENTD_CHAT__MAX_CONCURRENT": "1", "AGENTD_CHAT__MAX_QUEUE": "0",
                    "AGENTD_GEMINI__ATTEMPT_TIMEOUT_S": "30"}, fake=fake)
    fake.set_default(hang())
    first = subprocess.Popen([sys.executable, "-m", "agentctl", "chat", "slow one"],
                             env=d.env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: len(fake.requests) >= 1, 15, "the first chat to reach Gemini")
        lab.ctl(d, "chat", "me too", says=("BUSY",))
        lab.ctl(d, "status", says=("PROCESSING",))
    finally:
        first.kill()
        first.wait()
    lab.section("rate")
    r = lab.daemon({"AGENTD_LIMITS__CHAT_RATE": "0.1", "AGENTD_LIMITS__CHAT_BURST": "1"},
                   fake=fake, base=_other(lab), start=False)
    r.env.update({"AGENTD_LIMITS__CHAT_RATE": "0.1", "AGENTD_LIMITS__CHAT_BURST": "1"})
    r.start()
    lab.pid_of(r)
    fake.set_default(answer())
    lab.ctl(r, "chat", "one", says=("This is a fake Gemini answer.",))
    lab.ctl(r, "chat", "two", says=("RATE_LIMITED", "retry"))


def _other(lab: Lab) -> Path:
    other = lab.base / "o"
    (other / "run").mkdir(parents=True, mode=0o700)
    (other / "home").mkdir()
    return other


def second_daemon(lab: Lab) -> None:
    first = lab.daemon()
    second = lab.daemon({"AGENTD_STATE_DIR": str(first.state_dir)}, base=_other(lab),
                        start=False)
    lab.agentd(second, shown="agentd    # a second one, same state directory, another socket",
               says=("another agentd", "is using the state directory"))
    lab.ctl(first, "status", says=("READY (healthy)",))


def socket_dir_planted(lab: Lab) -> None:
    d = lab.daemon(start=False)
    for name in ("AGENTD_SOCKET", "XDG_RUNTIME_DIR"):
        d.env.pop(name)
    tmp = lab.base / "tmp"
    tmp.mkdir()
    os.chmod(tmp, 0o1777)
    d.env["TMPDIR"] = str(tmp)
    planted = tmp / "agentd-0"
    planted.mkdir()
    os.chown(planted, 65534, 65534)
    os.chmod(planted, 0o777)
    lab.sh(f"stat -c '%A %U:%G %n' {planted}", "made by nobody, before agentd")
    lab.agentd(d, shown="agentd    # no XDG_RUNTIME_DIR: falls back to $TMPDIR/agentd-0",
               says=("owned by uid 65534",))
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind(str(planted / "agentd.sock"))
        listener.listen(1)
        lab.show("# nobody listens on $TMPDIR/agentd-0/agentd.sock", "")
        lab.ctl(d, "status", says=("owned by uid 65534",))
    lab.section("recovery")
    lab.sh(f"rm -r {planted}", "after looking at what is in it")
    d.start(wait=False)
    lab.pid_of(d)
    wait_until(lambda: d.agentctl("status").returncode == 0, 15, "agentd to be READY")
    lab.ctl(d, "status", says=("READY (healthy)",))
    lab.sh(f"stat -c '%A %U:%G %n' {planted}", "made by agentd")
    lab.fact(f"socket directory mode {oct(planted.stat().st_mode & 0o777)}")


def backup_restore(lab: Lab) -> None:
    d = lab.daemon(fake=lab.fake_gemini())
    lab.section("backup")
    lab.ctl(d, "chat", "--new-session", "--name", "work", "what we decided",
            says=("This is a fake Gemini answer.",))
    made = lab.ctl(d, "backup", says=("backup written", "2 sessions, 2 messages", "audit head"))
    lab.ctl(d, "chat", "--new-session", "--name", "later", "after the backup",
            says=("This is a fake Gemini answer.",))
    lab.section("symptom")
    lab.ctl(d, "sessions", "delete", "work", says=("deleted",))
    lab.ctl(d, "history", "work", says=("no session 'work'",))
    lab.section("refused")
    backup = _backup_path(made.stdout.decode())
    lab.offline(d, "restore", backup, says=("restore needs agentd stopped",))
    lab.section("restore")
    lab.ctl(d, "stop", says=("stopped",))
    lab.offline(d, "restore", backup, says=("restored", "2 sessions, 2 messages", "audit head",
                                            "kept as", "anchor now points"))
    lab.section("recovery")
    d.start()
    lab.pid_of(d)
    lab.show("agentd    # or: systemctl start agentd.socket", "")
    lab.ctl(d, "status", says=("READY (healthy)",))
    lab.ctl(d, "history", "work", says=("what we decided",))
    lab.ctl(d, "history", "later", says=("no session 'later'",))
    lab.ctl(d, "audit", "verify", says=("audit trail intact",))


def _backup_path(printed: str) -> str:
    """The file `agentctl backup` wrote: the first path it printed."""
    match = re.search(r"/\S+\.db", printed)
    if match is None:
        raise AssertionError(f"no backup path in {printed!r}")
    return match.group(0)


SCENARIOS: dict[str, Callable[[Lab], None]] = {
    "gemini_unreachable": gemini_unreachable,
    "gemini_quota": gemini_quota,
    "api_key_rejected": api_key_rejected,
    "model_retired": model_retired,
    "disk_full": disk_full,
    "db_key": db_key,
    "store_files": store_files,
    "crash": crash,
    "stuck_loop": stuck_loop,
    "busy": busy,
    "second_daemon": second_daemon,
    "socket_dir_planted": socket_dir_planted,
    "backup_restore": backup_restore,
}
