"""[http]: the optional HTTP transport. No aiohttp here: config imports this."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Final

from agentd.constraints import bounded

HTTP_SOCKET_NAME: Final = "agentd-http.sock"


@dataclass(frozen=True)
class HttpSettings:
    """Serve the command layer over HTTP too, on agentd-http.sock beside the control socket."""

    enabled: bool = False  # off: aiohttp is never imported
    # Also on this loopback TCP address, with bearer tokens only (agentctl tokens); "" = not.
    listen: str = bounded("", check=lambda value: _listen_problem(value))
    max_body_bytes: int = bounded(1024 * 1024, gt=0)  # a larger request body: 413
    read_timeout_s: float = bounded(10.0, gt=0)  # a request body not read within this: 408
    # A connection idle this long, or whose request headers are not complete by then, is closed.
    keepalive_timeout_s: float = bounded(15.0, gt=0)
    max_requests_per_uid: int = bounded(64, gt=0)  # in progress at once from one uid: 503
    shutdown_timeout_s: float = bounded(2.0, ge=0)  # what is left after the drain gets this long


def loopback_address(listen: str) -> tuple[str, int]:
    """`host:port` (`[::1]:port` for IPv6) of a loopback address; ValueError otherwise."""
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{listen!r} is not host:port")
    host = host.removeprefix("[").removesuffix("]")
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        raise ValueError(f"{host!r} is not an IP address (names are not resolved)") from None
    if not loopback:
        raise ValueError(f"{host} is not a loopback address: agentd serves TCP on loopback only")
    return host, int(port)


def _listen_problem(listen: str) -> str | None:
    if not listen:
        return None
    try:
        loopback_address(listen)
    except ValueError as exc:
        return str(exc)
    return None
