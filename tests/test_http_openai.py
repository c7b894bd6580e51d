"""The official openai SDK (a client nobody here wrote) against /v1 on agentd-http.sock:
plain and streamed completions, multi-turn, and the errors it must surface."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import openai
import pytest

from tests import fake_gemini as fg
from tests.conftest import DaemonProcess, gemini_env, wait_until
from tests.fake_gemini import FakeGemini
from tests.http_client import sdk
from tests.peer import peer_argv
from tests.test_access import GROUP, OUTSIDER, open_path_to_others

HTTP_ON = {"AGENTD_HTTP__ENABLED": "true"}


def http_socket(daemon: DaemonProcess) -> str:
    return str(Path(daemon.socket).parent / "agentd-http.sock")


def start(make_daemon: Callable[..., DaemonProcess], env: dict[str, str]) -> DaemonProcess:
    daemon = make_daemon({**env, **HTTP_ON}).start()
    wait_until(lambda: Path(http_socket(daemon)).exists(), 15, "the HTTP socket")
    return daemon


@pytest.fixture
def http_daemon(
    make_daemon: Callable[..., DaemonProcess], fake_gemini: FakeGemini
) -> DaemonProcess:
    return start(make_daemon, gemini_env(fake_gemini))


def test_plain_completion_is_a_stored_audited_chat(
    http_daemon: DaemonProcess, fake_gemini: FakeGemini
) -> None:
    fake_gemini.push(fg.answer("Paris."))
    client = sdk(http_socket(http_daemon))
    completion = client.chat.completions.create(
        model="agentd",
        messages=[
            {"role": "system", "content": "Answer in one word."},
            {"role": "user", "content": "Capital of France?"},
        ],
    )
    assert completion.object == "chat.completion"
    assert completion.choices[0].message.content == "Paris."
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None and completion.usage.total_tokens >= 0
    assert fake_gemini.requests[-1].system_instruction == "Answer in one word."
    audit = http_daemon.call("audit", {"command": "chat"})
    assert any(row["error_code"] is None for row in audit["rows"]), audit
    sessions = http_daemon.call("sessions")["sessions"]
    history = http_daemon.call("history", {"session": sessions[0]["id"]})["messages"]
    assert [m["content"] for m in history][-2:] == ["Capital of France?", "Paris."]
    assert next(m.id for m in client.models.list()) == "agentd"


def test_streamed_completion_arrives_in_chunks_and_ends(
    http_daemon: DaemonProcess, fake_gemini: FakeGemini
) -> None:
    fake_gemini.push(fg.answer(chunks=("Once ", "upon ", "a time.")))
    stream = sdk(http_socket(http_daemon)).chat.completions.create(
        model="agentd",
        messages=[{"role": "user", "content": "Tell a story"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert len({c.id for c in chunks}) == 1
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Once upon a time."
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].usage is not None and not chunks[-1].choices


def test_multi_turn_continues_the_same_session(
    http_daemon: DaemonProcess, fake_gemini: FakeGemini
) -> None:
    client = sdk(http_socket(http_daemon))
    fake_gemini.push(fg.answer("Hello Ada."), fg.answer("Your name is Ada."))
    messages: list[dict[str, str]] = [{"role": "user", "content": "I am Ada."}]
    first = client.chat.completions.create(model="agentd", messages=messages)  # type: ignore[arg-type]
    messages += [
        {"role": "assistant", "content": first.choices[0].message.content or ""},
        {"role": "user", "content": "What is my name?"},
    ]
    client.chat.completions.create(model="agentd", messages=messages)  # type: ignore[arg-type]
    second = fake_gemini.requests[-1].texts
    assert "I am Ada." in second and "Hello Ada." in second  # agentd's stored context
    # Named by `user`: that session's own history is the context.
    fake_gemini.push(fg.answer("one"), fg.answer("two"))
    for text in ("first", "second"):
        client.chat.completions.create(
            model="agentd", user="notes", messages=[{"role": "user", "content": text}]
        )
    assert "first" in fake_gemini.requests[-1].texts
    names = [s["name"] for s in http_daemon.call("sessions")["sessions"]]
    assert names.count("notes") == 1


def test_too_large_is_413(http_daemon: DaemonProcess) -> None:
    with pytest.raises(openai.APIStatusError) as info:
        sdk(http_socket(http_daemon)).chat.completions.create(
            model="agentd", messages=[{"role": "user", "content": "x" * 2_000_000}]
        )
    assert info.value.status_code == 413


def test_rate_limited_is_429_with_retry_after(
    make_daemon: Callable[..., DaemonProcess], fake_gemini: FakeGemini
) -> None:
    env = gemini_env(fake_gemini, AGENTD_LIMITS__CHAT_RATE="0.01", AGENTD_LIMITS__CHAT_BURST="1")
    daemon = start(make_daemon, env)
    fake_gemini.set_default(fg.answer("ok"))
    client = sdk(http_socket(daemon))
    client.chat.completions.create(model="agentd", messages=[{"role": "user", "content": "a"}])
    with pytest.raises(openai.RateLimitError) as info:
        client.chat.completions.create(model="agentd", messages=[{"role": "user", "content": "b"}])
    assert int(info.value.response.headers["Retry-After"]) >= 1
    assert info.value.body["code"] == "RATE_LIMITED"  # type: ignore[index]


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run a client under another uid")
def test_read_role_is_403(
    make_daemon: Callable[..., DaemonProcess], fake_gemini: FakeGemini
) -> None:
    env = {
        **gemini_env(fake_gemini),
        "AGENTD_DAEMON__SOCKET_GROUP": GROUP,
        "AGENTD_ACCESS__SOCKET_GROUP_ROLE": "read",
    }
    daemon = make_daemon({**env, **HTTP_ON})
    open_path_to_others(Path(daemon.socket).parent)
    daemon.start()
    wait_until(lambda: Path(http_socket(daemon)).exists(), 15, "the HTTP socket")
    argv = peer_argv(OUTSIDER, GROUP, "x")[:-3]  # setpriv … python
    result = subprocess.run(
        [*argv, "-m", "tests.http_client", http_socket(daemon), "hello"],
        env={**daemon.env, "HOME": "/tmp"},
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr.decode()
    assert json.loads(result.stdout) == {"status": 403, "code": "FORBIDDEN"}
