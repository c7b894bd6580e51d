"""Provider errors, and the one place where vendor exceptions become ours.

Our exception tree (every class carries a `kind`, what the resilience layer
decides on)::

    ProviderError                   root, an AgentdError; .kind .status .retry_after
    ├── TransientError              transient         5xx, 408, 409, 499, network errors
    │   ├── ProviderTimeout         transient         our timeout or the transport's
    │   └── MalformedResponse       transient         a body that is not JSON (a broken proxy)
    ├── UnexpectedResponse          bad_response      JSON the SDK rejects (a malformed field)
    ├── NoText                      no_text           the model answered with no text at all
    ├── AnswerTooLarge              too_large         a whole answer's body past its bound
    ├── RateLimited                 rate_limited      429 (.retry_after, seconds or None)
    ├── AuthError                   auth              401, 403, 400 API_KEY_INVALID
    ├── InvalidRequest              invalid_request   other 4xx, an unusable base_url
    │   ├── ModelNotFound           not_found         404: the model name is unknown
    │   └── ContextTooLong          context_too_long  413, 400 "input token count exceeds"
    ├── Blocked                     blocked           safety filters refused prompt or answer
    ├── CircuitOpen                 unavailable       the breaker refuses calls for now
    └── NoApiKey                    no_key            no key configured; no network at all

`translate_errors()` wraps every call into google-genai. google-genai raises
its own `APIError` family for HTTP error statuses, but its network failures
are raw httpx2 (and, in corners, httpcore2) exceptions, and a malformed body
surfaces as a JSON or pydantic error; each maps here, by an ordered rule
table, with `raise ... from exc`. `.reason` always names the cause: the
service's ErrorInfo reason or status (RESOURCE_EXHAUSTED), or the vendor
exception's class (ConnectError), so logs and degraded answers can say more
than "transient". An exception no rule knows (a bug, ours or
the SDK's) propagates unchanged: it is not a provider failure to retry.
tests/test_provider_error_map.py walks httpx2, httpcore2 and
google.genai.errors and fails if any of their exception classes is unmapped.

The vendor modules are imported only when the table is first needed, which
is after google-genai has already raised something, so importing this module
stays cheap.
"""

from __future__ import annotations

import contextlib
import enum
import functools
import json
import re
import time
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

from agentd.errors import AgentdError


class ErrorKind(enum.StrEnum):
    TRANSIENT = "transient"
    RATE_LIMITED = "rate_limited"
    AUTH = "auth"
    INVALID_REQUEST = "invalid_request"
    NOT_FOUND = "not_found"
    CONTEXT_TOO_LONG = "context_too_long"
    BLOCKED = "blocked"
    UNAVAILABLE = "unavailable"
    NO_KEY = "no_key"
    NO_TEXT = "no_text"
    TOO_LARGE = "too_large"
    BAD_RESPONSE = "bad_response"


class ProviderError(AgentdError):
    """A provider call failed; `kind` says how, `str()` says it for a human."""

    kind: ErrorKind = ErrorKind.TRANSIENT

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        retry_after: float | None = None,
        reason: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status  # HTTP status, when there was one
        self.retry_after = retry_after  # seconds the service asked us to wait
        self.reason = reason  # the service's machine-readable reason (e.g. SAFETY)


class TransientError(ProviderError):
    kind = ErrorKind.TRANSIENT


class ProviderTimeout(TransientError):
    pass


class MalformedResponse(TransientError):
    pass


class UnexpectedResponse(ProviderError):
    """The SDK refused one response while validating it (pydantic).

    Not transient: the service answered, and asking again costs quota for
    what is most likely the same shape (googleapis/python-genai#2510).
    """

    kind = ErrorKind.BAD_RESPONSE


class NoText(ProviderError):
    """The model answered but produced no text; `.reason` says why (e.g. OTHER, NO_CANDIDATES)."""

    kind = ErrorKind.NO_TEXT


class AnswerTooLarge(ProviderError):
    """A non-streamed answer's HTTP body grew past its bound (body_limit.py): not read whole."""

    kind = ErrorKind.TOO_LARGE


class RateLimited(ProviderError):
    kind = ErrorKind.RATE_LIMITED


class AuthError(ProviderError):
    kind = ErrorKind.AUTH


class InvalidRequest(ProviderError):
    kind = ErrorKind.INVALID_REQUEST


class ModelNotFound(InvalidRequest):
    kind = ErrorKind.NOT_FOUND


class ContextTooLong(InvalidRequest):
    kind = ErrorKind.CONTEXT_TOO_LONG


class Blocked(ProviderError):
    kind = ErrorKind.BLOCKED


class CircuitOpen(ProviderError):
    kind = ErrorKind.UNAVAILABLE
    # The kind of the failure that opened the breaker: a rejected key is not an outage.
    cause: ErrorKind | None = None


class NoApiKey(ProviderError):
    kind = ErrorKind.NO_KEY


@contextlib.contextmanager
def translate_errors() -> Iterator[None]:
    """Re-raise any vendor exception from the block as a ProviderError."""
    try:
        yield
    except ProviderError:
        raise
    except Exception as exc:
        error = to_provider_error(exc)
        if error is None:
            raise
        raise error from exc


def to_provider_error(exc: BaseException) -> ProviderError | None:
    """The ProviderError for a vendor exception, or None when no rule knows it."""
    rule = rule_for(type(exc))
    return rule.translate(exc) if rule is not None else None


class Rule(NamedTuple):
    """Exceptions of `exc_type` (and subclasses) become `translate(exc)`."""

    exc_type: type[BaseException]
    translate: Callable[[Any], ProviderError]


def rule_for(exc_type: type[BaseException]) -> Rule | None:
    """The first rule of the table that covers `exc_type`."""
    return next((rule for rule in _rules() if issubclass(exc_type, rule.exc_type)), None)


# --- HTTP statuses ---------------------------------------------------------

# What Gemini says when the prompt is over the model's input limit (HTTP 400
# INVALID_ARGUMENT): "The input token count (1200000) exceeds the maximum
# number of tokens allowed (1048576)."
_CONTEXT_TOO_LONG = re.compile(
    r"token count .* exceeds|exceeds the maximum number of tokens|context (window|length)"
    r"|prompt is too long|too many tokens",
    re.IGNORECASE,
)
# A bad key is a 400 on the Gemini API, not a 401: recognise it by its reason.
_BAD_KEY_REASONS = frozenset({"API_KEY_INVALID", "API_KEY_EXPIRED", "API_KEY_SERVICE_BLOCKED"})
_BAD_KEY_MESSAGE = re.compile(r"API key (not valid|expired|is invalid)", re.IGNORECASE)
_TRANSIENT_4XX = frozenset({408, 409, 425, 499})  # timeout, aborted, too early, cancelled
_MESSAGE_LIMIT = 300


def error_for_status(
    status: int,
    message: str = "",
    *,
    reason: str | None = None,
    retry_after: float | None = None,
) -> ProviderError:
    """The ProviderError for an HTTP error status and the service's message."""
    message = message[:_MESSAGE_LIMIT]
    text = f"HTTP {status}" + (f": {message}" if message else "")
    fields: dict[str, Any] = {"status": status, "reason": reason}
    if status == 429:
        return RateLimited(text, retry_after=retry_after, **fields)
    if status in (401, 403) or reason in _BAD_KEY_REASONS or _BAD_KEY_MESSAGE.search(message):
        return AuthError(text, **fields)
    if status == 404:
        return ModelNotFound(text, **fields)
    if status == 413 or (status == 400 and _CONTEXT_TOO_LONG.search(message)):
        return ContextTooLong(text, **fields)
    if status in _TRANSIENT_4XX or status >= 500:
        return TransientError(text, retry_after=retry_after, **fields)
    if 400 <= status < 500:
        return InvalidRequest(text, **fields)
    # 1xx/3xx reaching us means a proxy or redirect went wrong on the way.
    return TransientError(f"unexpected {text}", **fields)


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds from a Retry-After header: delta-seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    # The email package (~5 ms, ~0.4 MB) is only worth loading for the rare HTTP-date
    # form; importing it up top put it on the daemon's path to READY.
    import email.utils

    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def _from_api_error(exc: Any) -> ProviderError:
    """google.genai.errors.APIError (ClientError, ServerError) -> ours."""
    details = exc.details if isinstance(exc.details, dict) else {}
    reason = _error_reason(details)
    retry_after = _retry_after_header(getattr(exc, "response", None))
    if retry_after is None:
        retry_after = _retry_delay_detail(details)
    return error_for_status(
        int(exc.code or 0),
        str(exc.message or exc.status or ""),
        reason=reason or (str(exc.status) if exc.status else None),
        retry_after=retry_after,
    )


def _from_http_status_error(exc: Any) -> ProviderError:
    """httpx2.HTTPStatusError (raise_for_status) -> ours."""
    response = exc.response
    return error_for_status(
        response.status_code,
        response.reason_phrase,
        retry_after=_retry_after_header(response),
    )


def _retry_after_header(response: Any) -> float | None:
    headers = getattr(response, "headers", None)
    if headers is None:
        return None
    try:
        return parse_retry_after(headers.get("retry-after"))
    except AttributeError:
        return None


def _error_details(details: dict[str, Any]) -> list[dict[str, Any]]:
    error = details.get("error", details)
    items = error.get("details") if isinstance(error, dict) else None
    return [item for item in items or () if isinstance(item, dict)]


def _error_reason(details: dict[str, Any]) -> str | None:
    """google.rpc.ErrorInfo.reason, e.g. API_KEY_INVALID."""
    for item in _error_details(details):
        if isinstance(item.get("reason"), str):
            return str(item["reason"])
    return None


def _retry_delay_detail(details: dict[str, Any]) -> float | None:
    """google.rpc.RetryInfo.retryDelay ("37s", "1.5s"), sent with 429s."""
    for item in _error_details(details):
        delay = item.get("retryDelay")
        if isinstance(delay, str) and delay.endswith("s"):
            try:
                return max(0.0, float(delay[:-1]))
            except ValueError:
                return None
    return None


def _from_continuation(exc: BaseException) -> ProviderError:
    """The SDK gave up resuming a stream; its __cause__ says why."""
    cause = exc.__cause__
    mapped = to_provider_error(cause) if cause is not None else None
    return mapped or TransientError("the answer stream was interrupted", reason=type(exc).__name__)


# --- the table -------------------------------------------------------------


def _always(cls: type[ProviderError], message: str) -> Callable[[Any], ProviderError]:
    def translate(exc: Any) -> ProviderError:
        cause = type(exc).__name__
        return cls(f"{message} ({cause})", reason=cause)

    return translate


@functools.cache
def _rules() -> tuple[Rule, ...]:
    """Ordered: the first rule whose type matches wins, so specific before general."""
    return (*_genai_rules(), *_httpx2_rules(), *_httpcore2_rules(), *_python_rules())


def _genai_rules() -> list[Rule]:
    from google.genai import errors as genai_errors

    return [
        Rule(genai_errors.APIError, _from_api_error),
        Rule(
            genai_errors.UnknownApiResponseError,
            _always(MalformedResponse, "the service sent a body that is not JSON"),
        ),
        Rule(genai_errors.ContinuationInterruptedError, _from_continuation),
        # Function calling is never enabled by agentd; if it ever fires, the
        # request was wrong, and retrying it would not help.
        Rule(
            genai_errors.UnknownFunctionCallArgumentError,
            _always(InvalidRequest, "function calling failed"),
        ),
        Rule(
            genai_errors.UnsupportedFunctionError,
            _always(InvalidRequest, "function calling failed"),
        ),
        Rule(
            genai_errors.FunctionInvocationError, _always(InvalidRequest, "function calling failed")
        ),
    ]


def _httpx2_rules() -> list[Rule]:
    import httpx2

    rules = [
        Rule(httpx2.HTTPStatusError, _from_http_status_error),
        Rule(httpx2.TimeoutException, _always(ProviderTimeout, "the request timed out")),
        Rule(
            httpx2.UnsupportedProtocol,
            _always(InvalidRequest, "the base_url scheme is not http or https"),
        ),
        # Our side broke HTTP (e.g. a key with a newline in a header): retrying
        # sends the same bytes again.
        Rule(
            httpx2.LocalProtocolError,
            _always(InvalidRequest, "the request could not be sent as valid HTTP"),
        ),
        Rule(
            httpx2.DecodingError,
            _always(MalformedResponse, "the response body could not be decoded"),
        ),
        Rule(httpx2.TooManyRedirects, _always(TransientError, "too many redirects")),
        Rule(httpx2.NetworkError, _always(TransientError, "network error")),
        Rule(httpx2.TransportError, _always(TransientError, "connection failed")),
        Rule(httpx2.HTTPError, _always(TransientError, "HTTP failure")),
        Rule(httpx2.InvalidURL, _always(InvalidRequest, "the base_url is not a valid URL")),
        Rule(httpx2.CookieConflict, _always(InvalidRequest, "conflicting cookies")),
        # Raised when a response stream is read after the connection closed.
        Rule(httpx2.StreamError, _always(TransientError, "the response stream was closed")),
    ]
    with contextlib.suppress(ImportError):  # needs the optional wsproto
        from httpx2.websockets import HTTPXWSException

        rules.append(Rule(HTTPXWSException, _always(TransientError, "websocket failure")))
    return rules


def _httpcore2_rules() -> list[Rule]:
    """httpx2 wraps these in its own classes; mapped anyway in case one slips through."""
    import httpcore2

    return [
        Rule(httpcore2.TimeoutException, _always(ProviderTimeout, "the request timed out")),
        Rule(
            httpcore2.UnsupportedProtocol,
            _always(InvalidRequest, "the base_url scheme is not http or https"),
        ),
        Rule(
            httpcore2.LocalProtocolError,
            _always(InvalidRequest, "the request could not be sent as valid HTTP"),
        ),
        Rule(httpcore2.ProtocolError, _always(TransientError, "the server broke HTTP")),
        Rule(httpcore2.NetworkError, _always(TransientError, "network error")),
        Rule(httpcore2.ProxyError, _always(TransientError, "the proxy failed")),
        Rule(httpcore2.ConnectionNotAvailable, _always(TransientError, "no connection available")),
    ]


def _python_rules() -> list[Rule]:
    import pydantic

    return [
        Rule(TimeoutError, _always(ProviderTimeout, "the request timed out")),
        Rule(ConnectionError, _always(TransientError, "network error")),
        # The SDK parses bodies with json.loads and validates them with pydantic.
        Rule(json.JSONDecodeError, _always(MalformedResponse, "the service sent invalid JSON")),
        Rule(UnicodeDecodeError, _always(MalformedResponse, "the service sent invalid UTF-8")),
        Rule(
            pydantic.ValidationError,
            _always(UnexpectedResponse, "the service sent a response the SDK rejects"),
        ),
        # Library warnings (httpx2's deprecations, genai's ExperimentalWarning)
        # are only raised when a warnings filter says "error": a setup
        # problem that retrying cannot fix.
        Rule(Warning, _always(InvalidRequest, "a library warning was raised as an error")),
    ]
