"""agentctl budget: today's usage of each daily budget, and when it resets."""

from __future__ import annotations

import datetime
from typing import Any

import click

from agentctl.context import json_option, show
from agentctl.output import print_table


@click.command()
@json_option
def budget() -> None:
    """Show each budget's use today and its reset time (yours; an admin sees every uid)."""
    show("budget", _print_budgets)


def _print_budgets(result: dict[str, Any]) -> None:
    rows = [_row(b) for b in result["budgets"]]
    print_table(["BUDGET", "USED", "LIMIT", "USE", "RESETS"], rows)
    click.echo(
        f"day {result['day']} (UTC); costs estimated with prices as of {result['prices_as_of']}"
    )


def _row(b: dict[str, Any]) -> list[str]:
    limit = b.get("limit")
    used = float(b["used"])
    share = f"{used / limit:.0%}" if limit else "-"
    resets = datetime.datetime.fromtimestamp(b["resets_at"], datetime.UTC).strftime(
        "%Y-%m-%d %H:%M UTC"
    )
    return [
        b["budget"],
        _amount(b["unit"], used),
        _amount(b["unit"], limit) if limit else "none",
        share,
        resets,
    ]


def _amount(unit: str, value: float) -> str:
    return f"{int(value)}" if unit == "tokens" else f"${value:.4f}"
