"""Figures, targets and verdicts; the printed table and the JSON results file.

    Figure(value, floor) ──ratio──▶ Target ("value" or "ratio", "<=" or ">=") ──▶ HIT | MISS
    BenchResult = figures + info (how it was measured) + notes (what to know)
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

RESULTS_DIR = Path(__file__).resolve().parent / "results"


@dataclass(frozen=True)
class Target:
    """A bound on a figure's absolute value or on its ratio to the floor."""

    on: Literal["value", "ratio"]
    op: Literal["<=", ">="]
    bound: float

    def met(self, figure: Figure) -> bool | None:
        """None when the figure has nothing to compare (no floor for a ratio target)."""
        measured = figure.value if self.on == "value" else figure.ratio
        if measured is None:
            return None
        return measured <= self.bound if self.op == "<=" else measured >= self.bound

    def describe(self, unit: str) -> str:
        sign = "≤" if self.op == "<=" else "≥"
        if self.on == "ratio":
            return f"ratio {sign} {self.bound:g}"
        return f"{sign} {format_value(self.bound, unit)}"


def at_most(bound: float, on: Literal["value", "ratio"] = "value") -> Target:
    return Target(on, "<=", bound)


def at_least(bound: float, on: Literal["value", "ratio"] = "value") -> Target:
    return Target(on, ">=", bound)


@dataclass(frozen=True)
class Figure:
    """One measured value, its floor from the same run, and what it should be."""

    name: str
    value: float
    unit: str
    floor_name: str | None = None
    floor: float | None = None
    targets: tuple[Target, ...] = ()

    @property
    def ratio(self) -> float | None:
        if self.floor is None or self.floor == 0:
            return None
        return self.value / self.floor

    @property
    def verdict(self) -> str:
        """HIT when every target is met, MISS when one is not, "-" without targets."""
        results = [target.met(self) for target in self.targets]
        if not results:
            return "-"
        if any(result is False for result in results):
            return "MISS"
        return "HIT" if all(results) else "?"

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "value": self.value, "unit": self.unit,
            "floor_name": self.floor_name, "floor": self.floor, "ratio": self.ratio,
            "targets": [{**asdict(t), "text": t.describe(self.unit)} for t in self.targets],
            "verdict": self.verdict,
        }


@dataclass
class BenchResult:
    name: str
    figures: list[Figure] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    elapsed_s: float = 0.0
    skipped: str | None = None  # why the bench did not run

    def add(self, figure: Figure) -> Figure:
        self.figures.append(figure)
        return figure

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "elapsed_s": round(self.elapsed_s, 1), "skipped": self.skipped,
            "figures": [f.as_dict() for f in self.figures], "info": self.info, "notes": self.notes,
        }


def format_value(value: float, unit: str) -> str:
    if unit in ("req/s", "chats/s"):
        return f"{value:,.0f} {unit}"
    if unit == "x":
        return f"{value:.2f}x"
    if abs(value) >= 100:
        return f"{value:,.0f} {unit}"
    return f"{value:.3g} {unit}" if abs(value) < 10 else f"{value:.1f} {unit}"


def table_rows(figures: Iterable[Figure]) -> list[tuple[str, ...]]:
    rows: list[tuple[str, ...]] = [("figure", "value", "floor", "ratio", "target", "verdict")]
    for f in figures:
        floor = f"{f.floor_name}: {format_value(f.floor, f.unit)}" if f.floor is not None else ""
        ratio = f"{f.ratio:.3g}x" if f.ratio is not None else ""
        target = ", ".join(t.describe(f.unit) for t in f.targets)
        rows.append((f.name, format_value(f.value, f.unit), floor, ratio, target, f.verdict))
    return rows


def print_result(result: BenchResult, out: Any = sys.stdout) -> None:
    print(f"\n== {result.name} ({result.elapsed_s:.0f} s)", file=out)
    if result.skipped:
        print(f"   skipped: {result.skipped}", file=out)
    if result.figures:
        rows = table_rows(result.figures)
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        for index, row in enumerate(rows):
            line = "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
            print("   " + line.rstrip(), file=out)
            if index == 0:
                print("   " + "  ".join("-" * w for w in widths), file=out)
    for note in result.notes:
        print(f"   * {note}", file=out)
    out.flush()


def print_summary(results: list[BenchResult], out: Any = sys.stdout) -> None:
    figures = [f for r in results for f in r.figures if f.targets]
    misses = [f"{r.name}: {f.name}" for r in results for f in r.figures if f.verdict == "MISS"]
    hits = sum(1 for f in figures if f.verdict == "HIT")
    print(f"\n== summary: {hits} of {len(figures)} targets hit", file=out)
    for miss in misses:
        print(f"   MISS  {miss}", file=out)


def host_info() -> dict[str, Any]:
    return {
        "python": sys.version.split()[0], "executable": sys.executable,
        "platform": platform.platform(), "cpus": os.cpu_count(),
        "load_avg_at_start": os.getloadavg(), "git": git_state(),
    }


def git_state() -> str:
    """The commit measured, and whether the work tree had changes on top of it."""
    repo = RESULTS_DIR.parent.parent
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=repo, capture_output=True,
                              text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "agentd", "agentctl"], cwd=repo,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{head}{' + uncommitted changes in agentd/agentctl' if dirty else ''}"


def write_json(results: list[BenchResult], quick: bool, started: float, host: dict[str, Any]) -> Path:
    """bench/results/<timestamp>.json, and latest.json beside it; ``host`` as it was at the start."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(started))
    document = {
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "quick": quick, "host": host,
        "benches": {r.name: r.as_dict() for r in results},
    }
    text = json.dumps(document, indent=2, default=str)
    path = RESULTS_DIR / f"{stamp}{'-quick' if quick else ''}.json"
    path.write_text(text)
    (RESULTS_DIR / "latest.json").write_text(text)
    return path
