"""GeminiProvider: one real google-genai call per generate(), against the fake over HTTP."""

from __future__ import annotations

import asyncio
import ssl
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

from agentd.constraints import problems
from agentd.providers.base import Answer, GenerationRequest, Turn
from agentd.providers.errors import (
    AuthError,
    Blocked,
    ErrorKind,
    MalformedResponse,
    NoApiKey,
    NoText,
    ProviderError,
    ProviderTimeout,
    TransientError,
    UnexpectedResponse,
)
from agentd.providers.gemini import GeminiProvider
from agentd.providers.settings import ProviderSettings
from tests.conftest import async_wait_until
from tests.fake_gemini import (
    FakeGemini,
    answer,
    answer_blocked,
    forbidden,
    hang,
    malformed,
    prompt_blocked,
    server_error,
    stream_cut,
    unauthorized,
)

KEY = "test-key-not-secret"
# Built once: every SDK client would otherwise load the CA store again (~100 ms).
TLS = ssl.create_default_context()
MODEL = "gemini-flash-latest"


def settings_for(fake: FakeGemini, **overrides: Any) -> ProviderSettings:
    values: dict[str, Any] = {"base_url": fake.url, "attempt_timeout_s": 5.0} | overrides
    return ProviderSettings(**values)


@asynccontextmanager
async def gemini(settings: ProviderSettings, api_key: str | None = KEY
                 ) -> AsyncIterator[GeminiProvider]:
    provider = GeminiProvider(settings, api_key, tls=TLS)
    try:
        yield provider
    finally:
        await provider.aclose()


def request(*texts: str, system_prompt: str = "Be brief.") -> GenerationRequest:
    roles = ["user", "model"]
    turns = tuple(Turn(roles[i % 2], text) for i, text in enumerate(texts))  # type: ignore[arg-type]
    return GenerationRequest(request_id="r-1", system_prompt=system_prompt, turns=turns)


async def generate(fake: FakeGemini, req: GenerationRequest | None = None,
                   **overrides: Any) -> Answer:
    async with gemini(settings_for(fake, **overrides)) as provider:
        return await provider.generate(req or request("hello"))


async def stream(fake: FakeGemini, pieces: list[str], **overrides: Any) -> Answer:
    async def on_chunk(text: str) -> None:
        pieces.append(text)

    async with gemini(settings_for(fake, **overrides)) as provider:
        return await provider.generate(request("hello"), on_chunk)


def run_python(code: str) -> str:
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)],
                            capture_output=True, text=True, timeout=60, check=True)
    return result.stdout.strip()


# --- settings --------------------------------------------------------------------------


def test_default_settings_are_valid_and_bad_ones_are_named() -> None:
    assert problems(ProviderSettings()) == []
    bad = ProviderSettings(attempt_timeout_s=0, max_attempts=0, temperature=3.0, model=" ")

    assert [name for name, _ in problems(bad)] == [
        "model", "attempt_timeout_s", "max_attempts", "temperature"]


def test_fallback_is_none_when_empty_or_the_primary() -> None:
    assert ProviderSettings().fallback == "gemini-flash-lite-latest"
    assert ProviderSettings(fallback_model="").fallback is None
    assert ProviderSettings(fallback_model=MODEL).fallback is None


# --- import cost -----------------------------------------------------------------


def test_importing_the_provider_modules_does_not_import_google_genai() -> None:
    out = run_python("""
        import sys
        import agentd.providers, agentd.providers.gemini, agentd.providers.resilience
        print(sorted(m for m in ("google.genai", "httpx2", "pydantic") if m in sys.modules))
    """)
    assert out == "[]"


def test_without_a_key_the_sdk_is_never_loaded() -> None:
    out = run_python("""
        import asyncio, sys
        from agentd.providers import GeminiProvider, GenerationRequest, ProviderSettings, Turn
        from agentd.providers.errors import NoApiKey
        provider = GeminiProvider(ProviderSettings(), api_key=None)
        asyncio.run(provider.warm_up())
        try:
            asyncio.run(provider.generate(GenerationRequest("r", "", (Turn("user", "hi"),))))
        except NoApiKey:
            print("no key;", "google.genai" in sys.modules)
    """)
    assert out == "no key; False"


def test_warm_up_loads_the_sdk_so_the_first_request_does_not(fake_gemini: FakeGemini) -> None:
    async def scenario() -> float:
        async with gemini(settings_for(fake_gemini)) as provider:
            await provider.warm_up()
            started = time.monotonic()
            await provider.generate(request("hello"))
            return time.monotonic() - started

    assert asyncio.run(scenario()) < 0.5
    assert "google.genai" in sys.modules


# --- what is sent --------------------------------------------------------------------


def test_generate_sends_model_history_system_prompt_and_key(fake_gemini: FakeGemini) -> None:
    asyncio.run(generate(fake_gemini, request("first", "reply", "second"),
                         temperature=0.3, max_output_tokens=256))

    [sent] = fake_gemini.requests
    assert (sent.method, sent.model, sent.action) == ("POST", MODEL, "generateContent")
    assert [c["role"] for c in sent.contents] == ["user", "model", "user"]
    assert sent.texts == ["first", "reply", "second"]
    assert sent.system_instruction == "Be brief."
    assert sent.api_key == KEY
    assert sent.body["generationConfig"] == {"temperature": 0.3, "maxOutputTokens": 256}


def test_request_model_overrides_the_configured_one(fake_gemini: FakeGemini) -> None:
    req = GenerationRequest("r-2", "", (Turn("user", "hi"),), model="gemini-flash-lite-latest")
    asyncio.run(generate(fake_gemini, req))

    [sent] = fake_gemini.requests
    assert sent.model == "gemini-flash-lite-latest"
    assert sent.system_instruction is None


@pytest.mark.parametrize("version", ["v1", "v1beta"])
def test_api_version_from_settings_is_the_url_prefix(fake_gemini: FakeGemini,
                                                     version: str) -> None:
    asyncio.run(generate(fake_gemini, api_version=version))

    assert fake_gemini.requests[0].version == version


# --- what comes back ------------------------------------------------------------------


def test_answer_carries_text_model_and_usage_tokens(fake_gemini: FakeGemini) -> None:
    fake_gemini.push(answer("forty-two chars of a perfectly good answer"))

    result = asyncio.run(generate(fake_gemini))

    assert result.text == "forty-two chars of a perfectly good answer"
    assert result.model == MODEL
    assert result.tokens_in > 0
    assert result.tokens_out == 11  # the fake counts ceil(len / 4)
    assert (result.degraded, result.notice) == (False, None)


def test_stream_hands_each_piece_to_on_chunk_in_order(fake_gemini: FakeGemini) -> None:
    fake_gemini.push(answer(chunks=("Hel", "lo, ", "world")))
    pieces: list[str] = []

    result = asyncio.run(stream(fake_gemini, pieces))

    assert pieces == ["Hel", "lo, ", "world"]
    assert result.text == "Hello, world"
    assert result.tokens_out == 3
    assert fake_gemini.requests[0].action == "streamGenerateContent"


def test_max_tokens_finish_adds_a_notice(fake_gemini: FakeGemini) -> None:
    fake_gemini.push(answer("cut", finish_reason="MAX_TOKENS"))

    result = asyncio.run(generate(fake_gemini))

    assert result.text == "cut"
    assert result.notice is not None and "max_output_tokens" in result.notice


# --- failures become ProviderError -----------------------------------------------------


def test_sdk_retries_are_off_one_failure_is_one_request(fake_gemini: FakeGemini) -> None:
    fake_gemini.push(server_error(503), answer("too late"))

    with pytest.raises(TransientError) as caught:
        asyncio.run(generate(fake_gemini))

    assert caught.value.status == 503
    assert len(fake_gemini.requests) == 1


def test_sdk_timeout_is_the_attempt_timeout(fake_gemini: FakeGemini) -> None:
    fake_gemini.push(hang())
    started = time.monotonic()

    with pytest.raises(ProviderTimeout):
        asyncio.run(generate(fake_gemini, attempt_timeout_s=0.3))

    assert time.monotonic() - started < 3
    assert len(fake_gemini.requests) == 1


@pytest.mark.parametrize("reply", [unauthorized(), forbidden()], ids=["401", "403"])
def test_rejected_key_raises_auth_error(fake_gemini: FakeGemini, reply: Any) -> None:
    fake_gemini.push(reply)

    with pytest.raises(AuthError):
        asyncio.run(generate(fake_gemini))


@pytest.mark.parametrize("reply", [prompt_blocked("SAFETY"), answer_blocked("PROHIBITED_CONTENT")],
                         ids=["prompt", "answer"])
def test_safety_block_raises_blocked_with_its_reason(fake_gemini: FakeGemini, reply: Any) -> None:
    fake_gemini.push(reply)

    with pytest.raises(Blocked) as caught:
        asyncio.run(generate(fake_gemini))

    assert caught.value.reason in ("SAFETY", "PROHIBITED_CONTENT")


@pytest.mark.parametrize(("body", "error", "kind"), [
    (b'{"candidates": [oops', MalformedResponse, ErrorKind.TRANSIENT),
    (b'{"candidates": [{"content": {"parts": "zz"}}]}', UnexpectedResponse,
     ErrorKind.BAD_RESPONSE),
    (b"[1, 2]", NoText, ErrorKind.NO_TEXT),
    (b'{"candidates": "x"}', NoText, ErrorKind.NO_TEXT),
    (b"", NoText, ErrorKind.NO_TEXT),
], ids=["not-json", "invalid-parts", "list", "wrong-type", "empty"])
def test_an_unusable_body_raises_by_what_is_wrong_with_it(
    fake_gemini: FakeGemini, body: bytes, error: type[ProviderError], kind: ErrorKind
) -> None:
    """Not JSON: transient (a proxy broke it). JSON the SDK rejects: a bad response, not
    retried. JSON the SDK reads as an answer with no candidates: no text."""
    fake_gemini.push(malformed(body))

    with pytest.raises(error) as caught:
        asyncio.run(generate(fake_gemini))

    assert caught.value.kind is kind


@pytest.mark.parametrize("how", ["disconnect", "error"])
def test_stream_failure_after_chunks_raises_after_delivering_them(fake_gemini: FakeGemini,
                                                                  how: Any) -> None:
    fake_gemini.push(stream_cut(2, chunks=("a", "b", "c"), how=how))
    pieces: list[str] = []

    with pytest.raises(TransientError):
        asyncio.run(stream(fake_gemini, pieces))

    assert pieces == ["a", "b"]


def test_a_failing_consumer_is_not_a_provider_error(fake_gemini: FakeGemini) -> None:
    async def on_chunk(text: str) -> None:
        raise BrokenPipeError("the client went away")

    async def scenario() -> None:
        async with gemini(settings_for(fake_gemini)) as provider:
            await provider.generate(request("hello"), on_chunk)

    with pytest.raises(BrokenPipeError):
        asyncio.run(scenario())


def test_cancellation_propagates_out_of_a_pending_call(fake_gemini: FakeGemini) -> None:
    fake_gemini.push(hang())

    async def scenario() -> None:
        async with gemini(settings_for(fake_gemini)) as provider:
            task = asyncio.create_task(provider.generate(request("hello")))
            await async_wait_until(lambda: len(fake_gemini.requests) == 1)
            task.cancel()
            await task

    with pytest.raises(asyncio.CancelledError):
        asyncio.run(scenario())


def test_no_key_raises_no_api_key_with_a_hint_and_sends_nothing(fake_gemini: FakeGemini) -> None:
    async def scenario() -> None:
        async with gemini(settings_for(fake_gemini), api_key=None) as provider:
            await provider.generate(request("hello"))

    with pytest.raises(NoApiKey) as caught:
        asyncio.run(scenario())

    assert "GEMINI_API_KEY" in str(caught.value) and "gemini-api-key" in str(caught.value)
    assert fake_gemini.requests == []


# --- probe ----------------------------------------------------------------------------


def test_probe_gets_the_model_and_raises_on_a_rejected_key(fake_gemini: FakeGemini) -> None:
    fake_gemini.push(unauthorized(), action="get")

    async def scenario() -> list[ProviderError | None]:
        outcomes: list[ProviderError | None] = []
        async with gemini(settings_for(fake_gemini)) as provider:
            for _ in range(2):
                try:
                    await provider.probe(MODEL)
                    outcomes.append(None)
                except ProviderError as exc:
                    outcomes.append(exc)
        return outcomes

    rejected, accepted = asyncio.run(scenario())

    assert isinstance(rejected, AuthError) and accepted is None
    assert [(r.method, r.action, r.model) for r in fake_gemini.requests] == [
        ("GET", "get", MODEL), ("GET", "get", MODEL)]


