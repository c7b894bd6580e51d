"""startup: from exec to READY=1 on a real NOTIFY_SOCKET, and idle RSS after READY.

Each round, interleaved (a noisy moment hits every variant alike)::

    python -I -c pass                               floor: the interpreter
    python -c "import click, msgpack, sqlcipher3"   floor: the libraries the path to READY needs
    agentd, first start       no state dir: key generated, database created, migrations run
    agentd, restart           the same, now existing, empty store (what systemd restarts see)
    agentd, restart + key     GEMINI_API_KEY set: google-genai must load only after READY

Targets (issue 13): READY ≤ 200 ms (median) on an empty store, first start
and restarts; idle RSS without a key ≤ 60 MB; idle RSS with a key, the SDK
warmed up, ≤ 1.12x its floor. RSS floors are idle processes that import the
same libraries (and, for the key case, build a google-genai client). Whether
google.genai is imported before READY is checked with ``-X importtime``: its
import lines must come after the daemon's "ready on" log line.
"""

from __future__ import annotations

from bench.harness import (
    AGENTD,
    PYTHON,
    Daemon,
    FakeGemini,
    Workdir,
    fake_gemini,
    gemini_environ,
    median,
    proc_status_kb,
    spread,
    started_process,
    time_runs,
    wait_stable_rss,
    with_interpreter_flags,
)
from bench.report import BenchResult, Figure, at_most

SUMMARY = "exec to READY=1 (empty store) vs the interpreter and its imports; idle RSS"

INTERPRETER = "python -I -c pass"
IMPORTS = "python -c 'import click, msgpack, sqlcipher3'"
FIRST = "first start"
RESTART = "restart"
WITH_KEY = "restart with key"
WARMED_UP_LOG = "gemini client ready"

_IDLE = "import signal; print('ready', flush=True); signal.pause()"
RSS_FLOOR = f"import asyncio, click, msgpack, sqlcipher3; {_IDLE}"
RSS_FLOOR_GENAI = (
    "import asyncio, click, msgpack, sqlcipher3\n"
    "from google import genai\nfrom google.genai import types\n"
    "client = genai.Client(api_key='x', http_options=types.HttpOptions(base_url='http://127.0.0.1:9'))\n"
    "client.aio\n" + _IDLE.replace("; ", "\n")
)

READY_EMPTY_MS = 200.0  # READY on an empty store, median
RSS_KEY_RATIO = 1.12  # idle RSS with a warm SDK over python + libs + one genai client


def run(quick: bool) -> BenchResult:
    rounds = 5 if quick else 12
    result = BenchResult("startup")
    with Workdir() as workdir, fake_gemini() as fake:
        times = measure_ready(workdir, fake, rounds)
        rss = measure_rss(workdir, fake)
        genai_before_ready = genai_imported_before_ready(workdir, fake)
    med = {name: median(values) * 1000 for name, values in times.items()}
    for name in (FIRST, RESTART, WITH_KEY):
        result.add(Figure(f"READY, {name} (median of {rounds})", med[name], "ms", INTERPRETER,
                          med[INTERPRETER], (at_most(READY_EMPTY_MS),)))
    result.add(Figure(f"READY, {RESTART}", med[RESTART], "ms", "imports floor", med[IMPORTS]))
    result.add(Figure("READY with key vs without", med[WITH_KEY], "ms", "restart without key",
                      med[RESTART]))
    result.add(Figure("idle RSS, no key", rss["no_key"], "MB", "idle python + same libs",
                      rss["floor"], (at_most(60),)))
    result.add(Figure("idle RSS, key, SDK warmed up", rss["key"], "MB",
                      "idle python + libs + genai client", rss["floor_genai"], (at_most(RSS_KEY_RATIO, "ratio"),)))
    result.info = {
        "rounds": rounds, "ready_ms": {n: spread([v * 1000 for v in vs]) for n, vs in times.items()},
        "rss_mb": rss, "google_genai_imported_before_ready": genai_before_ready,
    }
    result.notes += [
        "READY timed from just before fork+exec of the agentd console script to the READY=1 "
        "datagram on a real NOTIFY_SOCKET; then SIGTERM and wait for exit 0",
        f"google.genai on the path to READY (-X importtime, key set): "
        f"{'YES: it is imported before READY' if genai_before_ready else 'no'}",
        f"RSS of the genai SDK alone: floor with client {rss['floor_genai']:.1f} MB vs "
        f"{rss['floor']:.1f} MB without: the SDK costs {rss['floor_genai'] - rss['floor']:.1f} MB",
    ]
    return result


def measure_ready(workdir: Workdir, fake: FakeGemini, rounds: int) -> dict[str, list[float]]:
    """Seconds from exec to READY=1 for each variant, interleaved round by round."""
    plain = workdir.environ()
    keyed = workdir.environ(**gemini_environ(fake.url))
    times: dict[str, list[float]] = {n: [] for n in (INTERPRETER, IMPORTS, FIRST, RESTART, WITH_KEY)}
    start_once(workdir, plain)  # warm the page cache and write bytecode, untimed
    for _ in range(rounds):
        times[INTERPRETER].append(time_runs([PYTHON, "-I", "-c", "pass"], plain) / 1000)
        times[IMPORTS].append(time_runs([PYTHON, "-c", "import click, msgpack, sqlcipher3"], plain) / 1000)
        workdir.reset_state()
        times[FIRST].append(start_once(workdir, plain))
        times[RESTART].append(start_once(workdir, plain))
        times[WITH_KEY].append(start_once(workdir, keyed))
    return times


def start_once(workdir: Workdir, env: dict[str, str]) -> float:
    with Daemon(workdir, env) as daemon:
        ready = daemon.start()
        daemon.stop()
    return ready


def measure_rss(workdir: Workdir, fake: FakeGemini) -> dict[str, float]:
    """Idle VmRSS (MB) of the daemon without and with a key, and of the two floors."""
    out: dict[str, float] = {}
    with Daemon(workdir, workdir.environ()) as daemon:
        daemon.start()
        out["no_key"] = wait_stable_rss(daemon)
        daemon.stop()
    with Daemon(workdir, workdir.environ(**gemini_environ(fake.url))) as daemon:
        daemon.start()
        daemon.wait_for_log(WARMED_UP_LOG)
        out["key"] = wait_stable_rss(daemon)
        out["key_peak"] = proc_status_kb(daemon.pid, "VmHWM") / 1024
        daemon.stop()
    for name, code in (("floor", RSS_FLOOR), ("floor_genai", RSS_FLOOR_GENAI)):
        with started_process([PYTHON, "-c", code], ready_text="ready") as (process, _line):
            out[name] = proc_status_kb(process.pid, "VmRSS") / 1024
    return {name: round(value, 2) for name, value in out.items()}


def genai_imported_before_ready(workdir: Workdir, fake: FakeGemini) -> bool:
    """True when an import of google.genai shows in -X importtime before the READY log line."""
    argv = with_interpreter_flags(AGENTD, "-X", "importtime")
    with Daemon(workdir, workdir.environ(**gemini_environ(fake.url)), argv=argv) as daemon:
        daemon.start()
        daemon.wait_for_log(WARMED_UP_LOG)  # so the check would see a late import at all
        daemon.stop()
        lines = daemon.stderr_text().splitlines()
    ready_at = next((i for i, line in enumerate(lines) if "ready on" in line), len(lines))
    return any(_imports_genai(line) for line in lines[:ready_at])


def _imports_genai(line: str) -> bool:
    return line.startswith("import time:") and line.rstrip().endswith(("google.genai", "google.genai.types"))

