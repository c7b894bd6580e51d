"""Daily token and cost budgets: the ledger on a fake clock, then real chats against the fake Gemini."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from agentd.constraints import problems
from agentd.errors import BudgetExceeded
from agentd.governance.budgets import BudgetLedger, Usage, utc_day
from agentd.governance.settings import BudgetSettings
from tests.conftest import DaemonProcess, gemini_env
from tests.fake_gemini import FakeGemini, answer
from tests.test_access import GROUP, OUTSIDER, as_user, open_path_to_others

PRICES = {"m": (1.0, 2.0)}  # USD per million tokens in / out
NOON = 1_764_763_200.0  # 2025-12-03 12:00:00 UTC


class FakeClock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def ledger(clock: FakeClock, **settings: Any) -> BudgetLedger:
    return BudgetLedger(BudgetSettings(**settings), PRICES, clock)


# -- the ledger ---------------------------------------------------------------------------------


def test_a_uid_under_its_token_cap_may_chat_and_at_the_cap_may_not() -> None:
    clock = FakeClock(NOON)
    book = ledger(clock, uid_tokens_per_day=100)
    book.charge(1000, "m", 60, 39)
    book.check(1000)  # 99 of 100: still allowed
    book.charge(1000, "m", 1, 0)
    with pytest.raises(BudgetExceeded) as refused:
        book.check(1000)
    assert refused.value.message == (
        "uid 1000's daily token budget is used up: 100 of 100 tokens; "
        "it resets at 2025-12-04 00:00 UTC (in 12h 00m)"
    )
    assert refused.value.details["budget"] == "uid:1000 tokens"
    assert refused.value.details["resets_at"] == NOON + 12 * 3600
    book.check(1001)  # another uid has its own budget


def test_the_day_boundary_resets_every_budget() -> None:
    clock = FakeClock(NOON + 12 * 3600 - 1)  # 23:59:59 UTC
    book = ledger(clock, uid_tokens_per_day=10, global_tokens_per_day=10)
    book.charge(7, "m", 10, 0)
    with pytest.raises(BudgetExceeded):
        book.check(7)
    clock.now += 1  # 00:00:00 UTC, the next day
    book.check(7)
    assert [s.used for s in book.statuses(7)] == [0, 0, 0, 0]
    assert book.today() == "2025-12-04"


def test_cost_is_estimated_from_the_price_table_and_capped() -> None:
    clock = FakeClock(NOON)
    book = ledger(clock, uid_cost_usd_per_day=0.003)
    day, added = book.charge(5, "m", 1000, 1000)  # 0.001 + 0.002 USD
    assert (day, added) == ("2025-12-03", Usage(2000, pytest.approx(0.003)))
    with pytest.raises(
        BudgetExceeded, match=r"uid 5's daily cost budget is used up: \$0\.0030 of \$0\.0030"
    ):
        book.check(5)
    assert book.cost_of("unpriced-model", 10**6, 10**6) == 0.0


def test_the_global_cap_refuses_every_uid() -> None:
    book = ledger(FakeClock(NOON), global_tokens_per_day=50)
    book.charge(1, "m", 30, 0)
    book.charge(2, "m", 30, 0)
    with pytest.raises(BudgetExceeded, match="the global daily token budget is used up: 60 of 50"):
        book.check(3)


def test_warnings_start_at_the_warning_share() -> None:
    book = ledger(FakeClock(NOON), uid_tokens_per_day=100, warn_ratio=0.8)
    book.charge(9, "m", 79, 0)
    assert book.warnings(9) == []
    book.charge(9, "m", 1, 0)
    assert [w.name for w in book.warnings(9)] == ["uid:9 tokens"]


def test_restore_takes_only_todays_usage() -> None:
    clock = FakeClock(NOON)
    book = ledger(clock, uid_tokens_per_day=10)
    book.restore(utc_day(NOON - 86_400), {"uid:4": Usage(10, 0.0)})
    book.check(4)
    book.restore(utc_day(NOON), {"uid:4": Usage(10, 0.0)})
    with pytest.raises(BudgetExceeded):
        book.check(4)


def test_an_admin_report_lists_every_uid_with_usage_today() -> None:
    book = ledger(FakeClock(NOON))
    book.charge(2, "m", 1, 1)
    book.charge(1, "m", 1, 1)
    assert [s.name for s in book.statuses(None)] == [
        "uid:1 tokens",
        "uid:1 cost_usd",
        "uid:2 tokens",
        "uid:2 cost_usd",
        "global tokens",
        "global cost_usd",
    ]


def test_negative_caps_and_a_bad_warning_share_are_config_problems() -> None:
    assert problems(BudgetSettings(uid_tokens_per_day=-1)) == [
        ("uid_tokens_per_day", "must not be negative")
    ]
    assert problems(BudgetSettings(warn_ratio=0)) == [("warn_ratio", "must be in (0, 1]")]


# -- real chats -----------------------------------------------------------------------------------


@pytest.fixture
def budget_daemon(
    make_daemon: Callable[..., DaemonProcess], fake_gemini: FakeGemini
) -> Callable[..., DaemonProcess]:
    """Factory: a daemon on the fake Gemini (answering "fine") with these settings, not started."""

    def make(**env: str) -> DaemonProcess:
        fake_gemini.set_default(answer("fine"))
        return make_daemon(gemini_env(fake_gemini, **env))

    return make


def chat(d: DaemonProcess, prompt: str, *args: str) -> tuple[int, dict[str, Any], str]:
    result = d.agentctl("chat", "--json", *args, input=prompt.encode())
    return result.returncode, json.loads(result.stdout), result.stderr.decode()


def budgets_of(d: DaemonProcess, *, env: dict[str, str] | None = None) -> dict[str, dict[str, Any]]:
    result = d.agentctl("budget", "--json", env=env)
    assert result.returncode == 0, result.stderr
    return {b["budget"]: b for b in json.loads(result.stdout)["budgets"]}


def used_tokens(reply: dict[str, Any]) -> int:
    return int(reply["tokens_in"]) + int(reply["tokens_out"])


def test_a_chat_crossing_the_line_is_answered_then_chat_is_refused_even_after_a_restart(
    budget_daemon: Callable[..., DaemonProcess], fake_gemini: FakeGemini
) -> None:
    """1. a small chat stays under the cap; 2. a long one crosses it mid-day: answered,
    with a warning; 3. the next is refused BUDGET_EXCEEDED (exit 4) and never sent;
    4. after a restart usage is the same and chat is still refused."""
    d = budget_daemon(AGENTD_BUDGETS__UID_TOKENS_PER_DAY="300").start()
    code, first, _ = chat(d, "hello")
    assert code == 0 and first["budget_warning"] is None
    assert used_tokens(first) < 240
    code, second, _ = chat(d, "x" * 1200)
    assert code == 0
    assert "daily budget nearly used: uid:0 tokens" in second["budget_warning"]
    total = used_tokens(first) + used_tokens(second)
    assert total >= 300
    sent = len(fake_gemini.requests)
    code, refused, err = chat(d, "one more")
    assert code == 4
    assert refused["error"]["code"] == "BUDGET_EXCEEDED"
    assert f"uid 0's daily token budget is used up: {total} of 300 tokens; it resets at" in err
    assert len(fake_gemini.requests) == sent
    assert budgets_of(d)["uid:0 tokens"]["used"] == total
    d.call("stop")
    assert d.wait_exit() == 0
    d.start()
    assert budgets_of(d)["uid:0 tokens"]["used"] == total
    assert chat(d, "after the restart")[0] == 4
    assert len(fake_gemini.requests) == sent


def test_the_warning_line_goes_to_stderr(budget_daemon: Callable[..., DaemonProcess]) -> None:
    d = budget_daemon(
        AGENTD_BUDGETS__GLOBAL_TOKENS_PER_DAY="1000000", AGENTD_BUDGETS__WARN_RATIO="0.000001"
    ).start()
    result = d.agentctl("chat", "hello")
    assert result.returncode == 0
    assert result.stdout == b"fine\n"
    assert b"agentctl: warning: daily budget nearly used: global tokens" in result.stderr


def test_a_cost_cap_refuses_with_the_estimate(budget_daemon: Callable[..., DaemonProcess]) -> None:
    d = budget_daemon(AGENTD_BUDGETS__UID_COST_USD_PER_DAY="0.00001").start()
    assert chat(d, "y" * 400)[0] == 0
    code, _, err = chat(d, "again")
    assert code == 4
    assert "uid 0's daily cost budget is used up: $0.0000" in err and "(estimated)" in err
    samples = d.call("metrics")["metrics"]["budget_used"]["samples"]
    assert any(
        s["labels"] == {"scope": "uid:0", "unit": "cost_usd"} and s["value"] > 0 for s in samples
    )


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run a client under another uid")
def test_a_user_sees_their_own_budget_and_an_admin_sees_every_uid(
    budget_daemon: Callable[..., DaemonProcess],
) -> None:
    d = budget_daemon(AGENTD_DAEMON__SOCKET_GROUP=GROUP, AGENTD_BUDGETS__UID_TOKENS_PER_DAY="5000")
    open_path_to_others(Path(d.socket).parent)
    d.start()
    assert as_user(d, OUTSIDER, GROUP, "chat", "hi").returncode == 0
    assert chat(d, "hello")[0] == 0
    mine = json.loads(as_user(d, OUTSIDER, GROUP, "budget", "--json").stdout)
    assert {b["budget"] for b in mine["budgets"]} == {
        "uid:65534 tokens",
        "uid:65534 cost_usd",
        "global tokens",
        "global cost_usd",
    }
    assert mine["all_uids"] is False
    everyone = budgets_of(d)
    assert {"uid:0 tokens", "uid:65534 tokens"} <= everyone.keys()
    assert (
        everyone["global tokens"]["used"]
        == everyone["uid:0 tokens"]["used"] + everyone["uid:65534 tokens"]["used"]
    )


def test_budget_prints_a_table(daemon: DaemonProcess) -> None:
    result = daemon.agentctl("budget")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.decode().splitlines()
    assert lines[0].split() == ["BUDGET", "USED", "LIMIT", "USE", "RESETS"]
    assert any(line.startswith("global tokens") and " none " in line for line in lines)
    assert "costs estimated with prices as of 2025-07-22" in lines[-1]


# -- the usage writer, on a real SQLCipher file ---------------------------------------------------


def test_concurrent_charges_are_all_committed_even_when_a_waiter_is_cancelled(
    tmp_path: Path,
) -> None:
    """1. 40 chats charge at once, one of them cancelled while it waits for the commit;
    2. every charge is in the store, the cancelled one too (the ledger counted it)."""
    from agentd.governance import store
    from agentd.governance.usage_writer import UsageWriter
    from agentd.secrets import Secret
    from agentd.store.database import Database
    from agentd.store.migrations import migrate

    async def scenario() -> dict[str, Usage]:
        db = Database(tmp_path / "agentd.db", Secret("5a" * 32))
        await db.open()
        await db.run(migrate)
        writer = UsageWriter(db)
        charges = [
            asyncio.create_task(
                writer.write("2025-12-03", (f"uid:{n % 2}", "global"), Usage(10, 0.5))
            )
            for n in range(40)
        ]
        await asyncio.sleep(
            0
        )  # one loop turn: each task runs to its first await (charged, waiting)
        charges[7].cancel()
        results = await asyncio.gather(*charges, return_exceptions=True)
        assert sum(isinstance(r, asyncio.CancelledError) for r in results) == 1
        await asyncio.wait_for(writer.write("2025-12-03", (), Usage()), 5)  # after the last commit
        try:
            return await db.run(store.load_day, "2025-12-03")
        finally:
            await db.close()

    rows = asyncio.run(scenario())
    assert rows == {
        "uid:0": Usage(200, 10.0),
        "uid:1": Usage(200, 10.0),
        "global": Usage(400, 20.0),
    }
