"""Chat backends: Gemini through google-genai, wrapped in our resilience layer.

    resilience.py   retries with fallback around one provider (the orchestration)
    retry.py        the retry schedule: backoff with jitter, Retry-After, deadline
    breaker.py      the circuit breaker
    health.py       evidence of the provider's health; the key check's vocabulary
    texts.py        what the user reads: degraded answers, notices, refusals

The daemon builds one provider at start-up and shares it::

    provider = create_provider(config.gemini, api_key, on_health_change=...)
    answer = await provider.generate(GenerationRequest(...), on_chunk=...)

Importing this package does not import google-genai (see gemini.py).
"""

from __future__ import annotations

from collections.abc import Callable

from agentd.providers.base import (
    Answer,
    AnswerStatus,
    GenerationRequest,
    OnChunk,
    OnWait,
    Provider,
    Turn,
    Wait,
)
from agentd.providers.breaker import BreakerState, BreakerStatistics, OnStateChange
from agentd.providers.context import FittedHistory, estimate_tokens, fit_history
from agentd.providers.errors import ErrorKind, ProviderError
from agentd.providers.gemini import GeminiProvider
from agentd.providers.health import Health, HealthStatus, KeyCheck, KeyStatus
from agentd.providers.resilience import ProviderStatistics, ResilientProvider
from agentd.providers.settings import ProviderSettings

__all__ = [
    "Answer",
    "AnswerStatus",
    "BreakerState",
    "BreakerStatistics",
    "ErrorKind",
    "FittedHistory",
    "GeminiProvider",
    "GenerationRequest",
    "Health",
    "HealthStatus",
    "KeyCheck",
    "KeyStatus",
    "OnChunk",
    "OnStateChange",
    "OnWait",
    "Provider",
    "ProviderError",
    "ProviderSettings",
    "ProviderStatistics",
    "ResilientProvider",
    "Turn",
    "Wait",
    "create_provider",
    "estimate_tokens",
    "fit_history",
]


def create_provider(
    settings: ProviderSettings,
    api_key: str | None,
    *,
    on_health_change: Callable[[], None] | None = None,
) -> ResilientProvider:
    """The production provider: Gemini behind the resilience layer, real time and randomness."""
    return ResilientProvider(
        GeminiProvider(settings, api_key),
        settings,
        on_health_change=on_health_change,
    )
