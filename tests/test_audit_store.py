"""The audit table on a real SQLCipher file: sealing, anchors, queries, the group-commit writer."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agentd.audit import rows as audit
from agentd.audit.chain import (
    GENESIS,
    GENESIS_HASH,
    Anchor,
    Breakage,
    MalformedRow,
    VerifyResult,
    compute_hash,
    hash_content,
    verify_chain,
)
from agentd.audit.rows import AuditEvent, AuditQuery
from agentd.audit.verify import verify
from agentd.audit.writer import AuditStatistics, AuditWriter
from agentd.errors import StoreError
from agentd.secrets import Secret
from agentd.store.database import Connection, Database, transaction
from agentd.store.migrations import migrate
from tests.test_audit_chain import END_OF_9999, TRICKY_CHARACTERS, texts

T = TypeVar("T")
KEY = Secret("5a" * 32)


def event(n: int = 0, **changes: Any) -> AuditEvent:
    fields: dict[str, Any] = {
        "at": 1_750_000_000.0 + n,
        "request_id": f"r-{n:04d}",
        "peer_uid": 1000,
        "peer_pid": 4242,
        "command": "status",
        "session_id": None,
        "error_code": None,
        "latency_s": 0.0123,
    }
    return AuditEvent(**(fields | changes))


def run(scenario: Callable[[], Coroutine[Any, Any, T]]) -> T:
    return asyncio.run(scenario())


@pytest.fixture
def db_path(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "agentd.db"

    async def create() -> None:
        db = Database(path, KEY)
        await db.open()
        await db.run(migrate)
        await db.close()

    run(create)
    yield path


def with_db(path: Path, fn: Callable[..., T], *args: Any) -> T:
    """Open the store, run fn(conn, *args) on its thread, close it."""

    async def scenario() -> T:
        db = Database(path, KEY)
        await db.open()
        try:
            return await db.run(fn, *args)
        finally:
            await db.close()

    return run(scenario)


def verify_all(conn: Connection) -> tuple[VerifyResult, Anchor | None]:
    """A full verify (no anchor file): the verdict and the stored anchor."""
    verdict = verify(conn, None, True)
    return verdict.result, verdict.anchor


def all_rows(conn: Connection) -> list[dict[str, Any]]:
    rows = conn.execute(f"SELECT {', '.join(audit.COLUMNS)} FROM audit ORDER BY seq").fetchall()
    return [dict(zip(audit.COLUMNS, row, strict=True)) for row in rows]


def test_event_fields_are_the_chain_types_with_whole_milliseconds() -> None:
    fields = event(latency_s=0.0126, error_code="BUSY").content()._asdict()
    assert fields["ts"] == "2025-06-15T15:06:40.000000Z"
    assert fields["latency_ms"] == 13
    assert fields["outcome"] == "error"
    assert "seq" not in fields


def test_an_unknown_command_is_recorded_cut_to_64_characters() -> None:
    assert event(command="x" * 10_000).content()._asdict()["command"] == "x" * 64


def test_negative_latency_and_token_counts_are_recorded_as_zero() -> None:
    fields = event(latency_s=-0.5, tokens_in=-3, tokens_out=-4).content()._asdict()
    assert (fields["latency_ms"], fields["tokens_in"], fields["tokens_out"]) == (0, 0, 0)


events = st.builds(
    AuditEvent,
    at=st.floats(min_value=0, max_value=END_OF_9999, exclude_max=True),
    request_id=texts,
    peer_uid=st.integers(),
    peer_pid=st.integers(),
    command=texts,
    session_id=st.none() | texts,
    error_code=st.none() | texts,
    latency_s=st.floats(min_value=-1e9, max_value=1e9),
    model=st.none() | texts,
    tokens_in=st.integers(),
    tokens_out=st.integers(),
)


@given(events, st.integers(min_value=1))
def test_an_event_is_sealed_as_the_checked_path_would_seal_it(
    audit_event: AuditEvent, seq: int
) -> None:
    """The checked path also proves content() yields the types and forms the chain accepts."""
    checked = compute_hash(GENESIS_HASH, dict(audit_event.content()._asdict(), seq=seq))
    assert hash_content(GENESIS_HASH, seq, audit_event.content()) == checked


def test_rows_read_back_verify_exactly_as_sealed(db_path: Path) -> None:
    events = [
        event(1),
        event(2, session_id="s-1", model="m", tokens_in=5, tokens_out=7),
        event(3, error_code="FORBIDDEN"),
    ]
    head = with_db(db_path, audit.commit_rows, events)
    rows = with_db(db_path, all_rows)
    assert [r["seq"] for r in rows] == [1, 2, 3]
    assert verify_chain(rows).ok
    assert head == Anchor.of(rows[-1])


@pytest.mark.parametrize("count", [1, 5, 9, 37, 300])
def test_a_batch_of_any_size_goes_in_whole_and_in_order(db_path: Path, count: int) -> None:
    """Batches are sealed and inserted in multi-row chunks (32, 8, 1 rows): none is lost
    or reordered at a chunk boundary."""
    head = with_db(db_path, audit.commit_rows, [event(n) for n in range(count)])
    rows = with_db(db_path, all_rows)
    assert [r["request_id"] for r in rows] == [f"r-{n:04d}" for n in range(count)]
    assert verify_chain(rows).ok
    assert head == Anchor.of(rows[-1])


def test_text_json_escapes_reads_back_and_verifies(db_path: Path) -> None:
    tricky = [
        # Not the lone surrogate: it cannot be encoded as UTF-8 for SQLite.
        event(1, request_id=TRICKY_CHARACTERS.replace("\ud800", ""), command=""),
        event(2, session_id='a "quoted" \\ path', model="modèle-✓", error_code="\x00\n"),
        event(3, command="\U0001f600" * 100, tokens_in=2**62),
    ]
    with_db(db_path, audit.commit_rows, tricky)
    assert verify_chain(with_db(db_path, all_rows)).ok


def test_rows_are_not_sealed_onto_a_malformed_head(db_path: Path) -> None:
    with pytest.raises(MalformedRow):
        with_db(db_path, audit.append_rows, [event(1)], Anchor(seq=1, hash="not a hash"))


def test_the_table_is_strict_so_a_hash_never_sees_a_converted_type(db_path: Path) -> None:
    def insert_float_latency(conn: Connection) -> None:
        conn.execute(
            "INSERT INTO audit VALUES (1, 't', 'r', 0, 0, 'c', NULL, 'ok', NULL, 1.5, NULL, 0, 0, 'p', 'h', NULL)"
        )

    with pytest.raises(StoreError, match="cannot store REAL value in INTEGER column"):
        with_db(db_path, insert_float_latency)


def test_append_inside_a_callers_transaction_follows_the_committed_head(db_path: Path) -> None:
    """1. A batch commits. 2. A caller's transaction appends one row and rolls back.
    3. The next batch still follows the committed head: the chain has no gap."""
    with_db(db_path, audit.commit_rows, [event(1), event(2)])

    def append_then_fail(conn: Connection) -> None:
        with transaction(conn):
            audit.append(conn, [event(3)])
            raise RuntimeError("the chat's own write failed")

    with pytest.raises(RuntimeError):
        with_db(db_path, append_then_fail)
    with_db(db_path, audit.commit_rows, [event(4)])
    rows = with_db(db_path, all_rows)
    assert [r["request_id"] for r in rows] == ["r-0001", "r-0002", "r-0004"]
    assert verify_chain(rows).ok


def test_the_anchor_follows_the_head(db_path: Path) -> None:
    head = with_db(db_path, audit.commit_rows, [event(1), event(2)])
    assert with_db(db_path, audit.stored_anchor) == head
    result, anchor = with_db(db_path, verify_all)
    assert result.ok and result.rows_checked == 2 and anchor == head


def test_a_tail_deleted_while_stopped_stays_detected_after_new_rows(db_path: Path) -> None:
    """1. Three rows; the anchor is seq 3. 2. Rows 2-3 are deleted behind our back.
    3. New rows reuse seq 2-3 with other hashes: the anchor stays, verify names seq 3."""
    with_db(db_path, audit.commit_rows, [event(1), event(2), event(3)])

    def delete_tail(conn: Connection) -> None:
        conn.execute("DELETE FROM audit WHERE seq >= 2")

    with_db(db_path, delete_tail)
    head, anchor, holds = with_db(db_path, audit.check_on_open)
    assert (head.seq, anchor.seq if anchor else None, holds) == (1, 3, False)
    with_db(db_path, audit.commit_rows, [event(4), event(5), event(6)])
    result, kept = with_db(db_path, verify_all)
    assert kept == anchor
    assert not result.ok
    assert result.reason is Breakage.ANCHOR_MISMATCH
    assert result.first_broken_seq == 3


def test_recent_filters_and_orders_newest_first(db_path: Path) -> None:
    events = [
        event(1, command="status"),
        event(2, command="chat", session_id="s-a", model="m"),
        event(3, command="chat", session_id="s-b", error_code="RATE_LIMITED"),
        event(4, command="metrics"),
    ]
    with_db(db_path, audit.commit_rows, events)

    def ids(query: AuditQuery) -> list[str]:
        return [r["request_id"] for r in with_db(db_path, audit.recent, query)]

    assert ids(AuditQuery()) == ["r-0004", "r-0003", "r-0002", "r-0001"]
    assert ids(AuditQuery(command="chat")) == ["r-0003", "r-0002"]
    assert ids(AuditQuery(outcome="error")) == ["r-0003"]
    assert ids(AuditQuery(session_id="s-a")) == ["r-0002"]
    assert ids(AuditQuery(request_id="r-0001")) == ["r-0001"]
    assert ids(AuditQuery(since=1_750_000_003.0)) == ["r-0004", "r-0003"]
    assert ids(AuditQuery(limit=1)) == ["r-0004"]


def with_writer(
    db_path: Path, feed: Callable[[AuditWriter], Coroutine[Any, Any, None]], **options: Any
) -> tuple[list[dict[str, Any]], AuditStatistics]:
    """Start a writer on the store, let `feed` use it, close it; the rows and its statistics."""

    async def scenario() -> tuple[list[dict[str, Any]], AuditStatistics]:
        db = Database(db_path, KEY)
        await db.open()
        writer = AuditWriter(db, **options)
        await writer.start()
        await feed(writer)
        await writer.close()
        rows = await db.run(all_rows)
        await db.close()
        return rows, writer.statistics()

    return run(scenario)


def test_writer_group_commits_and_record_now_share_one_chain(db_path: Path) -> None:
    """Queued rows, a row committed at once, more queued rows: one gap-free chain."""

    async def feed(writer: AuditWriter) -> None:
        for n in range(10):
            assert writer.record_nowait(event(n))
        await writer.record_now(event(100, command="chat", model="m", tokens_in=1, tokens_out=2))
        for n in range(10, 20):
            await writer.record(event(n))

    rows, stats = with_writer(db_path, feed, max_batch=4)
    assert len(rows) == 21
    assert verify_chain(rows).ok
    assert stats.committed == 21 and stats.dropped == 0 and stats.queued == 0
    assert stats.head_seq == 21
    assert stats.batches < 20  # rows shared commits


def test_a_full_queue_waits_for_the_writer_instead_of_dropping(db_path: Path) -> None:
    async def scenario() -> int:
        db = Database(db_path, KEY)
        await db.open()
        writer = AuditWriter(db, max_queue=2, max_batch=2, max_wait_s=30)
        await writer.start()
        for n in range(50):
            await writer.record(event(n))
        await writer.close()
        count: int = await db.run(
            lambda conn: conn.execute("SELECT count(*) FROM audit").fetchone()[0]
        )
        await db.close()
        assert writer.statistics().dropped == 0
        return count

    assert run(scenario) == 50


def test_rows_that_cannot_be_written_are_dropped_and_counted(tmp_path: Path) -> None:
    """The store is closed under the writer: the queue fills, then rows are dropped, counted."""

    async def scenario() -> tuple[int, bool]:
        db = Database(tmp_path / "a.db", KEY)
        await db.open()
        await db.run(migrate)
        writer = AuditWriter(db, max_queue=3, max_wait_s=0.05, retry_max_s=0.05)
        await writer.start()
        await db.close()
        for n in range(10):
            await writer.record(event(n))
        with pytest.raises(StoreError):  # a well-formed row the store cannot take
            await writer.record_now(event(10))
        stats = writer.statistics()
        await writer.close(timeout=0.1)
        return writer.statistics().dropped, stats.failing

    dropped, failing = run(scenario)
    assert failing
    assert dropped == 10  # each refused at the full queue or given up at close


def test_malformed_events_are_left_out_and_the_writer_goes_on(db_path: Path) -> None:
    """The fast sealing path trusts its types. An ill-typed event (a bug in its producer)
    fails its batch on the store thread; the writer leaves it out, counts it as dropped,
    commits the rest of the batch, and keeps writing later rows."""
    malformed = [
        event(1, peer_uid="1000"),  # %d refuses it while sealing: TypeError
        event(3, latency_s=None),  # content() cannot round it: TypeError
        event(5, tokens_in=1.5),  # seals, but the STRICT table refuses it: StoreError
        event(7, command="status\ud800"),  # seals, but is not UTF-8 for SQLite
    ]
    good = [event(n) for n in (0, 2, 4, 6, 8)]

    async def feed(writer: AuditWriter) -> None:
        for item in sorted(good + malformed, key=lambda e: e.at):
            assert writer.record_nowait(item)
        await writer.flush()
        assert writer.record_nowait(event(9))  # the writer still runs

    rows, stats = with_writer(db_path, feed, max_batch=100, retry_max_s=0.05)
    assert [r["request_id"] for r in rows] == ["r-0000", "r-0002", "r-0004", "r-0006", "r-0008", "r-0009"]
    assert verify_chain(rows).ok
    assert stats.committed == 6 and stats.dropped == 4 and not stats.failing


def test_a_malformed_event_committed_at_once_is_left_out_and_the_trail_goes_on(
    db_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """record_now (a chat's row) leaves a malformed event out the same way, instead of
    failing the request it belongs to. (A store failure still raises: see
    test_rows_that_cannot_be_written_are_dropped_and_counted.)"""

    async def feed(writer: AuditWriter) -> None:
        await writer.record_now(event(0))
        await writer.record_now(event(1, peer_uid="1000"))  # TypeError while sealing
        await writer.record_now(event(2, tokens_in=1.5))  # the STRICT table refuses it
        await writer.record_now(event(3))

    rows, stats = with_writer(db_path, feed)
    assert [r["request_id"] for r in rows] == ["r-0000", "r-0003"]
    assert verify_chain(rows).ok
    assert stats.committed == 2 and stats.dropped == 2
    left_out = [r for r in caplog.records if r.msg.startswith("audit rows left out")]
    assert [r.args[-1] for r in left_out] == ["'r-0001'", "'r-0002'"]


def test_verify_of_an_empty_trail_is_ok(db_path: Path) -> None:
    result, anchor = with_db(db_path, verify_all)
    assert result.ok and result.rows_checked == 0 and result.head == GENESIS and anchor is None
