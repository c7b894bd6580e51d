"""Secrets stopped at the edge: the detectors, the policy, and the real daemon with the fake Gemini.

The end-to-end tests plant made-up credentials (tests/planted_secrets.py) in
prompts sent by agentctl as a real process, and read every request the fake
Gemini received: no planted value may be in any of them.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from agentd.constraints import problems
from agentd.governance.scan import Scanner, describe, judge, redact
from agentd.governance.settings import CLASSES, ScanSettings
from tests.conftest import DaemonProcess, gemini_env
from tests.fake_gemini import FakeGemini, echo
from tests.planted_secrets import LOOK_ALIKES, PLANTED

KIND_OF = {"openssh-private-key": "private-key"}  # OpenSSH keys are PEM-armoured private keys


# -- the detectors ------------------------------------------------------------------------


@pytest.mark.parametrize("planted", sorted(PLANTED))
def test_each_planted_credential_is_found_with_its_kind_and_line(planted: str) -> None:
    text, value = PLANTED[planted]
    prompt = "first line\nsecond line\n" + text
    findings = Scanner().scan(prompt)
    kind = KIND_OF.get(planted, planted)
    found = [f for f in findings if f.kind == kind]
    assert len(found) == 1, findings
    assert (
        value in prompt[found[0].start : found[0].end]
        or prompt[found[0].start : found[0].end] in value
    )
    assert found[0].line == 3 + text[: text.find(value[:8])].count("\n")


@pytest.mark.parametrize("planted", sorted(PLANTED))
def test_redaction_leaves_a_typed_placeholder_and_not_the_value(planted: str) -> None:
    text, value = PLANTED[planted]
    redacted = redact(text, Scanner().scan(text))
    assert value not in redacted
    assert f"[REDACTED:{KIND_OF.get(planted, planted)}]" in redacted


@pytest.mark.parametrize("look_alike", sorted(LOOK_ALIKES))
def test_look_alikes_do_not_fire(look_alike: str) -> None:
    assert Scanner().scan(LOOK_ALIKES[look_alike]) == ()


def test_a_gcp_service_account_file_is_a_cloud_key_not_a_bare_private_key() -> None:
    kinds = {
        f.kind
        for f in Scanner(["private_key", "cloud_key"]).scan(PLANTED["gcp-service-account"][0])
    }
    assert kinds == {"gcp-service-account"}


def test_a_token_in_an_env_assignment_is_reported_once_as_the_specific_kind() -> None:
    text = PLANTED["github-token"][1]
    findings = Scanner().scan(f"GITHUB_TOKEN={text}")
    assert [f.kind for f in findings] == ["github-token"]


def test_classes_set_to_allow_are_not_looked_for() -> None:
    scanner = Scanner.for_policy(ScanSettings(service_token="allow"))
    assert "service_token" not in scanner.classes
    assert scanner.scan(PLANTED["github-token"][0]) == ()
    assert Scanner.for_policy(ScanSettings(enabled=False)).scan(PLANTED["private-key"][0]) == ()


def test_judge_follows_the_policy_and_the_override_only_where_permitted() -> None:
    text = PLANTED["aws-access-key"][0] + "\n" + PLANTED["github-token"][0]
    findings = Scanner().scan(text)
    settings = ScanSettings()
    plain = judge(findings, settings, override=False)
    assert [f.kind for f in plain.refused] == ["aws-access-key"]
    assert [f.kind for f in plain.redacted] == ["github-token"]
    overridden = judge(findings, settings, override=True)
    assert [f.kind for f in overridden.refused] == [
        "aws-access-key"
    ]  # cloud_key is not overridable
    assert [f.kind for f in overridden.allowed] == ["github-token"]


def test_description_names_kinds_and_lines_never_values() -> None:
    text = "\n".join(PLANTED[k][0] for k in ("aws-access-key", "github-token", "aws-access-key"))
    findings = Scanner().scan(text)
    said = describe(findings)
    assert said == "aws-access-key on lines 1, 3; github-token on line 2"
    assert not any(PLANTED[k][1] in said for k in PLANTED)


def test_unknown_actions_and_classes_are_config_problems() -> None:
    assert problems(ScanSettings(jwt="drop")) == [
        ("jwt", "must be one of refuse, redact, allow, got 'drop'")
    ]
    assert problems(ScanSettings(overridable=("nope",)))[0][0] == "overridable"
    assert problems(ScanSettings()) == []


# -- end to end: agentctl, the daemon, the fake Gemini ------------------------------------------


def sent_to_gemini(fake: FakeGemini) -> str:
    """Everything the fake received, as one string (bodies of every request)."""
    return "\n".join(json.dumps(r.body) for r in fake.requests if r.body is not None)


def generate_requests(fake: FakeGemini) -> list[Any]:
    return [r for r in fake.requests if r.action in ("generateContent", "streamGenerateContent")]


def chat(d: DaemonProcess, prompt: str, *args: str) -> tuple[int, dict[str, Any], str]:
    result = d.agentctl("chat", "--json", *args, input=prompt.encode())
    reply = json.loads(result.stdout) if result.stdout.strip() else {}
    return result.returncode, reply, result.stderr.decode()


def audit_row(d: DaemonProcess, request_id: str) -> dict[str, Any]:
    rows: list[dict[str, Any]] = d.call("audit", {"request_id": request_id})["rows"]
    assert len(rows) == 1
    return rows[0]


@pytest.fixture
def scan_daemon(
    make_daemon: Callable[..., DaemonProcess], fake_gemini: FakeGemini
) -> Callable[..., DaemonProcess]:
    def start(**env: str) -> DaemonProcess:
        fake_gemini.set_default(echo())
        return make_daemon(gemini_env(fake_gemini, **env)).start()

    return start


def test_refused_prompt_is_neither_sent_nor_stored_and_the_error_says_where(
    scan_daemon: Callable[..., DaemonProcess], fake_gemini: FakeGemini
) -> None:
    d = scan_daemon()
    prompt = (
        "why does this fail?\n" + PLANTED["private-key"][0] + "\n" + PLANTED["aws-access-key"][0]
    )
    result = d.agentctl("chat", input=prompt.encode())
    assert result.returncode == 1
    err = result.stderr.decode()
    key_lines = PLANTED["private-key"][0].count("\n")
    assert "SECRET_REFUSED" in err
    assert f"private-key on line 3; aws-access-key on line {3 + key_lines}" in err
    assert "nothing was sent" in err
    assert not any(PLANTED[k][1] in err for k in ("private-key", "aws-access-key"))
    assert generate_requests(fake_gemini) == []
    history = d.call("history")["messages"]
    assert history == []
    row = d.call("audit", {"command": "chat"})["rows"][0]
    assert row["error_code"] == "SECRET_REFUSED"
    assert {(s["kind"], s["action"], s["count"]) for s in row["secrets"]} == {
        ("private-key", "refuse", 1),
        ("aws-access-key", "refuse", 1),
    }
    assert PLANTED["aws-access-key"][1] not in json.dumps(row)


def test_redacted_secrets_never_reach_gemini_and_the_answer_counts_them(
    scan_daemon: Callable[..., DaemonProcess], fake_gemini: FakeGemini
) -> None:
    d = scan_daemon()
    kinds = ("github-token", "jwt", "url-password", "env-secret")
    prompt = "summarise this config\n" + "\n".join(PLANTED[k][0] for k in kinds)
    code, reply, _ = chat(d, prompt)
    assert code == 0, reply
    assert reply["redacted"] == {k: 1 for k in kinds}
    sent = sent_to_gemini(fake_gemini)
    assert not [k for k in kinds if PLANTED[k][1] in sent]
    assert all(f"[REDACTED:{k}]" in sent for k in kinds)
    # The stored history keeps what the user sent (encrypted); the audit row, what was redacted.
    assert d.call("history")["messages"][0]["content"] == prompt
    secrets = audit_row(d, reply["request_id"])["secrets"]
    assert {(s["kind"], s["action"]) for s in secrets} == {(k, "redact") for k in kinds}
    samples = d.call("metrics")["metrics"]["secret_findings_total"]["samples"]
    assert {"labels": {"kind": "jwt", "action": "redact"}, "value": 1.0} in samples


def test_the_human_output_says_how_many_were_redacted(
    scan_daemon: Callable[..., DaemonProcess], fake_gemini: FakeGemini
) -> None:
    d = scan_daemon()
    result = d.agentctl("chat", "look", input=PLANTED["github-token"][0].encode())
    assert result.returncode == 0
    assert b"1 secret redacted before sending (github-token x1)" in result.stderr
    assert PLANTED["github-token"][1].encode() not in result.stderr


def test_a_redacted_secret_stays_out_of_the_history_sent_with_later_chats(
    scan_daemon: Callable[..., DaemonProcess], fake_gemini: FakeGemini
) -> None:
    d = scan_daemon()
    assert chat(d, PLANTED["stripe-key"][0])[0] == 0
    assert chat(d, "and now?", "--allow-secrets")[0] == 0
    assert len(generate_requests(fake_gemini)) == 2
    assert PLANTED["stripe-key"][1] not in sent_to_gemini(fake_gemini)
    assert "[REDACTED:stripe-key]" in json.dumps(generate_requests(fake_gemini)[1].body)


def test_allow_secrets_sends_overridable_classes_for_one_message_only(
    scan_daemon: Callable[..., DaemonProcess], fake_gemini: FakeGemini
) -> None:
    d = scan_daemon()
    token = PLANTED["gitlab-token"][1]
    code, reply, _ = chat(d, PLANTED["gitlab-token"][0], "--allow-secrets")
    assert code == 0 and reply["redacted"] == {}
    assert token in sent_to_gemini(fake_gemini)
    fake_gemini.reset()
    fake_gemini.set_default(echo())
    code, _, _ = chat(d, "what was that token for?")
    assert code == 0
    assert token not in sent_to_gemini(fake_gemini)  # later turns carry it redacted
    assert audit_row(d, reply["request_id"])["secrets"][0]["action"] == "allow"


def test_allow_secrets_does_not_lift_a_refusal_the_policy_keeps(
    scan_daemon: Callable[..., DaemonProcess], fake_gemini: FakeGemini
) -> None:
    d = scan_daemon()
    code, _, err = chat(d, PLANTED["azure-key"][0], "--allow-secrets")
    assert code == 1
    assert "azure-key on line 1" in err and "cloud_key even with --allow-secrets" in err
    assert generate_requests(fake_gemini) == []


def test_an_overridable_refusal_tells_how_to_send_anyway(
    scan_daemon: Callable[..., DaemonProcess], fake_gemini: FakeGemini
) -> None:
    d = scan_daemon(AGENTD_SECRETS_SCAN__JWT="refuse")
    code, _, err = chat(d, PLANTED["jwt"][0])
    assert code == 1 and "jwt on line 1" in err and "--allow-secrets" in err
    assert chat(d, PLANTED["jwt"][0], "--allow-secrets")[0] == 0
    assert PLANTED["jwt"][1] in sent_to_gemini(fake_gemini)


def test_a_class_set_to_allow_is_sent_as_it_is(
    scan_daemon: Callable[..., DaemonProcess], fake_gemini: FakeGemini
) -> None:
    d = scan_daemon(AGENTD_SECRETS_SCAN__SERVICE_TOKEN="allow")
    code, reply, _ = chat(d, PLANTED["google-api-key"][0])
    assert code == 0 and reply["redacted"] == {}
    assert PLANTED["google-api-key"][1] in sent_to_gemini(fake_gemini)


def test_with_every_class_on_redact_no_planted_value_reaches_gemini(
    scan_daemon: Callable[..., DaemonProcess], fake_gemini: FakeGemini
) -> None:
    d = scan_daemon(**{f"AGENTD_SECRETS_SCAN__{c.upper()}": "redact" for c in CLASSES})
    prompt = "\n\n".join(text for text, _ in PLANTED.values())
    code, reply, _ = chat(d, prompt)
    assert code == 0, reply
    sent = sent_to_gemini(fake_gemini)
    leaked = [kind for kind, (_, value) in PLANTED.items() if value in sent]
    assert leaked == []
    assert sum(reply["redacted"].values()) >= len(PLANTED)


def test_look_alikes_go_through_untouched(
    scan_daemon: Callable[..., DaemonProcess], fake_gemini: FakeGemini
) -> None:
    d = scan_daemon(**{f"AGENTD_SECRETS_SCAN__{c.upper()}": "refuse" for c in CLASSES})
    prompt = "\n".join(LOOK_ALIKES.values())
    code, reply, err = chat(d, prompt)
    assert code == 0, err
    assert reply["redacted"] == {}
    assert generate_requests(fake_gemini)[-1].texts[-1] == prompt


def test_recalled_findings_are_those_of_a_scan_and_old_texts_are_forgotten() -> None:
    scanner = Scanner(memo_chars=10_000)
    text = PLANTED["github-token"][0]
    assert scanner.recall(text) == scanner.scan(text) != ()
    shifted = tuple(f._replace(start=f.start + 1, end=f.end + 1) for f in scanner.scan(text))
    assert scanner.recall("x" + text) == shifted
    for n in range(20):
        scanner.recall(str(n) * 1000)
    assert 9_000 <= scanner.remembered_chars <= 10_000
    assert scanner.recall(text) == scanner.scan(text)
