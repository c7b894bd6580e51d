"""`python -m bench [NAME ...] [--quick] [--list]`: run the benches, print tables, write JSON.

Always exits 0 once the benches ran, targets missed or not: a bench is a
measurement. A bench that cannot measure (its daemon did not start) is
reported as failed in the table and the JSON; the others still run. Exit 2
only for usage errors (an unknown bench name).
"""

from __future__ import annotations

import argparse
import importlib
import os
import subprocess
import sys
import time
import traceback
from types import ModuleType
from typing import Final

from bench.harness import PYTHON, REPO
from bench.report import BenchResult, host_info, print_result, print_summary, write_json

BENCHES: Final = (
    "client_latency",
    "server_throughput",
    "instructions",
    "startup",
    "chat_throughput",
    "store_scale",
    "rate_limit",
    "secret_scan",
    "backup",
    "audit_verify",
    "export_search",
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", metavar="NAME", help=f"benches to run (default: all): {', '.join(BENCHES)}")
    parser.add_argument("--quick", action="store_true", help="reduced counts: a smoke run, not figures to quote")
    parser.add_argument("--list", action="store_true", help="list the benches and exit")
    args = parser.parse_args(argv)
    unknown = [name for name in args.names if name not in BENCHES]
    if unknown:
        parser.error(f"unknown bench {unknown[0]!r}; choose from {', '.join(BENCHES)}")
    if args.list:
        for name in BENCHES:
            print(f"{name:18} {load(name).SUMMARY}")
        return 0
    started, host = time.time(), host_info()
    print(f"agentd benches{' (quick: reduced counts, not figures to quote)' if args.quick else ''}; "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} at start; "
          f"agentd at {host['git']}")
    compile_bytecode()
    results = [run_one(name, args.quick) for name in (args.names or BENCHES)]
    print_summary(results)
    path = write_json(results, args.quick, started, host)
    print(f"\nresults: {path.relative_to(REPO)} (and bench/results/latest.json); "
          f"{time.time() - started:.0f} s in all")
    return 0


def load(name: str) -> ModuleType:
    return importlib.import_module(f"bench.{name}")


def run_one(name: str, quick: bool) -> BenchResult:
    print(f"\n.. {name}: {load(name).SUMMARY}", flush=True)
    started = time.monotonic()
    try:
        result: BenchResult = load(name).run(quick)
    except Exception as exc:  # the edge: one bench failing must not hide the others' figures
        traceback.print_exc()
        result = BenchResult(name, skipped=f"FAILED: {exc.__class__.__name__}: {exc}")
    result.elapsed_s = time.monotonic() - started
    print_result(result)
    return result


def compile_bytecode() -> None:
    """Write __pycache__ for our code first, so no timed process compiles source.

    A deployed agentd has its bytecode compiled at install; a checkout run with
    PYTHONDONTWRITEBYTECODE=1 (as some sandboxes set it) would otherwise
    compile every module on every start and inflate each start-up figure.
    """
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    targets = ["agentd", "agentctl", "bench", "tests/fake_gemini.py"]
    subprocess.run([PYTHON, "-m", "compileall", "-q", *targets], cwd=REPO, env=env,
                   stdout=subprocess.DEVNULL, check=False)


if __name__ == "__main__":
    sys.exit(main())
