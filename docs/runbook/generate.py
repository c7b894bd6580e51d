"""Write docs/runbook.md from real runs: each scenario against a real daemon.

    python docs/runbook/generate.py              # run every scenario, write the page
    python docs/runbook/generate.py --check      # run them, compare with the page, write nothing
    python -m docs.runbook.generate disk_full    # only some (the page is not written)

The page is docs/runbook/template.md with its placeholders filled:
``{{name.part}}`` becomes the transcript blocks a scenario recorded in that part,
``{{name.facts}}`` the facts it recorded (a comment tests/test_runbook.py reads).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:  # run as a script: make the repository importable
    sys.path.insert(0, str(REPO))

from docs.runbook.harness import Record, run  # noqa: E402
from docs.runbook.scenarios import SCENARIOS  # noqa: E402

TEMPLATE = REPO / "docs" / "runbook" / "template.md"
PAGE = REPO / "docs" / "runbook.md"
# Scenarios mostly wait (for a daemon to start, a state to change): three at a time
# fit two cores and keep the whole run well under the two minutes.
WORKERS = 3
_PLACEHOLDER = re.compile(r"\{\{(\w+)\.(\w+)\}\}")
_FACTS = re.compile(r"<!-- facts (\w+): (.*?) -->")


def run_all(names: list[str] | None = None, workers: int = WORKERS) -> dict[str, Record]:
    """Run the scenarios (all by default), slowest first so the pool ends together."""
    chosen = names or list(SCENARIOS)
    slow_first = sorted(chosen, key=lambda n: n not in ("stuck_loop", "store_files", "api_key_rejected"))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = {name: pool.submit(run, name, SCENARIOS[name]) for name in slow_first}
        return {name: futures[name].result() for name in chosen}


def facts_of(record: Record) -> list[str]:
    return [f"skipped: {record.skipped}"] if record.skipped else record.facts


def render(template: str, records: dict[str, Record]) -> str:
    def fill(match: re.Match[str]) -> str:
        name, part = match.group(1), match.group(2)
        record = records[name]
        if part == "facts":
            return f"<!-- facts {name}: {json.dumps(facts_of(record))} -->"
        if record.skipped:
            return f"> **Not shown yet.** {record.skipped}."
        blocks = record.parts.get(part)
        if blocks is None:
            raise KeyError(f"scenario {name} recorded no part {part!r}")
        return "\n\n".join(block.render() for block in blocks)

    return _PLACEHOLDER.sub(fill, template)


def page_facts(page: str) -> dict[str, list[str]]:
    """The facts committed in the page, by scenario."""
    return {name: json.loads(facts) for name, facts in _FACTS.findall(page)}


def differences(records: dict[str, Record], page: str) -> list[str]:
    committed = page_facts(page)
    problems = []
    for name, record in records.items():
        if committed.get(name) != facts_of(record):
            problems.append(f"{name}: the page says {committed.get(name)}, "
                            f"the run says {facts_of(record)}")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="scenarios to run (default: all)")
    parser.add_argument("--check", action="store_true", help="compare with the page only")
    args = parser.parse_args(argv)
    started = time.monotonic()
    records = run_all(args.names or None)
    for name, record in records.items():
        print(f"{name:20} {record.seconds:5.1f}s  {record.skipped or 'ran'}", file=sys.stderr)
    print(f"all scenarios: {time.monotonic() - started:.1f}s", file=sys.stderr)
    if args.check or args.names:
        problems = differences(records, PAGE.read_text())
        print("\n".join(problems) or "the page matches the runs", file=sys.stderr)
        return 1 if problems else 0
    PAGE.write_text(render(TEMPLATE.read_text(), records))
    print(f"wrote {PAGE.relative_to(REPO)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
