"""instructions: CPU instructions per `status`, agentd against the floor, under callgrind.

    valgrind --tool=callgrind ── agentd                 (rate limits off)
                             └─ bench/floor_server.py  (THE FLOOR of server_throughput)
    load generator (not under valgrind): 32 connections, closed loop, `status`

server_throughput's ratio swings ±15% from run to run on these machines, more
than most changes to the request path move it. Instruction counts do not:
callgrind counts every instruction each thread of the server executes between
a zeroing after the warm-up and a dump after ``count`` requests, whatever else
the machine is doing. agentd's count is split by thread: the event loop (which
answers) and the rest (the store thread sealing and committing audit rows).

Read the figures as a lens, not as the throughput: callgrind runs a process
~50x slower, so each loop iteration serves fewer requests and each audit
commit holds fewer rows than at full speed, and it cannot see what an
instruction costs (cache misses, the GIL handed between threads).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

from bench.harness import (
    AGENTD,
    PYTHON,
    BenchError,
    Daemon,
    Workdir,
    limits_overrides,
    run_json,
    save_status_reply,
    started_process,
    with_interpreter_flags,
)
from bench.report import BenchResult, Figure

SUMMARY = "instructions per status request (callgrind): agentd's threads vs the floor server"
CONNECTIONS = 32
WARMUP_REQUESTS = 1000
START_TIMEOUT_S = 300.0  # the daemon's path to READY, ~50x slower under valgrind


def run(quick: bool) -> BenchResult:
    result = BenchResult("instructions")
    missing = [tool for tool in ("valgrind", "callgrind_control") if shutil.which(tool) is None]
    if missing:
        result.skipped = f"{', '.join(missing)} not installed (Debian: apt-get install valgrind)"
        return result
    count = 2000 if quick else 5000
    limits_env, limits_note = limits_overrides(enabled=False)
    with Workdir() as workdir:
        out = workdir.path / "callgrind"
        out.mkdir()
        ours, rows_per_commit, reply = measure_agentd(workdir, limits_env, out, count)
        floor = measure_floor(workdir, reply, out, count)
    ours_all, floor_all = sum(ours.values()), sum(floor.values())
    result.add(Figure("instructions per status, agentd event loop", ours[1], "instr",
                      "floor server", floor[1]))
    result.add(Figure("instructions per status, agentd all threads", ours_all, "instr",
                      "floor server, all threads", floor_all))
    result.info = {"requests": count, "warmup_requests": WARMUP_REQUESTS,
                   "connections": CONNECTIONS, "per_thread": {"agentd": ours, "floor": floor},
                   "audit_rows_per_commit": rows_per_commit, "limits": limits_note}
    result.notes += [
        f"counted over {count} requests after {WARMUP_REQUESTS} warm-up requests; "
        "per thread: " + ", ".join(f"agentd thread {t} {n:,.0f}" for t, n in ours.items()),
        "audit rows per commit under callgrind: "
        + (f"{rows_per_commit:.1f}" if rows_per_commit is not None else "not logged")
        + ", warm-up included (at full speed a commit holds hundreds: the store thread's "
        "count is an upper bound)",
        f"at equal cost per instruction, agentd would serve {floor_all / ours_all:.2f}x the "
        f"floor's requests/s (event loop alone: {floor[1] / ours[1]:.2f}x)",
    ]
    return result


def callgrind(out: Path, label: str) -> list[str]:
    return ["valgrind", "--tool=callgrind", "--separate-threads=yes",
            f"--callgrind-out-file={out}/{label}.%p"]


def measure_agentd(workdir: Workdir, env: dict[str, str], out: Path,
                   count: int) -> tuple[dict[int, float], float | None, Path]:
    """Instructions per request by thread, the audit rows per commit, and the
    daemon's status reply for the floor to answer with."""
    argv = [*callgrind(out, "agentd"), *with_interpreter_flags(AGENTD)]
    with Daemon(workdir, workdir.environ(**env), argv=argv) as daemon:
        daemon.start(timeout=START_TIMEOUT_S)
        reply = save_status_reply(daemon)  # before the load, as server_throughput takes it
        counts = count_requests(daemon.socket, daemon.pid, out, "agentd", count)
        daemon.stop(timeout=START_TIMEOUT_S)
        commits = re.search(r"(\d+) rows this run in (\d+) commits", daemon.stderr_text())
    rows_per_commit = int(commits.group(1)) / max(int(commits.group(2)), 1) if commits else None
    return counts, rows_per_commit, reply


def measure_floor(workdir: Workdir, reply: Path, out: Path, count: int) -> dict[int, float]:
    socket_path = str(workdir.path / "floor.sock")
    argv = [*callgrind(out, "floor"), PYTHON, "-m", "bench.floor_server", "--socket", socket_path,
            "--reply", str(reply)]
    with started_process(argv, ready_text="listening", timeout=START_TIMEOUT_S) as (floor, _line):
        return count_requests(socket_path, floor.pid, out, "floor", count)


def count_requests(socket_path: str, pid: int, out: Path, label: str, count: int) -> dict[int, float]:
    """Instructions per request, by thread number (1: the main thread), over `count` requests."""
    load(socket_path, WARMUP_REQUESTS)
    control(pid, "--zero")
    done = load(socket_path, count)
    control(pid, "--dump")
    if done["ok"] != count:
        raise BenchError(f"{label}: {done['ok']} of {count} requests answered: {done['errors']}")
    dumps = sorted(out.glob(f"{label}.{pid}.1-*"))  # the first dump, one file per thread
    if not dumps:
        raise BenchError(f"callgrind wrote no dump for {label} in {out}")
    return {int(path.name.rsplit("-", 1)[1]): total_instructions(path) / count for path in dumps}


def load(socket_path: str, count: int) -> dict[str, object]:
    return run_json([PYTHON, "-m", "bench.loadgen", "--socket", socket_path,
                     "--connections", str(CONNECTIONS), "--cmd", "status", "--count", str(count)])


def control(pid: int, action: str) -> None:
    subprocess.run(["callgrind_control", action, str(pid)], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=120)


def total_instructions(dump: Path) -> int:
    for line in dump.read_text(errors="replace").splitlines():
        if line.startswith(("totals:", "summary:")):
            return int(line.split()[1])
    raise BenchError(f"no totals in {dump}")
