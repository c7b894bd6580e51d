"""[http]: the optional HTTP transport. No aiohttp here: config imports this."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from agentd.constraints import bounded

HTTP_SOCKET_NAME: Final = "agentd-http.sock"


@dataclass(frozen=True)
class HttpSettings:
    """Serve the command layer over HTTP too, on agentd-http.sock beside the control socket."""

    enabled: bool = False  # off: aiohttp is never imported
    max_body_bytes: int = bounded(1024 * 1024, gt=0)  # a larger request body: 413
    read_timeout_s: float = bounded(10.0, gt=0)  # a request body not read within this: 408
    keepalive_timeout_s: float = bounded(75.0, gt=0)  # an idle keep-alive connection is closed
    max_requests_per_uid: int = bounded(64, gt=0)  # in progress at once from one uid: 503
    shutdown_timeout_s: float = bounded(2.0, ge=0)  # what is left after the drain gets this long
