"""Every tool call and decision leaves a trail: an audit row and a log line, metadata only.

The audit row (the chained table, agentd/audit/) names the call as its
command, `tool:<name>`, with the chat's request id, session and peer; its
error code says why a call did not run or did not succeed. The log line
adds the server, who decided, sizes and a hash of the arguments: enough to
match a call to its stored turn, never the arguments or the result.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable

from agentd.access import Peer
from agentd.audit.rows import AuditEvent
from agentd.audit.writer import AuditWriter
from agentd.tools.loop import CallRecord
from agentd.untrusted import clip

logger = logging.getLogger(__name__)

# Why a call did not run or failed: the row's error code.
_NOT_RUN = {
    "deny": "TOOL_DENIED_BY_POLICY",
    "unknown": "TOOL_UNKNOWN",
    "no": "TOOL_DENIED_BY_USER",
    "timeout": "TOOL_APPROVAL_TIMEOUT",
    "disconnected": "TOOL_PEER_GONE",
    "refused": "TOOL_NOBODY_TO_ASK",
}
_FAILED = {"error": "TOOL_ERROR", "timeout": "TOOL_TIMEOUT"}


def error_code(record: CallRecord) -> str | None:
    if record.outcome == "not_run":
        return _NOT_RUN.get(record.decision.verdict, "TOOL_DENIED")
    return _FAILED.get(record.outcome)


def arguments_digest(record: CallRecord) -> tuple[int, str]:
    """(bytes, sha256 hex) of the arguments as canonical JSON: comparable, not readable."""
    canonical = json.dumps(record.call.args, sort_keys=True, separators=(",", ":")).encode()
    return len(canonical), hashlib.sha256(canonical).hexdigest()


def recorder(
    audit: AuditWriter, request_id: str, peer: Peer, session_id: str
) -> Callable[[CallRecord], None]:
    """What the loop calls with each finished call of one chat."""

    def record(r: CallRecord) -> None:
        size, digest = arguments_digest(r)
        tool = clip(r.call.name)  # the model's choice: bounded and escaped before a log or row
        audit.record_nowait(
            AuditEvent(
                at=time.time(),
                request_id=request_id,
                peer_uid=peer.uid,
                peer_pid=peer.pid,
                command=f"tool:{tool}",
                session_id=session_id,
                error_code=error_code(r),
                latency_s=r.duration_ms / 1000,
            )
        )
        logger.info(
            "tool call %s on %s: %s by %s, %s",
            tool,
            r.decision.server or "-",
            r.decision.verdict,
            r.decision.decided_by,
            r.outcome,
            extra={
                "tool": tool,
                "server": r.decision.server,
                "decision": r.decision.verdict,
                "decided_by": r.decision.decided_by,
                "outcome": r.outcome,
                "args_bytes": size,
                "args_sha256": digest,
                "result_bytes": r.result_bytes,
                "duration_ms": r.duration_ms,
            },
        )

    return record
