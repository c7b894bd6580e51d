"""The provider interface: what the chat pipeline hands a model and gets back.

A provider turns a `GenerationRequest` into an `Answer`. It has one abstract
method, `generate()`; everything else has a harmless default so small
providers (and fakes) stay small. Resilience (retries, breaker, fallback,
degraded answers) wraps a provider from the outside: see `resilience.py`.
"""

from __future__ import annotations

import abc
import enum
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

if TYPE_CHECKING:
    from agentd.providers.errors import ProviderError

Role = Literal["user", "model"]

OnChunk = Callable[[str], Awaitable[None]]
"""Receives each piece of answer text as it arrives (streaming mode)."""


class AnswerStatus(enum.StrEnum):
    """What an answer is; also the stored status of its model turn.

    Only COMPLETE answers are the model's whole answer (MAX_TOKENS included:
    the model ended it, at the limit it was given, and says so in a notice).
    """

    COMPLETE = "complete"
    INCOMPLETE = "incomplete"  # the model's text, but not all of it: cut mid-way, no
    #                            finish reason, stopped early (OTHER...), blocked after text
    TRUNCATED = "truncated"  # the model's text, cut by agentd at chat.max_answer_bytes
    EMPTY = "empty"  # the model produced no text; `text` says so and why
    BLOCKED = "blocked"  # the safety filters refused the prompt or the whole answer
    DEGRADED = "degraded"  # not from the model: why it could not answer


class Wait(NamedTuple):
    """A pause before the next attempt, announced to the chatting client."""

    seconds: float
    model: str  # the model to be asked again
    reason: str  # the cause, e.g. RESOURCE_EXHAUSTED, ConnectError
    message: str  # one line for a human


OnWait = Callable[[Wait], Awaitable[None]]
"""Told before each long wait between attempts (a quota's retryDelay, a long backoff)."""


# The records here (and the daemon's other small records on its path to READY)
# are NamedTuples rather than frozen dataclasses: on Python 3.11 a frozen
# dataclass compiles six methods as its module is imported, ~1 ms per class on
# our machines, and READY waits for every one (docs/performance.md, startup).
class Turn(NamedTuple):
    """One message of a conversation."""

    role: Role
    text: str


class ToolSpec(NamedTuple):
    """A tool the model may call: its name, what it does, its arguments' JSON schema."""

    name: str
    description: str
    schema: dict[str, Any]


class ToolCall(NamedTuple):
    """A function call the model asked for. `args` None: the arguments were not an object."""

    call_id: str | None
    name: str
    args: dict[str, Any] | None


class ToolOutcome(NamedTuple):
    """What a call gave, sent back as a function response: `output` or `error`."""

    call: ToolCall
    output: str | None
    error: str | None = None


class ToolStep(NamedTuple):
    """One round of the tool loop: the model's calls and what each gave, in order."""

    text: str  # any text the model wrote beside its calls
    outcomes: tuple[ToolOutcome, ...]


class GenerationRequest(NamedTuple):
    """Everything a provider needs for one answer.

    `turns` is the fitted history, oldest first, ending with the user's new
    message. `model` None means the provider's configured primary model;
    `max_output_tokens` None means the configured cap (the model policy sets
    one per role). `max_answer_bytes`: the answer's text is cut there (UTF-8
    bytes) and the rest is not read; None: no limit.
    """

    request_id: str
    system_prompt: str
    turns: tuple[Turn, ...]
    model: str | None = None
    max_answer_bytes: int | None = None
    max_output_tokens: int | None = None
    tools: tuple[ToolSpec, ...] = ()  # declared to the model; empty: none
    steps: tuple[ToolStep, ...] = ()  # the tool rounds so far, after `turns`
    allow_calls: bool = True  # False: tools stay declared, the model may not call them


class Answer(NamedTuple):
    """The outcome of one request, always an answer the user can read.

    status        what the answer is (AnswerStatus), stored with it.
    degraded      the text is not a complete model answer: a placeholder that
                  explains why the model could not answer (degraded, empty),
                  or the model's text cut short (incomplete, truncated).
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
    status: AnswerStatus = AnswerStatus.COMPLETE
    calls: tuple[ToolCall, ...] = ()  # function calls the model asked for (tool loop)


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
