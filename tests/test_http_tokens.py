"""HTTP over loopback TCP with bearer tokens: agentctl tokens create|list|revoke, the
openai SDK with a token, and every way a token is refused (401)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import httpx2 as httpx
import openai
import pytest

from tests import fake_gemini as fg
from tests.conftest import DaemonProcess, clean_environ, gemini_env, wait_until
from tests.fake_gemini import FakeGemini

TOKEN_UID_BASE = 4_200_000_000


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def tcp_sdk(port: int, token: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=token, max_retries=0)


@pytest.fixture
def tcp_daemon(
    make_daemon: Callable[..., DaemonProcess], fake_gemini: FakeGemini
) -> tuple[DaemonProcess, int]:
    port = free_port()
    env = gemini_env(
        fake_gemini, AGENTD_HTTP__ENABLED="true", AGENTD_HTTP__LISTEN=f"127.0.0.1:{port}"
    )
    daemon = make_daemon(env).start()

    def listening() -> bool:
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", port)) == 0

    wait_until(listening, 15, "the HTTP port")
    return daemon, port


def create_token(daemon: DaemonProcess, name: str, role: str) -> str:
    made = daemon.agentctl("tokens", "create", "--name", name, "--role", role, "--expires", "30d")
    assert made.returncode == 0, made.stderr
    return made.stdout.decode().strip()


def test_token_chats_over_tcp_and_is_audited_as_itself(
    tcp_daemon: tuple[DaemonProcess, int], fake_gemini: FakeGemini
) -> None:
    daemon, port = tcp_daemon
    secret = create_token(daemon, "ci", "chat")
    assert secret.startswith("agentd_")
    fake_gemini.push(fg.answer("over tcp"))
    completion = tcp_sdk(port, secret).chat.completions.create(
        model="agentd", messages=[{"role": "user", "content": "hi"}]
    )
    assert completion.choices[0].message.content == "over tcp"
    listed = daemon.agentctl("tokens", "list", "--json")
    assert listed.returncode == 0 and secret.encode() not in listed.stdout
    token = json.loads(listed.stdout)["tokens"][0]
    assert token["name"] == "ci" and token["uid"] == TOKEN_UID_BASE + token["id"]
    rows = daemon.call("audit", {"command": "chat"})["rows"]
    assert [r["peer_uid"] for r in rows] == [token["uid"]]
    assert secret not in daemon.stderr()


def test_bad_missing_url_and_revoked_tokens_are_401(
    tcp_daemon: tuple[DaemonProcess, int],
) -> None:
    daemon, port = tcp_daemon
    with pytest.raises(openai.AuthenticationError):
        tcp_sdk(port, "agentd_not-a-token").models.list()
    secret = create_token(daemon, "soon-revoked", "read")
    assert next(m.id for m in tcp_sdk(port, secret).models.list()) == "agentd"
    base = f"http://127.0.0.1:{port}"
    assert httpx.get(f"{base}/api/v1/status").status_code == 401
    in_url = httpx.get(
        f"{base}/api/v1/status",
        params={"token": secret},
        headers={"Authorization": f"Bearer {secret}"},
    )
    assert in_url.status_code == 401 and in_url.json()["error"]["code"] == "UNAUTHENTICATED"
    assert daemon.agentctl("tokens", "revoke", "soon-revoked").returncode == 0
    with pytest.raises(openai.AuthenticationError):
        tcp_sdk(port, secret).models.list()


def test_read_token_may_not_chat_and_expired_token_is_refused(
    tcp_daemon: tuple[DaemonProcess, int],
) -> None:
    daemon, port = tcp_daemon
    reader = create_token(daemon, "reader", "read")
    with pytest.raises(openai.PermissionDeniedError):
        tcp_sdk(port, reader).chat.completions.create(
            model="agentd", messages=[{"role": "user", "content": "hi"}]
        )
    short = daemon.call("tokens_create", {"name": "short", "role": "read", "expires_s": 0.5})
    url = f"http://127.0.0.1:{port}/api/v1/status"
    headers = {"Authorization": f"Bearer {short['secret']}"}

    def expired() -> bool:
        return httpx.get(url, headers=headers).status_code == 401

    wait_until(expired, 10, "the token to expire")


@pytest.mark.parametrize("listen", ["0.0.0.0:8477", "192.168.1.1:80", "localhost:8477"])
def test_non_loopback_listen_is_refused(tmp_path: Path, listen: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "agentd", "--check-config"],
        env={**clean_environ(tmp_path), "AGENTD_HTTP__LISTEN": listen},
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert result.returncode != 0
    assert b"http.listen" in result.stderr


def test_revoking_a_name_that_looks_like_an_id_revokes_that_name(
    tcp_daemon: tuple[DaemonProcess, int],
) -> None:
    """Token "first" gets id 1; a second token is named "1". `tokens revoke 1` revokes the
    token named "1", not the one whose id is 1."""
    daemon, port = tcp_daemon
    first = create_token(daemon, "first", "read")
    named_one = create_token(daemon, "1", "read")
    assert daemon.agentctl("tokens", "revoke", "1").returncode == 0
    assert next(m.id for m in tcp_sdk(port, first).models.list()) == "agentd"
    with pytest.raises(openai.AuthenticationError):
        tcp_sdk(port, named_one).models.list()
