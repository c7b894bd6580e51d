"""Fitting history into a token budget: oldest turns go first, the newest user turn stays."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from agentd.providers.base import Turn
from agentd.providers.context import (
    TURN_OVERHEAD_TOKENS,
    estimate_tokens,
    estimate_turn,
    fit_history,
)


def conversation(*texts: str) -> list[Turn]:
    """Alternating user/model turns, starting with the user."""
    return [Turn("user" if i % 2 == 0 else "model", text) for i, text in enumerate(texts)]


def cost(turns: list[Turn] | tuple[Turn, ...]) -> int:
    return sum(estimate_turn(t) for t in turns)


def test_tokens_are_estimated_at_four_characters_each_rounded_up() -> None:
    assert [estimate_tokens(s) for s in ("", "a", "abcd", "abcde", "x" * 400)] == [0, 1, 1, 2, 100]


def test_everything_is_kept_when_it_fits() -> None:
    turns = conversation("hi", "hello", "how are you?")

    fitted = fit_history(turns, budget=1000, system_prompt="Be brief.")

    assert fitted.turns == tuple(turns)
    assert fitted.omitted == 0
    assert fitted.estimated_tokens == estimate_tokens("Be brief.") + cost(turns)


def test_the_oldest_turns_are_dropped_first() -> None:
    turns = conversation("a" * 400, "b" * 400, "c" * 40, "d" * 40, "e" * 40)

    fitted = fit_history(turns, budget=cost(turns[2:]))

    assert fitted.turns == tuple(turns[2:])
    assert fitted.omitted == 2


def test_the_system_prompt_counts_against_the_budget() -> None:
    turns = conversation("a" * 40, "b" * 40, "c" * 40)
    system_prompt = "s" * 40  # 10 tokens: exactly one turn's worth without overhead

    fitted = fit_history(turns, budget=cost(turns), system_prompt=system_prompt)

    # "a" no longer fits, and the history cannot open with the model's "b".
    assert fitted.turns == tuple(turns[2:])
    assert fitted.estimated_tokens <= cost(turns)


def test_the_newest_user_turn_stays_even_alone_over_budget() -> None:
    turns = conversation("old", "older answer", "x" * 4000)

    fitted = fit_history(turns, budget=10, system_prompt="system")

    assert fitted.turns == (turns[-1],)
    assert fitted.omitted == 2
    assert fitted.estimated_tokens > 10


def test_kept_history_never_starts_with_a_model_turn() -> None:
    turns = conversation("q1" * 200, "a1", "q2")

    fitted = fit_history(turns, budget=cost(turns[1:]))

    assert fitted.turns == (turns[2],)
    assert fitted.omitted == 2


def test_turns_after_the_newest_user_turn_are_kept_with_it() -> None:
    turns = [Turn("user", "old" * 100), Turn("user", "question"), Turn("model", "partial")]

    fitted = fit_history(turns, budget=5)

    assert fitted.turns == tuple(turns[1:])


def test_an_empty_history_fits_anything() -> None:
    fitted = fit_history([], budget=1, system_prompt="hello")

    assert (fitted.turns, fitted.omitted, fitted.estimated_tokens) == ((), 0, 2)


def test_per_turn_overhead_is_counted() -> None:
    assert estimate_turn(Turn("user", "")) == TURN_OVERHEAD_TOKENS


texts = st.text(max_size=300)
histories = st.lists(st.tuples(st.sampled_from(["user", "model"]), texts), max_size=30).map(
    lambda pairs: [Turn(role, text) for role, text in pairs]  # type: ignore[arg-type]
)


@given(histories, st.integers(min_value=1, max_value=5000), texts)
def test_fitting_keeps_a_suffix_within_budget_or_only_the_mandatory_tail(
    turns: list[Turn], budget: int, system_prompt: str,
) -> None:
    fitted = fit_history(turns, budget, system_prompt)

    kept = list(fitted.turns)
    assert kept == turns[len(turns) - len(kept):]
    assert fitted.omitted == len(turns) - len(kept)
    assert fitted.estimated_tokens == estimate_tokens(system_prompt) + cost(kept)
    users = [i for i, t in enumerate(turns) if t.role == "user"]
    if users:
        assert fitted.omitted <= users[-1]  # the newest user turn survived
        assert kept[0].role == "user"
    mandatory = turns[users[-1]:] if users else turns[-1:]
    if fitted.estimated_tokens > budget:
        assert kept == mandatory
