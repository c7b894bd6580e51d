"""The `[secrets_scan]`, `[budgets]` and `[model_policy]` config sections: frozen, stdlib only.

Like the other sections, each declares its constraints on its fields
(agentd/constraints.py); the config loader checks them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from agentd.constraints import bounded

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
    private_key: str = bounded("refuse", one_of=ACTIONS)
    cloud_key: str = bounded("refuse", one_of=ACTIONS)
    service_token: str = bounded("redact", one_of=ACTIONS)
    url_password: str = bounded("redact", one_of=ACTIONS)
    env_secret: str = bounded("redact", one_of=ACTIONS)
    jwt: str = bounded("redact", one_of=ACTIONS)
    # Personal data: off (allow) unless an operator turns it on.
    email: str = bounded("allow", one_of=ACTIONS)
    phone: str = bounded("allow", one_of=ACTIONS)
    card_number: str = bounded("allow", one_of=ACTIONS)
    iban: str = bounded("allow", one_of=ACTIONS)
    # Classes `chat --allow-secrets` may let through for one message: all but
    # private_key and cloud_key.
    overridable: tuple[str, ...] = bounded(CLASSES[2:], check=lambda names: _unknown_class(names))

    def action(self, cls: str) -> str:
        action: str = getattr(self, cls)
        return action


@dataclass(frozen=True)
class BudgetSettings:
    """Daily caps per UTC day; 0 = no cap. Costs are estimates from [pricing]."""

    uid_tokens_per_day: int = bounded(0, ge=0)
    uid_cost_usd_per_day: float = bounded(0.0, ge=0)
    global_tokens_per_day: int = bounded(0, ge=0)
    global_cost_usd_per_day: float = bounded(0.0, ge=0)
    warn_ratio: float = bounded(
        0.8, gt=0, le=1
    )  # a warning rides on the answer from this share of a cap on


@dataclass(frozen=True)
class ModelPolicySettings:
    """Which models a role may ask for with `chat --model`, and its output-token cap.

    The configured gemini.model is always allowed; "*" allows any model.
    A cap of 0 leaves gemini.max_output_tokens as it is.
    """

    chat_models: tuple[str, ...] = ()
    admin_models: tuple[str, ...] = ("*",)
    chat_max_output_tokens: int = bounded(0, ge=0)
    admin_max_output_tokens: int = bounded(0, ge=0)


def _unknown_class(names: tuple[str, ...]) -> str | None:
    unknown = [name for name in names if name not in CLASSES]
    if unknown:
        return f"names no class {unknown[0]!r} (one of {', '.join(CLASSES)})"
    return None
