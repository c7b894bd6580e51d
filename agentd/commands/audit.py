"""audit, audit_verify: the hash-chained record of every request (admin only)."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from typing import Any, Final

from agentd.access import Role
from agentd.audit import rows as audit
from agentd.audit.chain import OUTCOMES, Anchor
from agentd.audit.verify import Verification, remember_verified, verify
from agentd.commands import Audit, Call, CommandSet
from agentd.commands.args import epoch_or_none, optional, optional_or_none
from agentd.errors import BadRequest, StoreError
from agentd.governance.store import findings_for
from agentd.runtime import Runtime
from agentd.store import messages, sessions
from agentd.store.database import Connection

SPECS = CommandSet()
command = SPECS.command

MAX_ROWS: Final = 10_000
FLUSH_TIMEOUT_S: Final = 5.0


@command(
    "audit",
    role=Role.ADMIN,
    args=("limit", "command", "outcome", "session", "request_id", "since"),
    audit=Audit.READ,
    when_not_ready=True,
)
async def audit_list(runtime: Runtime, call: Call) -> dict[str, Any]:
    """Recent rows, newest first, with filters."""
    query = await _query(runtime, call.args, call.peer.uid)
    await _flush(runtime)
    rows = await runtime.db.run(_rows_with_answers, query)
    secrets = await runtime.db.run(findings_for, [r["request_id"] for r in rows])
    for row in rows:
        row["secrets"] = secrets.get(row["request_id"], [])  # kinds and counts, never values
    return {"rows": rows}


def _rows_with_answers(conn: Connection, query: audit.AuditQuery) -> list[dict[str, Any]]:
    """Audit rows, each chat's with `answer`: how its exchange ended as stored
    (complete, degraded, blocked, interrupted...). The row's own outcome only says
    the request was answered; a placeholder answer is `ok` there too."""
    rows = audit.recent(conn, query)
    chats = [(r["session_id"], r["request_id"]) for r in rows if _is_chat(r)]
    statuses = messages.exchange_statuses(conn, chats) if chats else {}
    for row in rows:
        row["answer"] = statuses.get(row["request_id"]) if _is_chat(row) else None
    return rows


def _is_chat(row: dict[str, Any]) -> bool:
    return row["command"] == "chat" and row["session_id"] is not None


async def _query(runtime: Runtime, args: dict[str, Any], uid: int) -> audit.AuditQuery:
    limit = optional(args, "limit", int, 50)
    if not 1 <= limit <= MAX_ROWS:
        raise BadRequest(f"argument 'limit' must be between 1 and {MAX_ROWS}")
    outcome = optional_or_none(args, "outcome", str)
    if outcome is not None and outcome not in OUTCOMES:
        raise BadRequest(f"argument 'outcome' must be one of {', '.join(sorted(OUTCOMES))}")
    session = optional_or_none(args, "session", str)
    if session is not None:
        found = await runtime.db.run(sessions.find, session, sessions.Owner(uid, any_by_id=True))
        session = found.id if found is not None else session  # a name, or an id since deleted
    return audit.AuditQuery(
        command=optional_or_none(args, "command", str),
        outcome=outcome,
        session_id=session,
        request_id=optional_or_none(args, "request_id", str),
        since=epoch_or_none(args, "since"),
        limit=limit,
    )


@command("audit_verify", role=Role.ADMIN, args=("full",), audit=Audit.ADMIN, when_not_ready=True)
async def audit_verify(runtime: Runtime, call: Call) -> dict[str, Any]:
    """Check the chain after the last verified row (all of it with `full`) and the
    anchor file; names the first broken row or the gap. Runs on a reader thread of
    its own, so chats are answered meanwhile."""
    full = optional(call.args, "full", bool, False)
    await _flush(runtime)
    abandoned = threading.Event()
    try:
        verdict = await runtime.db.run_reader(verify, runtime.audit.anchored(), full, abandoned)
        if verdict.result.ok:
            await runtime.db.run(remember_verified, verdict.result.head)
    except asyncio.CancelledError:
        abandoned.set()  # the reader thread stops at its next batch, not after a million rows
        raise
    except StoreError as exc:
        # A page that fails its HMAC is damage too: report it, do not fail the request.
        return {
            "ok": False,
            "full": full,
            "rows_checked": 0,
            "first_broken_seq": None,
            "reason": "unreadable",
            "detail": str(exc),
            "head": None,
            "anchor": None,
            "start": None,
            "checkpoint": None,
        }
    return _verdict(verdict)


def _verdict(verdict: Verification) -> dict[str, Any]:
    result = verdict.result
    return {
        "ok": result.ok,
        "full": verdict.full,
        "rows_checked": result.rows_checked,
        "first_broken_seq": result.first_broken_seq,
        "reason": str(result.reason) if result.reason is not None else None,
        "detail": result.detail,
        "head": _point(result.head),
        "anchor": _point(verdict.anchor),
        "start": _point(verdict.start),
        "checkpoint": _point(verdict.checkpoint),
    }


def _point(anchor: Anchor | None) -> dict[str, Any] | None:
    return {"seq": anchor.seq, "hash": anchor.hash} if anchor is not None else None


async def _flush(runtime: Runtime) -> None:
    """Rows of earlier requests are still queued for the writer: include them."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(FLUSH_TIMEOUT_S):
            await runtime.audit.flush()
