"""Model policy per role: which models `chat --model` may name, and the output-token cap,
checked with real clients under real uids (SO_PEERCRED) against the fake Gemini."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from agentd.access import Role
from agentd.constraints import problems
from agentd.errors import Forbidden
from agentd.governance.policy import check_model, max_output_tokens
from agentd.governance.settings import ModelPolicySettings
from tests.conftest import DaemonProcess, gemini_env
from tests.fake_gemini import FakeGemini, answer
from tests.test_access import GROUP, OUTSIDER, as_user, open_path_to_others

CONFIGURED = "gemini-flash-latest"
OTHER = "gemini-2.5-flash"


def test_the_configured_model_is_always_allowed_and_others_only_when_listed() -> None:
    settings = ModelPolicySettings(chat_models=(OTHER,), admin_models=("*",))
    check_model(settings, Role.CHAT, None, CONFIGURED)
    check_model(settings, Role.CHAT, CONFIGURED, CONFIGURED)
    check_model(settings, Role.CHAT, OTHER, CONFIGURED)
    check_model(settings, Role.ADMIN, "anything", CONFIGURED)
    with pytest.raises(
        Forbidden,
        match=r"the chat role may not use model 'gemini-pro'; allowed: gemini-flash-latest, gemini-2.5-flash",
    ):
        check_model(settings, Role.CHAT, "gemini-pro", CONFIGURED)


def test_the_output_cap_is_the_lower_of_the_roles_and_the_configured_one() -> None:
    settings = ModelPolicySettings(chat_max_output_tokens=100, admin_max_output_tokens=0)
    assert max_output_tokens(settings, Role.CHAT, None) == 100
    assert max_output_tokens(settings, Role.CHAT, 50) == 50
    assert max_output_tokens(settings, Role.ADMIN, None) is None
    assert max_output_tokens(settings, Role.ADMIN, 300) == 300


def test_negative_caps_are_config_problems() -> None:
    assert problems(ModelPolicySettings(chat_max_output_tokens=-1)) == [
        ("chat_max_output_tokens", "must not be negative")
    ]


def generated(fake: FakeGemini) -> list[Any]:
    return [r for r in fake.requests if r.action in ("generateContent", "streamGenerateContent")]


def test_an_admin_may_name_any_model_by_default(
    gemini_daemon: DaemonProcess, fake_gemini: FakeGemini
) -> None:
    fake_gemini.set_default(answer("ok"))
    result = gemini_daemon.agentctl("chat", "--json", "--model", OTHER, "hi")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["model"] == OTHER
    assert [r.model for r in generated(fake_gemini)] == [OTHER]


def test_an_admin_list_restricts_admins_too(
    make_daemon: Callable[..., DaemonProcess], fake_gemini: FakeGemini
) -> None:
    d = make_daemon(gemini_env(fake_gemini, AGENTD_MODEL_POLICY__ADMIN_MODELS=OTHER)).start()
    result = d.agentctl("chat", "--model", "gemini-2.5-pro", "hi")
    assert result.returncode == 6
    assert b"the admin role may not use model 'gemini-2.5-pro'" in result.stderr
    assert generated(fake_gemini) == []


pytestmark_root = pytest.mark.skipif(
    os.geteuid() != 0, reason="needs root to run a client under another uid"
)


@pytest.fixture
def policy_daemon(
    make_daemon: Callable[..., DaemonProcess], fake_gemini: FakeGemini
) -> Callable[..., DaemonProcess]:
    def start(**env: str) -> DaemonProcess:
        fake_gemini.set_default(answer("ok"))
        d = make_daemon(gemini_env(fake_gemini, AGENTD_DAEMON__SOCKET_GROUP=GROUP, **env))
        open_path_to_others(Path(d.socket).parent)
        return d.start()

    return start


@pytestmark_root
def test_the_chat_role_is_refused_an_unlisted_model_and_nothing_is_sent(
    policy_daemon: Callable[..., DaemonProcess], fake_gemini: FakeGemini
) -> None:
    d = policy_daemon()
    result = as_user(d, OUTSIDER, GROUP, "chat", "--model", OTHER, "hi")
    assert result.returncode == 6
    assert b"FORBIDDEN" in result.stderr and b"the chat role may not use model" in result.stderr
    assert generated(fake_gemini) == []
    assert as_user(d, OUTSIDER, GROUP, "chat", "--model", CONFIGURED, "hi").returncode == 0


@pytestmark_root
def test_the_chat_role_may_use_a_listed_model(
    policy_daemon: Callable[..., DaemonProcess], fake_gemini: FakeGemini
) -> None:
    d = policy_daemon(AGENTD_MODEL_POLICY__CHAT_MODELS=f"{OTHER},gemini-2.5-flash-lite")
    result = as_user(d, OUTSIDER, GROUP, "chat", "--model", OTHER, "hi")
    assert result.returncode == 0, result.stderr
    assert [r.model for r in generated(fake_gemini)] == [OTHER]


@pytestmark_root
def test_each_role_gets_its_own_output_token_cap(
    policy_daemon: Callable[..., DaemonProcess], fake_gemini: FakeGemini
) -> None:
    d = policy_daemon(
        AGENTD_MODEL_POLICY__CHAT_MAX_OUTPUT_TOKENS="64",
        AGENTD_MODEL_POLICY__ADMIN_MAX_OUTPUT_TOKENS="512",
    )
    assert as_user(d, OUTSIDER, GROUP, "chat", "hi").returncode == 0
    assert d.agentctl("chat", "hi").returncode == 0
    caps = [r.body["generationConfig"]["maxOutputTokens"] for r in generated(fake_gemini)]
    assert caps == [64, 512]
