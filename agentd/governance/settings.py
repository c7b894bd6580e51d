"""The `[secrets_scan]`, `[budgets]` and `[model_policy]` config sections: frozen, stdlib only.

Like the other sections, each lists its own invalid values in `problems()`;
the config loader turns the first into an error naming the key and its origin.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Final

ACTIONS: Final = ("refuse", "redact", "allow")

# Policy classes, in the order findings are reported. Each detector kind belongs
# to one class (detectors.py); the policy is set per class.
CLASSES: Final = (
    "private_key",
    "cloud_key",
    "service_token",
    "url_password",
    "env_secret",
    "jwt",
    "email",
    "phone",
    "card_number",
    "iban",
)


@dataclass(frozen=True)
class ScanSettings:
    """What happens to a prompt that carries a credential: refuse, redact or allow, per class."""

    enabled: bool = True
    private_key: str = "refuse"
    cloud_key: str = "refuse"
    service_token: str = "redact"
    url_password: str = "redact"
    env_secret: str = "redact"
    jwt: str = "redact"
    # Personal data: off (allow) unless an operator turns it on.
    email: str = "allow"
    phone: str = "allow"
    card_number: str = "allow"
    iban: str = "allow"
    # Classes `chat --allow-secrets` may let through for one message: all but
    # private_key and cloud_key.
    overridable: tuple[str, ...] = CLASSES[2:]

    def action(self, cls: str) -> str:
        action: str = getattr(self, cls)
        return action

    def problems(self) -> list[tuple[str, str]]:
        out = [
            (cls, f"must be one of {', '.join(ACTIONS)}, got {self.action(cls)!r}")
            for cls in CLASSES
            if self.action(cls) not in ACTIONS
        ]
        unknown = [c for c in self.overridable if c not in CLASSES]
        if unknown:
            out.append(
                ("overridable", f"names no class {unknown[0]!r} (one of {', '.join(CLASSES)})")
            )
        return out


@dataclass(frozen=True)
class BudgetSettings:
    """Daily caps per UTC day; 0 = no cap. Costs are estimates from [pricing]."""

    uid_tokens_per_day: int = 0
    uid_cost_usd_per_day: float = 0.0
    global_tokens_per_day: int = 0
    global_cost_usd_per_day: float = 0.0
    warn_ratio: float = 0.8  # a warning rides on the answer from this share of a cap on

    def problems(self) -> list[tuple[str, str]]:
        out = [
            (f.name, "must not be negative")
            for f in fields(self)
            if f.name != "warn_ratio" and getattr(self, f.name) < 0
        ]
        if not 0 < self.warn_ratio <= 1:
            out.append(("warn_ratio", "must be in (0, 1]"))
        return out


@dataclass(frozen=True)
class ModelPolicySettings:
    """Which models a role may ask for with `chat --model`, and its output-token cap.

    The configured gemini.model is always allowed; "*" allows any model.
    A cap of 0 leaves gemini.max_output_tokens as it is.
    """

    chat_models: tuple[str, ...] = ()
    admin_models: tuple[str, ...] = ("*",)
    chat_max_output_tokens: int = 0
    admin_max_output_tokens: int = 0

    def problems(self) -> list[tuple[str, str]]:
        return [
            (name, "must not be negative")
            for name in ("chat_max_output_tokens", "admin_max_output_tokens")
            if getattr(self, name) < 0
        ]
