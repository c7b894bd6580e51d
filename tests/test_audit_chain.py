"""The audit hash chain: sealing rows, and finding where a tampered history breaks."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from agentd.audit.chain import (
    CONTENT_FIELDS,
    GENESIS,
    GENESIS_HASH,
    OUTCOMES,
    SCHEME,
    Anchor,
    Breakage,
    Content,
    MalformedRow,
    canonical_bytes,
    compute_hash,
    format_ts,
    hash_content,
    hash_input,
    seal,
    verify_chain,
)


def content(n: int, **changes: Any) -> dict[str, Any]:
    """The content fields of the n-th request, minus seq."""
    fields: dict[str, Any] = {
        "ts": format_ts(1_750_000_000 + n),
        "request_id": f"req-{n}",
        "peer_uid": 1000,
        "peer_pid": 4242,
        "command": "chat",
        "session_id": "default",
        "outcome": "ok",
        "error_code": None,
        "latency_ms": 850 + n,
        "model": "gemini-flash-latest",
        "tokens_in": 120,
        "tokens_out": 300,
    }
    return fields | changes


def chain(length: int) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    head = GENESIS
    for n in range(1, length + 1):
        rows.append(seal(head, content(n)))
        head = Anchor.of(rows[-1])
    return rows


def reseal_from(rows: list[dict[str, Any]], index: int) -> None:
    """What a careful attacker does after an edit: recompute every later hash."""
    head = Anchor.of(rows[index - 1]) if index else GENESIS
    for i in range(index, len(rows)):
        fields = {k: v for k, v in rows[i].items() if k not in ("seq", "prev_hash", "hash")}
        rows[i] = seal(head, fields)
        head = Anchor.of(rows[i])


# Sealing


def test_the_first_row_follows_the_genesis_hash_of_64_zeros() -> None:
    [row] = chain(1)
    assert (row["seq"], row["prev_hash"]) == (1, "0" * 64)
    assert GENESIS_HASH == "0" * 64


def test_the_hash_follows_the_documented_recipe() -> None:
    [row] = chain(1)
    fields = {k: v for k, v in row.items() if k not in ("prev_hash", "hash")}
    text = json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    recipe = b"agentd-audit-v1\n" + b"0" * 64 + b"\n" + text.encode()
    assert row["hash"] == hashlib.sha256(recipe).hexdigest()


def test_canonical_bytes_ignore_key_order_and_extra_columns() -> None:
    fields = content(1, seq=1)
    shuffled = dict(reversed(list(fields.items())), rowid=99, hash="x")
    assert canonical_bytes(shuffled) == canonical_bytes(fields)


def test_canonical_bytes_are_ascii_even_for_non_ascii_text() -> None:
    assert canonical_bytes(content(1, seq=1, session_id="café")).isascii()


def test_the_hash_depends_on_the_previous_hash() -> None:
    fields = content(1, seq=1)
    assert compute_hash(GENESIS_HASH, fields) != compute_hash("f" * 64, fields)


def test_timestamps_are_utc_iso_with_microseconds() -> None:
    assert format_ts(0.25) == "1970-01-01T00:00:00.250000Z"


def format_ts_by_datetime(epoch_seconds: float) -> str:
    """format_ts as first written; stored rows hold its output."""
    return datetime.fromtimestamp(epoch_seconds, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


END_OF_9999 = 253_402_300_800.0


@given(st.floats(min_value=0, max_value=END_OF_9999, exclude_max=True))
@example(0.0)
@example(1e-7)
@example(0.0000005)  # exactly half a microsecond: to even, 0
@example(0.0000015)  # to even, 2
@example(0.0000025)  # to even, 2
@example(1_750_000_000.0000005)
@example(1_750_000_000.9999995)  # rounds up into the next second
@example(1_750_000_059.9999995)  # ... the next minute
@example(1_767_225_599.9999995)  # ... the next year
@example(253_402_300_799.99997)  # the last representable microseconds of 9999
def test_format_ts_writes_what_datetime_writes(epoch_seconds: float) -> None:
    assert format_ts(epoch_seconds) == format_ts_by_datetime(epoch_seconds)


@pytest.mark.parametrize("epoch_seconds", [END_OF_9999, 1e300, float("inf"), float("nan")])
def test_format_ts_refuses_times_datetime_refuses(epoch_seconds: float) -> None:
    with pytest.raises((ValueError, OverflowError)) as expected:
        format_ts_by_datetime(epoch_seconds)
    with pytest.raises(expected.type):
        format_ts(epoch_seconds)


# Quotes, backslashes, control characters, non-ASCII, astral (JSON writes a
# surrogate pair), a lone surrogate: what JSON escapes. Plus any character.
TRICKY_CHARACTERS = '"\\/\x00\x08\x1f\x7f\x80é\u2028\ufeff\U0001f600\ud800'
texts = st.text(st.sampled_from(TRICKY_CHARACTERS) | st.characters())
# Unbounded: hypothesis reaches well past 64 bits. Never a bool.
integers = st.integers()
contents = st.builds(
    Content,
    # \d is any Unicode digit, as in canonical_bytes' check of ts.
    ts=st.from_regex(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z", fullmatch=True),
    request_id=texts,
    peer_uid=integers,
    peer_pid=integers,
    command=texts,
    session_id=st.none() | texts,
    outcome=st.sampled_from(sorted(OUTCOMES)),
    error_code=st.none() | texts,
    latency_ms=integers,
    model=st.none() | texts,
    tokens_in=integers,
    tokens_out=integers,
)
hashes = st.from_regex(r"[0-9a-f]{64}", fullmatch=True)


def test_content_holds_the_content_fields_but_seq_in_column_order() -> None:
    assert ("seq", *Content._fields) == tuple(CONTENT_FIELDS)


@given(hashes, integers, contents)
def test_the_fast_path_hashes_exactly_the_canonical_bytes(
    prev_hash: str, seq: int, row_content: Content
) -> None:
    fields = dict(row_content._asdict(), seq=seq)
    canonical = SCHEME + prev_hash.encode() + b"\n" + canonical_bytes(fields)
    assert hash_input(prev_hash, seq, row_content) == canonical
    assert hash_content(prev_hash, seq, row_content) == compute_hash(prev_hash, fields)


@pytest.mark.parametrize("change", [{"request_id": None}, {"command": 7}, {"ts": None}])
def test_the_fast_path_refuses_a_missing_or_non_string_string(change: dict[str, Any]) -> None:
    ill_typed = Content(**(content(1) | change))
    with pytest.raises(TypeError):
        hash_content(GENESIS_HASH, 1, ill_typed)


def test_seal_numbers_the_row_itself() -> None:
    with pytest.raises(ValueError, match="seq"):
        seal(GENESIS, content(1, seq=7))


@pytest.mark.parametrize(
    "change",
    [{"peer_uid": True}, {"latency_ms": 12.5}, {"ts": "2025-06-01 12:00"}, {"outcome": "maybe"}],
)
def test_ill_typed_or_ill_formed_fields_are_refused(change: dict[str, Any]) -> None:
    with pytest.raises(MalformedRow):
        seal(GENESIS, content(1, **change))


# Verification


def test_an_intact_chain_verifies() -> None:
    rows = chain(5)
    result = verify_chain(rows)
    assert (result.ok, result.rows_checked, result.first_broken_seq) == (True, 5, None)
    assert result.head == Anchor(5, rows[-1]["hash"])


def test_an_empty_chain_verifies() -> None:
    assert verify_chain([]).ok


def test_an_edited_field_is_found_at_its_row() -> None:
    rows = chain(5)
    rows[2]["tokens_out"] = 3
    result = verify_chain(rows)
    assert (result.ok, result.first_broken_seq, result.reason) == (
        False,
        3,
        Breakage.CONTENT_EDITED,
    )
    assert result.rows_checked == 2


def test_a_deleted_row_is_named_by_its_missing_seq() -> None:
    rows = chain(5)
    del rows[2]
    result = verify_chain(rows)
    assert (result.first_broken_seq, result.reason) == (3, Breakage.ROW_DELETED)


def test_a_deleted_first_row_is_found() -> None:
    result = verify_chain(chain(3)[1:])
    assert (result.first_broken_seq, result.reason) == (1, Breakage.ROW_DELETED)


def test_a_reordered_pair_is_found_where_the_order_breaks() -> None:
    rows = chain(5)
    rows[2], rows[3] = rows[3], rows[2]
    result = verify_chain(rows)
    assert (result.first_broken_seq, result.reason) == (3, Breakage.REORDERED)


def test_a_repeated_seq_is_found() -> None:
    rows = chain(3)
    rows.insert(2, dict(rows[1]))
    result = verify_chain(rows)
    assert (result.first_broken_seq, result.reason) == (3, Breakage.DUPLICATED)


def test_a_forged_row_with_a_made_up_hash_is_found() -> None:
    rows = chain(5)
    rows[2] = dict(content(3, command="stop"), seq=3, prev_hash=rows[1]["hash"], hash="ab" * 32)
    result = verify_chain(rows)
    assert (result.first_broken_seq, result.reason) == (3, Breakage.CONTENT_EDITED)


def test_a_forged_row_sealed_onto_the_wrong_predecessor_is_found() -> None:
    rows = chain(5)
    rows[3] = seal(Anchor(3, "ab" * 32), content(4, command="stop"))
    result = verify_chain(rows)
    assert (result.first_broken_seq, result.reason) == (4, Breakage.LINK_BROKEN)


def test_a_row_deleted_and_the_rest_renumbered_is_found_at_the_first_renumbered_row() -> None:
    rows = chain(5)
    del rows[2]
    for row in rows[2:]:
        row["seq"] -= 1
    result = verify_chain(rows)
    assert (result.first_broken_seq, result.reason) == (3, Breakage.CONTENT_EDITED)


def test_a_row_missing_a_field_is_reported_as_malformed() -> None:
    rows = chain(3)
    del rows[1]["model"]
    result = verify_chain(rows)
    assert (result.first_broken_seq, result.reason) == (2, Breakage.MALFORMED)


# Anchors: what a key holder's careful rewrite cannot get past


def test_a_careful_rewrite_verifies_without_an_anchor() -> None:
    """The honest limit of a plain chain: recomputed hashes verify."""
    rows = chain(5)
    rows[1]["outcome"] = "error"
    reseal_from(rows, 1)
    assert verify_chain(rows).ok


def test_a_careful_rewrite_is_caught_by_the_anchor() -> None:
    rows = chain(5)
    anchor = Anchor.of(rows[-1])
    rows[1]["outcome"] = "error"
    reseal_from(rows, 1)
    result = verify_chain(rows, anchor=anchor)
    assert (result.ok, result.first_broken_seq, result.reason) == (
        False,
        5,
        Breakage.ANCHOR_MISMATCH,
    )


def test_rows_deleted_from_the_tail_are_caught_by_the_anchor() -> None:
    rows = chain(5)
    anchor = Anchor.of(rows[-1])
    result = verify_chain(rows[:3], anchor=anchor)
    assert (result.ok, result.first_broken_seq, result.reason) == (False, 4, Breakage.TRUNCATED)


def test_rows_appended_after_the_anchor_still_verify() -> None:
    rows = chain(5)
    assert verify_chain(rows, anchor=Anchor.of(rows[2])).ok


def test_verification_picks_up_after_pruned_rows_from_a_checkpoint() -> None:
    rows = chain(5)
    result = verify_chain(rows[2:], start=Anchor.of(rows[1]))
    assert (result.ok, result.rows_checked) == (True, 3)
