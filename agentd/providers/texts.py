"""What the user reads when the model did not answer as asked: degraded answers, notes, refusals.

Each text names the cause and, where there is one, what to do about it.
Pure functions of the error: the resilience layer decides when to use them.
"""

from __future__ import annotations

from agentd.providers.errors import CircuitOpen, ErrorKind, ProviderError


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
    if isinstance(error, CircuitOpen) and error.cause is ErrorKind.AUTH:
        return (
            "[degraded] Gemini is not being called for now: the API key was rejected "
            f"({error}). Check the key, then restart agentd."
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


def blocked_text(error: ProviderError) -> str:
    reason = f" (reason: {error.reason})" if error.reason else ""
    return (
        "[blocked] Gemini's safety filters blocked this exchange"
        f"{reason}. Rephrasing the message may help."
    )


def no_text_text(error: ProviderError, model: str) -> str:
    return (
        f"[no answer] The model {model} produced no text: {error}. "
        "Asking again or rephrasing may help."
    )


def trim_notice(omitted: int) -> str:
    return (
        f"The conversation was too long for the model: the {omitted} oldest "
        f"message(s) were left out of this answer's context."
    )


def fallback_notice(model: str, primary_failure: str | None) -> str:
    note = f"Answered by the fallback model {model}"
    return note + (f": {primary_failure}." if primary_failure else ".")


def cut_off_notice(error: ProviderError) -> str:
    why = (
        f"the rest was withheld by Gemini's filters ({error.reason})"
        if error.kind is ErrorKind.BLOCKED
        else f"the stream broke ({error})"
    )
    return f"The answer was cut off: {why}."


def wait_message(model: str, error: ProviderError, delay: float) -> str:
    """Told to the client before a long wait between attempts."""
    if error.kind is ErrorKind.RATE_LIMITED:
        why = "Gemini's quota for this API key is exhausted for now"
    else:
        why = f"{model} failed ({error})"
    return f"{why}; asking {model} again in {delay:.0f}s"


def breaker_refusal(
    *, trial_pending: bool, failures: int, last_failure: str, remaining_s: float
) -> str:
    """Why the circuit breaker refuses a call now."""
    if trial_pending:
        return (
            f"a trial call is checking whether the service is back (last failure: {last_failure})"
        )
    return f"{failures} consecutive failures (last: {last_failure}); next try in {remaining_s:.0f}s"


def failure_of(model: str, error: ProviderError) -> str:
    """Why `model` did not answer, for the fallback's notice."""
    if error.kind is ErrorKind.NOT_FOUND:
        return f"the primary model {model!r} was not found ({error})"
    if error.kind is ErrorKind.RATE_LIMITED:
        return f"the primary model {model!r} is rate-limited ({error.reason or 'HTTP 429'})"
    return f"the primary model {model!r} failed ({error})"


def kind_and_reason(kind: ErrorKind | None, reason: str | None) -> str:
    """E.g. "transient: ConnectError", or just the kind when the cause is unknown."""
    text = str(kind or "unknown")
    return f"{text}: {reason}" if reason and reason != text else text


def join(*notices: str | None) -> str | None:
    return " ".join(n for n in notices if n) or None
