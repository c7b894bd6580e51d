"""rate_limit: a well-behaved client's chat latency while another client floods, limits on and off.

    fake Gemini, slow: every answer takes 0.2 s (tests/fake_gemini.py --delay 0.2)
    agentd, chat queue at its defaults (8 at the provider, 64 waiting)
      ├── well-behaved: 4 connections, each its own session, one chat at a time,
      │                 one every 1.25 s (within the default session budget)
      └── flooder:      32 connections in ONE session, closed loop, never backs off

    no flood     the well-behaved clients alone: THE FLOOR
    limits off   [limits] enabled = false
    limits on    the default per-session chat budget; the per-uid chat budget
                 raised so it does not also refuse the well-behaved clients

Both clients run as the same uid (a second uid needs root set-up of groups
and directories), so the per-session budget is what tells them apart: the
per-uid budget, shared, is raised out of the way in the "on" case. Reported:
the well-behaved clients' p99 (and p50) in each case against the no-flood
floor, and what the flooder got (answers, RATE_LIMITED, BUSY).
"""

from __future__ import annotations

import json
import time
from typing import Any

from bench.harness import (
    PYTHON,
    Daemon,
    Workdir,
    collect_json,
    fake_gemini,
    gemini_environ,
    spawn_json,
)
from bench.report import BenchResult, Figure

SUMMARY = "p99 of a well-behaved chat client while another floods, limits on and off (slow fake)"
DELAY_S = 0.2
POLITE_CONNECTIONS = 4
POLITE_INTERVAL_S = 1.25
FLOOD_CONNECTIONS = 32
NEEDED_FIELDS = ("enabled", "chat_rate", "chat_burst", "session_rate", "session_burst")


def run(quick: bool) -> BenchResult:
    result = BenchResult("rate_limit")
    missing = missing_limit_fields()
    if missing:
        result.skipped = f"agentd's [limits] lacks {', '.join(missing)}: nothing to measure"
        return result
    per_client = 5 if quick else 16
    cases: dict[str, dict[str, Any]] = {}
    with Workdir() as workdir, fake_gemini(DELAY_S) as fake:
        # One exchange of history: the flood's single session would otherwise grow a long
        # history, and google-genai's CPU per call with it (see chat_throughput), turning a
        # queue flood into an event-loop flood that no rate limit is about.
        base = workdir.environ(**gemini_environ(fake.url), AGENTD_CHAT__HISTORY_MAX_TURNS="1")
        cases["no flood"] = run_case(workdir, {**base, "AGENTD_LIMITS__ENABLED": "false"},
                                     per_client, flood=False)
        cases["limits off"] = run_case(workdir, {**base, "AGENTD_LIMITS__ENABLED": "false"},
                                       per_client, flood=True)
        on = {**base, "AGENTD_LIMITS__ENABLED": "true", "AGENTD_LIMITS__CHAT_RATE": "1000000",
              "AGENTD_LIMITS__CHAT_BURST": "1000000"}
        cases["limits on"] = run_case(workdir, on, per_client, flood=True)
    floor = cases["no flood"]["polite"]["latency_ms"]
    for name in ("limits off", "limits on"):
        polite = cases[name]["polite"]["latency_ms"]
        result.add(Figure(f"well-behaved p99, flood, {name}", polite["p99"], "ms",
                          "no flood", floor["p99"]))
        result.add(Figure(f"well-behaved p50, flood, {name}", polite["p50"], "ms",
                          "no flood", floor["p50"]))
    result.info = {"delay_s": DELAY_S, "chats_per_polite_client": per_client,
                   "limits_defaults": limit_defaults(), "cases": cases}
    result.notes += [
        f"fake Gemini answers after {DELAY_S:g} s; chat queue at its defaults; "
        f"{POLITE_CONNECTIONS} well-behaved connections x {per_client} chats, one every "
        f"{POLITE_INTERVAL_S:g} s, each in its own session; flooder: {FLOOD_CONNECTIONS} "
        "connections in one session, closed loop",
        "same uid for both (no second uid without root set-up): 'limits on' keeps the default "
        "per-session chat budget and raises the shared per-uid chat budget to 1e6",
        "chat.history_max_turns=1 in every case, so the flood's one session does not make each "
        "of its chats costlier as its history grows",
    ]
    for name in ("limits off", "limits on"):
        flood, polite = cases[name]["flood"], cases[name]["polite"]
        result.notes.append(
            f"{name}: flooder got {flood['ok']} answers, refusals {flood['errors'] or 'none'} "
            f"({flood['sent'] / flood['elapsed_s']:.0f} requests/s); well-behaved clients' "
            f"refusals: {polite['errors'] or 'none'}"
        )
    if not cases["limits on"]["flood"]["errors"]:
        result.notes.append(
            "limits on refused none of the flood: this agentd does not apply the chat budgets "
            "(only the cheap-command budget is checked in dispatch)"
        )
    return result


def missing_limit_fields() -> list[str]:
    import dataclasses

    from agentd import config

    section = config.SECTIONS.get("limits")
    if section is None:
        return ["the whole section"]
    names = {f.name for f in dataclasses.fields(section)}
    return [name for name in NEEDED_FIELDS if name not in names]


def limit_defaults() -> dict[str, Any]:
    import dataclasses

    from agentd import config

    return dataclasses.asdict(config.SECTIONS["limits"]())


def run_case(workdir: Workdir, env: dict[str, str], per_client: int, *, flood: bool) -> dict[str, Any]:
    """The well-behaved clients' chats, with or without a flooder running alongside."""
    with Daemon(workdir, env) as daemon:
        daemon.start()
        daemon.wait_for_log("gemini client ready")
        polite_s = per_client * POLITE_INTERVAL_S
        flooder = spawn_json(flood_argv(daemon, duration=polite_s + 2.0)) if flood else None
        if flooder is not None:
            time.sleep(1.0)  # let the flood fill the queue before measuring (a load ramp, not sync)
        polite = collect_json(spawn_json([
            PYTHON, "-m", "bench.loadgen", "--socket", daemon.socket,
            "--connections", str(POLITE_CONNECTIONS), "--cmd", "chat",
            "--count", str(POLITE_CONNECTIONS * per_client), "--interval", str(POLITE_INTERVAL_S),
            "--session-per-connection", "--args", json.dumps({"stream": False}),
        ]))
        case: dict[str, Any] = {"polite": polite}
        if flooder is not None:
            case["flood"] = collect_json(flooder)
        daemon.stop()
    return case


def flood_argv(daemon: Daemon, duration: float) -> list[str]:
    session = daemon.call("session_new")["session"]["id"]
    return [
        PYTHON, "-m", "bench.loadgen", "--socket", daemon.socket,
        "--connections", str(FLOOD_CONNECTIONS), "--cmd", "chat", "--duration", str(duration),
        "--args", json.dumps({"stream": False, "session": session}), "--message", "flood",
    ]
