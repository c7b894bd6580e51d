"""The audit trail's hash chain: every row seals the one before it.

An audit row::

    seq         int      1, 2, 3, ... with no gaps
    ts          str      UTC, ISO 8601 with microseconds: "2025-06-01T12:00:00.000000Z"
    request_id  str
    peer_uid    int
    peer_pid    int
    command     str
    session_id  str | None
    outcome     str      "ok" | "error"
    error_code  str | None
    latency_ms  int      whole milliseconds
    model       str | None
    tokens_in   int
    tokens_out  int
    owner_uid   int | None  whose data a request touched, when not the peer's own
                            (an admin reading another user's session; -1: every user's)
    prev_hash   str      64 hex digits: the previous row's hash (GENESIS_HASH for seq 1)
    hash        str      64 hex digits: compute_hash(prev_hash, content fields)

``ts`` is a string and ``latency_ms`` an integer on purpose: a float's text form
differs between languages and libraries, and a checker written elsewhere must
rebuild exactly the bytes we hashed. Strings and integers have one JSON form.

Canonical serialisation (version 1): the content fields (every field above but
``prev_hash`` and ``hash``) as one JSON object, keys sorted, separators ``,``
and ``:``, ASCII only (``\\uXXXX`` escapes), no NaN. ``owner_uid`` is left out
of the object when null, so rows from before it existed keep their hashes;
when present it is covered like any other field. The hash is::

    SHA-256( b"agentd-audit-v1\\n" + prev_hash (ASCII) + b"\\n" + canonical JSON )

in lower-case hex. The prefix names the scheme, so a hash from another scheme
or version can never verify by accident. Fields outside the content fields are
not covered: adding a column to the audit table means a new scheme version.

``canonical_bytes`` is the definition, and ``verify_chain`` uses it.
``hash_content`` seals rows this process builds (a ``Content`` tuple, types
known): ``hash_input`` writes the same bytes with one format string instead
of a checked dict and ``json.dumps``. The store seals every request's row
this way, on a thread that shares the GIL with the event loop. A property
test holds the two paths to the same bytes.

Threat model, honestly:

- The store is SQLCipher: without the DB key nobody can read or edit rows
  (pages are authenticated), so the chain adds nothing against outsiders.
- Against someone *holding the key* (root on the box, a stolen key file), the
  chain alone detects careless edits: a changed field, a deleted row, swapped
  rows, a hand-written row. A careful attacker can recompute every hash from
  the edit onwards - the scheme is public and needs no secret - and the
  rewritten chain verifies.
- An HMAC keyed from the DB key would not change that: whoever holds the DB key
  can derive the HMAC key too. So we do not pretend; the chain stays plain.
- What catches a careful rewrite is an *anchor*: a (seq, hash) of a past head
  kept where the attacker cannot rewrite it. The daemon records its head in
  its state table (defeats only edits of the audit table alone), in the file
  ``agentd.anchor`` beside the database after every commit (defeats a rollback
  of the whole database file to an older copy, which needs no key: the
  anchored head is missing from it; see agentd/store/anchor.py), logs it to
  the journal at shutdown and periodically (defeats a rewrite unless the
  journal is rewritten too; journald's sealing with ``--setup-keys`` or log
  shipping off the box make that hard), and an operator can note it down.
  Whoever can write the state directory can rewrite the anchor file too: it
  catches accidents and copies put back, not root.
- Nothing here detects rows appended after the latest anchor and then removed
  or rewritten before the next one. Anchor often enough for your needs.

Retention: when old rows are pruned, keep the (seq, hash) of the last pruned
row as the ``start`` checkpoint and verify from there.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import re
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from json.encoder import encode_basestring_ascii
from typing import Any, Final, NamedTuple

GENESIS_HASH: Final = "0" * 64
SCHEME: Final = b"agentd-audit-v1\n"

# Field name -> accepted types. None in the tuple means the field may be null.
CONTENT_FIELDS: Final[Mapping[str, tuple[type | None, ...]]] = {
    "seq": (int,),
    "ts": (str,),
    "request_id": (str,),
    "peer_uid": (int,),
    "peer_pid": (int,),
    "command": (str,),
    "session_id": (str, None),
    "outcome": (str,),
    "error_code": (str, None),
    "latency_ms": (int,),
    "model": (str, None),
    "tokens_in": (int,),
    "tokens_out": (int,),
    "owner_uid": (int, None),
}
OPTIONAL_FIELDS: Final = frozenset({"owner_uid"})  # left out of the hash when null
OUTCOMES: Final = frozenset({"ok", "error"})

_HASH_RE = re.compile(r"[0-9a-f]{64}\Z")
_TS_RE = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z\Z")

# SCHEME, prev_hash, then the canonical JSON with the keys in sorted order: what
# json.dumps writes for the content fields, as one format string (see hash_input).
_PREIMAGE: Final = (
    SCHEME.decode("ascii")
    + "%s\n"
    + '{"command":%s,"error_code":%s,"latency_ms":%d,"model":%s,"outcome":%s,'
    + '"peer_pid":%d,"peer_uid":%d,"request_id":%s,"seq":%d,"session_id":%s,'
    + '"tokens_in":%d,"tokens_out":%d,"ts":%s}'
)
# owner_uid, when set, goes between outcome and peer_pid in key order.
_PEER_PID_KEY: Final = ',"peer_pid":'
_OWNER_KEY: Final = ',"owner_uid":%d,"peer_pid":'


class MalformedRow(ValueError):
    """A row lacks a content field or holds a value of the wrong type or form."""


@dataclass(frozen=True)
class Anchor:
    """A point in the chain: a row's seq and hash. Seq 0 is the genesis."""

    seq: int
    hash: str

    @classmethod
    def of(cls, row: Mapping[str, Any]) -> Anchor:
        return cls(seq=row["seq"], hash=row["hash"])


GENESIS: Final = Anchor(seq=0, hash=GENESIS_HASH)


class Content(NamedTuple):
    """A row's content fields but ``seq``, in column order, with the schema's types."""

    ts: str
    request_id: str
    peer_uid: int
    peer_pid: int
    command: str
    session_id: str | None
    outcome: str
    error_code: str | None
    latency_ms: int
    model: str | None
    tokens_in: int
    tokens_out: int
    owner_uid: int | None = None


class Breakage(StrEnum):
    """Why verification stopped."""

    MALFORMED = "malformed row"
    CONTENT_EDITED = "content edited"
    ROW_DELETED = "row deleted"
    LINK_BROKEN = "prev_hash mismatch: a row deleted or inserted"
    REORDERED = "rows reordered"
    DUPLICATED = "seq repeated"
    ANCHOR_MISMATCH = "history rewritten before the anchor"
    TRUNCATED = "rows deleted up to the anchor"
    ROLLED_BACK = "database rolled back: older than the anchor file"


@dataclass(frozen=True)
class VerifyResult:
    """``rows_checked`` counts the rows found intact before the first break.

    ``head`` is the last intact row (``start`` if none). On a break,
    ``first_broken_seq`` names where the damage starts and ``reason``/``detail``
    say what was found. An ANCHOR_MISMATCH names the anchored seq: the rewrite
    is at or before it, and nothing in the rows themselves says where.
    """

    ok: bool
    rows_checked: int
    head: Anchor
    first_broken_seq: int | None = None
    reason: Breakage | None = None
    detail: str = ""


def format_ts(epoch_seconds: float) -> str:
    """A Unix time as the canonical ``ts``: UTC, microseconds, ``Z``.

    The same text as ``datetime.fromtimestamp(t, tz=UTC).strftime(
    "%Y-%m-%dT%H:%M:%S.%fZ")``, at a third of the cost (one per audit row).
    The microseconds are found as CPython's datetime finds them (modf, times
    1e6 in double precision, round half to even, carry into the seconds), so
    they round identically.
    """
    fraction, whole = math.modf(epoch_seconds)
    seconds, micros = int(whole), round(fraction * 1e6)
    if micros >= 1_000_000:
        seconds, micros = seconds + 1, micros - 1_000_000
    elif micros < 0:
        seconds, micros = seconds - 1, micros + 1_000_000
    return f"{_format_second(seconds)}.{micros:06d}Z"


# Rows arrive thousands a second, so most share their second with the previous row.
@functools.lru_cache(maxsize=64)
def _format_second(seconds: int) -> str:
    moment = time.gmtime(seconds)
    if not 1000 <= moment.tm_year <= 9999:
        # strftime's own rules (no padding below 1000, an error past 9999).
        return datetime.fromtimestamp(seconds, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S")
    # datetime clamps a leap second (a right/ zoneinfo) to :59; so do we.
    year, month, day, hour, minute, second = moment[:6]
    return f"{year:04d}-{month:02d}-{day:02d}T{hour:02d}:{minute:02d}:{min(59, second):02d}"


def canonical_bytes(fields: Mapping[str, Any]) -> bytes:
    """The content fields of a row, canonically serialised (see the module docstring).

    Extra keys (``prev_hash``, ``hash``, store columns) are ignored, so a whole
    row can be passed. Raises MalformedRow for a missing or ill-typed field.
    """
    content = {
        name: _checked(fields, name, types)
        for name, types in CONTENT_FIELDS.items()
        if name not in OPTIONAL_FIELDS or fields.get(name) is not None
    }
    _check_forms(content)
    text = json.dumps(
        content, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
    )
    return text.encode("ascii")


def _checked(fields: Mapping[str, Any], name: str, types: tuple[type | None, ...]) -> Any:
    if name not in fields:
        raise MalformedRow(f"missing field {name!r}")
    value = fields[name]
    if value is None and None in types:
        return value
    # bool is an int in Python but not in this schema.
    if isinstance(value, bool) or not any(t and isinstance(value, t) for t in types):
        raise MalformedRow(f"{name} has type {type(value).__name__}")
    return value


def _check_forms(content: Mapping[str, Any]) -> None:
    if not _TS_RE.match(content["ts"]):
        raise MalformedRow(f"ts {content['ts']!r} is not YYYY-MM-DDTHH:MM:SS.ffffffZ")
    if content["outcome"] not in OUTCOMES:
        raise MalformedRow(f"outcome {content['outcome']!r} is not one of {sorted(OUTCOMES)}")


def checked_hash(value: object) -> str:
    """``value`` if it is a hash (64 lower-case hex digits); else MalformedRow."""
    if not isinstance(value, str) or not _HASH_RE.match(value):
        raise MalformedRow("prev_hash is not 64 lower-case hex digits")
    return value


def compute_hash(prev_hash: str, fields: Mapping[str, Any]) -> str:
    """SHA-256 (hex) sealing a row's content fields to the previous row's hash."""
    digest = hashlib.sha256(SCHEME)
    digest.update(checked_hash(prev_hash).encode("ascii") + b"\n")
    digest.update(canonical_bytes(fields))
    return digest.hexdigest()


# Copied, not constructed, per row: hashlib.sha256() fetches the algorithm from
# OpenSSL 3 on every call, a locked lookup; copying saves 0.4-1.3 us a row (timeit).
_SHA256: Final = hashlib.sha256()


def hash_content(prev_hash: str, seq: int, content: Content) -> str:
    """``compute_hash`` for a row this process built, without its checks."""
    digest = _SHA256.copy()
    digest.update(hash_input(prev_hash, seq, content))
    return digest.hexdigest()


def hash_input(prev_hash: str, seq: int, content: Content) -> bytes:
    """The bytes ``hash_content`` hashes: the scheme, ``prev_hash``, the canonical JSON.

    ``prev_hash`` must be a hash (``checked_hash``). Strings go through the C
    escaper json.dumps uses with ensure_ascii, ints through %d: the digits
    json.dumps writes. Types are not checked, but an ill-typed value cannot
    leave a row that fails to verify for that reason: None or a non-string
    where a string belongs raises here; a bool or a float where an int belongs
    is either refused by the STRICT table or stored as the integer %d wrote.
    A malformed ``ts`` or ``outcome`` is not caught (canonical_bytes would).
    """
    escape = encode_basestring_ascii
    error_code, model, session_id = content.error_code, content.model, content.session_id
    # A format string, not an f-string: measured faster for these 14 values.
    preimage = _PREIMAGE % (
        prev_hash,
        escape(content.command),
        "null" if error_code is None else escape(error_code),
        content.latency_ms,
        "null" if model is None else escape(model),
        escape(content.outcome),
        content.peer_pid,
        content.peer_uid,
        escape(content.request_id),
        seq,
        "null" if session_id is None else escape(session_id),
        content.tokens_in,
        content.tokens_out,
        escape(content.ts),
    )
    if content.owner_uid is not None:
        # The key's first occurrence: inside an escaped string a quote is always \".
        preimage = preimage.replace(_PEER_PID_KEY, _OWNER_KEY % content.owner_uid, 1)
    return preimage.encode("ascii")


def seal(head: Anchor, fields: Mapping[str, Any]) -> dict[str, Any]:
    """The row following ``head``: ``fields`` plus seq, prev_hash and hash.

    ``fields`` holds the content fields except ``seq``, which comes from ``head``.
    """
    if "seq" in fields:
        raise ValueError("seal() numbers the row itself; do not pass seq")
    row = dict(fields, seq=head.seq + 1, prev_hash=head.hash)
    row["hash"] = compute_hash(head.hash, row)
    return row


def verify_chain(
    rows: Iterable[Mapping[str, Any]],
    *,
    start: Anchor = GENESIS,
    anchor: Anchor | None = None,
) -> VerifyResult:
    """Check rows, in the order given, from ``start`` onwards; stop at the first break.

    ``start`` is where the rows pick up: the genesis, or the last pruned row.
    ``anchor`` is a head recorded earlier outside the audit table; the chain
    must pass through it (same seq, same hash). Streams: memory does not grow
    with the number of rows. Rows are mappings with ``.get``: turn sqlite
    rows into dicts (``dict(row)``) first.
    """
    head, checked = start, 0
    remaining = iter(rows)
    for row in remaining:
        broken = _check_row(row, head, remaining)
        if broken is None:
            head, checked = Anchor.of(row), checked + 1
            broken = _check_anchor(head, anchor)
        if broken is not None:
            seq, reason, detail = broken
            return VerifyResult(False, checked, head, seq, reason, detail)
    return _check_tail(head, checked, anchor)


_Break = tuple[int, Breakage, str]


def _check_row(
    row: Mapping[str, Any], head: Anchor, remaining: Iterator[Mapping[str, Any]]
) -> _Break | None:
    expected = head.seq + 1
    try:
        recomputed = compute_hash(row.get("prev_hash", ""), row)
    except MalformedRow as exc:
        return expected, Breakage.MALFORMED, f"row after seq {head.seq}: {exc}"
    seq = row["seq"]
    if seq != expected:
        return _order_break(seq, expected, remaining)
    if recomputed != row.get("hash"):
        return seq, Breakage.CONTENT_EDITED, f"seq {seq} does not match its hash"
    if row["prev_hash"] != head.hash:
        return seq, Breakage.LINK_BROKEN, f"seq {seq} does not follow the hash of seq {head.seq}"
    return None


def _order_break(seq: int, expected: int, remaining: Iterator[Mapping[str, Any]]) -> _Break:
    if seq < expected:
        return expected, Breakage.DUPLICATED, f"seq {seq} again where {expected} was due"
    # A gap is a deletion, unless the missing row turns up later: then it moved.
    # Only seq numbers are read past this point, so memory stays flat.
    if any(_seq_of(later) == expected for later in remaining):
        return expected, Breakage.REORDERED, f"seq {seq} came before seq {expected}"
    return expected, Breakage.ROW_DELETED, f"seq {expected} is missing (next is {seq})"


def _seq_of(row: Mapping[str, Any]) -> object:
    return row.get("seq")


def _check_anchor(head: Anchor, anchor: Anchor | None) -> _Break | None:
    if anchor is None or head.seq != anchor.seq or head.hash == anchor.hash:
        return None
    return anchor.seq, Breakage.ANCHOR_MISMATCH, f"seq {anchor.seq} differs from the anchor"


def _check_tail(head: Anchor, checked: int, anchor: Anchor | None) -> VerifyResult:
    if anchor is not None and head.seq < anchor.seq:
        detail = f"the chain ends at seq {head.seq}; the anchor is at seq {anchor.seq}"
        return VerifyResult(False, checked, head, head.seq + 1, Breakage.TRUNCATED, detail)
    return VerifyResult(True, checked, head)
