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
import contextlib
import logging
import ssl
import time
from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING, Any

from agentd.providers.base import Answer, AnswerStatus, GenerationRequest, OnChunk, Provider, Turn
from agentd.providers.errors import (
    Blocked,
    MalformedResponse,
    NoApiKey,
    NoText,
    ProviderError,
    translate_errors,
)
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
        reading = _Reading(request.max_answer_bytes)
        if on_chunk is None:
            with translate_errors(), _body_bound(request.max_answer_bytes):
                response = await client.aio.models.generate_content(
                    model=model, contents=contents, config=config
                )
            reading.add(response)
            return reading.answer(model)
        return await self._stream(client, model, contents, config, reading, on_chunk)

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
        reading: _Reading,
        on_chunk: OnChunk,
    ) -> Answer:
        with translate_errors():
            stream = await client.aio.models.generate_content_stream(
                model=model, contents=contents, config=config
            )
        try:
            while (chunk := await _next_chunk(stream)) is not None:
                text = reading.add(chunk)
                if text:
                    # Outside translate_errors on purpose: a consumer failing
                    # (its client went away) is not a provider failure to retry.
                    await on_chunk(text)
                if reading.truncated:
                    break  # the rest is never read: the stream is closed below
        except BaseException:
            await _close_quietly(stream)
            raise
        if reading.truncated:
            await _close_quietly(stream)
        if not reading.events:
            raise MalformedResponse("the answer stream ended without any event")
        return reading.answer(model)

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


@contextlib.contextmanager
def _body_bound(max_answer_bytes: int | None) -> Iterator[None]:
    """Bound the HTTP body of the whole answer read inside the block (body_limit.py)."""
    if max_answer_bytes is None:
        yield
        return
    # Loaded with the client already (see _build_client): no import cost here.
    from agentd.providers.body_limit import BODY_LIMIT, body_limit_for

    token = BODY_LIMIT.set(body_limit_for(max_answer_bytes))
    try:
        yield
    finally:
        BODY_LIMIT.reset(token)


def _build_client(
    settings: ProviderSettings, api_key: str, tls: ssl.SSLContext | None
) -> genai.Client:
    """Import the SDK and build its client; runs on a worker thread (slow import)."""
    started = time.monotonic()
    import httpx2
    from google import genai
    from google.genai import types

    from agentd.providers.body_limit import bound_body

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
        async_client_args={
            "verify": tls,
            "ssl": tls,
            "event_hooks": {"response": [bound_body]},
            # A transport of our own keeps the SDK on httpx2: with aiohttp importable
            # (a dependency since [http]) it would switch to aiohttp, whose errors
            # providers/errors.py does not map.
            "transport": httpx2.AsyncHTTPTransport(verify=tls),
        },
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

    Called when the answer was cut at its size limit, or while another
    exception is on its way out: a failure to close must not replace it (least
    of all a CancelledError), so it is only logged.
    """
    close = getattr(stream, "aclose", None)
    if close is None:
        return
    try:
        await close()
    except Exception:
        logger.debug("closing an abandoned answer stream failed", exc_info=True)


class _Reading:
    """One answer as it arrives, a whole response or stream chunks, read by one set of rules.

    The same rules for both modes, so a streamed and a non-streamed answer end
    with the same status and notice:

        prompt blocked (promptFeedback.blockReason) ───────────▶ Blocked
        no text at all: blocking finish reason ──────────────────▶ Blocked
                        any other end, no candidates, no parts ──▶ NoText (why)
        text, then STOP ─────────────────────────────────────────▶ complete
        text, then MAX_TOKENS ───────────────────────────────────▶ complete, noticed
        text, then a block (SAFETY...) or another reason (OTHER,
          LANGUAGE...), or no finish reason at all ──────────────▶ incomplete, noticed
        text past max_answer_bytes ──────────────────────────────▶ truncated: cut there

    Shapes, from the API reference and public reports (tests/fake_gemini.py
    cites each): a candidate may carry a finishReason and no content (OTHER,
    MAX_TOKENS, SAFETY); content may have no parts; a response may have no
    candidates; a stream's last chunk carries the finishReason, and a stream
    without one was cut.
    """

    def __init__(self, max_bytes: int | None) -> None:
        self._max_bytes = max_bytes
        self._pieces: list[str] = []
        self._size = 0  # UTF-8 bytes kept
        self.events = 0
        self.truncated = False
        self._candidates = False  # any response had a candidate
        self._finish: str | None = None
        self._usage: types.GenerateContentResponseUsageMetadata | None = None

    def add(self, response: types.GenerateContentResponse) -> str:
        """Take one response or chunk; the text to pass on (cut at the limit)."""
        self.events += 1
        self._usage = response.usage_metadata or self._usage
        feedback = response.prompt_feedback
        if feedback is not None and feedback.block_reason is not None:
            block_reason = _enum_name(feedback.block_reason)
            raise Blocked(f"the prompt was blocked ({block_reason})", reason=block_reason)
        if response.candidates:
            self._candidates = True
            finish = _finish_reason(response)
            self._finish = finish or self._finish
        return self._keep(_text_of(response))

    def _keep(self, text: str) -> str:
        if not text or self.truncated:
            return ""
        encoded = text.encode()
        if self._max_bytes is not None and self._size + len(encoded) > self._max_bytes:
            # Cut on a character boundary: "ignore" drops a partial last character.
            text = encoded[: self._max_bytes - self._size].decode("utf-8", "ignore")
            encoded = text.encode()
            self.truncated = True
        self._size += len(encoded)
        if text:
            self._pieces.append(text)
        return text

    def answer(self, model: str) -> Answer:
        """The answer read so far; raises Blocked or NoText when there is no text."""
        text = "".join(self._pieces)
        if not text:
            raise self._no_text_error()
        status, notice = self._verdict()
        tokens_in, tokens_out = _token_counts(self._usage)
        return Answer(
            text=text,
            model=model,
            tokens_in=tokens_in,
            tokens_out=tokens_out,
            notice=notice,
            status=status,
            degraded=status is not AnswerStatus.COMPLETE,
        )

    def _verdict(self) -> tuple[AnswerStatus, str | None]:
        finish = self._finish
        if self.truncated:
            return AnswerStatus.TRUNCATED, (
                f"The answer was cut at {self._max_bytes} bytes (chat.max_answer_bytes); "
                "the rest was not read."
            )
        if finish == "STOP":
            return AnswerStatus.COMPLETE, None
        if finish == "MAX_TOKENS":
            return AnswerStatus.COMPLETE, _MAX_TOKENS_NOTICE
        if finish is None:
            return AnswerStatus.INCOMPLETE, (
                "The answer ended without a finish reason: the model's text may be incomplete."
            )
        if finish in _BLOCKING_FINISH_REASONS:
            return AnswerStatus.INCOMPLETE, (
                f"The answer was cut off: the rest was withheld by Gemini's filters ({finish})."
            )
        return AnswerStatus.INCOMPLETE, (
            f"The answer was cut off: the model stopped early (finish reason {finish})."
        )

    def _no_text_error(self) -> ProviderError:
        finish = self._finish
        if finish in _BLOCKING_FINISH_REASONS:
            return Blocked(f"the answer was blocked ({finish})", reason=finish)
        if not self._candidates:
            return NoText("the response had no candidates", reason="NO_CANDIDATES")
        if finish is None:
            return NoText("the answer ended without any text or finish reason", reason="NO_FINISH")
        if finish == "STOP":
            return NoText("the answer had no text parts (finish reason STOP)", reason="STOP")
        return NoText(f"finish reason {finish}{_FINISH_HINTS.get(finish, '')}", reason=finish)


# Why a finish reason came with no text, for the user (FinishReason, API reference).
_FINISH_HINTS = {
    "MAX_TOKENS": ": the output limit was reached before any text (thinking may have used it)",
    "LANGUAGE": ": the prompt's language is not supported",
    "OTHER": ": the service gave no reason",
    "MALFORMED_FUNCTION_CALL": ": the model produced an invalid function call",
}


def _text_of(response: types.GenerateContentResponse) -> str:
    """The visible text of the first candidate (thought summaries left out)."""
    if not response.candidates or response.candidates[0].content is None:
        return ""
    parts = response.candidates[0].content.parts or []
    return "".join(part.text for part in parts if part.text and not part.thought)


def _finish_reason(response: types.GenerateContentResponse) -> str | None:
    if not response.candidates or response.candidates[0].finish_reason is None:
        return None
    return _enum_name(response.candidates[0].finish_reason)


def _enum_name(value: object) -> str:
    return str(getattr(value, "value", value))


def _token_counts(usage: types.GenerateContentResponseUsageMetadata | None) -> tuple[int, int]:
    """(prompt, output) tokens; output includes thinking tokens, which are billed as output."""
    if usage is None:
        return 0, 0
    output = (usage.candidates_token_count or 0) + (usage.thoughts_token_count or 0)
    return usage.prompt_token_count or 0, output
