"""Retries with fallback: a Provider that wraps another and never gives up silently.

`ResilientProvider.generate()` always returns an Answer the user can read;
it raises only CancelledError (the client went away) and genuine bugs. For
one request::

    no API key ─────────────────────────────────────────▶ degraded answer, no network
    for model in (primary, fallback):
        breaker refuses ────────────────────────────────▶ degraded answer (circuit open)
        one attempt: attempt timeout, capped by the deadline
          ok ───────────────────────────────────────────▶ the answer
          context too long (once per request) ──▶ drop the oldest turns, try again
          transient, rate limited ──▶ sleep: Retry-After (or the body's RetryInfo)
                                      if given, else backoff with full jitter; up
                                      to max_attempts, and never past the
                                      deadline; then next model. A wait of 1s or
                                      more is announced through on_wait.
          blocked by safety filters ────────────────────▶ "blocked" answer
          no text (finish reason OTHER, no parts...) ───▶ "empty" answer saying why
          not found (model name) ──▶ next model
          auth, invalid request, a response the SDK rejects ──▶ stop
    ────────────────────────────────────────────────────▶ degraded answer naming the cause

The fallback model keeps one attempt's worth of the deadline: the primary
may not spend it. Every attempt's outcome feeds the circuit breaker: a
transient or auth failure counts; any answer from the service (even
"blocked", "bad request" or a quota's 429) proves it is up and resets the
count. A 429 is the service saying "not now" about this key's quota, not an
outage: it is retried after the delay the service asks for, but never
opens the breaker (which would put the daemon in ERROR).

Streaming: retries and fallback happen only while nothing has been passed
to on_chunk. Once text went out, a retry would repeat or contradict what the
user already read, so a failure then ends the answer with the text that
arrived, status incomplete, and a notice saying it was cut off and why. For a stream,
the attempt timeout is the longest allowed silence (to the first chunk and
between chunks); the deadline still caps the whole answer. When on_chunk is
given, the chunks it received always add up to Answer.text: degraded and
blocked texts are sent through it too.

This module orchestrates; its parts have their own modules: the retry
schedule (retry.py), the circuit breaker (breaker.py), the evidence of
health it gathers (health.py; the gemini verdict itself is decided by
agentd/telemetry/gemini.py) and what the user reads (texts.py).

Time and randomness are injected (clock, sleep, rng) so tests drive backoff
and the breaker's cool-down on a fake clock. Per-attempt timeouts bound real
I/O, so they run on the event loop's clock.
"""

from __future__ import annotations

import asyncio
import logging
import time
import types
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

from agentd.providers import texts
from agentd.providers.base import (
    Answer,
    AnswerStatus,
    GenerationRequest,
    OnChunk,
    OnWait,
    Provider,
    Wait,
)
from agentd.providers.breaker import (
    COUNTED_FAILURES,
    BreakerState,
    BreakerStatistics,
    CircuitBreaker,
    Clock,
)
from agentd.providers.context import estimate_tokens, estimate_turn, fit_history
from agentd.providers.errors import (
    CircuitOpen,
    ErrorKind,
    ProviderError,
    ProviderTimeout,
)
from agentd.providers.health import Health, KeyCheck, KeyStatus, ProviderHealth, key_status
from agentd.providers.retry import ANNOUNCED_WAIT_S, FALLBACK_ON, RetrySchedule
from agentd.providers.settings import ProviderSettings

if TYPE_CHECKING:
    import random

logger = logging.getLogger(__name__)

Sleep = Callable[[float], Awaitable[None]]


# Statistics are NamedTuples, not frozen dataclasses: cheaper to define on the
# path to READY (see base.py).
class ProviderStatistics(NamedTuple):
    requests: int
    answered: int  # answers written by a model, fallback included
    attempts: int
    retries: int
    fallbacks: int  # times the fallback model was tried
    degraded: int  # degraded answers (placeholders and cut-off streams)
    blocked: int
    trimmed: int  # requests whose history was trimmed after "context too long"
    errors: Mapping[str, int]  # per ErrorKind value, one per failure seen
    last_error_kind: ErrorKind | None
    breaker: BreakerStatistics
    health: Health
    # Seconds since the service last proved to work (an answer, a passing key
    # check), None if it never did: evidence newer than a failed key check.
    last_success_age_s: float | None = None


# --- the resilient provider --------------------------------------------------


class _Relay:
    """Passes chunks on to the consumer and remembers what went out."""

    def __init__(self, on_chunk: OnChunk) -> None:
        self._on_chunk = on_chunk
        self.pieces: list[str] = []
        self.on_progress: Callable[[], None] = _nothing

    @property
    def delivered(self) -> bool:
        return bool(self.pieces)

    async def deliver(self, text: str) -> None:
        self.pieces.append(text)
        await self._on_chunk(text)
        self.on_progress()


def _nothing() -> None:
    return None


@dataclass
class _Call:
    """One request's state across attempts and models."""

    request: GenerationRequest
    relay: _Relay | None
    started: float
    deadline_at: float
    on_wait: OnWait | None = None
    attempts: int = 0
    trim_notice: str | None = None
    primary_failure: str | None = None  # why the primary model did not answer
    reason: str | None = None  # the cause behind a fallback or a failure, for the log

    @property
    def delivered(self) -> bool:
        return self.relay is not None and self.relay.delivered


class ResilientProvider(Provider):
    """Timeouts, retries, circuit breaker, fallback model and degraded answers around `inner`."""

    def __init__(
        self,
        inner: Provider,
        settings: ProviderSettings,
        *,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
        rng: random.Random | None = None,
        on_health_change: Callable[[], None] | None = None,
    ) -> None:
        """`on_health_change()` runs synchronously whenever there is new evidence of
        Gemini's health: a call worked or failed, a key check ended, the breaker
        moved. Its one listener, the gemini health owner, decides what it means."""
        self._inner = inner
        self._settings = settings
        self._clock = clock
        self._sleep = sleep
        self._schedule = RetrySchedule(settings, clock, rng)
        self._breaker = CircuitBreaker(
            settings.breaker_failure_threshold,
            settings.breaker_cooldown_s,
            clock=clock,
            on_state_change=self._breaker_moved,
        )
        self._counts: Counter[str] = Counter()
        self._errors: Counter[str] = Counter()
        self._last_error_kind: ErrorKind | None = None
        self._evidence = ProviderHealth(clock)
        self._on_health_change = on_health_change
        self._reported_health: Health | None = None

    # -- the Provider interface

    async def generate(
        self,
        request: GenerationRequest,
        on_chunk: OnChunk | None = None,
        *,
        on_wait: OnWait | None = None,
    ) -> Answer:
        """Provider.generate, plus `on_wait`: told before each long wait between attempts."""
        now = self._clock()
        call = _Call(
            request=request._replace(model=request.model or self._settings.model),
            relay=_Relay(on_chunk) if on_chunk is not None else None,
            started=now,
            deadline_at=now + self._settings.deadline_s,
            on_wait=on_wait,
        )
        self._counts["requests"] += 1
        answer = await self._run(call)
        if call.relay is not None and not call.relay.delivered and answer.text:
            await call.relay.deliver(answer.text)
        self._log_outcome(call, answer, call.reason)
        return answer

    def configuration_problem(self) -> ProviderError | None:
        return self._inner.configuration_problem()

    async def probe(self, model: str) -> None:
        await self._inner.probe(model)

    async def warm_up(self) -> None:
        await self._inner.warm_up()

    async def aclose(self) -> None:
        await self._inner.aclose()

    # -- health

    async def check_key(self) -> KeyCheck:
        """One cheap authenticated call (no generation) for health checks.

        It doubles as the breaker's trial call once the cool-down has passed,
        so a recovery loop polling this closes the breaker without waiting
        for a user's chat.
        """
        problem = self._inner.configuration_problem()
        if problem is not None:
            return KeyCheck(KeyStatus.MISSING, str(problem))
        error = await self._probe_through_breaker()
        if error is not None:
            self._note_health(error)
            return KeyCheck(key_status(error), str(error))
        self._note_health(None)
        return KeyCheck(KeyStatus.OK, f"the key works with {self._settings.model}")

    def statistics(self) -> ProviderStatistics:
        counts = self._counts
        return ProviderStatistics(
            requests=counts["requests"],
            answered=counts["answered"],
            attempts=counts["attempts"],
            retries=counts["retries"],
            fallbacks=counts["fallbacks"],
            degraded=counts["degraded"],
            blocked=counts["blocked"],
            trimmed=counts["trimmed"],
            errors=types.MappingProxyType(dict(self._errors)),
            last_error_kind=self._last_error_kind,
            breaker=self._breaker.statistics(),
            health=self._health(),
            last_success_age_s=self._evidence.last_success_age_s(),
        )

    # -- one request

    async def _run(self, call: _Call) -> Answer:
        problem = self._inner.configuration_problem()
        if problem is not None:
            self._count_error(problem)
            self._note_health(problem)
            return self._degraded(call, call.request.model or "", problem)
        # One-off set-up (the SDK import, ~1 s) must not eat the first attempt's timeout.
        await self._inner.warm_up()
        models = self._schedule.models(call.request.model or self._settings.model)
        error: ProviderError | None = None
        for index, model in enumerate(models):
            if index:
                self._counts["fallbacks"] += 1
                logger.warning("falling back to %s", model, extra=self._extra(call, model))
            reserve = self._schedule.fallback_reserve() if index < len(models) - 1 else 0.0
            stop_at = call.deadline_at - reserve
            try:
                answer = await self._try_model(call, model, stop_at)
            except ProviderError as exc:
                error = exc
                if call.delivered or exc.kind not in FALLBACK_ON:
                    break
                if index == 0:
                    call.primary_failure = texts.failure_of(model, exc)
                    call.reason = exc.reason or str(exc.kind)
                continue
            return self._answered(call, answer, fallback_used=index > 0)
        assert error is not None  # the loop ran at least once and did not return
        return self._failed(call, model, error)

    async def _try_model(self, call: _Call, model: str, stop_at: float) -> Answer:
        """Attempts on one model until an answer, a final error, or no time left."""
        failures = 0
        while True:
            try:
                return await self._attempt(call, model, stop_at)
            except ProviderError as exc:
                if call.delivered:
                    raise
                if exc.kind is ErrorKind.CONTEXT_TOO_LONG and self._trim(call):
                    continue
                failures += 1
                delay = self._schedule.delay(exc, failures, stop_at)
                if delay is None:
                    raise
                self._counts["retries"] += 1
                logger.info(
                    "retrying %s in %.2fs after %s",
                    model,
                    delay,
                    texts.kind_and_reason(exc.kind, exc.reason),
                    extra={
                        **self._extra(call, model),
                        "delay_s": round(delay, 3),
                        "error_kind": str(exc.kind),
                        "reason": exc.reason,
                    },
                )
                await self._announce_wait(call, model, exc, delay)
                await self._sleep(delay)

    async def _announce_wait(
        self, call: _Call, model: str, exc: ProviderError, delay: float
    ) -> None:
        if call.on_wait is None or delay < ANNOUNCED_WAIT_S:
            return
        message = texts.wait_message(model, exc, delay)
        await call.on_wait(Wait(delay, model, exc.reason or str(exc.kind), message))

    async def _attempt(self, call: _Call, model: str, stop_at: float) -> Answer:
        budget = stop_at - self._clock()
        if budget <= 0:
            raise ProviderTimeout(f"the {self._settings.deadline_s:g}s deadline has passed")
        try:
            self._breaker.acquire_nowait()
        except CircuitOpen as exc:
            self._count_error(exc)
            raise
        call.attempts += 1
        self._counts["attempts"] += 1
        try:
            answer = await self._call_inner(call, model, budget)
        except ProviderError as exc:
            self._attempt_failed(call, model, exc)
            raise
        except BaseException:
            self._breaker.release()
            raise
        self._breaker.record_success()
        return answer

    async def _call_inner(self, call: _Call, model: str, budget: float) -> Answer:
        """One call to `inner` under the attempt timeout (for streams: per silence)."""
        loop = asyncio.get_running_loop()
        hard_stop = loop.time() + budget
        limit = self._settings.attempt_timeout_s

        def expiry() -> float:
            return min(loop.time() + limit, hard_stop)

        request = call.request._replace(model=model)
        try:
            async with asyncio.timeout_at(expiry()) as scope:
                if call.relay is None:
                    return await self._inner.generate(request)
                call.relay.on_progress = lambda: scope.reschedule(expiry())
                return await self._inner.generate(request, call.relay.deliver)
        except TimeoutError as exc:
            waited = min(limit, budget)
            raise ProviderTimeout(f"no answer from {model} within {waited:.1f}s") from exc
        finally:
            if call.relay is not None:
                call.relay.on_progress = _nothing

    def _attempt_failed(self, call: _Call, model: str, exc: ProviderError) -> None:
        self._count_error(exc)
        if exc.kind in COUNTED_FAILURES:
            self._breaker.record_failure(exc.kind, exc.reason)
        else:
            self._breaker.record_success()  # the service answered; the request was the problem
        logger.warning(
            "attempt %d on %s failed: %s",
            call.attempts,
            model,
            texts.kind_and_reason(exc.kind, exc.reason),
            extra={
                **self._extra(call, model),
                "error_kind": str(exc.kind),
                "status": exc.status,
                "reason": exc.reason,
            },
        )

    def _trim(self, call: _Call) -> bool:
        """Drop the oldest half of the history, once per request; False if nothing can go."""
        if call.trim_notice is not None:
            return False
        request = call.request
        history = sum(estimate_turn(turn) for turn in request.turns)
        budget = estimate_tokens(request.system_prompt) + history // 2
        fitted = fit_history(request.turns, budget, request.system_prompt)
        if fitted.omitted == 0:
            return False
        call.request = request._replace(turns=fitted.turns)
        call.trim_notice = texts.trim_notice(fitted.omitted)
        self._counts["trimmed"] += 1
        return True

    # -- outcomes

    def _answered(self, call: _Call, answer: Answer, *, fallback_used: bool) -> Answer:
        self._counts["answered"] += 1
        if answer.degraded:
            self._counts["degraded"] += 1
        self._evidence.record_answer(
            fallback_used=fallback_used, primary_failure=call.primary_failure
        )
        self._note_health(None)
        fallback_note = (
            texts.fallback_notice(answer.model, call.primary_failure) if fallback_used else None
        )
        notice = texts.join(call.trim_notice, answer.notice, fallback_note)
        return answer._replace(attempts=call.attempts, fallback_used=fallback_used, notice=notice)

    def _failed(self, call: _Call, model: str, error: ProviderError) -> Answer:
        call.reason = error.reason or str(error.kind)
        if call.delivered:
            return self._cut_off(call, model, error)
        if error.kind is ErrorKind.BLOCKED:
            self._counts["blocked"] += 1
            return self._placeholder(
                call, model, error, AnswerStatus.BLOCKED, texts.blocked_text(error)
            )
        if error.kind is ErrorKind.NO_TEXT:
            self._counts["degraded"] += 1
            self._note_health(None)  # the service works; this answer had no text
            text = texts.no_text_text(error, model)
            return self._placeholder(call, model, error, AnswerStatus.EMPTY, text)
        self._note_health(error)
        return self._degraded(call, model, error)

    def _degraded(self, call: _Call, model: str, error: ProviderError) -> Answer:
        self._counts["degraded"] += 1
        text = texts.degraded_text(error, model)
        return self._placeholder(call, model, error, AnswerStatus.DEGRADED, text)

    def _placeholder(
        self, call: _Call, model: str, error: ProviderError, status: AnswerStatus, text: str
    ) -> Answer:
        """Our text in place of the model's, saying why it is not the model's answer."""
        return Answer(
            text=text,
            model=model,
            degraded=status is not AnswerStatus.BLOCKED,
            attempts=call.attempts,
            notice=call.trim_notice,
            error_kind=str(error.kind),
            status=status,
        )

    def _cut_off(self, call: _Call, model: str, error: ProviderError) -> Answer:
        """A stream broke after text went out: keep the model's text the user already has."""
        self._counts["degraded"] += 1
        self._note_health(error)
        assert call.relay is not None
        return Answer(
            text="".join(call.relay.pieces),
            model=model,
            degraded=True,
            attempts=call.attempts,
            notice=texts.join(call.trim_notice, texts.cut_off_notice(error)),
            error_kind=str(error.kind),
            status=AnswerStatus.INCOMPLETE,
        )

    # -- bookkeeping

    def _count_error(self, error: ProviderError) -> None:
        self._errors[str(error.kind)] += 1
        self._last_error_kind = error.kind

    def _note_health(self, error: ProviderError | None) -> None:
        """Record the latest service-side failure (None: the service just worked)."""
        self._tell_health(self._evidence.record(error))

    def _breaker_moved(self, old: BreakerState, new: BreakerState) -> None:
        self._tell_health(news=True)

    def _tell_health(self, news: bool) -> None:
        """Call on_health_change when there is news, or the live verdict changed."""
        if self._on_health_change is None:
            return
        health = self._health()
        if news or health != self._reported_health:
            self._reported_health = health
            self._on_health_change()

    def _health(self) -> Health:
        configured = self._inner.configuration_problem() is None
        return self._evidence.live(configured, self._breaker.statistics())

    async def _probe_through_breaker(self) -> ProviderError | None:
        """Probe the service; the result feeds the breaker only when it is a trial."""
        try:
            self._breaker.acquire_nowait()
            counted = True
        except CircuitOpen:
            counted = False  # still report the truth; the breaker's cool-down stands
        try:
            async with asyncio.timeout(self._settings.attempt_timeout_s):
                await self._inner.probe(self._settings.model)
        except TimeoutError:
            error: ProviderError | None = ProviderTimeout("the key check timed out")
        except ProviderError as exc:
            error = exc
        except BaseException:
            if counted:
                self._breaker.release()
            raise
        else:
            error = None
        if counted:
            if error is not None and error.kind in COUNTED_FAILURES:
                self._breaker.record_failure(error.kind, error.reason)
            else:
                self._breaker.record_success()
        return error

    def _extra(self, call: _Call, model: str) -> dict[str, object]:
        return {"request_id": call.request.request_id, "model": model, "attempt": call.attempts}

    def _log_outcome(self, call: _Call, answer: Answer, reason: str | None) -> None:
        outcome = (
            "fallback"
            if answer.status is AnswerStatus.COMPLETE and answer.fallback_used
            else "ok"
            if answer.status is AnswerStatus.COMPLETE
            else str(answer.status)
        )
        logger.info(
            "request %s: %s from %s after %d attempt(s)%s",
            call.request.request_id,
            outcome,
            answer.model,
            answer.attempts,
            f" ({reason})" if reason else "",
            extra={
                **self._extra(call, answer.model),
                "outcome": outcome,
                "status": str(answer.status),
                "error_kind": answer.error_kind,
                "reason": reason,
                "attempts": answer.attempts,
                "elapsed_ms": round((self._clock() - call.started) * 1000),
                "tokens_in": answer.tokens_in,
                "tokens_out": answer.tokens_out,
                "answer_chars": len(answer.text),
            },
        )
