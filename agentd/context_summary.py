"""The context of a chat: a stored summary of older turns, then the newest turns.

When a session's history no longer fits gemini.context_token_budget, the
turns that would be dropped are summarised instead (chat.context_strategy =
"summarize"): by chat.summary_model, else gemini.fallback_model (cheap and
fast; the primary stays free for the answer). The summary is stored as the
session's one summary row (store/summaries.py) and folded into the system
prompt from then on; the next summary covers the previous one too. A summary
that cannot be made (the model failed, or gave no complete text) means the
turns are dropped, as with "drop", and the reply's notice says so.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Final, NamedTuple

from agentd.config import ChatSettings
from agentd.errors import RequestError
from agentd.providers.base import AnswerStatus, GenerationRequest, Provider, Turn
from agentd.providers.context import fit_history
from agentd.providers.settings import ProviderSettings
from agentd.store import messages, summaries
from agentd.store.database import Database
from agentd.store.recent import Exchange
from agentd.store.summaries import Summary

logger = logging.getLogger(__name__)

SUMMARY_HEADING: Final = "Summary of the earlier conversation (older turns, summarised):"
INSTRUCTION: Final = (
    "Summarise the conversation below for the assistant who continues it: keep facts, "
    "names, numbers, decisions, open questions and the user's preferences; drop small talk. "
    "Write plain prose, at most 200 words. Do not answer the conversation."
)


class Context(NamedTuple):
    system_prompt: str
    turns: tuple[Turn, ...]
    left_out: int  # turns dropped (not summarised)
    note: str | None  # what happened to older turns, for the reply's notice


class ContextBuilder:
    """Builds each chat's context from the store, summarising when it must."""

    def __init__(
        self,
        settings: ChatSettings,
        gemini: ProviderSettings,
        db: Database,
        provider: Provider,
        redact: Callable[[str], str],
    ) -> None:
        self._settings = settings
        self._gemini = gemini
        self._db = db
        self._provider = provider
        # The stored turns keep what the user sent; what leaves for the summary
        # model is redacted as every chat's context is (governance).
        self._redact = redact

    async def build(
        self, session_id: str, system_prompt: str, prompt: str, request_id: str
    ) -> Context:
        summary = await self._db.run(summaries.get, session_id)
        after = summary.upto_message_id if summary else 0
        exchanges = [e for e in await self._latest(session_id) if e.model_id > after]
        turns = [t for e in exchanges for t in _turns(e)] + [Turn("user", prompt)]
        known = [n for e in exchanges for n in (None, e.model_tokens or None)]
        system = _with_summary(system_prompt, summary)
        fitted = fit_history(turns, self._gemini.context_token_budget, system, known)
        if not fitted.omitted:
            return Context(system, fitted.turns, 0, None)
        if self._settings.context_strategy != "summarize":
            return Context(system, fitted.turns, fitted.omitted, _dropped(fitted.omitted))
        covered = exchanges[: fitted.omitted // 2]  # the kept turns start with a user turn
        made = await self._summarise(session_id, summary, covered, request_id) if covered else None
        if made is None:
            note = _dropped(fitted.omitted) + " (the summary could not be made)"
            return Context(system, fitted.turns, fitted.omitted, note)
        system = _with_summary(system_prompt, made)
        rest = len(covered) * 2
        refitted = fit_history(
            turns[rest:], self._gemini.context_token_budget, system, known[rest:]
        )
        note = f"{rest} earlier turns summarised into the context (by {made.model})"
        if refitted.omitted:  # the summary itself took room the newest turns needed
            note += "; " + _dropped(refitted.omitted)
        return Context(system, refitted.turns, refitted.omitted, note)

    async def _latest(self, session_id: str) -> list[Exchange]:
        """The session's latest complete exchanges: from the cache (store/recent.py) when
        it holds them, else read in the write queue, after every write queued before it."""
        limit = self._settings.history_max_turns
        cached = self._db.recent.lookup(session_id, limit)
        if cached is None:
            token = self._db.recent.reserve(session_id)
            cached = await self._db.write(messages.context_exchanges, session_id, limit)
            self._db.recent.fill(token, session_id, cached, limit)
        return cached

    async def _summarise(
        self, session_id: str, previous: Summary | None, covered: list[Exchange], request_id: str
    ) -> Summary | None:
        model = self._settings.summary_model or self._gemini.fallback_model
        request = GenerationRequest(
            request_id=f"{request_id}-summary",
            system_prompt=INSTRUCTION,
            turns=(Turn("user", self._redact(_transcript(previous, covered))),),
            model=model,
            max_answer_bytes=self._settings.max_answer_bytes,
        )
        try:
            answer = await self._provider.generate(request)
        except RequestError as exc:  # e.g. the provider refused at once: drop instead
            logger.warning("summary of session %s not made: %s", session_id, exc.code)
            return None
        if answer.degraded or answer.status != AnswerStatus.COMPLETE or not answer.text.strip():
            logger.warning(
                "summary of session %s not made (%s): older turns dropped",
                session_id,
                answer.status,
            )
            return None
        turns = (previous.turns if previous else 0) + len(covered)
        upto = covered[-1].model_id
        await self._db.run_checked(
            summaries.put, session_id, upto, answer.text, answer.model, turns
        )
        return Summary(session_id, upto, answer.text, answer.model, turns, 0.0)


def _turns(exchange: Exchange) -> tuple[Turn, Turn]:
    return Turn("user", exchange.user_text), Turn("model", exchange.model_text)


def _with_summary(system_prompt: str, summary: Summary | None) -> str:
    if summary is None:
        return system_prompt
    return f"{system_prompt}\n\n{SUMMARY_HEADING}\n{summary.content}".strip()


def _transcript(previous: Summary | None, covered: list[Exchange]) -> str:
    parts = [f"{SUMMARY_HEADING}\n{previous.content}"] if previous else []
    for exchange in covered:
        parts += [f"User: {exchange.user_text}", f"Assistant: {exchange.model_text}"]
    return "\n\n".join(parts)


def _dropped(count: int) -> str:
    return f"{count} earlier turn{'s' if count != 1 else ''} left out of the context (token budget)"
