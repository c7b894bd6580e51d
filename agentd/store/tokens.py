"""The `tokens` table: bearer tokens for HTTP over TCP, stored only as a hash.

A token is shown once, when made; the table keeps its SHA-256 (a token is 256
random bits, so a plain hash cannot be reversed or guessed), its name, role and
expiry. A revoked token keeps its row, so the audit trail's token ids stay
meaningful.
"""

from __future__ import annotations

import dataclasses
import hashlib
import secrets
from dataclasses import dataclass
from typing import Any, Final

from agentd.store.database import Connection, transaction

PREFIX: Final = "agentd_"
ROLES: Final = ("read", "chat", "admin")
# A token's requests run as this uid plus its id: its own sessions, rate limits and
# audit rows, apart from every real user's (uids stop at 2**32 - 2).
TOKEN_UID_BASE: Final = 4_200_000_000


def m0009_tokens(conn: Connection) -> None:
    conn.execute(
        """CREATE TABLE tokens (
            id          INTEGER PRIMARY KEY,
            name        TEXT NOT NULL UNIQUE,
            role        TEXT NOT NULL CHECK (role IN ('read', 'chat', 'admin')),
            hash        TEXT NOT NULL UNIQUE,
            created_at  REAL NOT NULL,
            created_by  INTEGER NOT NULL,
            expires_at  REAL,
            revoked_at  REAL
        )"""
    )


@dataclass(frozen=True)
class Token:
    id: int
    name: str
    role: str
    created_at: float
    created_by: int
    expires_at: float | None
    revoked_at: float | None

    @property
    def uid(self) -> int:
        return TOKEN_UID_BASE + self.id

    def usable(self, now: float) -> bool:
        return self.revoked_at is None and (self.expires_at is None or now < self.expires_at)

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "role": self.role,
            "uid": self.uid,
            "created_at": self.created_at,
            "created_by": self.created_by,
            "expires_at": self.expires_at,
            "revoked_at": self.revoked_at,
        }


_COLUMNS: Final = "id, name, role, created_at, created_by, expires_at, revoked_at"


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def create(
    conn: Connection, name: str, role: str, by_uid: int, now: float, expires_at: float | None
) -> tuple[Token, str]:
    """A new token and its secret (returned once, never stored); None if the name is taken."""
    secret = PREFIX + secrets.token_urlsafe(32)
    with transaction(conn):
        cursor = conn.execute(
            "INSERT INTO tokens (name, role, hash, created_at, created_by, expires_at)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (name, role, digest(secret), now, by_uid, expires_at),
        )
    token = Token(int(cursor.lastrowid or 0), name, role, now, by_uid, expires_at, None)
    return token, secret


def name_taken(conn: Connection, name: str) -> bool:
    return conn.execute("SELECT 1 FROM tokens WHERE name = ?", (name,)).fetchone() is not None


def listed(conn: Connection) -> list[Token]:
    rows = conn.execute(f"SELECT {_COLUMNS} FROM tokens ORDER BY id").fetchall()
    return [Token(*row) for row in rows]


def find(conn: Connection, secret: str) -> Token | None:
    """The token with this secret, usable or not (the caller checks)."""
    row = conn.execute(
        f"SELECT {_COLUMNS} FROM tokens WHERE hash = ?", (digest(secret),)
    ).fetchone()
    return None if row is None else Token(*row)


def revoke(conn: Connection, ref: str, now: float) -> Token | None:
    """Revoke the token named `ref` (or with id `ref`); None when there is none.
    A name wins over an id: revoking a token named "3" never revokes token id 3."""
    with transaction(conn):
        row = conn.execute(
            f"SELECT {_COLUMNS} FROM tokens WHERE name = ? OR CAST(id AS TEXT) = ? "
            "ORDER BY name = ? DESC LIMIT 1",
            (ref, ref, ref),
        ).fetchone()
        if row is None:
            return None
        conn.execute(
            "UPDATE tokens SET revoked_at = coalesce(revoked_at, ?) WHERE id = ?", (now, row[0])
        )
    token = Token(*row)
    return dataclasses.replace(token, revoked_at=token.revoked_at or now)
