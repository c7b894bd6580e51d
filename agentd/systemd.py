"""Talking to systemd with the standard library: sd_notify, watchdog, socket activation.

Every function is a no-op when systemd did not ask for it (no NOTIFY_SOCKET,
no WATCHDOG_USEC, no LISTEN_FDS), so the daemon runs the same by hand.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Mapping, MutableMapping
from typing import Final

logger = logging.getLogger(__name__)

SD_LISTEN_FDS_START: Final = 3


class Notifier:
    """Sends sd_notify datagrams to $NOTIFY_SOCKET."""

    def __init__(self, address: str | None) -> None:
        if address and address.startswith("@"):
            address = "\0" + address[1:]  # abstract namespace
        self._address = address
        self._sock: socket.socket | None = None

    @property
    def enabled(self) -> bool:
        return bool(self._address)

    def send(self, *fields: str) -> None:
        if not self._address:
            return
        if self._sock is None:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        try:
            self._sock.sendto("\n".join(fields).encode(), self._address)
        except OSError as exc:
            # systemd gone or restarting: not a reason to fail the daemon.
            logger.warning("sd_notify failed: %s", exc)

    def ready(self, status: str) -> None:
        self.send("READY=1", f"STATUS={status}", f"MAINPID={os.getpid()}")

    def status(self, status: str) -> None:
        self.send(f"STATUS={status}")

    def stopping(self) -> None:
        self.send("STOPPING=1", "STATUS=STOPPING")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def watchdog_interval(environ: Mapping[str, str]) -> float | None:
    """Half of WATCHDOG_USEC in seconds, when the watchdog is meant for us."""
    usec = environ.get("WATCHDOG_USEC")
    pid = environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        return int(usec) / 2 / 1_000_000
    except ValueError:
        return None


async def run_watchdog(notifier: Notifier, interval: float) -> None:
    """Ping from the event loop itself, so a stuck loop stops the pings and gets killed."""
    while True:
        notifier.send("WATCHDOG=1")
        await asyncio.sleep(interval)


def adopt_listen_socket(environ: MutableMapping[str, str]) -> socket.socket | None:
    """Take the first socket passed by socket activation, if it was passed to us."""
    if environ.get("LISTEN_PID") != str(os.getpid()):
        return None
    try:
        count = int(environ.get("LISTEN_FDS", "0"))
    except ValueError:
        return None
    for name in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        environ.pop(name, None)  # not inherited by anything we spawn
    if count < 1:
        return None
    sock = socket.socket(fileno=SD_LISTEN_FDS_START)
    os.set_inheritable(sock.fileno(), False)
    sock.setblocking(False)
    for extra in range(SD_LISTEN_FDS_START + 1, SD_LISTEN_FDS_START + count):
        os.close(extra)
    return sock


def stderr_is_journal(environ: Mapping[str, str]) -> bool:
    """True when stderr is connected to journald (JOURNAL_STREAM=dev:inode matches fd 2)."""
    stream = environ.get("JOURNAL_STREAM")
    if not stream:
        return False
    try:
        device, inode = (int(part) for part in stream.split(":", 1))
        stat = os.fstat(2)
    except (ValueError, OSError):
        return False
    return stat.st_dev == device and stat.st_ino == inode
