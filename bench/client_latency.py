"""client_latency: `agentctl status`, whole-process wall time, against a minimal click client.

Four programs, each run as a whole process against the same running daemon
and interleaved round by round (so a noisy moment hits all of them alike):

    python -I -c pass              the interpreter alone
    raw socket+msgpack client      bench/programs/raw_status.py, for scale
    minimal click client           bench/programs/click_status.py: THE FLOOR
    agentctl status                the console script users run

Target: agentctl ≤ 1.10x the minimal click client. Also reported against the
interpreter. ``-X importtime`` of both clients names what agentctl imports
beyond the floor.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

from bench.harness import (
    AGENTCTL,
    PYTHON,
    Daemon,
    Workdir,
    median,
    spread,
    time_runs,
    with_interpreter_flags,
)
from bench.report import BenchResult, Figure, at_most

SUMMARY = "agentctl status wall time vs a minimal click client and the bare interpreter"
PROGRAMS = Path(__file__).resolve().parent / "programs"
WARMUP_ROUNDS = 3

INTERPRETER = "python -I -c pass"
RAW = "raw socket+msgpack"
FLOOR = "minimal click client"
AGENTCTL_STATUS = "agentctl status"


def programs() -> dict[str, list[str]]:
    return {
        INTERPRETER: [PYTHON, "-I", "-c", "pass"],
        RAW: [PYTHON, str(PROGRAMS / "raw_status.py")],
        FLOOR: [PYTHON, str(PROGRAMS / "click_status.py")],
        AGENTCTL_STATUS: [*AGENTCTL, "status"],
    }


def run(quick: bool) -> BenchResult:
    rounds = 10 if quick else 25
    result = BenchResult("client_latency")
    with Workdir() as workdir, Daemon(workdir, workdir.environ()) as daemon:
        daemon.start()
        env = workdir.environ()
        times = measure(programs(), env, rounds)
        extra = extra_imports(env)
        daemon.stop()
    med = {name: median(values) for name, values in times.items()}
    result.add(Figure(f"agentctl status (median of {rounds})", med[AGENTCTL_STATUS], "ms",
                      FLOOR, med[FLOOR], (at_most(1.10, "ratio"),)))
    result.add(Figure("agentctl status", med[AGENTCTL_STATUS], "ms", INTERPRETER, med[INTERPRETER]))
    result.add(Figure(FLOOR, med[FLOOR], "ms", INTERPRETER, med[INTERPRETER]))
    result.add(Figure(RAW + " client", med[RAW], "ms", INTERPRETER, med[INTERPRETER]))
    result.info = {
        "rounds": rounds, "warmup_rounds": WARMUP_ROUNDS,
        "wall_ms": {name: spread(values) for name, values in times.items()},
        "agentctl_extra_imports": extra,
    }
    result.notes.append(
        f"medians of {rounds} interleaved rounds after {WARMUP_ROUNDS} warm-up rounds; "
        "every process run with the venv's python"
    )
    if extra["modules"]:
        top = ", ".join(f"{name} {ms:.1f} ms" for name, ms in extra["top_self_ms"][:6])
        result.notes.append(
            f"agentctl imports {extra['modules']} modules the floor does not "
            f"({extra['self_ms']:.1f} ms self time under -X importtime); heaviest: {top}"
        )
    return result


def measure(argvs: dict[str, list[str]], env: dict[str, str], rounds: int) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {name: [] for name in argvs}
    for round_no in range(WARMUP_ROUNDS + rounds):
        for name, argv in argvs.items():
            elapsed = time_runs(argv, env)
            if round_no >= WARMUP_ROUNDS:
                times[name].append(elapsed)
    return times


def extra_imports(env: dict[str, str]) -> dict[str, Any]:
    """Modules agentctl imports that the floor does not, with their self time in ms."""
    floor = import_times([PYTHON, "-X", "importtime", str(PROGRAMS / "click_status.py")], env)
    ours = import_times(with_interpreter_flags([*AGENTCTL, "status"], "-X", "importtime"), env)
    extra = {name: ms for name, ms in ours.items() if name not in floor}
    top = sorted(extra.items(), key=lambda item: item[1], reverse=True)
    return {
        "modules": len(extra), "self_ms": round(sum(extra.values()), 2),
        "top_self_ms": [(name, round(ms, 2)) for name, ms in top[:12]],
    }


def import_times(argv: list[str], env: dict[str, str]) -> dict[str, float]:
    """{module: self ms} from one ``-X importtime`` run."""
    done = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
    out: dict[str, float] = {}
    for line in done.stderr.splitlines():
        if not line.startswith("import time:") or "self [us]" in line:
            continue
        self_us, _cumulative, name = (part.strip() for part in line.removeprefix("import time:").split("|"))
        out[name] = int(self_us) / 1000
    return out
