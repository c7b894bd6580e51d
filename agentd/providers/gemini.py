"""Gemini through google-genai's async client: one attempt, no policy.

This module makes exactly one HTTP call per `generate()` and translates what
goes wrong into ProviderError (errors.py). Retries, timeouts across
attempts, the breaker and fallback live in resilience.py; the SDK's own
retries are switched off (`HttpRetryOptions(attempts=1)`) so there is one
retry loop, ours. The SDK timeout (HttpOptions.timeout, milliseconds) is set
to the attempt timeout as a second line behind resilience's own.

google-genai takes ~0.85 s to import. Importing this module does not import
it: the SDK is loaded on a worker thread the first time a client is needed,
by `warm_up()` (which the daemon runs in the background once READY) or by
the first request. Without an API key the SDK is never loaded at all.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from agentd.providers.base import Answer, GenerationRequest, OnChunk, Provider, Turn
from agentd.providers.errors import Blocked, MalformedResponse, NoApiKey, translate_errors
from agentd.providers.settings import ProviderSettings

if TYPE_CHECKING:
    from google import genai
    from google.genai import types

logger = logging.getLogger(__name__)

# Finish reasons meaning a filter stopped the answer, as opposed to STOP,
# MAX_TOKENS or a technical end.
_BLOCKING_FINISH_REASONS = frozenset(
    {
        "SAFETY",
        "RECITATION",
        "BLOCKLIST",
        "PROHIBITED_CONTENT",
        "SPII",
        "IMAGE_SAFETY",
        "IMAGE_PROHIBITED_CONTENT",
        "IMAGE_RECITATION",
    }
)
_MAX_TOKENS_NOTICE = "The answer was cut short by the max_output_tokens limit."

NO_KEY_MESSAGE = (
    "No Gemini API key is configured. Provide one as the systemd credential "
    "`gemini-api-key` (LoadCredential=gemini-api-key:/path/to/key), as a key file "
    "(`gemini_api_key_file` in the [secrets] section of agentd.toml), or in the "
    "GEMINI_API_KEY environment variable, then restart agentd."
)


class GeminiProvider(Provider):
    """One Gemini call per generate(); construct, then `warm_up()` or just use."""

    def __init__(
        self, settings: ProviderSettings, api_key: str | None, *, tls: ssl.SSLContext | None = None
    ) -> None:
        """`tls`: the TLS context for HTTPS (e.g. a private CA behind a proxy);
        None builds httpx2's default one (the system CA store, ~100 ms of CA
        loading) when the client is built."""
        self._settings = settings
        self._api_key = api_key or None
        self._tls = tls
        self._client: genai.Client | None = None
        self._client_lock = asyncio.Lock()

    def configuration_problem(self) -> NoApiKey | None:
        return None if self._api_key else NoApiKey(NO_KEY_MESSAGE)

    async def warm_up(self) -> None:
        if self._api_key:
            await self._require_client()

    async def generate(self, request: GenerationRequest, on_chunk: OnChunk | None = None) -> Answer:
        client = await self._require_client()
        model = request.model or self._settings.model
        contents = _contents(request.turns)
        config = _config(self._settings, request.system_prompt, request.max_output_tokens)
        if on_chunk is None:
            with translate_errors():
                response = await client.aio.models.generate_content(
                    model=model, contents=contents, config=config
                )
            return _answer(model, _read_response(response), response.usage_metadata)
        return await self._stream(client, model, contents, config, on_chunk)

    async def probe(self, model: str) -> None:
        """GET models/{model}: cheap, authenticated, and generates nothing."""
        client = await self._require_client()
        with translate_errors():
            await client.aio.models.get(model=model)

    async def aclose(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aio.aclose()
            client.close()  # the SDK also opens a sync pool we never use

    async def _stream(
        self,
        client: genai.Client,
        model: str,
        contents: list[types.Content],
        config: types.GenerateContentConfig,
        on_chunk: OnChunk,
    ) -> Answer:
        pieces: list[str] = []
        last: types.GenerateContentResponse | None = None
        usage: types.GenerateContentResponseUsageMetadata | None = None
        with translate_errors():
            stream = await client.aio.models.generate_content_stream(
                model=model, contents=contents, config=config
            )
        try:
            while (chunk := await _next_chunk(stream)) is not None:
                last, usage = chunk, chunk.usage_metadata or usage
                text = _read_chunk(chunk)
                if text:
                    pieces.append(text)
                    # Outside translate_errors on purpose: a consumer failing
                    # (its client went away) is not a provider failure to retry.
                    await on_chunk(text)
        except BaseException:
            await _close_quietly(stream)
            raise
        if last is None:
            raise MalformedResponse("the answer stream ended without any event")
        return _answer(model, ("".join(pieces), _notice_for(last)), usage)

    async def _require_client(self) -> genai.Client:
        if not self._api_key:
            raise NoApiKey(NO_KEY_MESSAGE)
        if self._client is None:
            async with self._client_lock:
                if self._client is None:
                    self._client = await asyncio.to_thread(
                        _build_client, self._settings, self._api_key, self._tls
                    )
        return self._client


def _build_client(
    settings: ProviderSettings, api_key: str, tls: ssl.SSLContext | None
) -> genai.Client:
    """Import the SDK and build its client; runs on a worker thread (slow import)."""
    started = time.monotonic()
    import httpx2
    from google import genai
    from google.genai import types

    if tls is None:
        # The context the SDK would build for its HTTP client, built here so that
        # one CA store serves every transport: left alone, the SDK loads a second
        # one (certifi's) for the Live API's websockets, which we never use:
        # ~0.9 MB of idle RSS and ~30 ms of warm-up (docs/performance.md).
        tls = httpx2.create_ssl_context()
    options = types.HttpOptions(
        base_url=settings.base_url,
        api_version=settings.api_version,
        timeout=max(1, round(settings.attempt_timeout_s * 1000)),
        # attempts=1 rather than None: None also keeps the SDK's implicit
        # one-off retry on aiohttp connection errors, should aiohttp appear.
        retry_options=types.HttpRetryOptions(attempts=1),
        # httpx2 takes the context as `verify`; `ssl` is the SDK's websocket one.
        client_args={"verify": tls},
        async_client_args={"verify": tls, "ssl": tls},
    )
    client = genai.Client(vertexai=False, api_key=api_key, http_options=options)
    logger.info(
        "gemini client ready in %.0f ms",
        (time.monotonic() - started) * 1000,
        extra={"base_url": settings.base_url or "default", "api_version": settings.api_version},
    )
    return client


def _contents(turns: tuple[Turn, ...]) -> list[types.Content]:
    from google.genai import types

    return [types.Content(role=turn.role, parts=[types.Part(text=turn.text)]) for turn in turns]


def _config(
    settings: ProviderSettings, system_prompt: str, max_output_tokens: int | None
) -> types.GenerateContentConfig:
    from google.genai import types

    return types.GenerateContentConfig(
        system_instruction=system_prompt or None,
        temperature=settings.temperature,
        max_output_tokens=max_output_tokens or settings.max_output_tokens,
        # No tools are declared; disabling AFC also skips its per-call log line.
        automatic_function_calling=types.AutomaticFunctionCallingConfig(disable=True),
    )


async def _next_chunk(
    stream: AsyncIterator[types.GenerateContentResponse],
) -> types.GenerateContentResponse | None:
    """The stream's next chunk (None at the end), its failures translated."""
    with translate_errors():
        return await anext(stream, None)


async def _close_quietly(stream: AsyncIterator[Any]) -> None:
    """Close an abandoned stream now, releasing its connection.

    Called while another exception is on its way out: a failure to close must
    not replace it (least of all a CancelledError), so it is only logged.
    """
    close = getattr(stream, "aclose", None)
    if close is None:
        return
    try:
        await close()
    except Exception:
        logger.debug("closing an abandoned answer stream failed", exc_info=True)


def _read_response(response: types.GenerateContentResponse) -> tuple[str, str | None]:
    """(text, notice) of a whole response; raises Blocked or MalformedResponse."""
    _raise_if_blocked(response)
    if not response.candidates:
        raise MalformedResponse("the response has neither candidates nor a block reason")
    candidate = response.candidates[0]
    if candidate.content is None and candidate.finish_reason is None:
        raise MalformedResponse("the response's candidate has neither content nor an end")
    return _text_of(response), _notice_for(response)


def _read_chunk(chunk: types.GenerateContentResponse) -> str:
    _raise_if_blocked(chunk)
    return _text_of(chunk)


def _raise_if_blocked(response: types.GenerateContentResponse) -> None:
    feedback = response.prompt_feedback
    if feedback is not None and feedback.block_reason is not None:
        block_reason = _enum_name(feedback.block_reason)
        raise Blocked(f"the prompt was blocked ({block_reason})", reason=block_reason)
    finish_reason = _finish_reason(response)
    if finish_reason in _BLOCKING_FINISH_REASONS:
        raise Blocked(f"the answer was blocked ({finish_reason})", reason=finish_reason)


def _text_of(response: types.GenerateContentResponse) -> str:
    """The visible text of the first candidate (thought summaries left out)."""
    if not response.candidates or response.candidates[0].content is None:
        return ""
    parts = response.candidates[0].content.parts or []
    return "".join(part.text for part in parts if part.text and not part.thought)


def _notice_for(response: types.GenerateContentResponse) -> str | None:
    return _MAX_TOKENS_NOTICE if _finish_reason(response) == "MAX_TOKENS" else None


def _finish_reason(response: types.GenerateContentResponse) -> str | None:
    if not response.candidates or response.candidates[0].finish_reason is None:
        return None
    return _enum_name(response.candidates[0].finish_reason)


def _enum_name(value: object) -> str:
    return str(getattr(value, "value", value))


def _answer(
    model: str,
    text_and_notice: tuple[str, str | None],
    usage: types.GenerateContentResponseUsageMetadata | None,
) -> Answer:
    text, notice = text_and_notice
    tokens_in, tokens_out = _token_counts(usage)
    return Answer(text=text, model=model, tokens_in=tokens_in, tokens_out=tokens_out, notice=notice)


def _token_counts(usage: types.GenerateContentResponseUsageMetadata | None) -> tuple[int, int]:
    """(prompt, output) tokens; output includes thinking tokens, which are billed as output."""
    if usage is None:
        return 0, 0
    output = (usage.candidates_token_count or 0) + (usage.thoughts_token_count or 0)
    return usage.prompt_token_count or 0, output
