"""Older turns that no longer fit the token budget are summarised, not dropped.

The daemon runs against the fake Gemini with a small context budget; the
primary model echoes, the fallback model (the summariser by default) answers
with a recognisable summary, or fails.
"""

from __future__ import annotations

import json
import signal
from collections.abc import Callable
from typing import Any

from agentd.store.database import Connection
from tests.conftest import DaemonProcess, gemini_env
from tests.fake_gemini import FakeGemini, answer, echo, error
from tests.peers import with_store
from tests.planted_secrets import PLANTED

PRIMARY, FALLBACK = "fake-primary", "fake-fallback"
SUMMARY = "SUMMARY-7f3a: the user numbered their messages"


def start(make_daemon: Callable[..., DaemonProcess], fake: FakeGemini, **env: str) -> DaemonProcess:
    fake.set_default(echo(), model=PRIMARY)
    return make_daemon(
        gemini_env(
            fake,
            AGENTD_GEMINI__MODEL=PRIMARY,
            AGENTD_GEMINI__FALLBACK_MODEL=FALLBACK,
            AGENTD_GEMINI__CONTEXT_TOKEN_BUDGET="150",
            AGENTD_GEMINI__SYSTEM_PROMPT="be brief",
            **env,
        )
    ).start()


def chat(d: DaemonProcess, text: str) -> dict[str, Any]:
    result = d.agentctl("chat", "--json", text)
    assert result.returncode == 0, result.stderr
    reply: dict[str, Any] = json.loads(result.stdout)
    return reply


def fill(d: DaemonProcess, count: int = 4) -> list[dict[str, Any]]:
    return [chat(d, f"message number {n} " + "padding " * 20) for n in range(count)]


def summarised_session(
    make_daemon: Callable[..., DaemonProcess], fake: FakeGemini
) -> DaemonProcess:
    """A daemon whose current session's older turns have been summarised."""
    fake.set_default(answer(SUMMARY), model=FALLBACK)
    d = start(make_daemon, fake)
    fill(d)
    chat(d, "last")
    return d


def test_old_turns_are_summarised_by_the_fallback_model_and_the_reply_says_so(
    make_daemon: Callable[..., DaemonProcess], fake_gemini: FakeGemini
) -> None:
    fake_gemini.set_default(answer(SUMMARY), model=FALLBACK)
    d = start(make_daemon, fake_gemini)
    replies = [*fill(d), chat(d, "last")]

    summary_requests = [r for r in fake_gemini.requests if r.model == FALLBACK]
    assert summary_requests, "no summary was asked for"
    assert "message number 0" in summary_requests[0].texts[-1]
    notices = [r["notice"] for r in replies if r["notice"]]
    assert notices and "summarised" in notices[0], notices
    assert all(r["turns_left_out"] == 0 for r in replies)
    final = fake_gemini.requests[-1]
    assert final.model == PRIMARY and final.texts[-1] == "last"
    assert SUMMARY in (final.system_instruction or "")
    assert (final.system_instruction or "").startswith("be brief")


def test_the_stored_summary_is_used_by_the_next_chat(
    make_daemon: Callable[..., DaemonProcess], fake_gemini: FakeGemini
) -> None:
    d = summarised_session(make_daemon, fake_gemini)
    asked = sum(1 for r in fake_gemini.requests if r.model == FALLBACK)

    reply = chat(d, "and one more")
    assert sum(1 for r in fake_gemini.requests if r.model == FALLBACK) == asked
    assert SUMMARY in (fake_gemini.requests[-1].system_instruction or "")
    assert reply["notice"] is None


def test_a_failing_summary_falls_back_to_dropping_and_says_so(
    make_daemon: Callable[..., DaemonProcess], fake_gemini: FakeGemini
) -> None:
    fake_gemini.set_default(error(400, "summary refused"), model=FALLBACK)
    d = start(make_daemon, fake_gemini)
    fill(d)
    reply = chat(d, "last")

    assert any(r.model == FALLBACK for r in fake_gemini.requests)
    assert reply["turns_left_out"] > 0
    assert "left out of the context" in reply["notice"]
    assert "summary could not be made" in reply["notice"]
    assert fake_gemini.requests[-1].texts[-1] == "last"


def test_the_drop_strategy_asks_for_no_summary(
    make_daemon: Callable[..., DaemonProcess], fake_gemini: FakeGemini
) -> None:
    d = start(make_daemon, fake_gemini, AGENTD_CHAT__CONTEXT_STRATEGY="drop")
    fill(d)
    reply = chat(d, "last")
    assert not any(r.model == FALLBACK for r in fake_gemini.requests)
    assert "left out of the context" in reply["notice"]


def test_an_unknown_context_strategy_is_a_config_error(
    make_daemon: Callable[..., DaemonProcess], fake_gemini: FakeGemini
) -> None:
    d = make_daemon(gemini_env(fake_gemini, AGENTD_CHAT__CONTEXT_STRATEGY="forget"))
    d.start(wait=False)
    assert d.wait_exit() == 78
    assert "chat.context_strategy must be one of summarize, drop" in d.stderr()


def test_history_marks_where_the_summary_stands(
    make_daemon: Callable[..., DaemonProcess], fake_gemini: FakeGemini
) -> None:
    d = summarised_session(make_daemon, fake_gemini)

    shown = d.agentctl("history")
    assert shown.returncode == 0, shown.stderr
    text = shown.stdout.decode()
    mark = text.index("-- summary: the ")
    assert f"summarised (by {FALLBACK})" in text
    assert text.index("message number 0") < mark < text.index("last")
    listed = json.loads(d.agentctl("history", "--json").stdout)
    upto = listed["summary"]["upto_message_id"]
    assert upto in [m["id"] for m in listed["messages"] if m["role"] == "model"]


def _report_large_usage(conn: Connection) -> None:
    conn.execute(
        "UPDATE messages SET tokens_out = 1000 WHERE id = (SELECT min(id) FROM messages "
        "WHERE role = 'model')"
    )


def test_the_budget_counts_the_usage_an_answer_reported(
    make_daemon: Callable[..., DaemonProcess], fake_gemini: FakeGemini
) -> None:
    """Short texts fit the budget by their estimate; the first answer's stored usage
    (1000 tokens, as if the service had reported it) does not."""
    d = start(make_daemon, fake_gemini, AGENTD_CHAT__CONTEXT_STRATEGY="drop")
    assert chat(d, "one")["turns_left_out"] == 0
    assert chat(d, "two")["turns_left_out"] == 0
    d.signal(signal.SIGTERM)
    assert d.wait_exit() == 0
    with_store(d.state_dir, _report_large_usage)
    d.start()
    reply = chat(d, "three")
    assert reply["turns_left_out"] == 2
    assert fake_gemini.requests[-1].texts == ["two", "You said: two", "three"]


def test_a_secret_redacted_in_chat_is_redacted_in_the_summary_request_too(
    make_daemon: Callable[..., DaemonProcess], fake_gemini: FakeGemini
) -> None:
    """1. A chat carries a token the policy redacts (history keeps it, encrypted).
    2. Later turns push it out of the budget, so it is summarised: the summary
    request leaves the machine redacted, as every chat's context does."""
    text, value = PLANTED["github-token"]
    fake_gemini.set_default(answer(SUMMARY), model=FALLBACK)
    d = start(make_daemon, fake_gemini)
    chat(d, f"keep this in mind: {text} " + "padding " * 20)
    fill(d)
    chat(d, "last")

    summary_requests = [r for r in fake_gemini.requests if r.model == FALLBACK]
    assert summary_requests, "no summary was asked for"
    sent = [t for r in fake_gemini.requests for t in (*r.texts, r.system_instruction or "")]
    assert not any(value in t for t in sent)
    assert any("[REDACTED:github-token]" in t for r in summary_requests for t in r.texts)
