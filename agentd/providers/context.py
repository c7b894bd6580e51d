"""Fitting conversation history into a token budget.

Tokens are *estimated*, unless known: about 4 characters per token for
English text (Google's own rule of thumb for Gemini), rounded up, plus a few
tokens per turn for the role and framing. Counting exactly would need the
tokenizer or a network round trip per request; the estimate only has to keep
prompts well inside the model's window, and the service's own "too long"
answer is the backstop (see resilience.py, which trims again once). A stored
answer's own usage figure (tokens_out) is its real size and is used instead
(context_summary.py passes it), at no extra call.

Rules: the system prompt always stays; the newest user turn (and anything
after it) always stays, even alone over budget; older turns are dropped
oldest first; the kept history never starts with a model turn, since Gemini
expects a conversation to open with the user.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

from agentd.providers.base import Turn

CHARS_PER_TOKEN = 4
TURN_OVERHEAD_TOKENS = 4


class FittedHistory(NamedTuple):
    turns: tuple[Turn, ...]  # kept, oldest first
    omitted: int  # older turns left out
    estimated_tokens: int  # system prompt + kept turns


def estimate_tokens(text: str) -> int:
    """Estimated tokens of `text` (~4 characters each)."""
    return math.ceil(len(text) / CHARS_PER_TOKEN)


def estimate_turn(turn: Turn) -> int:
    return estimate_tokens(turn.text) + TURN_OVERHEAD_TOKENS


def fit_history(
    turns: Sequence[Turn],
    budget: int,
    system_prompt: str = "",
    known: Sequence[int | None] = (),
) -> FittedHistory:
    """Keep the newest turns that fit `budget` tokens together with the system prompt.

    `known[i]`, when given and not None, is turn i's real token count (the usage a
    stored answer reported): it replaces the estimate of that turn's text."""

    def cost(index: int) -> int:
        real = known[index] if index < len(known) else None
        return estimate_turn(turns[index]) if real is None else real + TURN_OVERHEAD_TOKENS

    start = _newest_user_index(turns)
    used = estimate_tokens(system_prompt) + sum(cost(i) for i in range(start, len(turns)))
    while start > 0 and used + cost(start - 1) <= budget:
        start -= 1
        used += cost(start)
    while start < len(turns) - 1 and turns[start].role == "model":
        used -= cost(start)
        start += 1
    return FittedHistory(turns=tuple(turns[start:]), omitted=start, estimated_tokens=used)


def _newest_user_index(turns: Sequence[Turn]) -> int:
    """Where the mandatory tail starts: the newest user turn, else the last turn."""
    for index in range(len(turns) - 1, -1, -1):
        if turns[index].role == "user":
            return index
    return max(len(turns) - 1, 0)
