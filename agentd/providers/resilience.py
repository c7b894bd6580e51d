"""All resilience in one place: a Provider that wraps another and never gives up silently.

`ResilientProvider.generate()` always returns an Answer the user can read;
it raises only CancelledError (the client went away) and genuine bugs. For
one request::

    no API key ─────────────────────────────────────────▶ degraded answer, no network
    for model in (primary, fallback):
        breaker refuses ────────────────────────────────▶ degraded answer (circuit open)
        one attempt: attempt timeout, capped by the deadline
          ok ───────────────────────────────────────────▶ the answer
          context too long (once per request) ──▶ drop the oldest turns, try again
          transient, rate limited ──▶ sleep: Retry-After if given, else backoff
                                      with full jitter; up to max_attempts, and
                                      never past the deadline; then next model
          blocked by safety filters ────────────────────▶ "blocked" answer
          not found (model name) ──▶ next model
          auth, invalid request ──▶ stop
    ────────────────────────────────────────────────────▶ degraded answer naming the cause

The fallback model keeps one attempt's worth of the deadline: the primary
may not spend it. Every attempt's outcome feeds the circuit breaker: a
transient, rate-limited or auth failure counts; any answer from the service
(even "blocked" or "bad request") proves it works and resets the count.

Streaming: retries and fallback happen only while nothing has been passed
to on_chunk. Once text went out, a retry would repeat or contradict what the
user already read, so a failure then ends the answer with the text that
arrived, `degraded=True`, and a notice saying it was cut off. For a stream,
the attempt timeout is the longest allowed silence (to the first chunk and
between chunks); the deadline still caps the whole answer. When on_chunk is
given, the chunks it received always add up to Answer.text: degraded and
blocked texts are sent through it too.

Time and randomness are injected (clock, sleep, rng) so tests drive backoff
and the breaker's cool-down on a fake clock. Per-attempt timeouts bound real
I/O, so they run on the event loop's clock.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
import types
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

from agentd.providers.base import Answer, GenerationRequest, OnChunk, Provider
from agentd.providers.context import estimate_tokens, estimate_turn, fit_history
from agentd.providers.errors import (
    CircuitOpen,
    ErrorKind,
    ProviderError,
    ProviderTimeout,
)
from agentd.providers.settings import ProviderSettings

if TYPE_CHECKING:
    import random

logger = logging.getLogger(__name__)

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]

_RETRYABLE = frozenset({ErrorKind.TRANSIENT, ErrorKind.RATE_LIMITED})
_FALLBACK_ON = frozenset({ErrorKind.TRANSIENT, ErrorKind.RATE_LIMITED, ErrorKind.NOT_FOUND})
# Failures that say the service (or our key) is unwell, as opposed to the request.
_BREAKER_COUNTS = frozenset({ErrorKind.TRANSIENT, ErrorKind.RATE_LIMITED, ErrorKind.AUTH})
_HEALTH_KINDS = _BREAKER_COUNTS | {ErrorKind.NOT_FOUND, ErrorKind.UNAVAILABLE, ErrorKind.NO_KEY}


# --- circuit breaker -------------------------------------------------------


class BreakerState(enum.StrEnum):
    CLOSED = "closed"  # calls flow; failures are counted
    OPEN = "open"  # calls are refused until the cool-down has passed
    HALF_OPEN = "half_open"  # one trial call decides: closed again, or open again


OnStateChange = Callable[[BreakerState, BreakerState], None]


# Statistics are NamedTuples, not frozen dataclasses: cheaper to define on the
# path to READY (see base.py).
class BreakerStatistics(NamedTuple):
    state: BreakerState
    consecutive_failures: int
    failure_threshold: int
    trips: int  # times it opened
    opened_at: float | None  # clock time of the latest opening
    cooldown_remaining_s: float  # 0 unless open
    last_failure_kind: ErrorKind | None


class CircuitBreaker:
    """Closed → open after `failure_threshold` consecutive failures → half-open
    after `cooldown_s` (one trial) → closed on success, open again on failure.

    ::

        breaker.acquire_nowait()          # CircuitOpen if calls are refused
        try:
            ...call...
        except BaseException:
            breaker.release()             # no verdict (cancelled)
            raise
        breaker.record_success()          # or record_failure(kind)

    `on_state_change(old, new)` runs synchronously on every transition.
    """

    def __init__(
        self,
        failure_threshold: int,
        cooldown_s: float,
        *,
        clock: Clock = time.monotonic,
        on_state_change: OnStateChange | None = None,
    ) -> None:
        self._threshold = failure_threshold
        self._cooldown_s = cooldown_s
        self._clock = clock
        self._on_state_change = on_state_change
        self._state = BreakerState.CLOSED
        self._consecutive_failures = 0
        self._trips = 0
        self._opened_at: float | None = None
        self._trial_in_flight = False
        self._last_failure_kind: ErrorKind | None = None

    @property
    def state(self) -> BreakerState:
        return self._state

    def acquire_nowait(self) -> None:
        """Allow one call now, or raise CircuitOpen."""
        if self._state is BreakerState.OPEN and self._cooldown_remaining() <= 0:
            self._move_to(BreakerState.HALF_OPEN)
        if self._state is BreakerState.CLOSED:
            return
        if self._state is BreakerState.HALF_OPEN and not self._trial_in_flight:
            self._trial_in_flight = True
            return
        raise CircuitOpen(self._refusal_message())

    def record_success(self) -> None:
        self._trial_in_flight = False
        if self._state is BreakerState.OPEN:
            return  # a call from before the trip; the cool-down still stands
        self._consecutive_failures = 0
        if self._state is BreakerState.HALF_OPEN:
            self._move_to(BreakerState.CLOSED)

    def record_failure(self, kind: ErrorKind) -> None:
        self._trial_in_flight = False
        self._consecutive_failures += 1
        self._last_failure_kind = kind
        tripped = self._state is BreakerState.HALF_OPEN or (
            self._state is BreakerState.CLOSED and self._consecutive_failures >= self._threshold
        )
        if tripped:
            self._trips += 1
            self._opened_at = self._clock()
            self._move_to(BreakerState.OPEN)

    def release(self) -> None:
        """The call ended without a verdict (cancelled): free the trial slot."""
        self._trial_in_flight = False

    def statistics(self) -> BreakerStatistics:
        return BreakerStatistics(
            state=self._state,
            consecutive_failures=self._consecutive_failures,
            failure_threshold=self._threshold,
            trips=self._trips,
            opened_at=self._opened_at,
            cooldown_remaining_s=max(0.0, self._cooldown_remaining()),
            last_failure_kind=self._last_failure_kind,
        )

    def _cooldown_remaining(self) -> float:
        if self._state is not BreakerState.OPEN or self._opened_at is None:
            return 0.0
        return self._opened_at + self._cooldown_s - self._clock()

    def _refusal_message(self) -> str:
        kind = self._last_failure_kind or "unknown"
        if self._state is BreakerState.HALF_OPEN:
            return f"a trial call is checking whether the service is back (last failure: {kind})"
        return (
            f"{self._consecutive_failures} consecutive failures (last: {kind}); "
            f"next try in {max(0.0, self._cooldown_remaining()):.0f}s"
        )

    def _move_to(self, new: BreakerState) -> None:
        old, self._state = self._state, new
        log = logger.warning if new is BreakerState.OPEN else logger.info
        log(
            "circuit breaker %s -> %s",
            old,
            new,
            extra={
                "breaker_old": str(old),
                "breaker_new": str(new),
                "consecutive_failures": self._consecutive_failures,
                "trips": self._trips,
            },
        )
        if self._on_state_change is not None:
            self._on_state_change(old, new)


# --- statistics --------------------------------------------------------------


class HealthStatus(enum.StrEnum):
    OK = "ok"
    DEGRADED = "degraded"  # answering, but recent failures
    FAILED = "failed"  # not answering with the model (no key, key rejected, breaker open)


class Health(NamedTuple):
    status: HealthStatus
    reason: str


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


class KeyStatus(enum.StrEnum):
    OK = "ok"
    MISSING = "missing"
    REJECTED = "rejected"
    UNREACHABLE = "unreachable"
    MISCONFIGURED = "misconfigured"  # the key works, the [gemini] settings do not


class KeyCheck(NamedTuple):
    status: KeyStatus
    detail: str


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
    attempts: int = 0
    trim_notice: str | None = None

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
        on_breaker_change: OnStateChange | None = None,
    ) -> None:
        self._inner = inner
        self._settings = settings
        self._clock = clock
        self._sleep = sleep
        self._rng = rng  # None: made at the first backoff (see _jitter)
        self._breaker = CircuitBreaker(
            settings.breaker_failure_threshold,
            settings.breaker_cooldown_s,
            clock=clock,
            on_state_change=on_breaker_change,
        )
        self._counts: Counter[str] = Counter()
        self._errors: Counter[str] = Counter()
        self._last_error_kind: ErrorKind | None = None
        self._health_problem: ProviderError | None = None  # the latest service-side failure
        self._fallback_active = False  # the latest model answer came from the fallback

    # -- the Provider interface

    async def generate(self, request: GenerationRequest, on_chunk: OnChunk | None = None) -> Answer:
        now = self._clock()
        call = _Call(
            request=request._replace(model=request.model or self._settings.model),
            relay=_Relay(on_chunk) if on_chunk is not None else None,
            started=now,
            deadline_at=now + self._settings.deadline_s,
        )
        self._counts["requests"] += 1
        answer = await self._run(call)
        if call.relay is not None and not call.relay.delivered and answer.text:
            await call.relay.deliver(answer.text)
        self._log_outcome(call, answer)
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
            return KeyCheck(_key_status(error), str(error))
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
        models = self._models(call.request.model or self._settings.model)
        error: ProviderError | None = None
        for index, model in enumerate(models):
            if index:
                self._counts["fallbacks"] += 1
                logger.warning("falling back to %s", model, extra=self._extra(call, model))
            reserve = self._fallback_reserve() if index < len(models) - 1 else 0.0
            stop_at = call.deadline_at - reserve
            try:
                answer = await self._try_model(call, model, stop_at)
            except ProviderError as exc:
                error = exc
                if call.delivered or exc.kind not in _FALLBACK_ON:
                    break
                continue
            return self._answered(call, answer, fallback_used=index > 0)
        assert error is not None  # the loop ran at least once and did not return
        return self._failed(call, model, error)

    def _models(self, primary: str) -> tuple[str, ...]:
        """The request's model (default: the configured one), then the fallback if distinct."""
        fallback = self._settings.fallback
        return (primary,) if fallback in (None, primary) else (primary, fallback)

    def _fallback_reserve(self) -> float:
        """Time the primary must leave for the fallback: one attempt's worth."""
        return min(self._settings.attempt_timeout_s, self._settings.deadline_s / 2)

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
                delay = self._retry_delay(exc, failures, stop_at)
                if delay is None:
                    raise
                self._counts["retries"] += 1
                logger.info(
                    "retrying %s in %.2fs after %s",
                    model,
                    delay,
                    exc.kind,
                    extra={**self._extra(call, model), "delay_s": round(delay, 3)},
                )
                await self._sleep(delay)

    def _retry_delay(self, exc: ProviderError, failures: int, stop_at: float) -> float | None:
        """Seconds to wait before the next attempt, or None: no retry."""
        if exc.kind not in _RETRYABLE or failures >= self._settings.max_attempts:
            return None
        if exc.retry_after is not None:
            delay = exc.retry_after
        else:
            ceiling = self._settings.backoff_base_s * 2 ** (failures - 1)
            delay = self._jitter(min(self._settings.backoff_max_s, ceiling))
        # Waiting past the deadline (Retry-After included) only delays the
        # inevitable; stop here and let the fallback or a degraded answer go.
        return delay if self._clock() + delay < stop_at else None

    def _jitter(self, ceiling: float) -> float:
        """Full jitter: uniform in [0, ceiling]."""
        if self._rng is None:
            # The `random` module costs ~2 ms of import: paid at the first retry,
            # not on the daemon's path to READY.
            import random

            self._rng = random.Random()
        return self._rng.uniform(0, ceiling)

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
        if exc.kind in _BREAKER_COUNTS:
            self._breaker.record_failure(exc.kind)
        else:
            self._breaker.record_success()  # the service answered; the request was the problem
        logger.warning(
            "attempt %d on %s failed: %s",
            call.attempts,
            model,
            exc.kind,
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
        call.trim_notice = (
            f"The conversation was too long for the model: the {fitted.omitted} oldest "
            f"message(s) were left out of this answer's context."
        )
        self._counts["trimmed"] += 1
        return True

    # -- outcomes

    def _answered(self, call: _Call, answer: Answer, *, fallback_used: bool) -> Answer:
        self._counts["answered"] += 1
        self._fallback_active = fallback_used
        self._note_health(None)
        notice = _join(
            call.trim_notice,
            answer.notice,
            f"Answered by the fallback model {answer.model}." if fallback_used else None,
        )
        return answer._replace(attempts=call.attempts, fallback_used=fallback_used, notice=notice)

    def _failed(self, call: _Call, model: str, error: ProviderError) -> Answer:
        if call.delivered:
            return self._cut_off(call, model, error)
        if error.kind is ErrorKind.BLOCKED:
            self._counts["blocked"] += 1
            return Answer(
                text=_blocked_text(error),
                model=model,
                attempts=call.attempts,
                notice=call.trim_notice,
                error_kind=str(error.kind),
            )
        self._note_health(error)
        return self._degraded(call, model, error)

    def _degraded(self, call: _Call, model: str, error: ProviderError) -> Answer:
        self._counts["degraded"] += 1
        return Answer(
            text=degraded_text(error, self._settings),
            model=model,
            degraded=True,
            attempts=call.attempts,
            notice=call.trim_notice,
            error_kind=str(error.kind),
        )

    def _cut_off(self, call: _Call, model: str, error: ProviderError) -> Answer:
        """A stream broke after text went out: keep what the user already has."""
        self._counts["degraded"] += 1
        self._note_health(error)
        why = (
            "the rest was withheld by the safety filters"
            if error.kind is ErrorKind.BLOCKED
            else f"the model stopped answering ({error})"
        )
        assert call.relay is not None
        return Answer(
            text="".join(call.relay.pieces),
            model=model,
            degraded=True,
            attempts=call.attempts,
            notice=_join(call.trim_notice, f"The answer was cut off: {why}."),
            error_kind=str(error.kind),
        )

    # -- bookkeeping

    def _count_error(self, error: ProviderError) -> None:
        self._errors[str(error.kind)] += 1
        self._last_error_kind = error.kind

    def _note_health(self, error: ProviderError | None) -> None:
        """Remember the latest service-side failure (None: the service just worked)."""
        if error is None or error.kind in _HEALTH_KINDS:
            self._health_problem = error

    def _health(self) -> Health:
        problem = self._inner.configuration_problem()
        if problem is not None:
            return Health(HealthStatus.FAILED, "no API key configured")
        breaker = self._breaker.statistics()
        latest = self._health_problem
        if breaker.state is BreakerState.OPEN:
            return Health(
                HealthStatus.FAILED,
                f"circuit breaker open: {breaker.consecutive_failures} consecutive"
                f" failures (last: {breaker.last_failure_kind})",
            )
        if latest is not None and latest.kind is ErrorKind.AUTH:
            return Health(HealthStatus.FAILED, "API key rejected")
        if latest is not None and latest.kind is ErrorKind.NOT_FOUND:
            return Health(HealthStatus.FAILED, f"model not found: {latest.message}")
        if breaker.state is BreakerState.HALF_OPEN:
            return Health(HealthStatus.DEGRADED, "circuit breaker half-open: trial call pending")
        if latest is not None:
            return Health(HealthStatus.DEGRADED, f"recent failure: {latest.kind}")
        if self._fallback_active:
            return Health(
                HealthStatus.DEGRADED, "the primary model is failing; the fallback model answers"
            )
        return Health(HealthStatus.OK, "ok")

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
            if error is not None and error.kind in _BREAKER_COUNTS:
                self._breaker.record_failure(error.kind)
            else:
                self._breaker.record_success()
        return error

    def _extra(self, call: _Call, model: str) -> dict[str, object]:
        return {"request_id": call.request.request_id, "model": model, "attempt": call.attempts}

    def _log_outcome(self, call: _Call, answer: Answer) -> None:
        outcome = (
            "degraded"
            if answer.degraded
            else "blocked"
            if answer.error_kind
            else "fallback"
            if answer.fallback_used
            else "ok"
        )
        logger.info(
            "request %s: %s from %s after %d attempt(s)",
            call.request.request_id,
            outcome,
            answer.model,
            answer.attempts,
            extra={
                **self._extra(call, answer.model),
                "outcome": outcome,
                "error_kind": answer.error_kind,
                "attempts": answer.attempts,
                "elapsed_ms": round((self._clock() - call.started) * 1000),
                "tokens_in": answer.tokens_in,
                "tokens_out": answer.tokens_out,
                "answer_chars": len(answer.text),
            },
        )


# --- texts for the user --------------------------------------------------------


def degraded_text(error: ProviderError, settings: ProviderSettings) -> str:
    """What the user reads instead of a model answer, and what to do about it."""
    kind = error.kind
    if kind is ErrorKind.NO_KEY:
        return f"[degraded] {error}"
    if kind is ErrorKind.AUTH:
        return (
            "[degraded] The Gemini API key was rejected "
            f"({error}). Check that the key is valid and allowed to use the Gemini API, "
            "then restart agentd."
        )
    if kind is ErrorKind.UNAVAILABLE:
        return (
            f"[degraded] The Gemini model is unreachable: {error}. "
            "agentd keeps checking and will answer normally once it is back."
        )
    if kind is ErrorKind.RATE_LIMITED:
        wait = f" Try again in {error.retry_after:.0f}s." if error.retry_after else ""
        return f"[degraded] Gemini is rate-limiting this key (quota exhausted).{wait}"
    if kind is ErrorKind.NOT_FOUND:
        return (
            f"[degraded] The model {settings.model!r} was not found ({error}). "
            "Check `model` and `fallback_model` in the [gemini] configuration."
        )
    if kind is ErrorKind.CONTEXT_TOO_LONG:
        return (
            "[degraded] This message is too long for the model, even without the earlier "
            "conversation. Send a shorter message or start a new session."
        )
    if kind is ErrorKind.INVALID_REQUEST:
        return f"[degraded] Gemini refused the request as invalid ({error})."
    return f"[degraded] The Gemini model is unreachable right now ({error}). Try again shortly."


def _blocked_text(error: ProviderError) -> str:
    reason = f" (reason: {error.reason})" if error.reason else ""
    return (
        "[blocked] Gemini's safety filters blocked this exchange"
        f"{reason}. Rephrasing the message may help."
    )


def _key_status(error: ProviderError) -> KeyStatus:
    if error.kind is ErrorKind.AUTH:
        return KeyStatus.REJECTED
    if error.kind is ErrorKind.NO_KEY:
        return KeyStatus.MISSING
    if error.kind in (ErrorKind.NOT_FOUND, ErrorKind.INVALID_REQUEST):
        return KeyStatus.MISCONFIGURED
    return KeyStatus.UNREACHABLE


def _join(*notices: str | None) -> str | None:
    return " ".join(n for n in notices if n) or None
