"""Health tells the truth about Gemini: a call that works is evidence, at once.

A monitor running `agentctl health || page` must stop paging when the outage is
over, not when a cached key check (health.gemini_check_interval_s, 600 s by
default) happens to be redone.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from tests.conftest import DaemonProcess, gemini_env, wait_until
from tests.fake_gemini import FakeGemini, answer, server_error


def gemini_of(d: DaemonProcess, command: str) -> tuple[int, dict[str, Any]]:
    """agentctl's exit status for `command` and its gemini component."""
    result = d.agentctl("--json", command)
    return result.returncode, json.loads(result.stdout)["components"]["gemini"]


def test_a_successful_chat_clears_a_failed_key_check_at_once(
    gemini_daemon: DaemonProcess, fake_gemini: FakeGemini
) -> None:
    """1. Gemini is down: `health` runs the key check, which fails. 2. Gemini is back and
    a chat works: status and health are ok right away, though the failed check is cached."""
    fake_gemini.set_default(server_error(503))
    code, gemini = gemini_of(gemini_daemon, "health")
    assert (code, gemini["status"]) == (1, "failed")

    fake_gemini.set_default(answer("back"))
    assert gemini_daemon.agentctl("chat", "are you there?").returncode == 0

    for command in ("status", "health"):
        code, gemini = gemini_of(gemini_daemon, command)
        assert (code, gemini["status"]) == (0, "ok"), (command, gemini)
        assert "key works" in gemini["reason"]


def test_after_the_breaker_closes_status_and_health_are_ok(
    make_daemon: Callable[..., DaemonProcess], fake_gemini: FakeGemini
) -> None:
    """1. An outage fails the key check and opens the breaker: ERROR. 2. Gemini comes back,
    the recovery probe closes the breaker: READY, and healthy, not READY (unhealthy)."""
    d = make_daemon(gemini_env(
        fake_gemini,
        AGENTD_GEMINI__BREAKER_FAILURE_THRESHOLD="2",
        AGENTD_GEMINI__BREAKER_COOLDOWN_S="0.3",
        AGENTD_GEMINI__MAX_ATTEMPTS="2",
        AGENTD_GEMINI__FALLBACK_MODEL="",
        AGENTD_DAEMON__RECOVERY_MAX_BACKOFF_S="0.5",
        AGENTD_DAEMON__HEALTH_INTERVAL_S="0.1",
    )).start()
    fake_gemini.set_default(server_error(503))
    assert gemini_of(d, "health")[0] == 1
    assert d.agentctl("chat", "hello?").returncode == 5
    wait_until(lambda: d.call("status")["state"] == "ERROR", 10, "ERROR state")

    fake_gemini.set_default(answer("back"))
    wait_until(lambda: d.call("status")["state"] == "READY", 15, "recovery to READY")

    for command in ("status", "health"):
        code, gemini = gemini_of(d, command)
        assert (code, gemini["status"]) == (0, "ok"), (command, gemini)


def test_successful_chats_are_evidence_the_key_works(
    make_daemon: Callable[..., DaemonProcess], fake_gemini: FakeGemini
) -> None:
    d = make_daemon(gemini_env(fake_gemini, AGENTD_DAEMON__HEALTH_INTERVAL_S="0.1")).start()
    assert d.agentctl("chat", "hello").returncode == 0

    wait_until(lambda: "key works" in gemini_of(d, "status")[1]["reason"], 5,
               "status to say the key works")
    assert "not verified" not in gemini_of(d, "status")[1]["reason"]
    assert not any(r.action == "get" for r in fake_gemini.requests)  # no key check was needed
