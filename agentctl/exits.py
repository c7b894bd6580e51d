"""agentctl's exit statuses: the contract scripts rely on (docs/cli.md)."""

from __future__ import annotations

from typing import Final

OK: Final = 0
FAILED: Final = 1
USAGE: Final = 2
NOT_RUNNING: Final = 3
RETRY_LATER: Final = 4  # rate limited, busy, or a daily budget used up
DEGRADED: Final = 5  # answered, but by the fallback, not the model
PERMISSION: Final = 6

BY_ERROR_CODE: Final = {
    "RATE_LIMITED": RETRY_LATER,
    "BUSY": RETRY_LATER,
    "FORBIDDEN": PERMISSION,
    "UNAUTHENTICATED": PERMISSION,  # HTTP only; named for completeness
    "BAD_REQUEST": USAGE,
    "UNKNOWN_COMMAND": USAGE,
    "FRAME_TOO_LARGE": USAGE,  # a request too large to send, e.g. a prompt from stdin
    "NOT_READY": RETRY_LATER,
    "SHUTTING_DOWN": NOT_RUNNING,
    "DISK_FULL": FAILED,  # named for the reader: a lasting condition, not "retry later"
    "STORE_UNAVAILABLE": FAILED,
    "BUDGET_EXCEEDED": RETRY_LATER,
    "SECRET_REFUSED": FAILED,
}


def for_error_code(code: str) -> int:
    return BY_ERROR_CODE.get(code, FAILED)
