"""Peer authorisation: who is on the other end of the socket, and what they may do.

Roles nest: admin ⊃ chat ⊃ read.
    read   status, health, metrics, logs, ping
    chat   chat, sessions, history: of the peer's own sessions only (ownership.py)
    admin  stop, audit, other users' sessions

Defaults: root and the daemon's own user are admin; members of the socket's
group (daemon.socket_group) may chat. Anyone else is refused with FORBIDDEN.
Every decision uses SO_PEERCRED, read by the kernel, never what a client says.

Two gates, both needed: the filesystem lets a peer connect (the socket is 0660
to daemon.socket_group), then its role decides what it may do. With
access.socket_group_role = "none" the socket group only opens the door and
read_groups/chat_groups/admin_groups give the roles: a monitoring user in the
socket group and a read group reads status and metrics and nothing else
(docs/security.md).
"""

from __future__ import annotations

import enum
import grp
import os
import pwd
import socket
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache

_UCRED = struct.Struct("3i")


class Role(enum.IntEnum):
    NONE = 0
    READ = 1
    CHAT = 2
    ADMIN = 3


@dataclass(frozen=True)
class Peer:
    pid: int
    uid: int
    gid: int
    role: Role | None = None  # an HTTP bearer token's role; None: from uid and groups


def peer_credentials(sock: socket.socket) -> Peer:
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
    pid, uid, gid = _UCRED.unpack(raw)
    return Peer(pid=pid, uid=uid, gid=gid)


@dataclass(frozen=True)
class AccessPolicy:
    admin_uids: frozenset[int]
    admin_gids: frozenset[int]
    chat_gids: frozenset[int]
    read_gids: frozenset[int]

    def role_of(self, peer: Peer) -> Role:
        if peer.role is not None:
            return peer.role
        if peer.uid in self.admin_uids:
            return Role.ADMIN
        groups = groups_of(peer.uid, peer.gid)
        if groups & self.admin_gids:
            return Role.ADMIN
        if groups & self.chat_gids:
            return Role.CHAT
        if groups & self.read_gids:
            return Role.READ
        return Role.NONE


def build_policy(
    *,
    admin_users: Iterable[str],
    admin_groups: Iterable[str],
    chat_groups: Iterable[str],
    read_groups: Iterable[str],
    socket_group: str,
    socket_group_role: str = "chat",
) -> AccessPolicy:
    """Resolve names to ids once, at start-up; an unknown name is a config error."""
    chat = {resolve_gid(g) for g in chat_groups}
    read = {resolve_gid(g) for g in read_groups}
    if socket_group and socket_group_role != "none":
        (chat if socket_group_role == "chat" else read).add(resolve_gid(socket_group))
    return AccessPolicy(
        admin_uids=frozenset({0, os.getuid(), *(resolve_uid(u) for u in admin_users)}),
        admin_gids=frozenset(resolve_gid(g) for g in admin_groups),
        chat_gids=frozenset(chat),
        read_gids=frozenset(read),
    )


def resolve_uid(user: str) -> int:
    if user.isdigit():
        return int(user)
    try:
        return pwd.getpwnam(user).pw_uid
    except KeyError:
        raise LookupError(f"unknown user {user!r}") from None


def resolve_gid(group: str) -> int:
    if group.isdigit():
        return int(group)
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        raise LookupError(f"unknown group {group!r}") from None


@lru_cache(maxsize=256)
def groups_of(uid: int, gid: int) -> frozenset[int]:
    """The peer's primary group plus its supplementary groups from the user database."""
    try:
        name = pwd.getpwuid(uid).pw_name
    except KeyError:
        return frozenset({gid})
    return frozenset(os.getgrouplist(name, gid))
