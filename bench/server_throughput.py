"""server_throughput: 32 persistent connections sending `status` as fast as answered.

    load generator (own process, asyncio protocols, 32 connections, closed loop)
        ├──▶ agentd                    the daemon, rate limits off
        ├──▶ bench/floor_server.py --uvloop   minimal server on agentd's loop: THE FLOOR
        └──▶ the same, standard asyncio loop  for information (the earlier floor)

The same load generator drives both, alternately, for the same time after the
same warm-up; each side gets ``rounds`` turns and its best one is reported (a
noisy neighbour only ever slows a turn down). Targets (issue 13, ratios in
one run): ≥ 0.5 of the floor's requests/s and p99 ≤ 3x the floor's p99. The
floor runs on uvloop, the loop agentd runs on, and answers agentd's own status
reply; the same floor on the standard asyncio loop is reported beside it,
without a target. CPU used by the
server and by the load generator during the turn shows which one was saturated.
"""

from __future__ import annotations

from typing import Any

from bench.harness import (
    PYTHON,
    Daemon,
    Workdir,
    limits_overrides,
    proc_cpu_s,
    run_json,
    save_status_reply,
    started_process,
)
from bench.report import BenchResult, Figure, at_least, at_most

SUMMARY = "32 clients on persistent connections sending status: req/s and p99 vs a minimal server"
CONNECTIONS = 32
RATE_RATIO = 0.5  # agentd's req/s over the uvloop floor's, at least
P99_RATIO = 3.0  # agentd's p99 over the uvloop floor's, at most


def run(quick: bool) -> BenchResult:
    duration, warmup, rounds = (2.0, 0.5, 1) if quick else (5.0, 1.0, 2)
    result = BenchResult("server_throughput")
    limits_env, limits_note = limits_overrides(enabled=False)
    with Workdir() as workdir, Daemon(workdir, workdir.environ(**limits_env)) as daemon:
        daemon.start()
        reply = save_status_reply(daemon)
        floor_socket = str(workdir.path / "floor.sock")
        uv_socket = str(workdir.path / "floor-uvloop.sock")
        floor_argv = [PYTHON, "-m", "bench.floor_server", "--socket", floor_socket, "--reply", str(reply)]
        uv_argv = [PYTHON, "-m", "bench.floor_server", "--socket", uv_socket, "--reply", str(reply),
                   "--uvloop"]
        with (
            started_process(floor_argv, ready_text="listening") as (floor, _line),
            started_process(uv_argv, ready_text="listening") as (uv_floor, _uv_line),
        ):
            turns: dict[str, list[dict[str, Any]]] = {"agentd": [], "floor": [], "floor_uvloop": []}
            for _ in range(rounds):
                turns["agentd"].append(turn(daemon.socket, daemon.pid, duration, warmup))
                turns["floor"].append(turn(floor_socket, floor.pid, duration, warmup))
                turns["floor_uvloop"].append(turn(uv_socket, uv_floor.pid, duration, warmup))
        daemon.stop()
    ours, base, uv_base = best(turns["agentd"]), best(turns["floor"]), best(turns["floor_uvloop"])
    floor_name = "minimal server on uvloop"
    result.add(Figure(f"agentd status, {CONNECTIONS} connections", ours["rate"], "req/s",
                      floor_name, uv_base["rate"], (at_least(RATE_RATIO, "ratio"),)))
    result.add(Figure("agentd status vs the floor on asyncio", ours["rate"], "req/s",
                      "minimal asyncio server", base["rate"]))
    result.add(Figure("agentd p50 latency", ours["latency_ms"]["p50"], "ms",
                      floor_name, uv_base["latency_ms"]["p50"]))
    result.add(Figure("agentd p99 latency", ours["latency_ms"]["p99"], "ms",
                      floor_name, uv_base["latency_ms"]["p99"], (at_most(P99_RATIO, "ratio"),)))
    result.info = {"connections": CONNECTIONS, "duration_s": duration, "warmup_s": warmup,
                   "rounds": rounds, "limits": limits_note, "turns": turns}
    result.notes += [
        limits_note,
        f"best of {rounds} alternating turn(s) of {duration:g} s after {warmup:g} s warm-up; "
        f"one load-generator process (asyncio protocols), {CONNECTIONS} connections, closed loop",
        f"CPU share during the turn: agentd {ours['server_cpu_share']:.0%}, its load generator "
        f"{ours['client_cpu_share']:.0%}; floor server {base['server_cpu_share']:.0%}, "
        f"its load generator {base['client_cpu_share']:.0%}; floor on uvloop "
        f"{uv_base['server_cpu_share']:.0%}, its load generator {uv_base['client_cpu_share']:.0%} "
        "(100% = one core)",
    ]
    needed = rate_for_p99(ours, P99_RATIO * uv_base["latency_ms"]["p99"])
    result.info["rate_for_p99_target"] = needed
    result.notes.append(
        f"closed loop, so mean latency = {CONNECTIONS} / rate (Little's law): with agentd's own "
        f"tail shape (p99 = {tail_shape(ours):.2f}x mean; the floor's {tail_shape(uv_base):.2f}x) "
        f"p99 <= {P99_RATIO:g}x the floor's needs >= {needed:,.0f} req/s"
    )
    if any(t["errors"] for side in turns.values() for t in side):
        result.notes.append(f"error replies seen: {[t['errors'] for t in turns['agentd']]}")
    return result


def turn(socket_path: str, server_pid: int, duration: float, warmup: float) -> dict[str, Any]:
    """One load-generator run against one server, with the server's CPU share over it."""
    cpu_before = proc_cpu_s(server_pid)
    load = run_json([
        PYTHON, "-m", "bench.loadgen", "--socket", socket_path, "--connections", str(CONNECTIONS),
        "--cmd", "status", "--duration", str(duration), "--warmup", str(warmup),
    ])
    wall = duration + warmup
    load["server_cpu_share"] = (proc_cpu_s(server_pid) - cpu_before) / wall
    load["client_cpu_share"] = load["client_cpu_s"] / wall
    return load


def best(turns: list[dict[str, Any]]) -> dict[str, Any]:
    return max(turns, key=lambda t: float(t["rate"]))


def tail_shape(load: dict[str, Any]) -> float:
    """p99 latency as a multiple of the mean."""
    latency = load["latency_ms"]
    return float(latency["p99"]) / float(latency["mean"])


def rate_for_p99(load: dict[str, Any], p99_ms: float) -> float:
    """The rate at which a server with `load`'s tail shape would have p99 = `p99_ms`."""
    return CONNECTIONS * tail_shape(load) / (p99_ms / 1000)
