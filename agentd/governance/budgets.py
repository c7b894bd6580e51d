"""Daily token and cost budgets, per uid and in total, kept in the encrypted store.

The ledger holds today's rows in memory (a check costs no store round trip)
and writes each charge through before the reply leaves, so usage survives a
restart. A day is a UTC day: every budget resets at 00:00 UTC. A chat is
refused once a budget is used up; the chat that crosses the line is answered
(its cost is only known afterwards), and so are chats already in flight.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Final, NamedTuple

from agentd.errors import BudgetExceeded
from agentd.governance.settings import BudgetSettings

GLOBAL: Final = "global"
DAY: Final = 86_400


class Usage(NamedTuple):
    tokens: int = 0
    cost_usd: float = 0.0

    def plus(self, other: Usage) -> Usage:
        return Usage(self.tokens + other.tokens, self.cost_usd + other.cost_usd)


class BudgetStatus(NamedTuple):
    """One budget as it stands: e.g. uid:1000 tokens, 8 200 of 10 000 used."""

    scope: str  # 'uid:<n>' or 'global'
    unit: str  # 'tokens' or 'cost_usd'
    used: float
    limit: float  # 0: no cap
    resets_at: float  # epoch seconds (next 00:00 UTC)

    @property
    def name(self) -> str:
        return f"{self.scope} {self.unit}"

    @property
    def ratio(self) -> float:
        return self.used / self.limit if self.limit else 0.0

    def as_dict(self) -> dict[str, object]:
        return {
            "budget": self.name,
            "scope": self.scope,
            "unit": self.unit,
            "used": round(self.used, 6),
            "limit": self.limit or None,
            "resets_at": self.resets_at,
        }


def uid_scope(uid: int) -> str:
    return f"uid:{uid}"


def utc_day(now: float) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(now))


def next_midnight(now: float) -> float:
    return (now // DAY + 1) * DAY


class BudgetLedger:
    """Today's usage per scope, checked before a chat and charged after its answer."""

    def __init__(
        self,
        settings: BudgetSettings,
        prices: Mapping[str, tuple[float, float]],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._settings = settings
        self._prices = dict(prices)
        self._clock = clock
        self._day = ""
        self._usage: dict[str, Usage] = {}

    def today(self) -> str:
        """The current UTC day; at a day boundary, yesterday's usage is dropped from memory."""
        day = utc_day(self._clock())
        if day != self._day:
            self._day, self._usage = day, {}
        return day

    def restore(self, day: str, usage: Mapping[str, Usage]) -> None:
        """Usage already recorded today (read at start-up)."""
        if day == self.today():
            self._usage = dict(usage)

    def cost_of(self, model: str, tokens_in: int, tokens_out: int) -> float:
        price_in, price_out = self._prices.get(model, (0.0, 0.0))
        return (tokens_in * price_in + tokens_out * price_out) / 1_000_000

    def charge(self, uid: int, model: str, tokens_in: int, tokens_out: int) -> tuple[str, Usage]:
        """Add an answer's real token counts; returns the day and what was added (to persist)."""
        day = self.today()
        added = Usage(tokens_in + tokens_out, self.cost_of(model, tokens_in, tokens_out))
        for scope in (uid_scope(uid), GLOBAL):
            self._usage[scope] = self._usage.get(scope, Usage()).plus(added)
        return day, added

    def check(self, uid: int) -> None:
        """BUDGET_EXCEEDED if a budget this uid draws on is used up."""
        for status in self.statuses(uid):
            if status.limit and status.used >= status.limit:
                raise BudgetExceeded(_exceeded_message(status, self._clock()), **status.as_dict())

    def warnings(self, uid: int) -> list[BudgetStatus]:
        """The budgets of this uid at or above the warning share of their cap."""
        return [s for s in self.statuses(uid) if s.limit and s.ratio >= self._settings.warn_ratio]

    def statuses(self, uid: int | None) -> list[BudgetStatus]:
        """One uid's budgets and the global ones; uid None: every uid with usage today."""
        self.today()
        everyone = sorted(s for s in self._usage if s != GLOBAL)
        scopes = everyone if uid is None else [uid_scope(uid)]
        s = self._settings
        out: list[BudgetStatus] = []
        for scope in scopes:
            out += self._pair(scope, s.uid_tokens_per_day, s.uid_cost_usd_per_day)
        return out + self._pair(GLOBAL, s.global_tokens_per_day, s.global_cost_usd_per_day)

    def _pair(self, scope: str, tokens: int, cost: float) -> list[BudgetStatus]:
        used = self._usage.get(scope, Usage())
        resets = next_midnight(self._clock())
        return [
            BudgetStatus(scope, "tokens", used.tokens, tokens, resets),
            BudgetStatus(scope, "cost_usd", used.cost_usd, cost, resets),
        ]


def describe_usage(status: BudgetStatus) -> str:
    if status.unit == "tokens":
        return f"{int(status.used)} of {int(status.limit)} tokens"
    return f"${status.used:.4f} of ${status.limit:.4f} (estimated)"


def reset_text(resets_at: float, now: float) -> str:
    left = max(0, int(resets_at - now))
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(resets_at))
    return f"it resets at {when} (in {left // 3600}h {left % 3600 // 60:02d}m)"


def _exceeded_message(status: BudgetStatus, now: float) -> str:
    who = "the global" if status.scope == GLOBAL else f"{status.scope.replace(':', ' ')}'s"
    unit = "token" if status.unit == "tokens" else "cost"
    return (
        f"{who} daily {unit} budget is used up: {describe_usage(status)}; "
        f"{reset_text(status.resets_at, now)}"
    )


def warning_text(statuses: list[BudgetStatus], now: float) -> str | None:
    if not statuses:
        return None
    parts = [f"{s.name}: {s.ratio:.0%} used ({describe_usage(s)})" for s in statuses]
    return f"daily budget nearly used: {'; '.join(parts)}; {reset_text(statuses[0].resets_at, now)}"
