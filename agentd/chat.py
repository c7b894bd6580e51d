"""The chat pipeline, in order:

    validate → govern (model policy, budgets, secret scan: governance/gate.py)
    → admit (bounded queue) → persist the user turn → build the context
    (history within a token budget) → redact → provider (timeouts, retries,
    breaker, fallback, degraded answer) → persist the answer → charge the
    budgets → reply

The user turn is committed before the provider is called, and the answer is
committed before the reply leaves, so an answer a client saw is never lost.
A chat cut off (client gone, shutdown) is marked interrupted. Logs carry ids,
sizes and timings, never the text.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from dataclasses import dataclass
from typing import Any, Final

from agentd.config import ChatSettings
from agentd.context_summary import ContextBuilder
from agentd.errors import BadRequest
from agentd.governance.gate import PLAIN_ASK, Ask, Gate, Screened
from agentd.lifecycle import Lifecycle
from agentd.limits import AdmissionQueue
from agentd.providers import (
    Answer,
    AnswerStatus,
    GenerationRequest,
    OnChunk,
    OnWait,
    ProviderSettings,
)
from agentd.providers.context import estimate_tokens
from agentd.providers.resilience import ResilientProvider
from agentd.ratelimit import CHAT, RequestLimiter
from agentd.store import messages
from agentd.store.database import Database
from agentd.store.recent import Exchange
from agentd.store.sessions import Session
from agentd.telemetry.instruments import Instruments
from agentd.tools.loop import LoopResult, Toolbox, answer_with_tools, describe
from agentd.tools.settings import ToolSettings

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ChatReply:
    answer: str
    session_id: str
    request_id: str
    model: str
    tokens_in: int
    tokens_out: int
    latency_ms: float
    degraded: bool
    fallback_used: bool
    turns_left_out: int
    notice: str | None
    error_kind: str | None
    status: str  # the stored status: complete, incomplete, truncated, empty, blocked, degraded
    redacted: dict[str, int]  # secrets replaced by placeholders before sending, per kind
    budget_warning: str | None  # a budget passed its warning share
    tools: tuple[dict[str, Any], ...] = ()  # the tool calls made: names, decisions, timings

    def as_dict(self) -> dict[str, Any]:
        return {
            "answer": self.answer,
            "session_id": self.session_id,
            "request_id": self.request_id,
            "model": self.model,
            "tokens_in": self.tokens_in,
            "tokens_out": self.tokens_out,
            "latency_ms": round(self.latency_ms, 3),
            "degraded": self.degraded,
            "fallback_used": self.fallback_used,
            "turns_left_out": self.turns_left_out,
            "notice": self.notice,
            "error_kind": self.error_kind,
            "status": self.status,
            "redacted": self.redacted,
            "budget_warning": self.budget_warning,
            "tools": list(self.tools),
        }


def validate_prompt(prompt: str, max_bytes: int) -> str:
    if not prompt.strip():
        raise BadRequest("the prompt is empty")
    size = len(prompt.encode("utf-8"))
    if size > max_bytes:
        raise BadRequest(
            f"the prompt is {size} bytes; the limit is {max_bytes} (chat.max_prompt_bytes)"
        )
    return prompt


MAX_SESSION_NAME: Final = 100
_SESSION_ID = re.compile(r"s-[0-9a-f]{16}\Z")


def validate_session_name(name: str) -> str:
    """A name a terminal shows as it is: 1 to MAX_SESSION_NAME printable characters.

    str.isprintable() refuses control characters (C0, C1, escape sequences),
    Unicode format characters (bidi overrides and isolates, zero-width ones)
    and separators other than the ASCII space.
    """
    if not 1 <= len(name) <= MAX_SESSION_NAME or not name.strip():
        raise BadRequest(f"a session name is 1 to {MAX_SESSION_NAME} characters")
    if not name.isprintable():
        raise BadRequest(
            "a session name may not hold control, formatting or bidi characters "
            "(escape sequences, U+202A-U+202E, U+2066-U+2069, ...)"
        )
    if _SESSION_ID.match(name):
        raise BadRequest("a session name may not look like a session id")
    return name


def validate_system_prompt(prompt: str, max_bytes: int, token_budget: int) -> str:
    """A session's system prompt goes with every request: bounded in bytes, and it
    must leave room in the context token budget."""
    size = len(prompt.encode("utf-8"))
    if size > max_bytes:
        raise BadRequest(
            f"the system prompt is {size} bytes; the limit is {max_bytes} "
            "(chat.max_system_prompt_bytes)"
        )
    tokens = estimate_tokens(prompt)
    if tokens >= token_budget:
        raise BadRequest(
            f"the system prompt is about {tokens} tokens, the whole context budget "
            f"(gemini.context_token_budget = {token_budget})"
        )
    return prompt


class ChatPipeline:
    def __init__(
        self,
        settings: ChatSettings,
        gemini: ProviderSettings,
        db: Database,
        provider: ResilientProvider,
        lifecycle: Lifecycle,
        limiter: RequestLimiter,
        metrics: Instruments,
        gate: Gate,
        tools: ToolSettings | None = None,
    ) -> None:
        self._settings = settings
        self._gemini = gemini
        self._db = db
        self._provider = provider
        self._lifecycle = lifecycle
        self._limiter = limiter
        self._metrics = metrics
        self._gate = gate
        self._tools = tools or ToolSettings()
        self.queue = AdmissionQueue(settings.max_concurrent, settings.max_queue)
        self._context = ContextBuilder(settings, gemini, db, provider, gate.redact_untrusted)

    async def chat(
        self,
        session: Session,
        request_id: str,
        prompt: str,
        on_chunk: OnChunk | None,
        *,
        peer_uid: int,
        on_wait: OnWait | None = None,
        ask: Ask = PLAIN_ASK,
        tools: Toolbox | None = None,
    ) -> ChatReply:
        validate_prompt(prompt, self._settings.max_prompt_bytes)
        self._limiter.check(peer_uid, session.id, CHAT)  # RATE_LIMITED with retry_after
        # Governance: FORBIDDEN model, BUDGET_EXCEEDED, SECRET_REFUSED; nothing stored or sent.
        screened = await self._gate.screen(request_id, prompt, peer_uid, ask)
        async with self.queue.admit():  # QueueFull (BUSY) at once when the queue is full
            self._lifecycle.begin_work()
            try:
                return await self._answer(
                    session, request_id, prompt, on_chunk, on_wait, screened, tools
                )
            finally:
                self._lifecycle.end_work()

    async def _answer(
        self,
        session: Session,
        request_id: str,
        prompt: str,
        on_chunk: OnChunk | None,
        on_wait: OnWait | None,
        screened: Screened,
        tools: Toolbox | None,
    ) -> ChatReply:
        started = time.monotonic()
        # A group commit, checked: refused (STORE_UNAVAILABLE) if the database
        # files were replaced; returns once the turn is committed.
        user_turn = await self._db.write(messages.record_user_turn, session.id, request_id, prompt)
        try:
            request, left_out, context_note = await self._build_request(
                session, request_id, prompt
            )
            request = self._gate.apply(request, screened)  # redacted; model and cap per role
            asked = time.monotonic()
            looped = await self._ask_model(request, on_chunk, on_wait, tools)
            answer = looped.answer
            self._metrics.observe_provider(time.monotonic() - asked)
            model_turn = _model_turn(answer)
            answer_id = await self._db.write(
                messages.record_model_turn, session.id, request_id, user_turn, model_turn
            )
        except BaseException:
            # Cancelled (client gone, shutdown) or failed: the prompt stays, marked interrupted.
            self._db.recent.forget(session.id)
            await asyncio.shield(self._db.run(messages.mark_interrupted, user_turn))
            raise
        if model_turn.status == AnswerStatus.COMPLETE:
            self._db.recent.added(
                session.id, Exchange(answer_id, prompt, model_turn.content, model_turn.tokens_out)
            )
        budget_warning = await self._gate.settle(screened, answer)
        latency_ms = (time.monotonic() - started) * 1000
        logger.info(
            "chat answered",
            extra={
                "session_id": session.id,
                "model": answer.model,
                "degraded": answer.degraded,
                "status": str(answer.status),
                "prompt_bytes": len(prompt.encode()),
                "answer_bytes": len(answer.text.encode()),
                "tokens_in": answer.tokens_in,
                "tokens_out": answer.tokens_out,
                "latency_ms": round(latency_ms, 3),
                "turns_left_out": left_out,
            },
        )
        return ChatReply(
            answer=answer.text,
            session_id=session.id,
            request_id=request_id,
            model=answer.model,
            tokens_in=answer.tokens_in,
            tokens_out=answer.tokens_out,
            latency_ms=latency_ms,
            degraded=answer.degraded,
            fallback_used=answer.fallback_used,
            turns_left_out=left_out,
            notice=_notice(answer, context_note),
            error_kind=answer.error_kind,
            status=str(answer.status),
            redacted=screened.redacted,
            budget_warning=budget_warning,
            tools=tuple(describe(looped.records)),
        )

    async def _ask_model(
        self,
        request: GenerationRequest,
        on_chunk: OnChunk | None,
        on_wait: OnWait | None,
        tools: Toolbox | None,
    ) -> LoopResult:
        """The tool-loop step: the provider alone, or the loop around it (agentd/tools/)."""

        async def generate(step: GenerationRequest) -> Answer:
            return await self._provider.generate(step, on_chunk, on_wait=on_wait)

        if tools is None:
            return LoopResult(await generate(request), (), 0)
        return await answer_with_tools(
            generate, request, tools, self._tools, screen=self._gate.redact_untrusted
        )

    async def _build_request(
        self, session: Session, request_id: str, prompt: str
    ) -> tuple[GenerationRequest, int, str | None]:
        """The request with its context: stored history fitted to the token budget,
        older turns summarised or dropped (context_summary.py); and what was done."""
        system_prompt = session.system_prompt or self._gemini.system_prompt
        context = await self._context.build(session.id, system_prompt, prompt, request_id)
        request = GenerationRequest(
            request_id=request_id,
            system_prompt=context.system_prompt,
            turns=context.turns,
            max_answer_bytes=self._settings.max_answer_bytes,
        )
        return request, context.left_out, context.note


def _model_turn(answer: Answer) -> messages.ModelTurn:
    """The stored turn: its status is the answer's own (complete only when whole)."""
    return messages.ModelTurn(
        answer.text, str(answer.status), answer.model, answer.tokens_in, answer.tokens_out
    )


def _notice(answer: Answer, context_note: str | None) -> str | None:
    # The provider's notice already says which model answered and why (fallback).
    notes = [answer.notice] if answer.notice else []
    if context_note:
        notes.append(context_note)
    return "; ".join(notes) or None
