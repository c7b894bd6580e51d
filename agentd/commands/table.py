"""The command table: every commands module's specs, assembled in one place.

The daemon builds it once and hands it to the Dispatcher; nothing registers
itself by being imported. A new commands module adds its SPECS below.
"""

from __future__ import annotations

from collections.abc import Iterable

from agentd.commands import (
    CommandSet,
    CommandSpec,
    audit,
    backup,
    budget,
    chat,
    export,
    history,
    logs,
    metrics,
    retention,
    search,
    status,
    stop,
    tokens,
    tools,
)

DECLARED: tuple[CommandSet, ...] = (
    status.SPECS,
    stop.SPECS,
    metrics.SPECS,
    logs.SPECS,
    audit.SPECS,
    chat.SPECS,
    history.SPECS,
    budget.SPECS,
    backup.SPECS,
    export.SPECS,
    search.SPECS,
    retention.SPECS,
    tools.SPECS,
    tokens.SPECS,
)


def command_table(declared: Iterable[CommandSet] = DECLARED) -> dict[str, CommandSpec]:
    """Name → spec of every declared command; a name declared twice is a bug."""
    table: dict[str, CommandSpec] = {}
    for command_set in declared:
        for spec in command_set.specs:
            if spec.name in table:
                raise ValueError(f"command {spec.name!r} is declared twice")
            table[spec.name] = spec
    return table
