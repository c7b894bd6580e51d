"""docs/runbook.md says what really happens: its scenarios, run again, record the same facts.

docs/runbook/generate.py runs each failure scenario against a real daemon (and the
fake Gemini) and writes the page, with each scenario's facts (exit codes, states, key
fragments of what agentctl and agentd printed, log levels) in a comment under its
section. Here the scenarios run again: when behaviour changes, a fact differs and the
page must be regenerated (`python docs/runbook/generate.py`).
"""

from __future__ import annotations

import os
import re
import time

import pytest

from docs.runbook.generate import PAGE, TEMPLATE, facts_of, page_facts, render, run_all
from docs.runbook.harness import Record
from docs.runbook.scenarios import SCENARIOS

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0, reason="the scenarios mount a tmpfs and plant files owned by nobody"
)

# The budget for the whole run; a loaded machine may be slower, not 2x slower.
BUDGET_S = 120.0
_CODE = re.compile(r"^```\w*\n.*?^```$", re.DOTALL | re.MULTILINE)


@pytest.fixture(scope="module")
def records() -> dict[str, Record]:
    started = time.monotonic()
    ran = run_all()
    elapsed = time.monotonic() - started
    assert elapsed < BUDGET_S, f"the scenarios took {elapsed:.0f}s"
    return ran


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_the_page_states_what_the_scenario_does(name: str, records: dict[str, Record]) -> None:
    committed = page_facts(PAGE.read_text())
    assert name in committed, f"docs/runbook.md has no section for {name}: regenerate it"
    assert facts_of(records[name]) == committed[name], (
        "behaviour differs from docs/runbook.md: run `python docs/runbook/generate.py`, "
        "read the new transcript, and fix the prose of docs/runbook/template.md if needed"
    )


def test_the_page_is_the_current_template_filled_in(records: dict[str, Record]) -> None:
    """The prose too: the page was generated from today's template (transcripts aside)."""
    fresh = render(TEMPLATE.read_text(), records)
    assert prose(fresh) == prose(PAGE.read_text())


def prose(page: str) -> str:
    """The page without its transcripts (a run may show one block more or less)."""
    return re.sub(r"\n{3,}", "\n\n", _CODE.sub("", page))


def test_every_scenario_ran_none_is_a_placeholder(records: dict[str, Record]) -> None:
    """Every section shows a real run: no scenario skipped (e.g. the tmpfs not mounted)."""
    skipped = {name: record.skipped for name, record in records.items() if record.skipped}
    assert skipped == {}
    assert "Not shown yet" not in PAGE.read_text()
