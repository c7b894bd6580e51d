"""Connection limits per uid, and the slots kept for admins, against real peers under
other uids (setpriv), as root."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from agentd.limits import ConnectionSlots
from tests.conftest import DaemonProcess, wait_until
from tests.members import needs_root, peer_env, run_peer, start_member_daemon
from tests.peer import peer_argv
from tests.test_access import GROUP, OUTSIDER, as_user

OTHER = "daemon"  # a second member of the group, with a uid of its own


@contextmanager
def holding(d: DaemonProcess, user: str, count: int) -> Iterator[list[dict[str, Any]]]:
    """`user` opens `count` connections and holds them; yields how each was answered."""
    peer = subprocess.Popen(
        peer_argv(user, GROUP, d.socket, "hold", str(count)),
        env=peer_env(d),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    assert peer.stdin is not None and peer.stdout is not None
    try:
        line = peer.stdout.readline()
        assert line, f"the peer exited {peer.wait(10)} without an answer"
        yield json.loads(line)
    finally:
        peer.stdin.close()  # the peer lets its connections go and exits
        peer.wait(30)


def churn(d: DaemonProcess, user: str, count: int) -> list[dict[str, Any]]:
    outcomes: list[dict[str, Any]] = run_peer(d, user, "churn", str(count))
    return outcomes


def codes(outcomes: list[dict[str, Any]]) -> list[str]:
    return [o["code"] for o in outcomes]


@pytest.fixture
def limited_daemon(make_daemon: Callable[..., DaemonProcess]) -> Callable[..., DaemonProcess]:
    """A daemon open to the group `users`, with the given connection limits."""

    def start(**limits: int) -> DaemonProcess:
        env = {f"AGENTD_DAEMON__{key.upper()}": str(value) for key, value in limits.items()}
        return start_member_daemon(make_daemon, env)

    return start


@needs_root
def test_a_user_past_its_connection_limit_is_refused_busy_naming_the_limit(
    limited_daemon: Callable[..., DaemonProcess],
) -> None:
    d = limited_daemon(max_connections_per_uid=3)
    with holding(d, OUTSIDER, 4) as outcomes:
        assert codes(outcomes) == ["ok", "ok", "ok", "BUSY"]
        assert "max_connections_per_uid = 3" in outcomes[3]["message"]
        # Another user is not held to the first one's count.
        assert as_user(d, OTHER, GROUP, "status").returncode == 0
        assert d.agentctl("status").returncode == 0


@needs_root
def test_refused_connections_are_counted_in_metrics_by_limit(
    limited_daemon: Callable[..., DaemonProcess],
) -> None:
    d = limited_daemon(max_connections_per_uid=1)
    with holding(d, OUTSIDER, 3) as outcomes:
        assert codes(outcomes) == ["ok", "BUSY", "BUSY"]
    text = d.agentctl("metrics", "--prometheus").stdout.decode()
    assert 'agentd_connections_refused_total{limit="max_connections_per_uid"} 2.0' in text.split(
        "\n"
    )


@needs_root
def test_root_can_still_stop_while_a_member_holds_every_slot_it_may(
    limited_daemon: Callable[..., DaemonProcess],
) -> None:
    """1. max_connections 6, the last 2 for admins: a member gets 4, the 5th is refused.
    2. Root's status and stop still get in, through the reserve."""
    d = limited_daemon(max_connections=6, admin_reserved_connections=2)
    with holding(d, OUTSIDER, 5) as outcomes:
        assert codes(outcomes) == ["ok"] * 4 + ["BUSY"]
        assert "reserved for admins" in outcomes[4]["message"]
        other = as_user(d, OTHER, GROUP, "status")
        assert other.returncode == 4  # BUSY: retry later
        assert b"reserved for admins" in other.stderr
        assert d.agentctl("status").returncode == 0
        stop = d.agentctl("stop")
        assert stop.returncode == 0, stop.stderr
        assert d.wait_exit() == 0


@needs_root
def test_every_way_a_connection_ends_gives_its_slot_back(
    limited_daemon: Callable[..., DaemonProcess],
) -> None:
    """Hang-ups, frames too large and end-of-file, many times the limit: none leaks a slot."""
    d = limited_daemon(max_connections_per_uid=2)
    assert "BUSY" not in codes(churn(d, OUTSIDER, 30))
    with holding(d, OUTSIDER, 3) as outcomes:
        assert codes(outcomes) == ["ok", "ok", "BUSY"]
    with holding(d, OUTSIDER, 2) as outcomes:  # the held ones went back on exit
        assert codes(outcomes) == ["ok", "ok"]


@needs_root
def test_a_connection_cut_for_idleness_gives_its_slot_back(
    limited_daemon: Callable[..., DaemonProcess],
) -> None:
    d = limited_daemon(max_connections_per_uid=1, idle_timeout_s=1)
    with holding(d, OUTSIDER, 2) as outcomes:
        assert codes(outcomes) == ["ok", "BUSY"]
        # The held connection stays silent: once the daemon cuts it, the slot is free,
        # while the peer still holds its end open.
        wait_until(
            lambda: as_user(d, OUTSIDER, GROUP, "status").returncode == 0,
            15,
            "the idle connection's slot to come back",
        )


# The slot arithmetic itself, in process.


def acquire(slots: ConnectionSlots[int], key: int, times: int, admin: bool) -> list[str | None]:
    return [slots.try_acquire(key, lambda: admin) for _ in range(times)]


def test_slots_refuse_a_key_at_its_limit_but_not_others() -> None:
    slots = ConnectionSlots[int](capacity=10, per_key=2, reserved=0)
    assert acquire(slots, 7, 3, admin=False) == [None, None, ConnectionSlots.PER_KEY]
    assert acquire(slots, 8, 1, admin=False) == [None]


def test_the_reserve_is_for_privileged_peers_only() -> None:
    slots = ConnectionSlots[int](capacity=4, per_key=10, reserved=2)
    assert acquire(slots, 7, 3, admin=False) == [None, None, ConnectionSlots.RESERVED]
    assert acquire(slots, 0, 3, admin=True) == [None, None, ConnectionSlots.FULL]


def test_a_released_slot_can_be_taken_again_and_empty_keys_are_forgotten() -> None:
    slots = ConnectionSlots[int](capacity=4, per_key=1, reserved=0)
    assert slots.try_acquire(7, lambda: False) is None
    slots.release(7)
    assert slots.statistics().keys == 0
    assert slots.try_acquire(7, lambda: False) is None
    assert slots.statistics().in_use == 1


def test_privilege_is_only_asked_when_a_limit_is_reached() -> None:
    asked: list[int] = []

    def privileged() -> bool:
        asked.append(7)
        return False

    slots = ConnectionSlots[int](capacity=4, per_key=4, reserved=1)
    assert [slots.try_acquire(7, privileged) for _ in range(4)][-1] == ConnectionSlots.RESERVED
    assert asked == [7]  # only for the fourth
