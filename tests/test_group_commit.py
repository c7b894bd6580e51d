"""Group commit (agentd/store/database.py `Database.write`) and the context cache
(agentd/store/recent.py): acknowledged still means committed, and a chat's
context is always what the store holds. Real daemon, real SQLCipher file."""

from __future__ import annotations

import asyncio
import dataclasses
import signal
import socket
import threading
from pathlib import Path
from typing import Any

import pytest

from agentctl.client import Client
from agentd.protocol import encode_frame, make_request
from tests.conftest import DaemonProcess, gemini_env, wait_until
from tests.fake_gemini import FakeGemini, answer_blocked, echo, hang

CLIENTS = 32


def chat(d: DaemonProcess, message: str, **args: Any) -> dict[str, Any]:
    return d.call("chat", {"message": message, **args})


def session_texts(d: DaemonProcess, session: str) -> list[tuple[str, str, str]]:
    found = d.call("history", {"session": session, "limit": 10_000})["messages"]
    return [(m["role"], m["content"], m["status"]) for m in found]


def stored_exchanges(d: DaemonProcess, session: str) -> list[str]:
    """The session's complete exchanges as the store orders them (by the answer's id),
    each prompt before its answer."""
    found = d.call("history", {"session": session, "limit": 10_000})["messages"]
    prompts = {m["request_id"]: m["content"] for m in found if m["role"] == "user"}
    answers = sorted((m for m in found if m["role"] == "model" and m["status"] == "complete"),
                     key=lambda m: m["id"])
    return [text for m in answers for text in (prompts[m["request_id"]], m["content"])]


def test_kill_9_right_after_concurrent_acknowledged_chats_loses_none_of_them(
    gemini_daemon: DaemonProcess, fake_gemini: FakeGemini
) -> None:
    """1. 32 clients chat at once, each in a new session, sharing commits. 2. kill -9 as
    soon as the last reply arrived. 3. Restart: every exchange is there, answered, and
    the budget usage of every reply was committed with it."""
    fake_gemini.set_default(echo())
    replies: list[dict[str, Any]] = []
    guard = threading.Lock()
    start = threading.Barrier(CLIENTS)

    def one(n: int) -> None:
        with Client(gemini_daemon.socket, timeout=60) as client:
            start.wait(30)
            reply = client.call("chat", {"message": f"c{n}", "new_session": True})
        with guard:
            replies.append({**reply, "message": f"c{n}"})

    threads = [threading.Thread(target=one, args=(n,)) for n in range(CLIENTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(90)
    assert len(replies) == CLIENTS
    gemini_daemon.signal(signal.SIGKILL)
    gemini_daemon.wait_exit()

    gemini_daemon.start()
    for reply in replies:
        assert session_texts(gemini_daemon, reply["session_id"]) == [
            ("user", reply["message"], "answered"),
            ("model", reply["answer"], "complete"),
        ]
    budgets = gemini_daemon.call("budget")["budgets"]
    used = next(b["used"] for b in budgets if b["scope"] == "global" and b["unit"] == "tokens")
    assert used == sum(r["tokens_in"] + r["tokens_out"] for r in replies)


def test_context_leaves_out_interrupted_and_blocked_turns_before_and_after_a_restart(
    gemini_daemon: DaemonProcess, fake_gemini: FakeGemini
) -> None:
    """1. a is answered. 2. b is cut off (client gone): interrupted. 3. c's answer is
    blocked. 4. d's context is a alone; e's is a and d. 5. Restart: f's is a, d, e."""
    d = gemini_daemon
    fake_gemini.set_default(echo())
    session = chat(d, "a", new_session=True)["session_id"]
    fake_gemini.set_default(hang())
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(d.socket)
        sock.sendall(encode_frame(make_request(1, "chat", {"message": "b", "session": session})))
        wait_until(lambda: len(fake_gemini.requests) >= 2, 10, "b to reach Gemini")
    wait_until(lambda: d.call("status")["in_flight"] == 0, 10, "b to be cancelled")
    fake_gemini.set_default(answer_blocked())
    assert chat(d, "c", session=session)["status"] == "blocked"
    fake_gemini.set_default(echo())
    chat(d, "d", session=session)
    assert fake_gemini.requests[-1].texts == ["a", "You said: a", "d"]
    chat(d, "e", session=session)
    assert fake_gemini.requests[-1].texts == ["a", "You said: a", "d", "You said: d", "e"]
    d.signal(signal.SIGTERM)
    assert d.wait_exit() == 0
    d.start()
    chat(d, "f", session=session)
    assert fake_gemini.requests[-1].texts == [
        "a", "You said: a", "d", "You said: d", "e", "You said: e", "f",
    ]


def test_a_deleted_session_leaves_nothing_behind_for_a_new_one_of_the_same_name(
    gemini_daemon: DaemonProcess, fake_gemini: FakeGemini
) -> None:
    d = gemini_daemon
    fake_gemini.set_default(echo())
    old = chat(d, "secret plan", new_session=True, session_name="work")["session_id"]
    chat(d, "more plan", session="work")
    assert fake_gemini.requests[-1].texts[0] == "secret plan"  # the cached context was used
    d.call("session_delete", {"session": old})
    new = chat(d, "fresh start", new_session=True, session_name="work")["session_id"]
    assert new != old
    assert fake_gemini.requests[-1].texts == ["fresh start"]
    chat(d, "again", session="work")
    assert fake_gemini.requests[-1].texts == ["fresh start", "You said: fresh start", "again"]


def test_concurrent_chats_in_one_session_all_reach_the_next_context_in_store_order(
    make_daemon: Any, fake_gemini: FakeGemini
) -> None:
    """1. 8 chats of one session overlap (the fake answers after 0.3 s), so contexts are
    read while other answers commit. 2. The next chat's context holds all 8 exchanges,
    in the order the store holds them, as after a restart (nothing cached)."""
    d = make_daemon(gemini_env(fake_gemini)).start()
    fake_gemini.set_default(echo())
    session = chat(d, "first", new_session=True)["session_id"]
    fake_gemini.set_default(dataclasses.replace(echo(), delay_s=0.3))
    threads = [
        threading.Thread(target=chat, args=(d, f"p{n}"), kwargs={"session": session})
        for n in range(8)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    fake_gemini.set_default(echo())
    stored = stored_exchanges(d, session)
    chat(d, "after", session=session)
    cached = fake_gemini.requests[-1].texts
    assert len(cached) == 2 * 9 + 1
    assert cached[:-1] == stored
    d.signal(signal.SIGTERM)
    assert d.wait_exit() == 0
    d.start()
    chat(d, "after restart", session=session)
    assert fake_gemini.requests[-1].texts[: len(cached)] == [*cached[:-1], "after"]


def test_the_cached_context_keeps_the_latest_turns_as_the_store_read_does(
    make_daemon: Any, fake_gemini: FakeGemini
) -> None:
    """chat.history_max_turns = 2: after five chats, the sixth carries the 4th and 5th
    exchanges, with the cache warm and after a restart alike."""
    d = make_daemon(gemini_env(fake_gemini, AGENTD_CHAT__HISTORY_MAX_TURNS="2")).start()
    fake_gemini.set_default(echo())
    session = chat(d, "t1", new_session=True)["session_id"]
    for n in range(2, 6):
        chat(d, f"t{n}", session=session)
    chat(d, "t6", session=session)
    expected = ["t4", "You said: t4", "t5", "You said: t5", "t6"]
    assert fake_gemini.requests[-1].texts == expected
    d.signal(signal.SIGTERM)
    assert d.wait_exit() == 0
    d.start()
    chat(d, "t7", session=session)
    assert fake_gemini.requests[-1].texts == ["t5", "You said: t5", "t6", "You said: t6", "t7"]


# -- Database.write on a real SQLCipher file ------------------------------------------------


def test_a_failing_job_rolls_back_alone_and_the_others_of_its_batch_commit(
    tmp_path: Path,
) -> None:
    """Jobs queued together share one transaction; one raising gets its own error, its
    writes undone; the others' futures resolve, their rows committed (seen by a new
    connection after close)."""
    from agentd.errors import StoreError
    from agentd.secrets import Secret
    from agentd.store.database import Database, transaction

    def put(conn: Any, n: int) -> int:
        with transaction(conn):
            conn.execute("INSERT INTO t (n) VALUES (?)", (n,))
        if n == 3:
            conn.execute("INSERT INTO missing_table VALUES (1)")
        return n

    async def scenario() -> list[Any]:
        db = Database(tmp_path / "agentd.db", Secret("5a" * 32))
        await db.open()
        await db.run(lambda conn: conn.execute("CREATE TABLE t (n INTEGER)"))
        results = await asyncio.gather(*(db.write(put, n) for n in range(6)),
                                       return_exceptions=True)
        await db.close()
        db = Database(tmp_path / "agentd.db", Secret("5a" * 32))
        await db.open()
        rows = await db.run(lambda conn: conn.execute("SELECT n FROM t ORDER BY n").fetchall())
        await db.close()
        return [results, [row[0] for row in rows]]

    results, rows = asyncio.run(scenario())
    assert isinstance(results[3], StoreError) and "missing_table" in str(results[3])
    assert [r for n, r in enumerate(results) if n != 3] == [0, 1, 2, 4, 5]
    assert rows == [0, 1, 2, 4, 5]


def test_a_group_commit_to_a_replaced_file_is_refused(tmp_path: Path) -> None:
    """The file-identity check holds for batches: after the database file is replaced,
    write() raises STORE_UNAVAILABLE and the store reports itself lost."""
    from agentd.errors import StoreUnavailable
    from agentd.secrets import Secret
    from agentd.store.database import Database

    lost: list[str] = []

    async def scenario() -> None:
        path = tmp_path / "agentd.db"
        db = Database(path, Secret("5a" * 32), on_lost=lost.append)
        await db.open()
        await db.write(lambda conn: conn.execute("CREATE TABLE t (n INTEGER)"))
        path.rename(tmp_path / "moved.db")
        path.write_bytes(b"")
        with pytest.raises(StoreUnavailable):
            await db.write(lambda conn: conn.execute("INSERT INTO t VALUES (1)"))
        with pytest.raises(StoreUnavailable):
            await db.write(lambda conn: conn.execute("INSERT INTO t VALUES (2)"))
        await db.close()

    asyncio.run(scenario())
    assert len(lost) == 2 and "replaced" in lost[0]
