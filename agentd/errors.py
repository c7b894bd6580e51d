"""The daemon's exception tree. Every wire-facing error carries its stable code.

AgentdError                      root; never escapes to the wire untranslated
├── ConfigError                  bad config, unreadable secret (exit 78)
│   └── WrongKeyError            the DB key does not open the database (exit 78)
├── RequestError                 answered to one request with error.code
│   ├── BadRequest               BAD_REQUEST
│   ├── UnknownCommand           UNKNOWN_COMMAND
│   ├── Forbidden                FORBIDDEN
│   ├── NotReady                 NOT_READY
│   ├── RateLimited              RATE_LIMITED (retry_after)
│   ├── Busy                     BUSY
│   ├── ShuttingDown             SHUTTING_DOWN
│   ├── NotFound                 NOT_FOUND
│   ├── SecretRefused            SECRET_REFUSED (the prompt holds a credential the policy refuses)
│   └── BudgetExceeded           BUDGET_EXCEEDED (a daily token or cost cap is used up)
├── StoreError                   SQLCipher failed (disk full, read-only, corrupt)
│   ├── DiskFull                 DISK_FULL: also a RequestError
│   └── StoreUnavailable         STORE_UNAVAILABLE: the files were deleted or
│                                replaced under us; also a RequestError
├── AlreadyRunning               a live daemon owns the socket or the state directory
└── MaintenanceError             a backup, restore or rekey cannot go on: a path others
                                 could write, a file in the way, a key that does not open
                                 a backup, a damaged backup (agentd/maintenance/)

DiskFull and StoreUnavailable are both a StoreError (the store's callers
retry or report them as store failures) and a RequestError (a request they
end is answered with their own code, not INTERNAL).
"""

from __future__ import annotations

from typing import Any

from agentd.protocol import ErrorCode


class AgentdError(Exception):
    """Root of everything agentd raises on purpose."""


class ConfigError(AgentdError):
    """Start-up cannot go on and a restart will not help (EX_CONFIG)."""


class WrongKeyError(ConfigError):
    """The database key does not open the database."""


class StoreError(AgentdError):
    """The encrypted store failed to read or write."""


class AlreadyRunning(AgentdError):
    """Another live daemon answers on the socket or holds the state directory."""


class MaintenanceError(AgentdError):
    """A backup, restore or rekey refused or failed; nothing was replaced or lost."""


class RequestError(AgentdError):
    """An error answered to one request; the connection and the daemon go on."""

    code = ErrorCode.INTERNAL

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details


class BadRequest(RequestError):
    code = ErrorCode.BAD_REQUEST


class UnknownCommand(RequestError):
    code = ErrorCode.UNKNOWN_COMMAND


class Forbidden(RequestError):
    code = ErrorCode.FORBIDDEN


class NotReady(RequestError):
    code = ErrorCode.NOT_READY


class RateLimited(RequestError):
    code = ErrorCode.RATE_LIMITED

    def __init__(self, message: str, *, retry_after: float) -> None:
        super().__init__(message, retry_after=round(retry_after, 3))


class Busy(RequestError):
    code = ErrorCode.BUSY


class ShuttingDown(RequestError):
    code = ErrorCode.SHUTTING_DOWN


class NotFound(RequestError):
    code = ErrorCode.NOT_FOUND


class DiskFull(StoreError, RequestError):
    code = ErrorCode.DISK_FULL


class StoreUnavailable(StoreError, RequestError):
    code = ErrorCode.STORE_UNAVAILABLE


class SecretRefused(RequestError):
    code = ErrorCode.SECRET_REFUSED


class BudgetExceeded(RequestError):
    code = ErrorCode.BUDGET_EXCEEDED
