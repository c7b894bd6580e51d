"""The context cache's own rules (agentd/store/recent.py), in memory: what it returns
is what the store read returned plus what was committed since, or nothing."""

from __future__ import annotations

from agentd.store.recent import Exchange, RecentTurns


def ex(n: int, size: int = 1) -> Exchange:
    return Exchange(n, f"q{n}" * size, f"a{n}" * size)


def test_a_miss_then_a_fill_then_commits_in_id_order_trimmed_to_the_limit() -> None:
    cache = RecentTurns()
    assert cache.lookup("s", 3) is None
    token = cache.reserve("s")
    assert cache.lookup("s", 3) is None  # not ready while the read is out
    cache.fill(token, "s", [ex(1), ex(2)], 3)
    assert cache.lookup("s", 3) == [ex(1), ex(2)]
    cache.added("s", ex(5))
    cache.added("s", ex(4))  # a concurrent chat of the session committed first, finished last
    assert cache.lookup("s", 3) == [ex(2), ex(4), ex(5)]
    assert cache.lookup("s", 2) == [ex(4), ex(5)]
    assert cache.lookup("s", 4) is None  # more than was read: read the store


def test_a_read_that_raced_a_commit_is_not_kept() -> None:
    cache = RecentTurns()
    token = cache.reserve("s")
    cache.added("s", ex(3))  # committed while the read was out: the read may not hold it
    cache.fill(token, "s", [ex(1)], 5)
    assert cache.lookup("s", 5) is None
    fresh = cache.reserve("s")
    cache.fill(fresh, "s", [ex(1), ex(3)], 5)
    assert cache.lookup("s", 5) == [ex(1), ex(3)]


def test_forget_drops_a_session_and_a_read_started_before_it() -> None:
    cache = RecentTurns()
    token = cache.reserve("s")
    cache.fill(token, "s", [ex(1)], 5)
    cache.forget("s")
    assert cache.lookup("s", 5) is None
    late = cache.reserve("s")
    cache.forget("s")  # e.g. the session deleted while its context was read
    cache.fill(late, "s", [ex(1)], 5)
    assert cache.lookup("s", 5) is None
    cache.added("s", ex(2))  # nothing cached: nothing to update
    assert cache.lookup("s", 5) is None


def test_an_older_read_does_not_replace_a_newer_one() -> None:
    cache = RecentTurns()
    first = cache.reserve("s")
    second = cache.reserve("s")
    cache.fill(second, "s", [ex(1), ex(2)], 5)
    cache.fill(first, "s", [ex(1)], 5)
    assert cache.lookup("s", 5) == [ex(1), ex(2)]


def test_bounded_in_sessions_and_characters_least_recently_used_first() -> None:
    cache = RecentTurns(max_sessions=2, max_chars=100)
    for name in ("a", "b"):
        cache.fill(cache.reserve(name), name, [ex(1)], 5)
    assert cache.lookup("a", 5) is not None  # a is now the most recently used
    cache.fill(cache.reserve("c"), "c", [ex(1)], 5)
    assert cache.lookup("b", 5) is None
    assert cache.lookup("a", 5) is not None and cache.lookup("c", 5) is not None
    cache.added("c", ex(2, size=30))  # 120 characters: over the budget, a goes first
    assert cache.lookup("a", 5) is None
    cache.added("c", ex(3, size=30))
    assert cache.sessions == 0  # one session alone over the budget is not kept
    cache.fill(cache.reserve("d"), "d", [ex(1)], 5)
    cache.clear()
    assert cache.sessions == 0
