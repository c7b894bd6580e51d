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

from agentd.providers.base import (
    Answer,
    AnswerStatus,
    GenerationRequest,
    OnChunk,
    OnWait,
    Provider,
    Wait,
)
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
# Not RATE_LIMITED: a quota's 429 proves the service is up (see the module docstring).
_BREAKER_COUNTS = frozenset({ErrorKind.TRANSIENT, ErrorKind.AUTH})
_HEALTH_KINDS = _BREAKER_COUNTS | {
    ErrorKind.RATE_LIMITED,
    ErrorKind.NOT_FOUND,
    ErrorKind.UNAVAILABLE,
    ErrorKind.NO_KEY,
}
# Waits between attempts this long or longer are announced to the client (on_wait).
ANNOUNCED_WAIT_S = 1.0


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
    last_failure_reason: str | None = None  # its cause, e.g. ConnectError


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
        breaker.record_success()          # or record_failure(kind, reason)

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
        self._last_failure_reason: str | None = None

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
        raise CircuitOpen(self._refusal_message(), reason=self._last_failure_reason)

    def record_success(self) -> None:
        self._trial_in_flight = False
        if self._state is BreakerState.OPEN:
            return  # a call from before the trip; the cool-down still stands
        self._consecutive_failures = 0
        if self._state is BreakerState.HALF_OPEN:
            self._move_to(BreakerState.CLOSED)

    def record_failure(self, kind: ErrorKind, reason: str | None = None) -> None:
        self._trial_in_flight = False
        self._consecutive_failures += 1
        self._last_failure_kind = kind
        self._last_failure_reason = reason
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
            last_failure_reason=self._last_failure_reason,
        )

    def last_failure(self) -> str:
        """The latest failure's kind and cause, e.g. "transient: ConnectError"."""
        return _kind_and_reason(self._last_failure_kind, self._last_failure_reason)

    def _cooldown_remaining(self) -> float:
        if self._state is not BreakerState.OPEN or self._opened_at is None:
            return 0.0
        return self._opened_at + self._cooldown_s - self._clock()

    def _refusal_message(self) -> str:
        kind = self.last_failure()
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
    # Seconds since the service last proved to work (an answer, a passing key
    # check), None if it never did: evidence newer than a failed key check.
    last_success_age_s: float | None = None


class KeyStatus(enum.StrEnum):
    OK = "ok"
    MISSING = "missing"
    REJECTED = "rejected"
    UNREACHABLE = "unreachable"
    RATE_LIMITED = "rate_limited"  # the key works; its quota is spent for now
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
        on_breaker_change: OnStateChange | None = None,
        on_health_change: Callable[[], None] | None = None,
    ) -> None:
        """`on_health_change()` runs synchronously whenever `statistics().health`
        may have changed: the daemon re-reports its gemini component at once."""
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
        self._fallback_why: str | None = None  # why the primary did not answer then
        self._last_success_at: float | None = None
        self._on_health_change = on_health_change
        self._reported_health: Health | None = None
        self._failed_since_success = False

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
            last_success_age_s=(
                None
                if self._last_success_at is None
                else max(0.0, self._clock() - self._last_success_at)
            ),
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
                if index == 0:
                    call.primary_failure = _failure_of(model, exc)
                    call.reason = exc.reason or str(exc.kind)
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
                    _kind_and_reason(exc.kind, exc.reason),
                    extra={
                        **self._extra(call, model),
                        "delay_s": round(delay, 3),
                        "error_kind": str(exc.kind),
                        "reason": exc.reason,
                    },
                )
                await self._announce_wait(call, model, exc, delay)
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

    async def _announce_wait(
        self, call: _Call, model: str, exc: ProviderError, delay: float
    ) -> None:
        if call.on_wait is None or delay < ANNOUNCED_WAIT_S:
            return
        if exc.kind is ErrorKind.RATE_LIMITED:
            why = "Gemini's quota for this API key is exhausted for now"
        else:
            why = f"{model} failed ({exc})"
        message = f"{why}; asking {model} again in {delay:.0f}s"
        await call.on_wait(Wait(delay, model, exc.reason or str(exc.kind), message))

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
            self._breaker.record_failure(exc.kind, exc.reason)
        else:
            self._breaker.record_success()  # the service answered; the request was the problem
        logger.warning(
            "attempt %d on %s failed: %s",
            call.attempts,
            model,
            _kind_and_reason(exc.kind, exc.reason),
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
        if answer.degraded:
            self._counts["degraded"] += 1
        self._fallback_active = fallback_used
        self._fallback_why = call.primary_failure if fallback_used else None
        self._note_health(None)
        fallback_note = None
        if fallback_used:
            fallback_note = f"Answered by the fallback model {answer.model}"
            fallback_note += f": {call.primary_failure}." if call.primary_failure else "."
        notice = _join(call.trim_notice, answer.notice, fallback_note)
        return answer._replace(attempts=call.attempts, fallback_used=fallback_used, notice=notice)

    def _failed(self, call: _Call, model: str, error: ProviderError) -> Answer:
        call.reason = error.reason or str(error.kind)
        if call.delivered:
            return self._cut_off(call, model, error)
        if error.kind is ErrorKind.BLOCKED:
            self._counts["blocked"] += 1
            return self._placeholder(call, model, error, AnswerStatus.BLOCKED, _blocked_text(error))
        if error.kind is ErrorKind.NO_TEXT:
            self._counts["degraded"] += 1
            self._note_health(None)  # the service works; this answer had no text
            text = (
                f"[no answer] The model {model} produced no text: {error}. "
                "Asking again or rephrasing may help."
            )
            return self._placeholder(call, model, error, AnswerStatus.EMPTY, text)
        self._note_health(error)
        return self._degraded(call, model, error)

    def _degraded(self, call: _Call, model: str, error: ProviderError) -> Answer:
        self._counts["degraded"] += 1
        text = degraded_text(error, model)
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
        why = (
            f"the rest was withheld by Gemini's filters ({error.reason})"
            if error.kind is ErrorKind.BLOCKED
            else f"the stream broke ({error})"
        )
        assert call.relay is not None
        return Answer(
            text="".join(call.relay.pieces),
            model=model,
            degraded=True,
            attempts=call.attempts,
            notice=_join(call.trim_notice, f"The answer was cut off: {why}."),
            error_kind=str(error.kind),
            status=AnswerStatus.INCOMPLETE,
        )

    # -- bookkeeping

    def _count_error(self, error: ProviderError) -> None:
        self._errors[str(error.kind)] += 1
        self._last_error_kind = error.kind

    def _note_health(self, error: ProviderError | None) -> None:
        """Remember the latest service-side failure (None: the service just worked)."""
        # A success is news after any failure (a failed key check, say), even one
        # that left the live verdict alone; otherwise only a changed verdict is.
        news = error is not None or self._failed_since_success
        self._failed_since_success = error is not None
        if error is None:
            self._last_success_at = self._clock()
        if error is None or error.kind in _HEALTH_KINDS:
            self._health_problem = error
        self._tell_health(news)

    def _tell_health(self, news: bool) -> None:
        """Call on_health_change when there is news, or the verdict changed."""
        if self._on_health_change is None:
            return
        health = self._health()
        if news or health != self._reported_health:
            self._reported_health = health
            self._on_health_change()

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
                f" failures (last: {self._breaker.last_failure()})",
            )
        if latest is not None and latest.kind is ErrorKind.AUTH:
            return Health(HealthStatus.FAILED, "API key rejected")
        if latest is not None and latest.kind is ErrorKind.NOT_FOUND:
            return Health(HealthStatus.FAILED, f"model not found: {latest.message}")
        if breaker.state is BreakerState.HALF_OPEN:
            return Health(HealthStatus.DEGRADED, "circuit breaker half-open: trial call pending")
        if latest is not None and latest.kind is ErrorKind.RATE_LIMITED:
            return Health(
                HealthStatus.DEGRADED, "rate-limited: Gemini's quota for this key is exhausted"
            )
        if latest is not None:
            return Health(
                HealthStatus.DEGRADED,
                f"recent failure: {_kind_and_reason(latest.kind, latest.reason)}",
            )
        if self._fallback_active:
            why = f" ({self._fallback_why})" if self._fallback_why else ""
            return Health(
                HealthStatus.DEGRADED, f"the fallback model answers; the primary is failing{why}"
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


# --- texts for the user --------------------------------------------------------


def degraded_text(error: ProviderError, model: str) -> str:
    """What the user reads instead of a model answer: the cause, and what to do about it."""
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
        wait = f" It asked to wait {error.retry_after:.0f}s." if error.retry_after else ""
        return (
            "[degraded] Gemini's quota for this API key is exhausted for now "
            f"({error.reason or 'HTTP 429'}); the service is up.{wait} Try again later, "
            "or check the key's rate limits."
        )
    if kind is ErrorKind.NOT_FOUND:
        return (
            f"[degraded] The model {model!r} was not found ({error}). "
            "Check `model` and `fallback_model` in the [gemini] configuration."
        )
    if kind is ErrorKind.CONTEXT_TOO_LONG:
        return (
            "[degraded] This message is too long for the model, even without the earlier "
            "conversation. Send a shorter message or start a new session."
        )
    if kind is ErrorKind.INVALID_REQUEST:
        return f"[degraded] Gemini refused the request as invalid ({error})."
    if kind is ErrorKind.TOO_LARGE:
        return (
            f"[degraded] {model}'s answer was too large to read whole ({error}); "
            "chat.max_answer_bytes bounds it. Ask for a shorter answer, or stream it "
            "(a streamed answer keeps its first chat.max_answer_bytes)."
        )
    if kind is ErrorKind.BAD_RESPONSE:
        return (
            f"[degraded] {model} sent a response agentd could not read ({error}); "
            "it was not retried. Asking again may work."
        )
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
    if error.kind is ErrorKind.RATE_LIMITED:
        return KeyStatus.RATE_LIMITED
    if error.kind is ErrorKind.NO_KEY:
        return KeyStatus.MISSING
    if error.kind in (ErrorKind.NOT_FOUND, ErrorKind.INVALID_REQUEST):
        return KeyStatus.MISCONFIGURED
    return KeyStatus.UNREACHABLE


def _kind_and_reason(kind: ErrorKind | None, reason: str | None) -> str:
    """E.g. "transient: ConnectError", or just the kind when the cause is unknown."""
    text = str(kind or "unknown")
    return f"{text}: {reason}" if reason and reason != text else text


def _failure_of(model: str, error: ProviderError) -> str:
    """Why `model` did not answer, for the fallback's notice."""
    if error.kind is ErrorKind.NOT_FOUND:
        return f"the primary model {model!r} was not found ({error})"
    if error.kind is ErrorKind.RATE_LIMITED:
        return f"the primary model {model!r} is rate-limited ({error.reason or 'HTTP 429'})"
    return f"the primary model {model!r} failed ({error})"


def _join(*notices: str | None) -> str | None:
    return " ".join(n for n in notices if n) or None
