"""store_scale: READY with a 10,000-message store, and RSS over 10,000 → 50,000 chats.

    1. empty store      first start, then restarts: READY=1 times (the floor)
    2. build            5,000 real chats through the daemon against the instant
                        fake Gemini (32 connections, each chat a new one-turn
                        session) = 10,000 messages, durable as always
    3. 10k messages     restarts: READY=1 times; target median ≤ 300 ms
    4. RSS              a fresh daemon (key, SDK warmed up, idle: the floor),
                        then 10,000 chats (target ≤ 90 MB), then 40,000 more
                        (target: growth ≤ 5 MB), RSS sampled after each chunk

Chats go in chunks through the load generator. Each chat is a one-turn
session (``session_new``, then ``chat``), like scripts piping one-off prompts:
google-genai's CPU cost per call grows with the history sent (chat_throughput
shows it), and on 2 cores 55,000 deep-history chats would take an hour.
``--quick`` shrinks every count (a smoke run: its figures are not the targets').
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from bench.harness import (
    BenchError,
    Daemon,
    Workdir,
    chat_environ,
    fake_gemini,
    median,
    run_chats,
    spread,
    wait_stable_rss,
)
from bench.report import BenchResult, Figure, at_most

SUMMARY = "READY with a 10,000-message store; RSS after 10k chats and its growth to 50k"
CHATS_PER_SESSION = 1
WARMED_UP_LOG = "gemini client ready"


@dataclass(frozen=True)
class Counts:
    build_chats: int  # two messages each
    first_chats: int
    more_chats: int
    chunk: int
    ready_runs: int


FULL = Counts(build_chats=5_000, first_chats=10_000, more_chats=40_000, chunk=5_000, ready_runs=10)
QUICK = Counts(build_chats=500, first_chats=1_000, more_chats=2_000, chunk=1_000, ready_runs=5)


def run(quick: bool) -> BenchResult:
    counts = QUICK if quick else FULL
    result = BenchResult("store_scale")
    messages = 2 * counts.build_chats
    with Workdir() as workdir, fake_gemini() as fake:
        chat_env, settings_note = chat_environ(workdir, fake.url)
        plain = workdir.environ()
        empty = ready_times(workdir, plain, counts.ready_runs, fresh=True)
        build = build_store(workdir, chat_env, counts.build_chats)
        full = ready_times(workdir, plain, counts.ready_runs)
        rss = rss_over_chats(workdir, chat_env, counts)
        final = ready_times(workdir, plain, max(3, counts.ready_runs // 2))
    result.add(Figure(f"READY, {messages:,}-message store (median of {counts.ready_runs})",
                      median(full) * 1000, "ms", "empty store", median(empty) * 1000, (at_most(300),)))
    total_messages = messages + 2 * (counts.first_chats + counts.more_chats)
    result.add(Figure(f"READY, ~{total_messages:,}-message store", median(final) * 1000, "ms",
                      "empty store", median(empty) * 1000))
    result.add(Figure(f"RSS after {counts.first_chats:,} chats", rss.after_first, "MB",
                      "same daemon idle, SDK warm", rss.idle, (at_most(90),)))
    result.add(Figure(f"RSS growth {counts.first_chats:,} → {counts.first_chats + counts.more_chats:,} chats",
                      rss.after_more - rss.after_first, "MB", None, None, (at_most(5),)))
    result.add(Figure("chat rate while building", build["rate"], "chats/s"))
    result.info = {
        "counts": counts.__dict__, "settings": settings_note, "chats_per_session": CHATS_PER_SESSION,
        "ready_ms": {"empty": spread([t * 1000 for t in empty]),
                     f"{messages}_messages": spread([t * 1000 for t in full]),
                     f"~{total_messages}_messages": spread([t * 1000 for t in final])},
        "build": build, "rss_samples": rss.samples,
    }
    result.notes += [
        f"store built by {counts.build_chats:,} real chats through the daemon against the instant "
        "fake Gemini: 32 concurrent connections, each chat a new one-turn session, "
        f"{build['elapsed_s']:.0f} s at {build['rate']:.0f} chats/s",
        "READY timed without a Gemini key (the key does not change READY: see startup)",
        f"RSS (MB) after each chunk: {', '.join(f'{n:,}: {mb:.1f}' for n, mb in rss.samples)}",
        settings_note,
    ]
    if quick:
        result.notes.append("--quick counts: NOT the targets' counts; run without --quick for the figures")
    return result


def ready_times(workdir: Workdir, env: dict[str, str], runs: int, *, fresh: bool = False) -> list[float]:
    """READY=1 times of ``runs`` restarts (after a first, untimed start when ``fresh``)."""
    if fresh:
        workdir.reset_state()
        start_and_stop(workdir, env)
    return [start_and_stop(workdir, env) for _ in range(runs)]


def start_and_stop(workdir: Workdir, env: dict[str, str]) -> float:
    with Daemon(workdir, env) as daemon:
        ready = daemon.start()
        daemon.stop()
    return ready


def build_store(workdir: Workdir, env: dict[str, str], chats: int) -> dict[str, Any]:
    with Daemon(workdir, env) as daemon:
        daemon.start()
        daemon.wait_for_log(WARMED_UP_LOG)
        load = chat_chunk(daemon, chats)
        daemon.stop()
    return load


@dataclass
class RssCurve:
    idle: float
    after_first: float
    after_more: float
    samples: list[tuple[int, float]]


def rss_over_chats(workdir: Workdir, env: dict[str, str], counts: Counts) -> RssCurve:
    samples: list[tuple[int, float]] = []
    with Daemon(workdir, env) as daemon:
        daemon.start()
        daemon.wait_for_log(WARMED_UP_LOG)
        idle = wait_stable_rss(daemon)
        samples.append((0, idle))
        done = 0
        for target in (counts.first_chats, counts.first_chats + counts.more_chats):
            while done < target:
                size = min(counts.chunk, target - done)
                chat_chunk(daemon, size)
                done += size
                samples.append((done, wait_stable_rss(daemon)))
            if target == counts.first_chats:
                after_first = samples[-1][1]
        daemon.stop()
    return RssCurve(idle, after_first, samples[-1][1], samples)


def chat_chunk(daemon: Daemon, chats: int) -> dict[str, Any]:
    load = run_chats(daemon.socket, chats, extra=["--chats-per-session", str(CHATS_PER_SESSION)])
    if load["ok"] != chats:
        raise BenchError(f"{load['ok']} of {chats} chats answered: errors {load['errors']}")
    return load
