"""The `[gemini]` configuration section: one frozen, typed object.

The daemon's config system builds it from TOML and `AGENTD_GEMINI__*`
variables, so every field is a plain str, int, float, bool or None and has a
default. The API key is deliberately *not* here: it is a secret, loaded apart
(see `agentd.secrets`) and handed to the provider on its own.
"""

from __future__ import annotations

from dataclasses import dataclass

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
    model: str = "gemini-flash-latest"
    fallback_model: str = "gemini-flash-lite-latest"

    # Endpoint. None keeps the SDK's defaults (the public Gemini API and its
    # default API version); set base_url for proxies and tests.
    base_url: str | None = None
    api_version: str | None = None

    # Time. One attempt may take `attempt_timeout_s` (for a stream: the longest
    # silence between two chunks); a whole answer, retries and fallback
    # included, never takes longer than `deadline_s`.
    attempt_timeout_s: float = 30.0
    deadline_s: float = 90.0

    # Retries of transient failures (408, 429, 5xx, network, timeouts), per
    # model: exponential backoff with full jitter, base * 2**n capped at max.
    max_attempts: int = 3
    backoff_base_s: float = 0.5
    backoff_max_s: float = 8.0

    # Circuit breaker: open after this many consecutive failed attempts, then
    # let one trial call through after the cool-down.
    breaker_failure_threshold: int = 5
    breaker_cooldown_s: float = 30.0

    # Generation. None keeps the model's own default.
    temperature: float | None = None
    max_output_tokens: int | None = None
    system_prompt: str = DEFAULT_SYSTEM_PROMPT

    # History sent with each prompt, system prompt included (estimated tokens).
    context_token_budget: int = 8000

    def problems(self) -> list[tuple[str, str]]:
        """(field, what is wrong) for every invalid value; empty when all is well.

        The config loader turns these into one clear error naming the key and
        where it came from, so this never raises.
        """
        checks = [
            ("model", bool(self.model.strip()), "must not be empty"),
            ("attempt_timeout_s", self.attempt_timeout_s > 0, "must be greater than 0"),
            ("deadline_s", self.deadline_s > 0, "must be greater than 0"),
            ("max_attempts", self.max_attempts >= 1, "must be at least 1"),
            ("backoff_base_s", self.backoff_base_s >= 0, "must not be negative"),
            (
                "backoff_max_s",
                self.backoff_max_s >= self.backoff_base_s,
                "must be at least backoff_base_s",
            ),
            (
                "breaker_failure_threshold",
                self.breaker_failure_threshold >= 1,
                "must be at least 1",
            ),
            ("breaker_cooldown_s", self.breaker_cooldown_s >= 0, "must not be negative"),
            (
                "temperature",
                self.temperature is None or 0 <= self.temperature <= 2,
                "must be between 0 and 2",
            ),
            (
                "max_output_tokens",
                self.max_output_tokens is None or self.max_output_tokens >= 1,
                "must be at least 1",
            ),
            ("context_token_budget", self.context_token_budget >= 1, "must be at least 1"),
        ]
        return [(name, message) for name, ok, message in checks if not ok]

    @property
    def fallback(self) -> str | None:
        """The fallback model to use, or None when there is none."""
        name = self.fallback_model.strip()
        return name if name and name != self.model else None
