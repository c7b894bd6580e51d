"""Chat backends: Gemini through google-genai, wrapped in our resilience layer.

The daemon builds one provider at start-up and shares it::

    provider = create_provider(config.gemini, api_key, on_breaker_change=...)
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
from agentd.providers.context import FittedHistory, estimate_tokens, fit_history
from agentd.providers.errors import ErrorKind, ProviderError
from agentd.providers.gemini import GeminiProvider
from agentd.providers.resilience import (
    BreakerState,
    BreakerStatistics,
    Health,
    HealthStatus,
    KeyCheck,
    KeyStatus,
    OnStateChange,
    ProviderStatistics,
    ResilientProvider,
)
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
    on_breaker_change: OnStateChange | None = None,
    on_health_change: Callable[[], None] | None = None,
) -> ResilientProvider:
    """The production provider: Gemini behind the resilience layer, real time and randomness."""
    return ResilientProvider(
        GeminiProvider(settings, api_key),
        settings,
        on_breaker_change=on_breaker_change,
        on_health_change=on_health_change,
    )
