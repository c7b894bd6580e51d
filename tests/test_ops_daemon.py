"""Operations against the real daemon: metrics, logs, the audit trail, rate limits.

agentctl runs as a real process; the Prometheus text is checked by the real
parser from prometheus-client; the audit trail is tampered with through
sqlcipher3 and the key file, as someone holding the key could.
"""

from __future__ import annotations

import json
import os
import pwd
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import sqlcipher3
from prometheus_client.parser import text_string_to_metric_families

from agentctl.client import Client, DaemonError
from agentd.protocol import make_request
from tests.conftest import DaemonProcess, gemini_env, wait_until
from tests.fake_gemini import FakeGemini, answer
from tests.test_access import GROUP, OUTSIDER, as_user
from tests.test_access import group_daemon as group_daemon  # a fixture, used by name


def agentctl_json(d: DaemonProcess, *args: str) -> Any:
    result = d.agentctl("--json", *args)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def summary(d: DaemonProcess) -> dict[str, Any]:
    return agentctl_json(d, "metrics")["summary"]  # type: ignore[no-any-return]


def ping_many(d: DaemonProcess, count: int) -> None:
    with Client(d.socket) as client:
        for _ in range(count):
            client.call("ping")


def list_sessions_many(d: DaemonProcess, count: int) -> None:
    """Requests that leave an audit row each (a probe such as ping does not)."""
    with Client(d.socket) as client:
        for _ in range(count):
            client.call("sessions")


# -- metrics


def test_prometheus_exposition_of_the_daemon_parses_with_help_type_and_buckets(
    daemon: DaemonProcess,
) -> None:
    ping_many(daemon, 3)
    result = daemon.agentctl("metrics", "--prometheus")
    assert result.returncode == 0, result.stderr
    text = result.stdout.decode()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    pings = [
        s
        for s in families["agentd_requests"].samples
        if s.name == "agentd_requests_total" and s.labels == {"command": "ping", "outcome": "ok"}
    ]
    assert pings[0].value == 3
    assert families["agentd_chat_latency_seconds"].type == "histogram"
    assert any(
        s.labels.get("le") == "+Inf" for s in families["agentd_chat_latency_seconds"].samples
    )
    for name in (
        "agentd_uptime_seconds",
        "agentd_store_size_bytes",
        "agentd_event_loop_lag_seconds",
        "agentd_process_resident_memory_bytes",
        "agentd_lifecycle_state",
        "agentd_breaker_state",
        "agentd_chat_queue_depth",
        "agentd_tokens",
        "agentd_estimated_cost_usd",
    ):
        assert name in families, name
    assert "# TYPE agentd_requests_total counter\n" in text
    assert families["agentd_process_resident_memory_bytes"].samples[0].value > 1_000_000


def test_metrics_json_moves_with_requests(daemon: DaemonProcess) -> None:
    before = summary(daemon)
    ping_many(daemon, 5)
    after = summary(daemon)
    assert (
        after["requests"]["total"] == before["requests"]["total"] + 6
    )  # the pings and one metrics
    assert after["requests"]["by_command"]["ping"]["ok"] == 5
    assert after["requests"]["per_minute"] >= 6
    assert after["uptime_s"] > before["uptime_s"]
    assert after["lifecycle"]["state"] == "READY"
    assert after["lifecycle"]["transitions"]["INITIALIZING->READY"] == 1
    assert after["store_size_bytes"] > 0 and after["rss_bytes"] > 0
    assert after["provider"]["breaker_state"] == "closed"
    assert set(after["chat_latency_s"]) == {"count", "avg", "p50", "p95", "p99"}


def test_metrics_table_is_plain_text_for_people(daemon: DaemonProcess) -> None:
    result = daemon.agentctl("metrics")
    out = result.stdout.decode()
    assert result.returncode == 0
    for label in (
        "uptime",
        "requests",
        "error rate",
        "chat latency",
        "tokens",
        "breaker",
        "event-loop lag",
    ):
        assert label in out
    assert "\x1b[" not in out


def test_lifetime_counters_survive_a_restart_while_rates_start_over(
    daemon: DaemonProcess,
) -> None:
    """1. Pings are counted. 2. SIGTERM, start again. 3. The totals carry on; the rate does not."""
    ping_many(daemon, 4)
    daemon.signal(signal.SIGTERM)
    assert daemon.wait_exit() == 0
    daemon.start()
    after = summary(daemon)
    assert after["requests"]["by_command"]["ping"]["ok"] == 4
    assert after["requests"]["per_minute"] < after["requests"]["total"]
    assert after["lifecycle"]["transitions"]["INITIALIZING->READY"] == 2


# -- audit


def request_ids(d: DaemonProcess) -> list[str]:
    """One ok, one unknown command, one bad argument: their request ids, from the replies."""
    ids = [d.call("sessions")["request_id"]]
    for cmd, args in (("no_such_command", {}), ("status", {"bogus": 1})):
        with pytest.raises(DaemonError) as info:
            d.call(cmd, args)
        ids.append(info.value.details["request_id"])
    return ids


def test_every_request_leaves_an_audit_row_with_its_peer(daemon: DaemonProcess) -> None:
    ids = request_ids(daemon)
    rows = {r["request_id"]: r for r in agentctl_json(daemon, "audit", "-n", "100")}
    listing, unknown, bad = (rows[i] for i in ids)
    assert (listing["command"], listing["outcome"], listing["error_code"]) == (
        "sessions",
        "ok",
        None,
    )
    assert (unknown["command"], unknown["error_code"]) == ("no_such_command", "UNKNOWN_COMMAND")
    assert (bad["command"], bad["error_code"]) == ("status", "BAD_REQUEST")
    assert listing["peer_uid"] == 0 and listing["peer_pid"] > 0
    assert listing["ts"].endswith("Z") and isinstance(listing["latency_ms"], int)


def unaudited_counts(d: DaemonProcess) -> dict[tuple[str, str], float]:
    """requests_unaudited_total by (command, uid), from the JSON metrics."""
    series = d.call("metrics")["metrics"]["requests_unaudited_total"]["samples"]
    return {(s["labels"]["command"], s["labels"]["uid"]): s["value"] for s in series}


def test_probes_leave_no_audit_row_but_are_counted_per_command_and_uid(
    daemon: DaemonProcess,
) -> None:
    before = unaudited_counts(daemon)
    probes = [daemon.call(cmd)["request_id"] for cmd in ("ping", "status", "status", "health")]
    rows = {r["request_id"] for r in agentctl_json(daemon, "audit", "-n", "1000")}
    assert rows.isdisjoint(probes)
    after = unaudited_counts(daemon)
    added = {k[0]: v - before.get(k, 0) for k, v in after.items() if k[1] == "0"}
    assert (added["ping"], added["status"], added["health"], added["metrics"]) == (1, 2, 1, 1)


def test_audit_probe_metadata_audits_each_probe(make_daemon: Callable[..., DaemonProcess]) -> None:
    d = make_daemon({"AGENTD_AUDIT__PROBE": "metadata"}).start()
    probe = d.call("status")["request_id"]
    rows = {r["request_id"]: r for r in agentctl_json(d, "audit", "-n", "100")}
    assert rows[probe]["command"] == "status"


def test_audit_read_none_still_audits_a_refused_read(
    make_daemon: Callable[..., DaemonProcess],
) -> None:
    d = make_daemon({"AGENTD_AUDIT__READ": "none"}).start()
    listing = d.call("sessions")["request_id"]
    with pytest.raises(DaemonError) as info:
        d.call("sessions", {"bogus": 1})
    rows = {r["request_id"] for r in d.call("audit", {"limit": 100})["rows"]}
    assert listing not in rows and info.value.details["request_id"] in rows
    assert unaudited_counts(d)[("sessions", "0")] == 1


def test_audit_filters_by_command_and_outcome(daemon: DaemonProcess) -> None:
    request_ids(daemon)
    errors = agentctl_json(daemon, "audit", "--outcome", "error")
    assert {r["error_code"] for r in errors} == {"UNKNOWN_COMMAND", "BAD_REQUEST"}
    listings = agentctl_json(daemon, "audit", "--command", "sessions")
    assert [r["command"] for r in listings] == ["sessions"]


def tamper(d: DaemonProcess, sql: str) -> None:
    """With the daemon stopped, change the database as someone holding the key could."""
    key = (d.state_dir / "db.key").read_text().strip()
    conn = sqlcipher3.connect(str(d.state_dir / "agentd.db"), isolation_level=None)
    try:
        conn.execute(f"PRAGMA key = \"x'{key}'\"")
        conn.execute(sql)
    finally:
        conn.close()


@pytest.mark.parametrize(
    ("sql", "reason"),
    [
        ("UPDATE audit SET latency_ms = latency_ms + 1000 WHERE seq = 4", "content edited"),
        ("DELETE FROM audit WHERE seq = 4", "row deleted"),
    ],
    ids=["modified", "deleted"],
)
def test_audit_verify_names_the_first_broken_row(
    daemon: DaemonProcess, sql: str, reason: str
) -> None:
    """1. The trail verifies (exit 0). 2. Stop; change row 4 behind the daemon's back.
    3. Start; verify --full exits 1 and names seq 4 (a plain verify starts after
    the rows verified in step 1)."""
    list_sessions_many(daemon, 8)
    intact = daemon.agentctl("audit", "verify")
    assert intact.returncode == 0, intact.stdout
    assert b"intact" in intact.stdout
    daemon.signal(signal.SIGTERM)
    assert daemon.wait_exit() == 0
    tamper(daemon, sql)
    daemon.start()
    broken = daemon.agentctl("audit", "verify", "--full")
    assert broken.returncode == 1
    assert "BROKEN at seq 4" in broken.stdout.decode()
    assert reason in broken.stdout.decode()
    verdict = json.loads(daemon.agentctl("--json", "audit", "verify", "--full").stdout)
    assert verdict["ok"] is False and verdict["first_broken_seq"] == 4


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run a client under another uid")
def test_readers_see_metrics_health_and_logs_but_not_the_audit_trail(
    group_daemon: DaemonProcess,
) -> None:
    for command in (("metrics",), ("health",), ("logs", "-n", "5")):
        assert as_user(group_daemon, OUTSIDER, GROUP, *command).returncode == 0, command
    refused = as_user(group_daemon, OUTSIDER, GROUP, "audit")
    assert refused.returncode == 6
    assert b"admin role" in refused.stderr
    uids = {r["peer_uid"] for r in agentctl_json(group_daemon, "audit", "-n", "100")}
    assert pwd.getpwnam(OUTSIDER).pw_uid in uids


# -- logs


@pytest.fixture
def debug_daemon(make_daemon: Callable[..., DaemonProcess]) -> DaemonProcess:
    """At DEBUG every request logs a line with its request id."""
    return make_daemon({"AGENTD_LOG_LEVEL": "DEBUG"}).start()


class Follower:
    """`agentctl logs --follow --json` as a process; its lines collected on a thread."""

    def __init__(self, d: DaemonProcess, *args: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "agentctl", "logs", "--follow", "--json", "-n", "0", *args],
            env=d.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        self._lines: list[dict[str, Any]] = []
        self._guard = threading.Lock()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            with self._guard:
                self._lines.append(json.loads(line))

    @property
    def records(self) -> list[dict[str, Any]]:
        with self._guard:
            return list(self._lines)

    def has(self, request_id: str) -> bool:
        return any(r.get("request_id") == request_id for r in self.records)

    def stop(self) -> int:
        self.process.send_signal(signal.SIGINT)
        return self.process.wait(10)


def attach(d: DaemonProcess, follower: Follower) -> None:
    """Until the follower streams: ping, and look for that ping's record."""

    def streaming() -> bool:
        request_id = d.call("ping")["request_id"]
        try:
            wait_until(lambda: follower.has(request_id), 0.5, "")
        except AssertionError:
            return False
        return True

    wait_until(streaming, 15, "the follower to stream records")


@pytest.fixture
def follower_factory() -> Iterator[Callable[..., Follower]]:
    made: list[Follower] = []

    def factory(d: DaemonProcess, *args: str) -> Follower:
        made.append(Follower(d, *args))
        return made[-1]

    yield factory
    for follower in made:
        if follower.process.poll() is None:
            follower.process.kill()
            follower.process.wait(10)


def test_logs_follow_streams_the_records_of_another_clients_requests(
    debug_daemon: DaemonProcess, follower_factory: Callable[..., Follower]
) -> None:
    """1. A follower starts. 2. Another client makes requests. 3. Their records reach the
    follower's stdout as JSON lines, as they happen. 4. Ctrl-C ends it with exit 0."""
    follower = follower_factory(debug_daemon)
    attach(debug_daemon, follower)
    request_id = debug_daemon.call("status")["request_id"]
    wait_until(lambda: follower.has(request_id), 10, "the status record")
    record = next(r for r in follower.records if r.get("request_id") == request_id)
    assert (record["level"], record["message"]) == ("DEBUG", "status ok")
    assert follower.stop() == 0
    assert debug_daemon.call("status")["state"] == "READY"


def test_logs_follow_ends_with_exit_0_when_the_daemon_stops(
    debug_daemon: DaemonProcess, follower_factory: Callable[..., Follower]
) -> None:
    follower = follower_factory(debug_daemon)
    attach(debug_daemon, follower)
    debug_daemon.signal(signal.SIGTERM)
    assert follower.process.wait(10) == 0
    assert any(r["message"].startswith("stopping: SIGTERM") for r in follower.records)
    assert debug_daemon.wait_exit() == 0


def log_records(d: DaemonProcess, *args: str) -> list[dict[str, Any]]:
    result = d.agentctl("logs", "--json", *args)
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines()]


def test_logs_backlog_filters_by_level_request_and_count(debug_daemon: DaemonProcess) -> None:
    request_id = debug_daemon.call("ping")["request_id"]
    assert [r["message"] for r in log_records(debug_daemon, "--request", request_id)] == ["ping ok"]
    assert len(log_records(debug_daemon, "-n", "2")) == 2
    levels = {r["level"] for r in log_records(debug_daemon, "--level", "INFO", "-n", "1000")}
    assert levels and "DEBUG" not in levels
    assert log_records(debug_daemon, "--since", "1m", "-n", "1000") != []
    assert log_records(debug_daemon, "--since", "2000-01-01T00:00:00Z", "-n", "3") != []
    assert debug_daemon.agentctl("logs", "--since", "last tuesday").returncode == 2


def test_logs_for_people_are_one_plain_line_per_record(debug_daemon: DaemonProcess) -> None:
    request_id = debug_daemon.call("ping")["request_id"]
    out = debug_daemon.agentctl("logs", "--request", request_id).stdout.decode()
    assert out.count("\n") == 1
    assert "DEBUG" in out and "ping ok" in out and request_id in out
    assert "\x1b[" not in out


# -- rate limits


def test_over_the_cheap_budget_agentctl_exits_4_and_says_when_to_retry(
    make_daemon: Callable[..., DaemonProcess],
) -> None:
    d = make_daemon(
        {"AGENTD_LIMITS__CHEAP_RATE": "0.01", "AGENTD_LIMITS__CHEAP_BURST": "20"}
    ).start()
    with Client(d.socket) as client:
        replies = []
        for n in range(30):
            client._send(make_request(n, "ping"))  # a flood on one connection
            replies.append(client._receive())
    codes = [r["error"]["code"] for r in replies if not r["ok"]]
    assert codes and set(codes) == {"RATE_LIMITED"}
    assert all(r["error"]["retry_after"] > 0 for r in replies if not r["ok"])
    result = d.agentctl("status")
    assert result.returncode == 4
    assert "retry in" in result.stderr.decode()
    assert "RATE_LIMITED" in result.stderr.decode()


def test_a_flood_of_refusals_logs_one_line(make_daemon: Callable[..., DaemonProcess]) -> None:
    d = make_daemon(
        {"AGENTD_LIMITS__CHEAP_RATE": "0.01", "AGENTD_LIMITS__CHEAP_BURST": "5"}
    ).start()
    with Client(d.socket) as client:
        for n in range(300):
            client._send(make_request(n, "ping"))
            client._receive()
    log = (d.state_dir / "agentd.log").read_text()
    assert log.count("rate limited uid 0") == 1


def test_disabled_limits_refuse_nothing(make_daemon: Callable[..., DaemonProcess]) -> None:
    d = make_daemon(
        {
            "AGENTD_LIMITS__ENABLED": "false",
            "AGENTD_LIMITS__CHEAP_RATE": "0.01",
            "AGENTD_LIMITS__CHEAP_BURST": "1",
        }
    ).start()
    ping_many(d, 50)


# -- secrets and content never recorded


def test_records_carry_no_secrets_and_no_conversation_text(
    make_daemon: Callable[..., DaemonProcess], fake_gemini: FakeGemini
) -> None:
    api_key = "AIzaSy-SECRET-MARKER-4711"
    d = make_daemon(
        gemini_env(fake_gemini, GEMINI_API_KEY=api_key, AGENTD_LOG_LEVEL="DEBUG")
    ).start()
    fake_gemini.push(answer("ANSWER-MARKER-0815"))
    chat = d.agentctl("chat", "PROMPT-MARKER-1337")
    assert chat.returncode == 0, chat.stderr
    db_key = (d.state_dir / "db.key").read_text().strip()
    outputs = [
        d.agentctl(*args).stdout
        for args in (
            ("logs", "--json", "-n", "5000"),
            ("--json", "metrics"),
            ("metrics", "--prometheus"),
            ("--json", "audit", "-n", "1000"),
            ("--json", "health"),
            ("--json", "status"),
        )
    ]
    recorded = b"\n".join(outputs) + (d.state_dir / "agentd.log").read_bytes() + d.stderr().encode()
    for secret in (api_key, db_key, db_key.upper(), "PROMPT-MARKER", "ANSWER-MARKER"):
        assert secret.encode() not in recorded, secret
    rows = agentctl_json(d, "audit", "--command", "chat")
    assert rows[0]["model"] == "gemini-flash-latest" and rows[0]["tokens_out"] > 0


def test_an_answered_chat_is_counted_and_audited_before_its_reply(
    gemini_daemon: DaemonProcess, fake_gemini: FakeGemini
) -> None:
    fake_gemini.push(answer("fine"))
    reply = gemini_daemon.call("chat", {"message": "how are you"})
    rows = agentctl_json(gemini_daemon, "audit", "--request", reply["request_id"])
    assert rows[0]["session_id"] == reply["session_id"]
    assert (rows[0]["tokens_in"], rows[0]["tokens_out"]) == (
        reply["tokens_in"],
        reply["tokens_out"],
    )
    figures = summary(gemini_daemon)
    assert figures["chat_latency_s"]["count"] == 1
    assert figures["tokens"]["out"] == reply["tokens_out"]
    assert figures["tokens"]["estimated_cost_usd"] > 0
