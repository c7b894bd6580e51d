"""Health checks flip when a component really fails, and come back when it works again.

Real failures only: a tiny tmpfs filled to the last byte, a threshold above the
free space, a page of the database file corrupted on disk, the fake Gemini
rejecting the key or gone.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from agentctl.client import Client
from agentd.protocol import make_request
from tests.conftest import DaemonProcess, gemini_env, wait_until
from tests.fake_gemini import FakeGemini, answer, hang, unauthorized

FAST_CHECKS = {
    "AGENTD_DAEMON__HEALTH_INTERVAL_S": "0.1",
    "AGENTD_DAEMON__RECOVERY_MAX_BACKOFF_S": "0.2",
}


def health(d: DaemonProcess) -> tuple[int, dict[str, Any]]:
    result = d.agentctl("--json", "health")
    return result.returncode, json.loads(result.stdout)


def component(d: DaemonProcess, name: str) -> dict[str, Any]:
    return d.call("health")["components"].get(name, {"status": None})  # type: ignore[no-any-return]


def test_a_healthy_daemon_exits_0_and_lists_every_component(daemon: DaemonProcess) -> None:
    code, report = health(daemon)
    assert code == 0
    assert report["healthy"] is True and report["alerts"] == []
    wait_until(lambda: "disk" in daemon.call("health")["components"], 10, "the first checks")
    names = set(daemon.call("health")["components"])
    assert {"store", "encryption", "disk", "event_loop", "memory", "gemini"} <= names
    human = daemon.agentctl("health")
    assert human.returncode == 0 and human.stdout.startswith(b"healthy: READY")


def test_free_space_below_the_threshold_degrades_disk_and_raises_one_alert(
    make_daemon: Callable[..., DaemonProcess],
) -> None:
    """Degraded is still healthy (exit 0); the disk_low alert shows in status and health
    and is logged once as CRITICAL, however often the checks run."""
    d = make_daemon({**FAST_CHECKS, "AGENTD_HEALTH__DISK_MIN_FREE_BYTES": str(2**62)}).start()
    wait_until(lambda: d.call("status")["alerts"] != [], 10, "the disk_low alert")
    assert component(d, "disk")["status"] == "degraded"
    code, report = health(d)
    assert code == 0
    assert [a["name"] for a in report["alerts"]] == ["disk_low"]
    wait_until(
        lambda: component(d, "disk")["checked_at"] > report["alerts"][0]["since"] + 0.3,
        10,
        "more checks",
    )
    log = (d.state_dir / "agentd.log").read_text()
    assert log.count("ALERT disk_low") == 1


@pytest.fixture
def tiny_fs(short_tmp: Path) -> Iterator[Path]:
    """A 6 MiB tmpfs, unmounted at the end (skips where mounting is not allowed)."""
    mount_point = short_tmp / "tiny"
    mount_point.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=6m,mode=0700", "tmpfs", str(mount_point)],
        capture_output=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    yield mount_point
    subprocess.run(["umount", "-l", str(mount_point)], check=False)


def fill(directory: Path) -> Path:
    """Write zeros until the filesystem says it is full (unbuffered: no data held back)."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for size in (1 << 20, 1 << 16, 1 << 12, 1 << 9):
            with contextlib.suppress(OSError):
                while os.write(fd, b"\0" * size):
                    pass
    finally:
        os.close(fd)
    return filler


def test_a_full_filesystem_fails_health_and_recovers_when_space_returns(
    make_daemon: Callable[..., DaemonProcess], tiny_fs: Path
) -> None:
    """1. The state dir is a tiny tmpfs. 2. It fills up: disk fails, the agent goes to
    ERROR, health and status exit 1, yet they still answer. 3. Space comes back: READY."""
    d = make_daemon(
        {
            **FAST_CHECKS,
            "AGENTD_STATE_DIR": str(tiny_fs / "state"),
            "AGENTD_HEALTH__DISK_MIN_FREE_BYTES": "1048576",
        }
    ).start()
    filler = fill(tiny_fs)
    wait_until(lambda: d.call("status")["state"] == "ERROR", 10, "ERROR on a full disk")
    assert component(d, "disk")["status"] == "failed"
    code, report = health(d)
    assert code == 1 and report["healthy"] is False
    assert "disk" in report["failing"]
    assert d.agentctl("status").returncode == 1
    assert d.agentctl("metrics").returncode == 0  # still answering
    filler.unlink()
    wait_until(lambda: d.call("status")["state"] == "READY", 10, "recovery to READY")
    assert health(d)[0] == 0
    d.signal(signal.SIGTERM)
    assert d.wait_exit() == 0


def flood_audit(d: DaemonProcess, count: int) -> None:
    with Client(d.socket) as client:
        for n in range(count):
            client._send(make_request(n, "sessions"))  # pipelined: a row each, many in a moment
        for _ in range(count):
            client._receive()


def corrupt_pages(database: Path, count: int = 10) -> None:
    """Flip bytes inside `count` pages spread over the middle half of the file (page 1 and
    the last pages, which start-up reads, stay intact)."""
    size = database.stat().st_size
    with database.open("r+b") as handle:
        for n in range(count):
            handle.seek(size // 4 + n * (size // 2) // count + 100)
            handle.write(os.urandom(16))


def test_corrupted_pages_fail_encryption_and_the_audit_check_cleanly(
    make_daemon: Callable[..., DaemonProcess],
) -> None:
    """1. Thousands of audit rows fill many pages. 2. Stop; flip bytes in pages in the
    middle of the file. 3. Start: no crash; the integrity check names a page, health fails
    (exit 1), and audit verify reports the damage instead of an internal error."""
    d = make_daemon(FAST_CHECKS).start()
    flood_audit(d, 3000)
    d.signal(signal.SIGTERM)
    assert d.wait_exit() == 0
    corrupt_pages(d.state_dir / "agentd.db")
    d.start()
    wait_until(lambda: component(d, "encryption")["status"] == "failed", 10, "the integrity check")
    assert "HMAC verification failed for page" in component(d, "encryption")["reason"]
    code, report = health(d)
    assert code == 1 and "encryption" in report["failing"]
    verify = d.agentctl("audit", "verify")
    assert verify.returncode == 1
    assert b"BROKEN" in verify.stdout
    assert b"Traceback" not in verify.stdout + verify.stderr
    assert d.process is not None and d.process.poll() is None


def test_a_rejected_gemini_key_fails_health_and_a_good_one_restores_it(
    make_daemon: Callable[..., DaemonProcess], fake_gemini: FakeGemini
) -> None:
    """`health` makes the key check (cached otherwise): 401 → failed; the key works again
    and the cache is stale → ok."""
    d = make_daemon(gemini_env(fake_gemini, AGENTD_HEALTH__GEMINI_CHECK_INTERVAL_S="0.2")).start()
    fake_gemini.set_default(unauthorized())
    code, report = health(d)
    assert code == 1
    assert report["components"]["gemini"]["status"] == "failed"
    assert "rejected" in report["components"]["gemini"]["reason"]
    assert any(r.action == "get" for r in fake_gemini.requests)
    fake_gemini.set_default(answer("ok"))
    wait_until(lambda: health(d)[0] == 0, 10, "the key check to pass again")
    assert health(d)[1]["components"]["gemini"]["reason"].startswith("key configured and verified")


def test_the_key_check_is_not_repeated_on_every_health_call(
    gemini_daemon: DaemonProcess, fake_gemini: FakeGemini
) -> None:
    for _ in range(5):
        assert health(gemini_daemon)[0] == 0
    assert sum(r.action == "get" for r in fake_gemini.requests) == 1


def test_gemini_gone_fails_health(make_daemon: Callable[..., DaemonProcess]) -> None:
    fake = FakeGemini()  # not the fixture's: this one is stopped for good mid-test
    fake.start()
    try:
        d = make_daemon(gemini_env(fake, AGENTD_GEMINI__ATTEMPT_TIMEOUT_S="1")).start()
    finally:
        fake.stop()
    code, report = health(d)
    assert code == 1
    assert report["components"]["gemini"]["status"] == "failed"
    assert "unreachable" in report["components"]["gemini"]["reason"]


def test_no_api_key_is_degraded_but_healthy(daemon: DaemonProcess) -> None:
    code, report = health(daemon)
    assert code == 0
    assert report["components"]["gemini"]["status"] == "degraded"
    assert "no API key" in report["components"]["gemini"]["reason"]


def test_a_burst_of_busy_chats_raises_the_error_rate_alert_until_it_clears(
    make_daemon: Callable[..., DaemonProcess], fake_gemini: FakeGemini
) -> None:
    """1. One chat hangs at Gemini and holds the only slot. 2. Thirty more are refused BUSY:
    the error_rate alert fires (one CRITICAL line) and shows in status. 3. Successful
    requests bring the ratio back under the threshold: it clears (one INFO line)."""
    d = make_daemon(
        gemini_env(
            fake_gemini,
            **FAST_CHECKS,
            AGENTD_CHAT__MAX_CONCURRENT="1",
            AGENTD_CHAT__MAX_QUEUE="0",
            AGENTD_GEMINI__ATTEMPT_TIMEOUT_S="60",
            AGENTD_HEALTH__ALERT_MIN_REQUESTS="10",
            AGENTD_HEALTH__ALERT_ERROR_RATIO="0.5",
            AGENTD_LIMITS__CHAT_BURST="1000",
            AGENTD_LIMITS__SESSION_BURST="1000",
        )
    ).start()
    fake_gemini.set_default(hang())
    with Client(d.socket, timeout=60) as holder, Client(d.socket) as flooder:
        holder._send(make_request(0, "chat", {"message": "slow"}))
        wait_until(lambda: len(fake_gemini.requests) >= 1, 10, "the first chat to reach Gemini")
        for n in range(30):
            flooder._send(make_request(n, "chat", {"message": "me too"}))
            assert flooder._receive()["error"]["code"] == "BUSY"
        wait_until(
            lambda: [a["name"] for a in d.call("status")["alerts"]] == ["error_rate"],
            10,
            "the error_rate alert",
        )
        ping_until_clear(d)
    log = (d.state_dir / "agentd.log").read_text()
    assert log.count("ALERT error_rate") == 1
    assert log.count("alert error_rate cleared") == 1


def ping_until_clear(d: DaemonProcess) -> None:
    with Client(d.socket) as client:
        wait_until(lambda: client.call("status")["alerts"] == [], 10, "the alert to clear")
