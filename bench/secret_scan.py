"""secret_scan: what scanning a 200 KB prompt for credentials adds to a chat, in process.

    prompt     200 KB (chat.max_prompt_bytes, the largest prompt agentd takes) of
               ordinary text: this repository's docs, config and code, and
               synthetic log lines full of look-alikes (UUIDs, hashes, ids)
    floor      what the chat path does with every prompt anyway: encode it to
               UTF-8 to check its size (validate_prompt)
    measured   the governance step on that prompt: scan with the default policy,
               judge, and build the text to send (redacted where needed)

Cases: a clean prompt (the common one), the same prompt with one planted
credential of every kind (redacted or refused per the default policy), and a
clean prompt with every class on, personal data included (off by default).
The figure is the median of many runs; the target is the issue's: at most 5 ms.

Then whole chats: 32 concurrent chat clients against the instant fake Gemini
(as chat_throughput), with the scan on (the default policy; every request's
history is scanned again) and off (`[secrets_scan] enabled = false`), in
alternating turns, best of each. Target: on >= 0.95x off.
"""

from __future__ import annotations

import os
import random
import statistics
import time
from collections.abc import Callable
from pathlib import Path

from bench.harness import REPO, Daemon, Workdir, chat_environ, fake_gemini, run_chats
from bench.report import BenchResult, Figure, at_least, at_most

SUMMARY = "ms that scanning a 200 KB prompt for secrets adds; chats/s with the scan on vs off"
WARMED_UP_LOG = "gemini client ready"
PROMPT_BYTES = 200_000
TARGET_MS = 5.0


def run(quick: bool) -> BenchResult:
    from agentd.governance.scan import Scanner, judge, redact
    from agentd.governance.settings import CLASSES, ScanSettings
    from tests.planted_secrets import PLANTED

    rounds = 30 if quick else 300
    clean = ordinary_text(PROMPT_BYTES)
    planted = plant(clean, [text for text, _ in PLANTED.values()])
    default = ScanSettings()
    scanner = Scanner.for_policy(default)
    everything = Scanner(CLASSES)

    def govern(scan: Scanner, prompt: str) -> Callable[[], object]:
        def step() -> object:
            verdict = judge(scan.scan(prompt), default, override=False)
            return redact(prompt, verdict.redacted) if verdict.redacted else prompt

        return step

    floor_wall, floor_cpu = median_ms(lambda: len(clean.encode("utf-8")), rounds)
    result = BenchResult("secret_scan")
    cases = {
        "clean 200 KB prompt, default policy": govern(scanner, clean),
        "200 KB with every kind planted, default policy": govern(scanner, planted),
        "clean 200 KB prompt, every class (PII on)": govern(everything, clean),
    }
    for name, step in cases.items():
        wall, cpu = median_ms(step, rounds)
        targets = (at_most(TARGET_MS),) if "default" in name else ()
        result.add(Figure(f"{name} (wall)", wall, "ms", "encode only", floor_wall, targets))
        result.add(Figure(f"{name} (CPU)", cpu, "ms", "encode only", floor_cpu, targets))
    result.info = {
        "prompt_bytes": len(clean.encode()),
        "rounds": rounds,
        "planted": len(PLANTED),
        "load_average": os.getloadavg()[0],
    }
    add_throughput(result, quick)
    result.notes.append(
        "in process; the figure is the scan's whole added cost per chat (it runs once, "
        "before the provider call); PII classes are off by default. Wall time includes "
        "waiting for a core on a busy machine; CPU time is this thread's own"
    )
    return result


def median_ms(step: Callable[[], object], rounds: int) -> tuple[float, float]:
    """Median wall and CPU (this thread's) milliseconds of one step."""
    step()  # compile the patterns, warm the caches
    wall, cpu = [], []
    for _ in range(rounds):
        started, started_cpu = time.perf_counter(), time.thread_time()
        step()
        cpu.append((time.thread_time() - started_cpu) * 1000)
        wall.append((time.perf_counter() - started) * 1000)
    return statistics.median(wall), statistics.median(cpu)


def ordinary_text(size: int) -> str:
    """Docs, config and code of this repository, interleaved with synthetic log lines."""
    rng = random.Random(17)
    sources = [*sorted((REPO / "docs").glob("*.md")), REPO / "etc" / "agentd.toml"]
    sources += sorted((REPO / "agentd").rglob("*.py"))
    pieces: list[str] = []
    total = 0
    for path in sources:
        for line in Path(path).read_text(encoding="utf-8").splitlines():
            pieces += [line, log_line(rng)]
            total += len(line) + len(pieces[-1]) + 2
            if total >= size:
                return "\n".join(pieces)[:size]
    while total < size:
        pieces.append(log_line(rng))
        total += len(pieces[-1]) + 1
    return "\n".join(pieces)[:size]


def log_line(rng: random.Random) -> str:
    uuid = "-".join(f"{rng.getrandbits(n * 4):0{n}x}" for n in (8, 4, 4, 4, 12))
    digest = f"{rng.getrandbits(256):064x}"
    return (
        f"Dec  3 17:{rng.randrange(60):02d}:{rng.randrange(60):02d} host app[{rng.randrange(99999)}]: "
        f"request {uuid} user_id={rng.randrange(10**9)} took {rng.random() * 900:.1f}ms "
        f"etag={digest[:32]} sha256={digest} status={rng.choice((200, 201, 404, 500))}"
    )


def plant(text: str, secrets: list[str]) -> str:
    """The text with each secret inserted on its own line, spread evenly."""
    lines = text.splitlines()
    step = max(1, len(lines) // (len(secrets) + 1))
    for index, secret in enumerate(secrets, start=1):
        lines.insert(index * step + index - 1, secret)
    return "\n".join(lines)


def add_throughput(result: BenchResult, quick: bool) -> None:
    """Chats/s with the scan on and off, alternating turns on one fake Gemini."""
    count, rounds = (160, 1) if quick else (320, 3)
    rates: dict[str, list[float]] = {"on": [], "off": []}
    with Workdir() as workdir, fake_gemini() as fake:
        env, note = chat_environ(workdir, fake.url)
        for _ in range(rounds):
            for case, enabled in (("off", "false"), ("on", "true")):
                rates[case].append(chat_rate(workdir, {**env, "AGENTD_SECRETS_SCAN__ENABLED": enabled}, count))
    on, off = max(rates["on"]), max(rates["off"])
    result.add(Figure("chats/s, scan on (32 clients)", on, "chats/s", "scan off", off, (at_least(0.95, "ratio"),)))
    result.info["throughput"] = {"count": count, "rounds": rounds, "rates": rates, "settings": note}


def chat_rate(workdir: Workdir, env: dict[str, str], count: int) -> float:
    with Daemon(workdir, env) as daemon:
        daemon.start()
        daemon.wait_for_log(WARMED_UP_LOG)
        run_chats(daemon.socket, 64)  # warm-up: connections, first sessions, patterns compiled
        rate = float(run_chats(daemon.socket, count)["rate"])
        daemon.stop()
    return rate
