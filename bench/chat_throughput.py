"""chat_throughput: 32 concurrent chat clients, durable writes, against the instant fake Gemini.

    fake Gemini (tests/fake_gemini.py, own process, answers at once)
        ▲                               ▲
        │ google-genai                  │ google-genai
    agentd ◀── load generator           bench/bare_genai.py --history: THE FLOOR
               (32 connections,         (32 tasks on one client, same SDK
                one session each)        settings, one conversation each)

Both sides make the same calls (each of 32 conversations sends its growing
history with every prompt, as a session does) at the same concurrency,
alternately; each side gets ``rounds`` turns and its best one is reported. The
daemon does the whole pipeline for each chat: validate, admit, commit the user
turn (synchronous=FULL), read the session's history, build the request, call
the SDK, commit the answer. Target: ≥ 0.85 of the floor's calls/s. p50 and p99
reported; also the SDK with single-turn calls, and streamed chats.
"""

from __future__ import annotations

from typing import Any

from bench.harness import (
    CHAT_CONNECTIONS,
    PYTHON,
    Daemon,
    Workdir,
    chat_environ,
    fake_gemini,
    proc_cpu_s,
    run_chats,
    run_json,
)
from bench.report import BenchResult, Figure, at_least

SUMMARY = "32 concurrent chats with durable writes vs a bare google-genai loop, same fake"
WARMED_UP_LOG = "gemini client ready"


def run(quick: bool) -> BenchResult:
    count, rounds = (320, 1) if quick else (640, 2)
    result = BenchResult("chat_throughput")
    turns: dict[str, list[dict[str, Any]]] = {
        "agentd": [], "floor": [], "agentd_stream": [], "floor_single_turn": [],
    }
    with Workdir() as workdir, fake_gemini() as fake:
        env, settings_note = chat_environ(workdir, fake.url)
        with Daemon(workdir, env) as daemon:
            daemon.start()
            daemon.wait_for_log(WARMED_UP_LOG)
            run_chats(daemon.socket, 2 * CHAT_CONNECTIONS)  # warm-up: connections, first sessions
            for _ in range(rounds):
                turns["floor"].append(floor_turn(fake.url, fake.pid, count, history=True))
                turns["agentd"].append(agentd_turn(daemon, fake.pid, count, stream=False))
            turns["agentd_stream"].append(agentd_turn(daemon, fake.pid, count, stream=True))
            turns["floor_single_turn"].append(floor_turn(fake.url, fake.pid, count, history=False))
            daemon.stop()
    ours, base, streamed = best(turns["agentd"]), best(turns["floor"]), best(turns["agentd_stream"])
    single = best(turns["floor_single_turn"])
    floor_name = "bare google-genai loop"
    result.add(Figure(f"agentd chats/s, {CHAT_CONNECTIONS} clients", ours["rate"], "chats/s",
                      floor_name, base["rate"], (at_least(0.85, "ratio"),)))
    result.add(Figure("agentd chat p50", ours["latency_ms"]["p50"], "ms", floor_name,
                      base["latency_ms"]["p50"]))
    result.add(Figure("agentd chat p99", ours["latency_ms"]["p99"], "ms", floor_name,
                      base["latency_ms"]["p99"]))
    result.add(Figure("agentd streamed chats/s (as agentctl chat)", streamed["rate"], "chats/s",
                      floor_name, base["rate"]))
    result.add(Figure("bare loop with history", base["rate"], "chats/s",
                      "bare loop, single-turn calls", single["rate"]))
    result.info = {"count": count, "rounds": rounds, "settings": settings_note, "turns": turns}
    result.notes += [
        settings_note,
        f"{count} calls per turn on each side, best of {rounds} alternating turn(s); agentd chats "
        "are not streamed unless said (the floor calls generate_content); 32 connections, each "
        f"with its own new session, so the history sent grows to ~{count // CHAT_CONNECTIONS} "
        "exchanges per conversation in a turn, on both sides",
        f"CPU share: agentd {ours['server_cpu_share']:.0%}, fake Gemini {ours['fake_cpu_share']:.0%}, "
        f"load generator {ours['client_cpu_share']:.0%}; floor loop {base['client_cpu_share']:.0%}, "
        f"fake Gemini {base['fake_cpu_share']:.0%} (100% = one core; 2 cores in all)",
    ]
    result.notes.append(sdk_history_cost(base, single, count))
    errors = [t["errors"] for t in turns["agentd"] + turns["agentd_stream"] if t["errors"]]
    if errors:
        result.notes.append(f"error replies seen: {errors}")
    return result


def agentd_turn(daemon: Daemon, fake_pid: int, count: int, *, stream: bool) -> dict[str, Any]:
    cpu_daemon, cpu_fake = daemon.cpu_s(), proc_cpu_s(fake_pid)
    load = run_chats(daemon.socket, count, stream=stream)
    wall = float(load["elapsed_s"])
    load["server_cpu_share"] = (daemon.cpu_s() - cpu_daemon) / wall
    load["fake_cpu_share"] = (proc_cpu_s(fake_pid) - cpu_fake) / wall
    load["client_cpu_share"] = load["client_cpu_s"] / wall
    return load


def floor_turn(url: str, fake_pid: int, count: int, *, history: bool) -> dict[str, Any]:
    cpu_fake = proc_cpu_s(fake_pid)
    load = run_json([PYTHON, "-m", "bench.bare_genai", "--url", url,
                     "--concurrency", str(CHAT_CONNECTIONS), "--count", str(count),
                     *(["--history"] if history else [])])
    wall = float(load["elapsed_s"])
    # The fake's share includes the floor's warm-up calls: a small overstatement.
    load["fake_cpu_share"] = (proc_cpu_s(fake_pid) - cpu_fake) / wall
    load["client_cpu_share"] = load["client_cpu_s"] / wall
    return load


def sdk_history_cost(with_history: dict[str, Any], single: dict[str, Any], count: int) -> str:
    """google-genai's CPU per call, and what each exchange of history adds to it."""
    per_call = {name: 1000 * t["client_cpu_s"] / t["ok"] for name, t in
                (("history", with_history), ("single", single))}
    mean_depth = (count / CHAT_CONNECTIONS - 1) / 2  # exchanges sent, averaged over a turn
    per_exchange = (per_call["history"] - per_call["single"]) / mean_depth if mean_depth else 0.0
    return (f"bare loop CPU per call: {per_call['single']:.1f} ms single-turn, "
            f"{per_call['history']:.1f} ms with ~{mean_depth:.0f} exchanges of history on average: "
            f"google-genai spends ~{per_exchange:.2f} ms of CPU per exchange of history per call")


def best(turns: list[dict[str, Any]]) -> dict[str, Any]:
    return max(turns, key=lambda t: float(t["rate"]))
