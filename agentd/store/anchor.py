"""The audit head anchored outside the database: `agentd.anchor` in the state directory.

An older copy of the database put back in place (no key needed: it is a file
copy) carries an intact hash chain, so the chain alone cannot tell. The file
remembers the head the audit writer last committed; at start-up the
database's chain must reach it, and `audit verify` reports when it did not.

The file is one fixed-size record (JSON padded with spaces), 0600, opened
with O_NOFOLLOW, rewritten in place after every audit commit and fdatasync'd
(~0.2 ms) on the store thread, after the database's own commit: the anchor
can lag the database after a crash (safe: the chain still passes through
it), never lead it::

    {"v": 1, "seq": 42, "hash": "<64 hex>", "accepted": null}

`accepted` records a rollback the operator let through (`agentd
--accept-rollback`): {"db_seq": H, "anchor_seq": S} means audit rows after H
up to S were lost. It is kept in every later write, so `audit verify` keeps
naming the gap until a deliberate restore moves the anchor (`move_anchor`).

Audit retention (agentd/audit/retention.py) never prunes the head row, so the
anchored row is always in the table, or, for an older anchor, at or before
the checkpoint, where `rows.anchor_holds` accepts it.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from agentd.audit.chain import Anchor, MalformedRow, checked_hash
from agentd.errors import ConfigError
from agentd.privatefile import open_private

logger = logging.getLogger(__name__)

ANCHOR_NAME: Final = "agentd.anchor"
RECORD_BYTES: Final = 256  # ints of 19 digits and a 64-digit hash fit with room to spare
VERSION: Final = 1


@dataclass(frozen=True)
class Gap:
    """Audit rows after `db_seq` up to `anchor_seq` were committed once and are not in
    the database any more (`db_seq` == `anchor_seq`: the row there is another row)."""

    db_seq: int
    anchor_seq: int

    def describe(self) -> str:
        if self.db_seq >= self.anchor_seq:
            return (
                f"the database's audit row {self.anchor_seq} is not the one anchored: "
                "another or a rewritten database"
            )
        return (
            f"the database ends at audit seq {self.db_seq}, but rows up to seq "
            f"{self.anchor_seq} had been committed ({self.anchor_seq - self.db_seq} missing): "
            "an older copy of the database, or writes lost"
        )


@dataclass(frozen=True)
class AnchorRecord:
    head: Anchor
    accepted: Gap | None = None


class AnchorFile:
    """`open()` reads the record; `write()` on the store thread; `close()` at shutdown."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None
        self.record: AnchorRecord | None = None  # the latest written (or read) record
        self._failing = False

    def open(self) -> AnchorRecord | None:
        """Open (creating it 0600) and read the record; None when there is none yet."""
        self._fd = open_private(self.path, "the audit anchor")
        self.record = _parse(os.pread(self._fd, RECORD_BYTES * 2, 0), self.path)
        return self.record

    def write(self, head: Anchor) -> None:
        """Record `head`, keeping an accepted gap. On the store thread, after the commit.

        A failed write leaves the older anchor in place, which is safe (it only
        lags): the commit before it stands, so this logs instead of raising.
        """
        accepted = self.record.accepted if self.record is not None else None
        self._put(AnchorRecord(head, accepted))

    def accept(self, head: Anchor, gap: Gap) -> None:
        """The operator let a rollback through: anchor at `head`, remember the first gap."""
        accepted = self.record.accepted if self.record and self.record.accepted else gap
        self._put(AnchorRecord(head, accepted))

    def move(self, head: Anchor) -> None:
        """A deliberate move (a restore from a backup): anchor at `head`, no gap."""
        self._put(AnchorRecord(head, None))

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # every write was fdatasync'd already
            self._fd = None

    def _put(self, record: AnchorRecord) -> None:
        if self._fd is None:
            raise RuntimeError("the anchor file is not open")
        try:
            os.pwrite(self._fd, _encode(record), 0)
            os.fdatasync(self._fd)
        except OSError as exc:
            if not self._failing:
                logger.error("cannot write the audit anchor %s: %s", self.path, exc.strerror)
            self._failing = True
            return
        self._failing = False
        self.record = record


def move_anchor(state_dir: Path, head: Anchor) -> None:
    """Point the anchor at `head` on purpose (after restoring a backup), clearing any gap."""
    anchor = AnchorFile(state_dir / ANCHOR_NAME)
    anchor.open()
    try:
        anchor.move(head)
    finally:
        anchor.close()


def refuse_missing_database(database: Path, recorded: AnchorRecord | None, *, accept: bool) -> None:
    """A database existed (the anchor says so) and is gone: never start afresh silently."""
    if recorded is None or database.exists():
        return
    if accept:
        logger.warning(
            "%s is missing; starting a new, empty database as told (--accept-rollback); "
            "audit rows up to seq %d are lost",
            database,
            recorded.head.seq,
        )
        return
    raise ConfigError(
        f"{database} is missing, but {ANCHOR_NAME} records a database with audit rows up to "
        f"seq {recorded.head.seq}: restore it, or start with --accept-rollback to begin anew"
    )


def _encode(record: AnchorRecord) -> bytes:
    gap = record.accepted
    fields: dict[str, Any] = {
        "v": VERSION,
        "seq": record.head.seq,
        "hash": record.head.hash,
        "accepted": None if gap is None else {"db_seq": gap.db_seq, "anchor_seq": gap.anchor_seq},
    }
    text = json.dumps(fields, sort_keys=True).encode("ascii")
    return text.ljust(RECORD_BYTES - 1) + b"\n"  # same size each time: an in-place overwrite


def _parse(data: bytes, path: Path) -> AnchorRecord | None:
    """The record, or None for an empty file (created, never written)."""
    if not data.strip():
        return None
    try:
        fields = json.loads(data)
        head = Anchor(seq=_seq(fields["seq"]), hash=checked_hash(fields["hash"]))
        gap = fields.get("accepted")
        accepted = None if gap is None else Gap(_seq(gap["db_seq"]), _seq(gap["anchor_seq"]))
    except (ValueError, KeyError, TypeError, MalformedRow) as exc:
        raise ConfigError(
            f"{path} is not an audit anchor ({exc.__class__.__name__}); move it aside "
            "to start without the rollback check"
        ) from None
    return AnchorRecord(head, accepted)


def _seq(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError("seq is not a non-negative integer")
    return value
