"""The tool loop: ask the model, run the calls it asks for, give it the results, again.

    request (tools declared) ─▶ model ─▶ text only ───────────────────▶ the answer
                                  │
                                  └▶ calls ─▶ decide each (policy, role, approval)
                                              ─▶ run the allowed ones at once, each
                                                 bounded (timeout, byte cap)
                                              ─▶ one more step, up to tools.max_steps
    past max_steps or the loop's deadline ─▶ one last request that may not call tools

The loop is agentd's own: google-genai's automatic function calling is off
(providers/gemini.py), so no call runs without passing `decide` first. A
denied, unknown or failed call is still answered, with an `error` function
response, so the model can tell the user why and answer anyway.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, NamedTuple, Protocol

from agentd.providers.base import (
    Answer,
    GenerationRequest,
    ToolCall,
    ToolOutcome,
    ToolSpec,
    ToolStep,
)
from agentd.tools.settings import ToolSettings

logger = logging.getLogger(__name__)

Generate = Callable[[GenerationRequest], Awaitable[Answer]]


class Decision(NamedTuple):
    """Whether a call may run, and who said so (policy, the peer, the timeout...)."""

    allowed: bool
    server: str  # "" when no server has the tool
    verdict: str  # allow, deny, unknown, approved, refused, timeout, disconnected, role
    decided_by: str  # "policy", "uid 1000", "timeout"...
    reason: str = ""  # told to the model when not allowed


class CallRecord(NamedTuple):
    """One call's metadata, for the reply, the audit trail and the logs: never its content."""

    call: ToolCall
    decision: Decision
    outcome: str  # ok, error, timeout, truncated, not_run
    duration_ms: float
    result: str  # what the model was sent (stored encrypted, never logged)
    result_bytes: int  # before any cut


class Toolbox(Protocol):
    """What the loop needs of the tool servers."""

    def specs(self) -> tuple[ToolSpec, ...]:
        """The tools the chatting peer may use, as declared to the model."""

    async def decide(self, call: ToolCall) -> Decision:
        """Policy, role and (for `ask`) the peer's approval; never raises for a refusal."""

    async def execute(self, call: ToolCall, server: str, timeout_s: float) -> tuple[str, bool]:
        """Run an allowed call: (text, is_error). Raises TimeoutError past `timeout_s`."""

    def recorded(self, record: CallRecord) -> None:
        """A call is over (run or not): its audit row and log line."""


class LoopResult(NamedTuple):
    answer: Answer
    records: tuple[CallRecord, ...]
    steps: int


async def answer_with_tools(
    generate: Generate,
    request: GenerationRequest,
    toolbox: Toolbox,
    settings: ToolSettings,
    *,
    screen: Callable[[str], str] = str,
    clock: Callable[[], float] = time.monotonic,
) -> LoopResult:
    """The model's final answer after up to `settings.max_steps` rounds of calls.

    `screen` sees each result before the model does: the secret scan's
    redaction (governance), as for prompts."""
    specs = toolbox.specs()
    if not specs:
        return LoopResult(await generate(request), (), 0)
    request = request._replace(tools=specs)
    deadline = clock() + settings.deadline_s
    steps: list[ToolStep] = []
    records: list[CallRecord] = []
    spent = (0, 0)
    for _ in range(settings.max_steps):
        answer = await generate(request._replace(steps=tuple(steps)))
        spent = _add_tokens(spent, answer)
        if not answer.calls:
            return LoopResult(_with_tokens(answer, spent), tuple(records), len(steps))
        remaining = deadline - clock()
        if remaining <= 0:
            break
        ran = await asyncio.gather(
            *(_run_one(toolbox, call, settings, deadline, clock, screen) for call in answer.calls)
        )
        for record in ran:
            toolbox.recorded(record)
        records.extend(ran)
        steps.append(ToolStep(answer.text, tuple(_outcome(r) for r in ran)))
    # Out of steps or time: the model must now answer from what it has.
    answer = await generate(request._replace(steps=tuple(steps), allow_calls=False))
    spent = _add_tokens(spent, answer)
    note = f"The model was stopped after {len(steps)} tool steps (tools.max_steps or deadline)."
    notice = "; ".join(n for n in (answer.notice, note) if n)
    return LoopResult(
        _with_tokens(answer, spent)._replace(calls=(), notice=notice), tuple(records), len(steps)
    )


async def _run_one(
    toolbox: Toolbox,
    call: ToolCall,
    settings: ToolSettings,
    deadline: float,
    clock: Callable[[], float],
    screen: Callable[[str], str],
) -> CallRecord:
    decision = await toolbox.decide(call)
    if not decision.allowed:
        return CallRecord(call, decision, "not_run", 0.0, decision.reason, 0)
    if call.args is None:
        text = "the arguments were not a JSON object"
        return CallRecord(call, decision, "error", 0.0, text, 0)
    timeout = max(0.0, min(settings.call_timeout_s, deadline - clock()))
    started = clock()
    try:
        text, is_error = await toolbox.execute(call, decision.server, timeout)
    except TimeoutError:
        text = f"the call did not finish within {timeout:.1f} s and was abandoned"
        return CallRecord(call, decision, "timeout", _ms(clock() - started), text, 0)
    size = len(text.encode())
    kept, cut = _cap(text, settings.max_result_bytes)
    outcome = "error" if is_error else "truncated" if cut else "ok"
    return CallRecord(call, decision, outcome, _ms(clock() - started), screen(kept), size)


def _cap(text: str, limit: int) -> tuple[str, bool]:
    """`text` cut to `limit` UTF-8 bytes, with a note saying so; (text, was it cut)."""
    encoded = text.encode()
    if len(encoded) <= limit:
        return text, False
    kept = encoded[:limit].decode("utf-8", "ignore")
    note = (
        f"\n[agentd: the result was {len(encoded)} bytes; only the first {limit} "
        "are shown (tools.max_result_bytes)]"
    )
    return kept + note, True


def _outcome(record: CallRecord) -> ToolOutcome:
    if record.outcome in ("ok", "truncated"):
        return ToolOutcome(record.call, record.result)
    return ToolOutcome(record.call, None, record.result)


def _add_tokens(spent: tuple[int, int], answer: Answer) -> tuple[int, int]:
    return spent[0] + answer.tokens_in, spent[1] + answer.tokens_out


def _with_tokens(answer: Answer, spent: tuple[int, int]) -> Answer:
    # Every request of the loop is billed: the budgets charge the sum.
    return answer._replace(tokens_in=spent[0], tokens_out=spent[1])


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 3)


def describe(records: tuple[CallRecord, ...]) -> list[dict[str, Any]]:
    """The calls of a chat for its reply (`chat --json`): names, decisions, timings."""
    return [
        {
            "tool": r.call.name,
            "server": r.decision.server,
            "decision": r.decision.verdict,
            "decided_by": r.decision.decided_by,
            "outcome": r.outcome,
            "duration_ms": r.duration_ms,
            "result_bytes": r.result_bytes,
        }
        for r in records
    ]
