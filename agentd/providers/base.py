"""The provider interface: what the chat pipeline hands a model and gets back.

A provider turns a `GenerationRequest` into an `Answer`. It has one abstract
method, `generate()`; everything else has a harmless default so small
providers (and fakes) stay small. Resilience (retries, breaker, fallback,
degraded answers) wraps a provider from the outside: see `resilience.py`.
"""

from __future__ import annotations

import abc
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Literal, NamedTuple

if TYPE_CHECKING:
    from agentd.providers.errors import ProviderError

Role = Literal["user", "model"]

OnChunk = Callable[[str], Awaitable[None]]
"""Receives each piece of answer text as it arrives (streaming mode)."""


# The records here (and the daemon's other small records on its path to READY)
# are NamedTuples rather than frozen dataclasses: on Python 3.11 a frozen
# dataclass compiles six methods as its module is imported, ~1 ms per class on
# our machines, and READY waits for every one (docs/performance.md, startup).
class Turn(NamedTuple):
    """One message of a conversation."""

    role: Role
    text: str


class GenerationRequest(NamedTuple):
    """Everything a provider needs for one answer.

    `turns` is the fitted history, oldest first, ending with the user's new
    message. `model` None means the provider's configured primary model;
    `max_output_tokens` None means the configured cap (the model policy sets
    one per role).
    """

    request_id: str
    system_prompt: str
    turns: tuple[Turn, ...]
    model: str | None = None
    max_output_tokens: int | None = None


class Answer(NamedTuple):
    """The outcome of one request, always an answer the user can read.

    degraded      the text is not a complete model answer: a placeholder that
                  explains why the model could not answer, or a stream that
                  broke after some text was already delivered.
    fallback_used the fallback model wrote it.
    attempts      HTTP attempts made, retries and fallback included.
    notice        a one-line note for the user beside the answer (history
                  trimmed, answer cut off...); never part of `text`.
    error_kind    the ProviderError kind behind a degraded or blocked answer.

    Token counts are the service's own (usage metadata), 0 when unknown.
    """

    text: str
    model: str
    tokens_in: int = 0
    tokens_out: int = 0
    degraded: bool = False
    fallback_used: bool = False
    attempts: int = 1
    notice: str | None = None
    error_kind: str | None = None


class Provider(abc.ABC):
    """A chat backend."""

    @abc.abstractmethod
    async def generate(self, request: GenerationRequest, on_chunk: OnChunk | None = None) -> Answer:
        """Answer `request`.

        With `on_chunk`, stream: call it with each piece of text as it arrives,
        in order, and return the whole answer at the end. Without it, return
        the answer in one piece. Failures raise `ProviderError`;
        `asyncio.CancelledError` always propagates.
        """

    def configuration_problem(self) -> ProviderError | None:
        """Why this provider cannot work at all (e.g. no API key), found without I/O."""
        return None

    async def probe(self, model: str) -> None:
        """A cheap authenticated call proving the service and key work; raises ProviderError."""
        return None  # nothing remote to check by default

    async def warm_up(self) -> None:
        """Pay one-off start-up costs (imports, clients) ahead of the first request."""
        return None

    async def aclose(self) -> None:
        """Release connections and clients."""
        return None
