"""The HTTP transport ([http] enabled): probes, the REST API, errors, the scrape.

A real daemon subprocess serving agentd-http.sock; requests from httpx over the
Unix socket (and from real peers under other uids via tests/peer.py style setpriv).
"""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx2 as httpx
import pytest

from tests import fake_gemini as fg
from tests.conftest import DaemonProcess, gemini_env, wait_until
from tests.fake_gemini import FakeGemini

HTTP_ON = {"AGENTD_HTTP__ENABLED": "true"}


def http_socket(daemon: DaemonProcess) -> str:
    return str(Path(daemon.socket).parent / "agentd-http.sock")


def client(daemon: DaemonProcess, timeout: float = 30.0) -> httpx.Client:
    transport = httpx.HTTPTransport(uds=http_socket(daemon))
    return httpx.Client(transport=transport, base_url="http://agentd", timeout=timeout)


@pytest.fixture
def http_daemon(
    make_daemon: Callable[..., DaemonProcess], fake_gemini: FakeGemini
) -> DaemonProcess:
    daemon = make_daemon(gemini_env(fake_gemini, **HTTP_ON)).start()
    wait_until(lambda: Path(http_socket(daemon)).exists(), 15, "the HTTP socket")
    return daemon


def loaded_aiohttp(daemon: DaemonProcess) -> bool:
    """aiohttp's C parser is mapped into the daemon once aiohttp is imported."""
    assert daemon.process is not None
    return "/aiohttp/" in Path(f"/proc/{daemon.process.pid}/maps").read_text()


def test_http_is_off_by_default_and_aiohttp_not_loaded(daemon: DaemonProcess) -> None:
    assert not Path(http_socket(daemon)).exists()
    assert not loaded_aiohttp(daemon)


def test_probes_and_rest_api(http_daemon: DaemonProcess) -> None:
    assert loaded_aiohttp(http_daemon)
    with client(http_daemon) as http:
        assert http.get("/healthz").json()["alive"] is True
        ready = http.get("/readyz")
        assert ready.status_code == 200 and ready.json()["state"] in ("READY", "PROCESSING")
        status = http.get("/api/v1/status")
        assert status.status_code == 200 and status.json()["state"] in ("READY", "PROCESSING")
        assert "components" in http.get("/api/v1/health").json()
        assert isinstance(http.get("/api/v1/sessions").json()["sessions"], list)
        doc = http.get("/api/v1/openapi.json").json()
        assert doc["openapi"].startswith("3.") and "/v1/chat/completions" in doc["paths"]


def test_metrics_is_the_prometheus_text_of_agentctl(http_daemon: DaemonProcess) -> None:
    with client(http_daemon) as http:
        scrape = http.get("/metrics")
    assert scrape.status_code == 200
    assert scrape.headers["content-type"].startswith("text/plain")
    cli = http_daemon.agentctl("metrics", "--prometheus")
    assert cli.returncode == 0, cli.stderr
    families = {line.split()[2] for line in scrape.text.splitlines() if line.startswith("# TYPE")}
    cli_families = {
        line.split()[2] for line in cli.stdout.decode().splitlines() if line.startswith("# TYPE")
    }
    assert families == cli_families and "agentd_requests_total" in families


@pytest.mark.skipif(
    shutil.which("promtool") is None,
    reason="promtool absent (Debian package prometheus, ~96 MB: not installed by .ci/run)",
)
def test_scrape_passes_promtool_check_metrics(http_daemon: DaemonProcess) -> None:
    with client(http_daemon) as http:
        scrape = http.get("/metrics").content
    check = subprocess.run(
        ["promtool", "check", "metrics"], input=scrape, capture_output=True, timeout=60, check=False
    )
    assert check.returncode == 0, check.stdout.decode() + check.stderr.decode()


def test_errors_carry_the_socket_codes_with_http_statuses(http_daemon: DaemonProcess) -> None:
    with client(http_daemon) as http:
        missing = http.get("/api/v1/sessions/s-nope/history")
        assert missing.status_code == 404 and missing.json()["error"]["code"] == "NOT_FOUND"
        assert http.get("/no/such/route").json()["error"]["code"] == "NOT_FOUND"
        bad = http.get("/api/v1/sessions", params={"limit": "many"})
        assert bad.status_code == 400 and bad.json()["error"]["code"] == "BAD_REQUEST"
        unknown = http.get("/api/v1/status", params={"x": "1"})
        assert unknown.status_code == 400
        post = "/v1/chat/completions"
        malformed = http.post(post, content=b"{nope", headers={"Content-Type": "application/json"})
        assert malformed.status_code == 400 and malformed.json()["error"]["code"] == "BAD_REQUEST"
        wrong_type = http.post(post, content=b"{}", headers={"Content-Type": "text/plain"})
        assert wrong_type.status_code == 415
        huge = http.post(post, json={"messages": [{"role": "user", "content": "x" * 2_000_000}]})
        assert huge.status_code == 413 and huge.json()["error"]["code"] == "FRAME_TOO_LARGE"


def test_readyz_is_503_while_stopping_and_a_streamed_chat_ends_cleanly(
    http_daemon: DaemonProcess, fake_gemini: FakeGemini
) -> None:
    fake_gemini.push(fg.answer(chunks=("slow ", "answer"), delay_s=1.5))
    body = {"model": "agentd", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    script = (
        "import httpx2 as httpx;"
        f"c=httpx.Client(transport=httpx.HTTPTransport(uds={http_socket(http_daemon)!r}),timeout=30);"
        f"r=c.post('http://agentd/v1/chat/completions',json={body!r});"
        "print(r.status_code);print(r.text)"
    )
    chat = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    fake_gemini.wait_for_requests(1, timeout=15)
    http_daemon.signal(signal.SIGTERM)
    with client(http_daemon) as http:

        def stopping() -> bool:
            return http.get("/readyz").status_code == 503

        wait_until(stopping, 10, "readyz to say 503 while STOPPING")
        assert http.get("/healthz").status_code == 200
    out, err = chat.communicate(timeout=30)
    status, *lines = out.decode().splitlines()
    assert status == "200", err.decode()
    events = [line.removeprefix("data: ") for line in lines if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    text = "".join(
        c["choices"][0]["delta"].get("content") or ""
        for c in map(json.loads, events[:-1])
        if c["choices"]
    )
    assert text == "slow answer"
    assert http_daemon.wait_exit() == 0
    assert not Path(http_socket(http_daemon)).exists()


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl absent")
def test_curl_chat_as_in_the_docs(http_daemon: DaemonProcess, fake_gemini: FakeGemini) -> None:
    fake_gemini.push(fg.answer("hello from curl"))
    body = '{"model":"agentd","messages":[{"role":"user","content":"hi"}]}'
    url = "http://agentd/v1/chat/completions"
    curl = subprocess.run(
        ["curl", "-sS", "--unix-socket", http_socket(http_daemon), url, "-d", body],
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert curl.returncode == 0, curl.stderr
    answer = json.loads(curl.stdout)["choices"][0]["message"]["content"]
    assert answer == "hello from curl"


def test_a_slow_client_is_cut_after_the_header_timeout(
    make_daemon: Callable[..., DaemonProcess], fake_gemini: FakeGemini
) -> None:
    env = gemini_env(fake_gemini, **HTTP_ON, AGENTD_HTTP__KEEPALIVE_TIMEOUT_S="0.5")
    daemon = make_daemon(env).start()
    wait_until(lambda: Path(http_socket(daemon)).exists(), 15, "the HTTP socket")
    with socket.socket(socket.AF_UNIX) as slow:
        slow.settimeout(10)
        slow.connect(http_socket(daemon))
        slow.sendall(b"GET /healthz HTTP/1.1\r\nHost: agentd\r\n")  # never finished
        started = time.monotonic()
        assert slow.recv(100) == b""  # closed by the daemon, not by our timeout
        assert time.monotonic() - started < 5
    with client(daemon) as http:
        assert http.get("/healthz").status_code == 200
