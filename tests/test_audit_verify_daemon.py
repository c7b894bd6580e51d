"""`audit verify` and retention against the real daemon: incremental and --full through
agentctl, pruning on a schedule with the chain verified across the cut, and a chat
answered while a long verify runs."""

from __future__ import annotations

import asyncio
import json
import signal
import threading
from collections.abc import Callable
from typing import Any

import sqlcipher3

from agentctl.client import Client
from agentd.audit import rows
from agentd.audit.rows import AuditEvent
from agentd.secrets import Secret
from agentd.store.database import Database
from tests.conftest import DaemonProcess, gemini_env, wait_until
from tests.fake_gemini import FakeGemini
from tests.test_ops_daemon import ping_many, tamper

VERIFY_STARTED = "audit verify: checking rows after seq"


def verify_json(d: DaemonProcess, *flags: str) -> dict[str, Any]:
    done = d.agentctl("--json", "audit", "verify", *flags)
    verdict: dict[str, Any] = json.loads(done.stdout)
    return verdict


def stop(d: DaemonProcess) -> None:
    d.signal(signal.SIGTERM)
    assert d.wait_exit() == 0


def test_verify_checks_only_new_rows_and_full_checks_all(daemon: DaemonProcess) -> None:
    """1. A verify checks every row. 2. Five pings later, a plain verify checks the rows
    since (the pings and the first verify's own row); --full checks all of them."""
    ping_many(daemon, 10)
    first = verify_json(daemon)
    assert first["ok"] and first["rows_checked"] == first["head"]["seq"]
    ping_many(daemon, 5)
    second = verify_json(daemon)
    assert second["ok"] and second["start"] == first["head"]
    assert second["rows_checked"] == second["head"]["seq"] - first["head"]["seq"]
    assert second["rows_checked"] <= 7  # the pings, the verify rows, maybe a status probe
    full = verify_json(daemon, "--full")
    assert full["ok"] and full["full"] and full["rows_checked"] == full["head"]["seq"]
    text = daemon.agentctl("audit", "verify").stdout.decode()
    assert f"after seq {full['head']['seq']}" in text


def test_retention_prunes_old_rows_and_verify_passes_across_the_cut_then_finds_an_edit(
    make_daemon: Callable[..., DaemonProcess],
) -> None:
    """1. Retention of ~0.2 s, pruning every 0.1 s: rows of a burst of pings are pruned,
    bar the head; a checkpoint remains. 2. verify --full passes from the checkpoint.
    3. Restart keeping everything; a few rows more; stop; edit the first row after
    the cut behind the daemon's back: verify --full names it."""
    d = make_daemon(
        {"AGENTD_AUDIT__RETENTION_DAYS": "0.0000025", "AGENTD_AUDIT__PRUNE_INTERVAL_S": "0.1"}
    ).start()
    ping_many(d, 20)

    def pings_pruned() -> bool:
        cut = d.call("audit_verify", {"full": True})["checkpoint"]
        return cut is not None and cut["seq"] >= 20

    wait_until(pings_pruned, 10, "the pings' rows to be pruned")
    assert "audit retention: pruned" in d.stderr()
    verdict = verify_json(d, "--full")
    assert verdict["ok"], verdict
    cut = verdict["checkpoint"]
    assert cut is not None and cut["seq"] >= 20
    assert (
        verdict["start"] == cut and verdict["rows_checked"] == verdict["head"]["seq"] - cut["seq"]
    )
    stop(d)
    d.env["AGENTD_AUDIT__RETENTION_DAYS"] = "0"  # nothing pruned from here on
    d.start()
    ping_many(d, 3)  # the head moves on: the row after the cut is not the anchored one
    stop(d)
    first_kept = stored_checkpoint(d)["seq"] + 1
    tamper(d, f"UPDATE audit SET latency_ms = latency_ms + 1 WHERE seq = {first_kept}")
    d.start()
    broken = verify_json(d, "--full")
    assert not broken["ok"] and broken["first_broken_seq"] == first_kept
    assert broken["reason"] == "content edited"


def stored_checkpoint(d: DaemonProcess) -> dict[str, Any]:
    """With the daemon stopped: the checkpoint row in its state table."""
    key = (d.state_dir / "db.key").read_text().strip()
    conn = sqlcipher3.connect(str(d.state_dir / "agentd.db"), isolation_level=None)
    try:
        conn.execute(f"PRAGMA key = \"x'{key}'\"")
        found = conn.execute("SELECT value FROM state WHERE key = 'audit_checkpoint'").fetchone()
    finally:
        conn.close()
    checkpoint: dict[str, Any] = json.loads(found[0])
    return checkpoint


def build_trail(d: DaemonProcess, count: int) -> None:
    """With the daemon stopped: `count` rows sealed by the writer's own code, committed
    straight into its SQLCipher file (the socket would take minutes)."""
    key = Secret((d.state_dir / "db.key").read_text().strip())

    async def scenario() -> None:
        db = Database(d.state_dir / "agentd.db", key)
        await db.open()
        try:
            for start in range(0, count, 50_000):
                events = [
                    AuditEvent(1.7e9 + n, f"bulk-{n}", 0, 1, "status", None, None, 0.001)
                    for n in range(start, min(count, start + 50_000))
                ]
                await db.run(rows.commit_rows, events)
        finally:
            await db.close()

    asyncio.run(scenario())


def test_a_chat_is_answered_while_a_long_verify_runs(
    make_daemon: Callable[..., DaemonProcess], fake_gemini: FakeGemini
) -> None:
    """1. A trail of 200,000 rows. 2. verify --full starts (its log line is out) in
    another client. 3. A chat sent now is answered while the verify still runs: its
    reply comes first. (On the store's single thread, the chat waited for the verify.)"""
    d = make_daemon(gemini_env(fake_gemini)).start()
    stop(d)
    build_trail(d, 200_000)
    d.start()
    order: list[str] = []
    verdict: dict[str, Any] = {}

    def run_verify() -> None:
        with Client(d.socket, timeout=600) as client:
            verdict.update(client.call("audit_verify", {"full": True}))
        order.append("verify")

    verifier = threading.Thread(target=run_verify)
    verifier.start()
    try:
        wait_until(lambda: VERIFY_STARTED in d.stderr(), 60, "the verify to start")
        answer = d.call("chat", {"message": "hello"})
        order.append("chat")
        assert verifier.is_alive(), "the verify ended before the chat was answered"
    finally:
        verifier.join(600)
    assert answer["answer"]
    assert order == ["chat", "verify"]
    assert verdict["ok"] and verdict["rows_checked"] >= 200_000
