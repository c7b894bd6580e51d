"""A logging handler speaking journald's native protocol (standard library only).

Used when JOURNAL_STREAM says stderr goes to journald: each record becomes one
journal entry whose fields (REQUEST_ID, SESSION_ID, PEER_UID, STATE, LOGGER...)
can be filtered on, e.g. `journalctl -u agentd REQUEST_ID=r-42`.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import re
import socket
import struct
from typing import Final

JOURNAL_SOCKET: Final = "/run/systemd/journal/socket"
IDENTIFIER: Final = "agentd"
_FIELD_NAME: Final = re.compile(r"[^A-Z0-9_]")
_STANDARD_ATTRS: Final = frozenset(vars(logging.makeLogRecord({})).keys()) | {"message", "asctime"}
_PRIORITY: Final = {
    logging.CRITICAL: 2,
    logging.ERROR: 3,
    logging.WARNING: 4,
    logging.INFO: 6,
    logging.DEBUG: 7,
}


class JournalHandler(logging.Handler):
    def __init__(self, address: str = JOURNAL_SOCKET) -> None:
        super().__init__()
        self._address = address
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self._send(encode_entry(record))
        except Exception:
            self.handleError(record)

    def _send(self, payload: bytes) -> None:
        try:
            self._sock.sendto(payload, self._address)
        except OSError as exc:
            if exc.errno not in (errno.EMSGSIZE, errno.ENOBUFS):
                raise
            self._send_via_memfd(payload)

    def _send_via_memfd(self, payload: bytes) -> None:
        # Entries larger than a datagram travel as a sealed memfd (journald's rule).
        fd = os.memfd_create("journal-entry", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        try:
            os.write(fd, payload)
            seals = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE | fcntl.F_SEAL_SEAL
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, seals)
            rights = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack("i", fd))]
            self._sock.sendmsg([], rights, 0, self._address)
        finally:
            os.close(fd)

    def close(self) -> None:
        self._sock.close()
        super().close()


def encode_entry(record: logging.LogRecord) -> bytes:
    fields: dict[str, str] = {
        "MESSAGE": record.getMessage(),
        "PRIORITY": str(_PRIORITY.get(record.levelno, 6)),
        "SYSLOG_IDENTIFIER": IDENTIFIER,
        "LOGGER": record.name,
        "LEVEL": record.levelname,
        "CODE_FILE": record.pathname,
        "CODE_LINE": str(record.lineno),
        "CODE_FUNC": record.funcName,
    }
    if record.exc_info and record.exc_info[0] is not None:
        fields["MESSAGE"] += "\n" + logging.Formatter().formatException(record.exc_info)
    for name, value in vars(record).items():
        if name not in _STANDARD_ATTRS and value is not None:
            fields[_field_name(name)] = str(value)
    return b"".join(_encode_field(k, v) for k, v in fields.items())


def _field_name(name: str) -> str:
    cleaned = _FIELD_NAME.sub("_", name.upper()).lstrip("_")
    return cleaned or "FIELD"


def _encode_field(name: str, value: str) -> bytes:
    data = value.encode("utf-8", "replace")
    # The binary-safe form: NAME\n<u64 LE length><data>\n (works for newlines too).
    return name.encode() + b"\n" + struct.pack("<Q", len(data)) + data + b"\n"
