"""The floor for chat_throughput: a bare google-genai async loop against the same fake.

    python -m bench.bare_genai --url http://127.0.0.1:PORT --concurrency 32 --count 2000 [--history]

``concurrency`` tasks share one ``genai.Client`` (the daemon's SDK settings:
its timeout, SDK retries off, automatic function calling off, the default
system prompt) and call ``client.aio.models.generate_content`` until ``count``
calls are done. With ``--history`` each task holds one conversation and sends
it whole with every prompt, as the daemon does for a session (up to the same
200 exchanges): the same requests, without the daemon. A warm-up of
``2 * concurrency`` calls first (imports, connection pool). Prints one JSON
document like bench.loadgen's.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import sys
import time
from typing import Any

from google import genai
from google.genai import types

from agentd.providers.settings import DEFAULT_SYSTEM_PROMPT

MODEL = "gemini-flash-latest"
HISTORY_MAX_TURNS = 200  # agentd's chat.history_max_turns default


def make_client(url: str) -> genai.Client:
    options = types.HttpOptions(base_url=url, timeout=10_000,
                                retry_options=types.HttpRetryOptions(attempts=1))
    return genai.Client(vertexai=False, api_key="bench-gemini-key-not-real", http_options=options)


CONFIG = types.GenerateContentConfig(
    system_instruction=DEFAULT_SYSTEM_PROMPT,
    automatic_function_calling=types.AutomaticFunctionCallingConfig(disable=True),
)


async def drive(client: genai.Client, concurrency: int, count: int, history: bool
                ) -> tuple[list[float], float]:
    latencies: list[float] = []
    remaining = count

    async def worker(index: int) -> None:
        nonlocal remaining
        conversation: list[types.Content] = []
        while remaining > 0:
            remaining -= 1
            prompt = types.Content(role="user", parts=[types.Part(text=f"bench prompt {index}-{remaining}")])
            sent = time.perf_counter()
            response = await client.aio.models.generate_content(
                model=MODEL, contents=[*conversation, prompt], config=CONFIG
            )
            if not response.text:
                raise RuntimeError("the fake answered no text")
            latencies.append((time.perf_counter() - sent) * 1000)
            if history:
                answer = types.Content(role="model", parts=[types.Part(text=response.text)])
                conversation = [*conversation, prompt, answer][-2 * HISTORY_MAX_TURNS:]

    started = time.perf_counter()
    await asyncio.gather(*(worker(i) for i in range(concurrency)))
    return latencies, time.perf_counter() - started


async def main_async(url: str, concurrency: int, count: int, history: bool) -> dict[str, Any]:
    client = make_client(url)
    await drive(client, concurrency, 2 * concurrency, history=False)
    cpu_before = _cpu_s()
    latencies, elapsed = await drive(client, concurrency, count, history)
    cpu = _cpu_s() - cpu_before
    await client.aio.aclose()
    latencies.sort()
    return {
        "ok": len(latencies), "elapsed_s": round(elapsed, 4), "rate": len(latencies) / elapsed,
        "concurrency": concurrency, "history": history,
        "latency_ms": {"p50": _pct(latencies, 50), "p90": _pct(latencies, 90),
                       "p99": _pct(latencies, 99), "max": round(latencies[-1], 3)},
        "client_cpu_s": round(cpu, 3),
    }


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _pct(ordered: list[float], q: float) -> float:
    position = (len(ordered) - 1) * q / 100
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return round(ordered[low] + (ordered[high] - ordered[low]) * (position - low), 3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--history", action="store_true", help="send each task's conversation")
    args = parser.parse_args()
    result = asyncio.run(main_async(args.url, args.concurrency, args.count, args.history))
    json.dump(result, sys.stdout)


if __name__ == "__main__":
    main()
