"""The translation of vendor exceptions into ProviderError is complete and right.

The completeness test walks httpx2, httpcore2 and google.genai.errors for
every exception class they define, so a new class in an SDK upgrade fails
here instead of escaping as an INTERNAL error at the worst moment.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import json
import pkgutil
from types import ModuleType
from typing import Any

import httpcore2
import httpx2
import pydantic
import pytest
from google.genai import errors as genai_errors

from agentd.providers.errors import (
    ErrorKind,
    MalformedResponse,
    ProviderError,
    ProviderTimeout,
    RateLimited,
    error_for_status,
    parse_retry_after,
    rule_for,
    to_provider_error,
    translate_errors,
)


def modules_of(package: str) -> list[ModuleType]:
    """The package and every submodule that imports here (optional extras may be missing)."""
    root = importlib.import_module(package)
    found = [root]
    for info in pkgutil.walk_packages(getattr(root, "__path__", []), f"{package}.",
                                      onerror=lambda name: None):
        try:
            found.append(importlib.import_module(info.name))
        except ImportError:
            continue  # e.g. httpx2.websockets without wsproto: nothing there can be raised
    return found


def exception_classes(*packages: str) -> list[type[BaseException]]:
    classes: dict[str, type[BaseException]] = {}
    for package in packages:
        for module in modules_of(package):
            for value in vars(module).values():
                if (inspect.isclass(value) and issubclass(value, BaseException)
                        and value.__module__.split(".")[0] == package.split(".")[0]):
                    classes[f"{value.__module__}.{value.__qualname__}"] = value
    return sorted(classes.values(), key=lambda cls: f"{cls.__module__}.{cls.__qualname__}")


VENDOR_CLASSES = [
    *exception_classes("httpx2", "httpcore2"),
    *(value for value in vars(genai_errors).values()
      if inspect.isclass(value) and issubclass(value, BaseException)),
]


def instance_of(cls: type[BaseException]) -> BaseException:
    """A plausible instance of any vendor exception class."""
    if issubclass(cls, genai_errors.APIError):
        return cls(503, {"error": {"code": 503, "message": "overloaded", "status": "UNAVAILABLE"}})
    if issubclass(cls, httpx2.HTTPStatusError):
        request = httpx2.Request("POST", "http://127.0.0.1/v1/models/m:generateContent")
        return cls("boom", request=request, response=httpx2.Response(502, request=request))
    try:
        return cls("boom")
    except TypeError:
        return cls()


def test_the_walk_finds_the_classes_that_matter() -> None:
    names = {cls.__name__ for cls in VENDOR_CLASSES}

    assert {"ConnectError", "ConnectTimeout", "ReadTimeout", "WriteTimeout", "PoolTimeout",
            "RemoteProtocolError", "ReadError", "SSEError", "HTTPXDeprecationWarning",
            "APIError", "ClientError", "ServerError", "UnknownApiResponseError",
            "ContinuationInterruptedError", "ExperimentalWarning"} <= names
    assert len(VENDOR_CLASSES) > 45


@pytest.mark.parametrize("cls", VENDOR_CLASSES,
                         ids=lambda cls: f"{cls.__module__}.{cls.__qualname__}")
def test_every_vendor_exception_maps_to_a_provider_error_kind(cls: type[BaseException]) -> None:
    assert rule_for(cls) is not None, f"{cls} falls through the error map"

    error = to_provider_error(instance_of(cls))

    assert isinstance(error, ProviderError)
    assert error.kind in ErrorKind


@pytest.mark.parametrize(("status", "message", "reason", "kind"), [
    (400, "Invalid value at 'generation_config.temperature'", None, ErrorKind.INVALID_REQUEST),
    (400, "The input token count (1200000) exceeds the maximum number of tokens allowed "
          "(1048576).", None, ErrorKind.CONTEXT_TOO_LONG),
    (400, "API key not valid. Please pass a valid API key.", "API_KEY_INVALID", ErrorKind.AUTH),
    (401, "", None, ErrorKind.AUTH),
    (403, "", None, ErrorKind.AUTH),
    (404, "models/x is not found", None, ErrorKind.NOT_FOUND),
    (408, "", None, ErrorKind.TRANSIENT),
    (409, "", None, ErrorKind.TRANSIENT),
    (413, "", None, ErrorKind.CONTEXT_TOO_LONG),
    (422, "", None, ErrorKind.INVALID_REQUEST),
    (429, "", None, ErrorKind.RATE_LIMITED),
    (499, "", None, ErrorKind.TRANSIENT),
    (500, "", None, ErrorKind.TRANSIENT),
    (502, "", None, ErrorKind.TRANSIENT),
    (503, "", None, ErrorKind.TRANSIENT),
    (504, "", None, ErrorKind.TRANSIENT),
    (302, "", None, ErrorKind.TRANSIENT),
])
def test_status_codes_map_to_kinds(status: int, message: str, reason: str | None,
                                   kind: ErrorKind) -> None:
    error = error_for_status(status, message, reason=reason)

    assert (error.kind, error.status) == (kind, status)


def api_error(status: int, body: dict[str, Any], headers: dict[str, str] | None = None
              ) -> genai_errors.APIError:
    response = httpx2.Response(status, headers=headers or {}, content=json.dumps(body).encode())
    cls = genai_errors.ClientError if status < 500 else genai_errors.ServerError
    return cls(status, body, response)


def test_a_429_carries_retry_after_from_the_header() -> None:
    error = to_provider_error(api_error(429, {"error": {"code": 429}}, {"Retry-After": "12"}))

    assert isinstance(error, RateLimited) and error.retry_after == 12.0


def test_a_429_carries_retry_after_from_google_retry_info() -> None:
    body = {"error": {"code": 429, "status": "RESOURCE_EXHAUSTED", "details": [
        {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "37s"}]}}

    error = to_provider_error(api_error(429, body))

    assert isinstance(error, RateLimited) and error.retry_after == 37.0


def test_a_bad_key_reported_as_400_is_an_auth_error() -> None:
    body = {"error": {"code": 400, "message": "API key not valid.", "status": "INVALID_ARGUMENT",
                      "details": [{"@type": "type.googleapis.com/google.rpc.ErrorInfo",
                                   "reason": "API_KEY_INVALID"}]}}

    error = to_provider_error(api_error(400, body))

    assert error is not None and (error.kind, error.reason) == (ErrorKind.AUTH, "API_KEY_INVALID")


def test_retry_after_accepts_seconds_and_http_dates() -> None:
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after("1.5") == 1.5
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:10 GMT", now=1445412480.0) == 10.0
    assert parse_retry_after("soon") is None
    assert parse_retry_after(None) is None


@pytest.mark.parametrize("exc", [TimeoutError("t"), httpx2.ReadTimeout("slow"),
                                 httpcore2.ConnectTimeout("slow")])
def test_timeouts_of_every_origin_are_provider_timeouts(exc: BaseException) -> None:
    # asyncio.TimeoutError is the builtin TimeoutError since Python 3.11.
    assert isinstance(to_provider_error(exc), ProviderTimeout)


def test_malformed_bodies_are_malformed_responses() -> None:
    try:
        json.loads("{oops")
    except json.JSONDecodeError as exc:
        decode_error = exc
    try:
        pydantic.TypeAdapter(list[int]).validate_python("nope")
    except pydantic.ValidationError as exc:
        validation_error = exc

    for raised in (decode_error, genai_errors.UnknownApiResponseError("x")):
        assert isinstance(to_provider_error(raised), MalformedResponse)
    # JSON the SDK rejects is no network failure: not transient, not retried.
    rejected = to_provider_error(validation_error)
    assert rejected is not None
    assert (rejected.kind, rejected.reason) == (ErrorKind.BAD_RESPONSE, "ValidationError")


def test_translate_errors_chains_the_original_exception() -> None:
    original = httpx2.ConnectError("refused")

    with pytest.raises(ProviderError) as caught, translate_errors():
        raise original

    assert caught.value.kind is ErrorKind.TRANSIENT
    assert caught.value.__cause__ is original


def test_a_continuation_failure_maps_to_its_cause() -> None:
    with pytest.raises(ProviderError) as caught, translate_errors():
        try:
            raise api_error(503, {"error": {"code": 503}})
        except genai_errors.APIError as exc:
            raise genai_errors.ContinuationInterruptedError("gave up") from exc

    assert (caught.value.kind, caught.value.status) == (ErrorKind.TRANSIENT, 503)


def test_unknown_exceptions_propagate_unchanged() -> None:
    with pytest.raises(KeyError), translate_errors():
        raise KeyError("a bug, not a provider failure")


def test_cancellation_propagates_through_the_translation() -> None:
    with pytest.raises(asyncio.CancelledError), translate_errors():
        raise asyncio.CancelledError()
