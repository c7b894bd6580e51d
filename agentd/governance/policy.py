"""Model policy: which models a role may ask for, and how long its answers may be."""

from __future__ import annotations

from agentd.access import Role
from agentd.errors import Forbidden
from agentd.governance.settings import ModelPolicySettings

ANY_MODEL = "*"


def allowed_models(settings: ModelPolicySettings, role: Role) -> tuple[str, ...]:
    return settings.admin_models if role >= Role.ADMIN else settings.chat_models


def check_model(
    settings: ModelPolicySettings, role: Role, requested: str | None, configured: str
) -> None:
    """FORBIDDEN unless the role may use `requested` (None or the configured model: always)."""
    if requested is None or requested == configured:
        return
    allowed = allowed_models(settings, role)
    if ANY_MODEL in allowed or requested in allowed:
        return
    choice = ", ".join([configured, *allowed])
    raise Forbidden(
        f"the {role.name.lower()} role may not use model {requested!r}; allowed: {choice} "
        f"([model_policy] {role.name.lower()}_models)"
    )


def max_output_tokens(
    settings: ModelPolicySettings, role: Role, configured: int | None
) -> int | None:
    """The role's cap, or gemini.max_output_tokens when that is lower (None: no cap)."""
    cap = (
        settings.admin_max_output_tokens if role >= Role.ADMIN else settings.chat_max_output_tokens
    )
    if not cap:
        return configured
    return cap if configured is None else min(cap, configured)
