"""A peer flooding refusals (unknown commands, FORBIDDEN, RATE_LIMITED) grows the audit
trail by a bounded number of rows, counted in aggregate; real peers under other uids."""

from __future__ import annotations

import asyncio
import json
import pwd
from collections import Counter
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import pytest

from agentctl.client import DaemonError
from agentd.audit import rows as audit
from agentd.audit.rows import AuditQuery
from agentd.audit.writer import AuditWriter
from agentd.refusals import RefusalAudit
from agentd.secrets import Secret
from agentd.store.database import Database
from agentd.store.migrations import migrate
from agentd.telemetry.metrics import Registry
from agentd.untrusted import clip
from tests.conftest import DaemonProcess, wait_until
from tests.fakes import FakeClock
from tests.members import needs_root, run_peer, start_member_daemon
from tests.test_access import OUTSIDER

OUTSIDER_UID = pwd.getpwnam(OUTSIDER).pw_uid
T = TypeVar("T")


def flood(d: DaemonProcess, cmd: str, count: int) -> dict[str, int]:
    """`count` requests of `cmd` from the outsider, pipelined; the codes it got back."""
    codes: dict[str, int] = run_peer(d, OUTSIDER, "flood", cmd, str(count))
    return codes


def audit_rows(d: DaemonProcess, *options: str) -> list[dict[str, Any]]:
    """Rows through `agentctl audit --json`, as root (an admin)."""
    result = d.agentctl("audit", "--json", "--limit", "10000", *options)
    assert result.returncode == 0, result.stderr
    rows: list[dict[str, Any]] = json.loads(result.stdout)
    return rows


def audit_row_count(d: DaemonProcess) -> int:
    result = d.agentctl("audit", "verify", "--json")
    assert result.returncode == 0, result.stderr
    count: int = json.loads(result.stdout)["rows_checked"]
    return count


def aggregated_counts(rows: list[dict[str, Any]]) -> Counter[str]:
    """The refusals counted in the aggregate rows of the outsider, by code."""
    total: Counter[str] = Counter()
    for row in rows:
        if row["command"] == "refused" and row["peer_uid"] == OUTSIDER_UID:
            for item in row["error_code"].split(","):
                code, _, count = item.partition("=")
                total[code] += int(count)
    return total


def individual_counts(rows: list[dict[str, Any]]) -> Counter[str]:
    return Counter(
        row["error_code"]
        for row in rows
        if row["peer_uid"] == OUTSIDER_UID and row["command"] != "refused"
    )


@pytest.fixture
def group_daemon(make_daemon: Callable[..., DaemonProcess]) -> Callable[..., DaemonProcess]:
    return lambda **env: start_member_daemon(make_daemon, env)


@needs_root
def test_a_refusal_flood_leaves_a_bounded_number_of_rows_with_the_right_counts(
    group_daemon: Callable[..., DaemonProcess],
) -> None:
    """1. A member sends 3,000 unknown commands, then 2,000 `stop`s (FORBIDDEN).
    2. The daemon still answers root meanwhile.
    3. After a stop (which flushes the aggregate) and a restart, the trail holds the
       first 20 refusals one by one and one aggregate row with the other 4,980, by code."""
    d = group_daemon(
        AGENTD_LIMITS__REFUSALS_AUDITED_EACH="20", AGENTD_LIMITS__REFUSAL_INTERVAL_S="3600"
    )
    before = audit_row_count(d)
    assert flood(d, "no-such-command", 3000) == {"UNKNOWN_COMMAND": 3000}
    assert flood(d, "stop", 2000) == {"FORBIDDEN": 2000}
    assert d.call("status")["state"] == "READY"
    assert d.agentctl("stop").returncode == 0
    assert d.wait_exit() == 0
    d.start()

    assert audit_row_count(d) - before < 40  # 5,000 rows before the fix
    rows = audit_rows(d, "--outcome", "error")
    assert individual_counts(rows) == {"UNKNOWN_COMMAND": 20}
    aggregates = [row for row in rows if row["command"] == "refused"]
    assert len(aggregates) == 1
    assert aggregates[0]["error_code"] == "FORBIDDEN=2000,UNKNOWN_COMMAND=2980"
    assert aggregates[0]["peer_uid"] == OUTSIDER_UID


@needs_root
def test_rate_limited_refusals_are_aggregated_at_each_interval_end(
    group_daemon: Callable[..., DaemonProcess],
) -> None:
    """With a 1 s interval, the aggregate rows appear while the daemon runs, and the
    rows one by one plus the aggregate counts add up to every refusal answered."""
    d = group_daemon(
        AGENTD_LIMITS__REFUSALS_AUDITED_EACH="5",
        AGENTD_LIMITS__REFUSAL_INTERVAL_S="1",
        # Faster than root's polling below, far slower than the flood.
        AGENTD_LIMITS__CHEAP_RATE="20",
        AGENTD_LIMITS__CHEAP_BURST="20",
    )
    got = flood(d, "status", 2000)
    limited = got["RATE_LIMITED"]
    assert limited >= 1800

    def all_counted() -> bool:
        rows = audit_rows(d, "--outcome", "error")
        counted = individual_counts(rows) + aggregated_counts(rows)
        return counted["RATE_LIMITED"] == limited

    wait_until(all_counted, 15, "the aggregate rows of the interval")
    rows = audit_rows(d, "--outcome", "error")
    assert [row for row in rows if row["command"] == "refused"]  # while the daemon runs
    # 5 a row each per 1 s interval; the flood took a few of them at most.
    assert individual_counts(rows)["RATE_LIMITED"] < 100
    assert d.call("status")["state"] == "READY"


@needs_root
def test_refusals_are_counted_in_metrics_whether_audited_alone_or_not(
    group_daemon: Callable[..., DaemonProcess],
) -> None:
    d = group_daemon(
        AGENTD_LIMITS__REFUSALS_AUDITED_EACH="3", AGENTD_LIMITS__REFUSAL_INTERVAL_S="3600"
    )
    flood(d, "no-such-command", 50)
    text = d.agentctl("metrics", "--prometheus").stdout.decode()
    assert 'agentd_requests_total{command="unknown",outcome="UNKNOWN_COMMAND"} 50.0' in text.split(
        "\n"
    )
    assert 'agentd_audit_refusals_aggregated_total{code="UNKNOWN_COMMAND"} 47.0' in text.split("\n")


def test_a_long_command_name_is_cut_in_debug_log_lines_and_in_the_answer(
    make_daemon: Callable[..., DaemonProcess],
) -> None:
    d = make_daemon({"AGENTD_LOG_LEVEL": "DEBUG"}).start()
    name = "\x1b]52;c;Zm9v\x07" + "x" * 5000  # an OSC 52 clipboard write, then a lot
    with pytest.raises(DaemonError) as refused:
        d.call(name)
    assert refused.value.code == "UNKNOWN_COMMAND"
    assert len(refused.value.message) < 200
    d.call("status")  # a request after it: its line is written, so the earlier one is too
    log = (d.state_dir / "agentd.log").read_text()
    assert f"xxxx...(+{len(name) - 64} chars)" in log  # the refused request's DEBUG line, cut
    assert "x" * 100 not in log
    assert "\x1b" not in log and "\\u001b]52" not in log  # neither raw nor as JSON writes it


# The ledger itself, in process, over a real SQLCipher file and the real audit writer.


def ledger_scenario(
    tmp_path: Path, steps: Callable[[RefusalAudit, FakeClock], Coroutine[Any, Any, T]]
) -> tuple[T, list[dict[str, Any]]]:
    """Run `steps` against a RefusalAudit writing to a fresh store; return what they
    returned and the aggregate rows committed."""

    async def scenario() -> tuple[T, list[dict[str, Any]]]:
        db = Database(tmp_path / "agentd.db", Secret("5a" * 32))
        await db.open()
        await db.run(migrate)
        writer = AuditWriter(db)
        await writer.start()
        counted = Registry().counter("refused_total", "refusals counted", ("code",))
        clock = FakeClock(1_750_000_000.0)
        refusals = RefusalAudit(writer, counted, audited_each=2, interval_s=60, clock=clock)
        try:
            result = await steps(refusals, clock)
            await writer.flush()
            rows = await db.run(audit.recent, AuditQuery(command="refused"))
        finally:
            await writer.close()
            await db.close()
        return result, rows

    return asyncio.run(scenario())


def test_past_its_budget_a_peers_refusals_become_one_row_with_counts_by_code(
    tmp_path: Path,
) -> None:
    async def steps(refusals: RefusalAudit, clock: FakeClock) -> list[bool]:
        codes = ["FORBIDDEN"] * 3 + ["UNKNOWN_COMMAND"] * 2
        alone = [refusals.audit_alone(1000, 7, code) for code in codes]
        alone.append(refusals.audit_alone(1001, 8, "FORBIDDEN"))  # another peer: its own budget
        clock.advance(30)
        await refusals.flush()
        return alone

    alone, rows = ledger_scenario(tmp_path, steps)
    assert alone == [True, True, False, False, False, True]
    assert len(rows) == 1
    row = rows[0]
    assert (row["peer_uid"], row["peer_pid"], row["outcome"]) == (1000, 7, "error")
    assert row["error_code"] == "FORBIDDEN=1,UNKNOWN_COMMAND=2"
    assert row["ts"] == "2025-06-15T15:06:40.000000Z"  # the first refusal counted
    assert row["latency_ms"] == 30_000  # the span the row covers


def test_a_new_interval_gives_every_peer_its_budget_again(tmp_path: Path) -> None:
    async def steps(refusals: RefusalAudit, clock: FakeClock) -> list[bool]:
        alone = [refusals.audit_alone(1000, 7, "FORBIDDEN") for _ in range(3)]
        await refusals.flush()
        await refusals.flush()  # nothing counted since: no row
        return [*alone, refusals.audit_alone(1000, 7, "FORBIDDEN")]

    alone, rows = ledger_scenario(tmp_path, steps)
    assert alone == [True, True, False, True]
    assert [row["error_code"] for row in rows] == ["FORBIDDEN=1"]


def test_clip_cuts_client_text_and_says_how_much_went() -> None:
    assert clip("x" * 100) == "x" * 64 + "...(+36 chars)"
    assert clip("status") == "status"


def test_clip_escapes_control_and_bidi_characters() -> None:
    assert clip("a\x1b[2Kb\u202ec\x00") == "a\\x1b[2Kb\\u202ec\\x00"
