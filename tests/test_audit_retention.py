"""Retention and incremental verify on a real SQLCipher file: the checkpoint row, the
chain across the cut, tampering after it, and the verified mark."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

from agentd.audit import rows
from agentd.audit.chain import Anchor, Breakage
from agentd.audit.retention import DAY_S, AuditRetention
from agentd.audit.verify import (
    BATCH_ROWS,
    Verification,
    VerifyAbandoned,
    remember_verified,
    verify,
)
from agentd.store.database import Connection, Database
from tests.test_audit_store import KEY, db_path, event, run, with_db

__all__ = ["db_path"]  # a fixture, used by name below

T0 = 1_750_000_000.0  # event(n) arrived at T0 + n


def commit(path: Path, first: int, last: int) -> Anchor:
    head: Anchor = with_db(path, rows.commit_rows, [event(n) for n in range(first, last + 1)])
    return head


def prune_before(path: Path, n: int, batch_rows: int = 2) -> int:
    """Prune, as the retention task does, every row that arrived before event(n)."""

    async def scenario() -> int:
        db = Database(path, KEY)
        await db.open()
        try:
            retention = AuditRetention(
                db,
                retention_days=1.0,
                prune_interval_s=3600.0,
                clock=lambda: T0 + n + DAY_S,
                batch_rows=batch_rows,
            )
            return await retention.prune()
        finally:
            await db.close()

    return run(scenario)


def check(path: Path, *, full: bool) -> Verification:
    verdict: Verification = with_db(path, verify, None, full)
    return verdict


def execute(path: Path, sql: str) -> None:
    def run_sql(conn: Connection) -> Any:
        return conn.execute(sql)

    with_db(path, run_sql)


def test_pruning_leaves_a_checkpoint_and_the_chain_verifies_across_the_cut(
    db_path: Path,
) -> None:
    """1. Ten rows. 2. Prune those older than row 6, in batches of two. 3. Rows 6-10
    remain; the checkpoint is row 5 (its hash, and the row before it); a full
    verify starts there and passes."""
    commit(db_path, 1, 10)
    row5 = with_db(
        db_path,
        lambda conn: conn.execute("SELECT hash, prev_hash FROM audit WHERE seq = 5").fetchone(),
    )
    assert prune_before(db_path, 6) == 5
    assert (
        with_db(db_path, lambda conn: conn.execute("SELECT min(seq) FROM audit").fetchone()[0]) == 6
    )
    stored = with_db(db_path, rows.state.get_value, rows.CHECKPOINT_KEY)
    assert stored == {"seq": 5, "hash": row5[0], "prev_hash": row5[1]}
    verdict = check(db_path, full=True)
    assert verdict.result.ok, verdict.result
    assert verdict.start == verdict.checkpoint == Anchor(5, row5[0])
    assert verdict.result.rows_checked == 5 and verdict.result.head.seq == 10


def test_the_head_row_is_never_pruned_and_new_rows_follow_it(db_path: Path) -> None:
    head = commit(db_path, 1, 4)
    assert prune_before(db_path, 100) == 3
    assert with_db(db_path, rows.current_head) == head
    commit(db_path, 5, 6)
    verdict = check(db_path, full=True)
    assert verdict.result.ok and verdict.result.rows_checked == 3


@pytest.mark.parametrize(
    ("sql", "reason"),
    [
        ("UPDATE audit SET latency_ms = latency_ms + 1 WHERE seq = 6", Breakage.CONTENT_EDITED),
        ("DELETE FROM audit WHERE seq = 6", Breakage.ROW_DELETED),
    ],
    ids=["edited", "deleted"],
)
def test_the_first_row_after_the_cut_tampered_with_is_detected(
    db_path: Path, sql: str, reason: Breakage
) -> None:
    commit(db_path, 1, 10)
    prune_before(db_path, 6)
    execute(db_path, sql)
    result = check(db_path, full=True).result
    assert not result.ok
    assert (result.first_broken_seq, result.reason) == (6, reason)


def test_incremental_verify_checks_only_rows_after_the_last_verified(db_path: Path) -> None:
    """1. Ten rows verified. 2. Three more: a plain verify checks those three, from
    seq 10. 3. --full checks all thirteen."""
    head = commit(db_path, 1, 10)
    first = check(db_path, full=False)
    assert first.result.ok and first.result.rows_checked == 10
    with_db(db_path, remember_verified, first.result.head)
    commit(db_path, 11, 13)
    second = check(db_path, full=False)
    assert second.result.ok and second.result.rows_checked == 3 and second.start == head
    assert check(db_path, full=True).result.rows_checked == 13


def test_the_verified_mark_only_moves_forward(db_path: Path) -> None:
    commit(db_path, 1, 5)
    with_db(db_path, remember_verified, with_db(db_path, rows.current_head))
    with_db(db_path, remember_verified, Anchor(2, "0" * 64))
    assert check(db_path, full=False).start.seq == 5


def test_incremental_verify_notices_the_verified_row_rewritten(db_path: Path) -> None:
    commit(db_path, 1, 5)
    with_db(db_path, remember_verified, with_db(db_path, rows.current_head))
    execute(db_path, "UPDATE audit SET hash = prev_hash WHERE seq = 5")
    result = check(db_path, full=False).result
    assert not result.ok and result.first_broken_seq == 5


def test_the_verified_mark_behind_the_checkpoint_starts_at_the_checkpoint(db_path: Path) -> None:
    commit(db_path, 1, 3)
    with_db(db_path, remember_verified, with_db(db_path, rows.current_head))
    commit(db_path, 4, 10)
    prune_before(db_path, 6)
    verdict = check(db_path, full=False)
    assert verdict.result.ok and verdict.start.seq == 5 and verdict.result.rows_checked == 5


def test_a_verify_nobody_waits_for_stops_at_its_next_batch(db_path: Path) -> None:
    commit(db_path, 1, BATCH_ROWS + 1)
    abandoned = threading.Event()
    abandoned.set()
    with pytest.raises(VerifyAbandoned):
        with_db(db_path, verify, None, True, abandoned)
