"""The `[gemini]` configuration section: one frozen, typed object.

The daemon's config system builds it from TOML and `AGENTD_GEMINI__*`
variables, so every field is a plain str, int, float, bool or None and has a
default. The API key is deliberately *not* here: it is a secret, loaded apart
(see `agentd.secrets`) and handed to the provider on its own.
"""

from __future__ import annotations

from dataclasses import dataclass

from agentd.constraints import bounded

DEFAULT_SYSTEM_PROMPT = (
    "You are agentd, an assistant for Linux operators. Answer precisely and "
    "concisely. Prefer plain text; use short code blocks for commands. Say so "
    "when you are unsure instead of guessing."
)


@dataclass(frozen=True)
class ProviderSettings:
    """How agentd talks to Gemini, and how hard it tries."""

    # Models. `fallback_model` is tried when the primary keeps failing;
    # "" (or the primary's own name) means no fallback.
    model: str = bounded("gemini-flash-latest", nonblank=True)
    fallback_model: str = "gemini-flash-lite-latest"

    # Endpoint. None keeps the SDK's defaults (the public Gemini API and its
    # default API version); set base_url for proxies and tests.
    base_url: str | None = None
    api_version: str | None = None

    # Time. One attempt may take `attempt_timeout_s` (for a stream: the longest
    # silence between two chunks); a whole answer, retries and fallback
    # included, never takes longer than `deadline_s`.
    attempt_timeout_s: float = bounded(30.0, gt=0)
    deadline_s: float = bounded(90.0, gt=0)

    # Retries of transient failures (408, 429, 5xx, network, timeouts), per
    # model: exponential backoff with full jitter, base * 2**n capped at max.
    max_attempts: int = bounded(3, ge=1)
    backoff_base_s: float = bounded(0.5, ge=0)
    backoff_max_s: float = bounded(8.0, at_least="backoff_base_s")

    # Circuit breaker: open after this many consecutive failed attempts, then
    # let one trial call through after the cool-down.
    breaker_failure_threshold: int = bounded(5, ge=1)
    breaker_cooldown_s: float = bounded(30.0, ge=0)

    # Generation. None keeps the model's own default.
    temperature: float | None = bounded(None, ge=0, le=2)
    max_output_tokens: int | None = bounded(None, ge=1)
    system_prompt: str = DEFAULT_SYSTEM_PROMPT

    # History sent with each prompt, system prompt included (estimated tokens).
    context_token_budget: int = bounded(8000, ge=1)

    @property
    def fallback(self) -> str | None:
        """The fallback model to use, or None when there is none."""
        name = self.fallback_model.strip()
        return name if name and name != self.model else None
