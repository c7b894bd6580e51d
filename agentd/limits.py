"""Admission control: token buckets, per-peer budgets, log throttling, the chat queue,
connection slots.

Request path, in order::

    RateLimiter.try_acquire(uid, session_id, command_class)   -> retry_after, 0.0 = go
        ├─ per uid, per class       KeyedBuckets[(class, uid)]
        └─ per session, per class   KeyedBuckets[(class, uid, session_id)]
    AdmissionQueue.admit()          chat only: max concurrent provider calls,
                                    bounded wait queue, QueueFull (BUSY) when full

``ConnectionSlots`` bounds connections in total and per peer uid, keeping the
last few slots for admins (see its docstring).

``Throttle`` keeps a flood (of refused requests, of one repeating error) from
flooding the log.

Time is an injected monotonic clock (``Callable[[], float]``) so tests drive a
fake one and never sleep. Not thread-safe, by design: everything here runs on
the daemon's single asyncio loop.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Callable, Hashable, Iterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from itertools import islice
from typing import Final, Generic, TypeAlias, TypeVar

from agentd.errors import Busy

Clock: TypeAlias = Callable[[], float]
K = TypeVar("K", bound=Hashable)

# Float tolerance when comparing tokens: after waiting exactly the retry_after
# we returned, refill arithmetic can land a hair below the whole token
# (0.9999999999999 instead of 1.0); the caller must then be admitted.
_EPSILON = 1e-9
# How many of the least recently used buckets eviction looks at for a full one.
_EVICTION_SCAN = 16


def _check_budget(rate: float, burst: float) -> None:
    if rate <= 0 or burst <= 0:
        raise ValueError(f"rate and burst must be positive, got {rate}, {burst}")


class TokenBucket:
    """``rate`` tokens per second, holding at most ``burst``; starts full."""

    def __init__(self, rate: float, burst: float, clock: Clock) -> None:
        _check_budget(rate, burst)
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._tokens = burst
        self._updated = clock()

    def try_acquire(self, n: float = 1.0) -> float:
        """Take ``n`` tokens and return 0.0, or take none and return the seconds to wait."""
        wait = self.retry_after(n)
        if wait == 0.0:
            self._tokens = max(0.0, self._tokens - n)
        return wait

    def retry_after(self, n: float = 1.0) -> float:
        """Seconds until ``n`` tokens are available (0.0: now), without taking any."""
        if n > self.burst:
            raise ValueError(f"{n} tokens can never fit a bucket of {self.burst}")
        missing = n - self.available()
        return 0.0 if missing <= _EPSILON else missing / self.rate

    def available(self) -> float:
        self._refill()
        return self._tokens

    def is_full(self) -> bool:
        """A full bucket is the same as a new one, so forgetting it loses nothing."""
        return self.available() >= self.burst - _EPSILON

    def _refill(self) -> None:
        now = self._clock()
        elapsed = max(0.0, now - self._updated)
        self._tokens = min(self.burst, self._tokens + elapsed * self.rate)
        self._updated = now


class KeyedBuckets(Generic[K]):
    """One TokenBucket per key (a peer uid, a session), in bounded memory.

    At most ``max_keys`` buckets are kept. When a new key would pass the cap,
    a full bucket among the least recently used goes first (it equals a fresh
    bucket, so nothing is lost); if none of those is full, the least recently
    used bucket goes, which at worst hands that key a fresh burst. Only a few
    buckets are looked at, so a flood of new keys costs O(1) each; ``prune()``
    sweeps every full bucket, for periodic housekeeping.
    """

    def __init__(self, rate: float, burst: float, clock: Clock, *, max_keys: int = 10_000) -> None:
        if max_keys < 1:
            raise ValueError(f"max_keys must be at least 1, got {max_keys}")
        _check_budget(rate, burst)
        self.rate = rate
        self.burst = burst
        self.max_keys = max_keys
        self._clock = clock
        self._buckets: OrderedDict[K, TokenBucket] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def __contains__(self, key: object) -> bool:
        return key in self._buckets

    def try_acquire(self, key: K, n: float = 1.0) -> float:
        return self.bucket(key).try_acquire(n)

    def bucket(self, key: K) -> TokenBucket:
        """The key's bucket, created full if absent; marks the key as recently used."""
        bucket = self._buckets.get(key)
        if bucket is None:
            self._make_room()
            bucket = self._buckets[key] = TokenBucket(self.rate, self.burst, self._clock)
        self._buckets.move_to_end(key)
        return bucket

    def prune(self) -> int:
        """Drop every full bucket; return how many went."""
        full = [key for key, bucket in self._buckets.items() if bucket.is_full()]
        for key in full:
            del self._buckets[key]
        return len(full)

    def _make_room(self) -> None:
        if len(self._buckets) < self.max_keys:
            return
        oldest = islice(self._buckets.items(), _EVICTION_SCAN)
        victim = next((key for key, bucket in oldest if bucket.is_full()), None)
        if victim is None:
            self._buckets.popitem(last=False)
        else:
            del self._buckets[victim]


@dataclass(frozen=True)
class Budget:
    """A token-bucket budget: ``rate`` requests per second, bursts up to ``burst``."""

    rate: float
    burst: float

    @classmethod
    def per_minute(cls, requests: float, burst: float) -> Budget:
        return cls(rate=requests / 60, burst=burst)


@dataclass(frozen=True)
class RateLimiterStatistics:
    tracked_peers: int
    tracked_sessions: int
    refused: int


class RateLimiter:
    """Per-peer and per-session budgets, separate for each command class.

    ``per_peer`` maps a command class ("chat", "cheap", ...) to the budget of
    each peer uid; ``per_session`` does the same for each (uid, session) pair.
    A class absent from ``per_session`` has no session budget. A request
    passes only when every budget it falls under has a token, and it takes
    tokens only then: a refusal by one budget never spends another.
    """

    def __init__(
        self,
        per_peer: Mapping[str, Budget],
        per_session: Mapping[str, Budget] | None = None,
        *,
        clock: Clock,
        max_keys: int = 10_000,
    ) -> None:
        self._peers = {
            cls: KeyedBuckets[int](b.rate, b.burst, clock, max_keys=max_keys)
            for cls, b in per_peer.items()
        }
        self._sessions = {
            cls: KeyedBuckets[tuple[int, str]](b.rate, b.burst, clock, max_keys=max_keys)
            for cls, b in (per_session or {}).items()
        }
        unknown = self._sessions.keys() - self._peers.keys()
        if unknown:
            raise ValueError(f"session budgets for classes without a peer budget: {unknown}")
        self._refused = 0

    def try_acquire(self, uid: int, session_id: str | None, command_class: str) -> float:
        """0.0 when the request may go on, else the seconds to wait (retry_after)."""
        buckets: list[TokenBucket] = []
        # The peer budget is asked first and alone: a peer over its budget
        # cannot make us track (and evict for) a new session per request.
        for bucket in self._buckets_for(uid, session_id, command_class):
            wait = bucket.retry_after()
            if wait > 0.0:
                self._refused += 1
                return wait
            buckets.append(bucket)
        for bucket in buckets:
            bucket.try_acquire()
        return 0.0

    def statistics(self) -> RateLimiterStatistics:
        return RateLimiterStatistics(
            tracked_peers=sum(len(k) for k in self._peers.values()),
            tracked_sessions=sum(len(k) for k in self._sessions.values()),
            refused=self._refused,
        )

    def _buckets_for(self, uid: int, session_id: str | None, cls: str) -> Iterator[TokenBucket]:
        """The budgets a request falls under, created lazily, the peer's first."""
        if cls not in self._peers:
            raise ValueError(f"no budget for command class {cls!r}")
        yield self._peers[cls].bucket(uid)
        # Keyed by uid too: session ids are names a client chooses, and two
        # users who both say "default" must not share (or drain) one budget.
        if session_id is not None and cls in self._sessions:
            yield self._sessions[cls].bucket((uid, session_id))


class Throttle:
    """At most one log line per ``interval`` seconds; counts what it held back.

    ::

        if throttle.should_log():
            logger.warning("refusing peers (%d more suppressed)", throttle.suppressed)
    """

    def __init__(self, interval: float, clock: Clock) -> None:
        self.interval = interval
        self._clock = clock
        self._last: float | None = None
        self._pending = 0
        # How many calls were held back before the latest one that logged.
        self.suppressed = 0

    def should_log(self) -> bool:
        now = self._clock()
        if self._last is not None and now - self._last < self.interval:
            self._pending += 1
            return False
        self._last = now
        self.suppressed, self._pending = self._pending, 0
        return True


class QueueFull(Busy):
    """The chat wait queue is full; answered as BUSY."""


@dataclass(frozen=True)
class AdmissionStatistics:
    in_flight: int
    waiting: int
    capacity: int
    max_waiting: int
    rejected: int


class AdmissionQueue:
    """At most ``capacity`` chats at the provider, at most ``max_waiting`` queued.

    ::

        async with queue.admit():      # QueueFull at once when the queue is full
            answer = await provider.generate(...)

    Waiters are served first come, first served: a finishing chat hands its
    slot straight to the oldest waiter, so a newcomer cannot jump the queue.
    """

    def __init__(self, capacity: int, max_waiting: int) -> None:
        if capacity < 1 or max_waiting < 0:
            raise ValueError(f"need capacity >= 1, max_waiting >= 0: {capacity}, {max_waiting}")
        self.capacity = capacity
        self.max_waiting = max_waiting
        self._in_flight = 0
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._rejected = 0

    @asynccontextmanager
    async def admit(self) -> AsyncIterator[None]:
        await self._acquire()
        try:
            yield
        finally:
            self._release()

    def statistics(self) -> AdmissionStatistics:
        return AdmissionStatistics(
            in_flight=self._in_flight,
            waiting=self._waiting(),
            capacity=self.capacity,
            max_waiting=self.max_waiting,
            rejected=self._rejected,
        )

    async def _acquire(self) -> None:
        if self._in_flight < self.capacity:
            self._in_flight += 1
            return
        if self._waiting() >= self.max_waiting:
            self._rejected += 1
            raise QueueFull(
                f"{self._in_flight} chats in flight and {self._waiting()} waiting; retry later"
            )
        await self._wait_for_slot()

    async def _wait_for_slot(self) -> None:
        slot: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(slot)
        try:
            await slot
        except asyncio.CancelledError:
            if slot.done() and not slot.cancelled():
                # Cancelled after the slot was handed over: pass it on, or it leaks.
                self._release()
            elif slot in self._waiters:
                self._waiters.remove(slot)
            raise

    def _release(self) -> None:
        while self._waiters:
            slot = self._waiters.popleft()
            # A waiter cancelled a moment ago may still sit here, already done.
            if not slot.done():
                # The slot moves to this waiter: in_flight stays the same.
                slot.set_result(None)
                return
        self._in_flight -= 1

    def _waiting(self) -> int:
        return sum(not slot.done() for slot in self._waiters)


@dataclass(frozen=True)
class SlotStatistics:
    in_use: int
    capacity: int
    per_key: int
    reserved: int
    keys: int  # peers holding at least one slot
    refused: int


class ConnectionSlots(Generic[K]):
    """At most ``capacity`` connections, at most ``per_key`` of them for one key (a
    peer uid), and the last ``reserved`` free slots for privileged peers only.

    ::

        refusal = slots.try_acquire(uid, privileged=lambda: is_admin(peer))
        ...                                  # None: admitted; else why not
        slots.release(uid)                   # once per admitted connection

    As PostgreSQL's superuser_reserved_connections: an unprivileged peer is refused
    while the free slots are at or below the reserve, so no member can hold every
    slot and lock root out of `agentctl stop`. Privileged peers are not held to
    ``per_key`` either (PostgreSQL's superusers ignore a role's connection limit).
    ``privileged`` is only asked when a limit is reached, so the common case costs
    two dict operations per connection and nothing per request.
    """

    FULL: Final = "max_connections"
    RESERVED: Final = "admin_reserved_connections"
    PER_KEY: Final = "max_connections_per_uid"

    def __init__(self, capacity: int, per_key: int, reserved: int) -> None:
        if capacity < 1 or per_key < 1 or not 0 <= reserved < capacity:
            raise ValueError(
                f"need capacity >= 1, per_key >= 1, 0 <= reserved < capacity: "
                f"{capacity}, {per_key}, {reserved}"
            )
        self.capacity = capacity
        self.per_key = per_key
        self.reserved = reserved
        self._held: dict[K, int] = {}
        self._in_use = 0
        self._refused = 0

    def try_acquire(self, key: K, privileged: Callable[[], bool]) -> str | None:
        """Take a slot for ``key`` and return None, or take none and return the limit
        that refused it (FULL, RESERVED or PER_KEY)."""
        refusal = self._limit_reached(key)
        if refusal is not None and (refusal == self.FULL or not privileged()):
            self._refused += 1
            return refusal
        self._held[key] = self._held.get(key, 0) + 1
        self._in_use += 1
        return None

    def release(self, key: K) -> None:
        """Give back a slot taken for ``key``: exactly once per admitted connection."""
        held = self._held.pop(key)  # KeyError: a release without an acquire, a bug
        if held > 1:
            self._held[key] = held - 1
        self._in_use -= 1

    def held(self, key: K) -> int:
        return self._held.get(key, 0)

    def statistics(self) -> SlotStatistics:
        return SlotStatistics(
            self._in_use, self.capacity, self.per_key, self.reserved, len(self._held), self._refused
        )

    def _limit_reached(self, key: K) -> str | None:
        if self._in_use >= self.capacity:
            return self.FULL
        if self._held.get(key, 0) >= self.per_key:
            return self.PER_KEY
        if self.capacity - self._in_use <= self.reserved:
            return self.RESERVED
        return None
