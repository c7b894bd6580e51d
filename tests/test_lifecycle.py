"""The lifecycle state machine: one table, illegal moves raise, every move is counted and told."""

from __future__ import annotations

import pytest

from agentd.lifecycle import TRANSITIONS, IllegalTransition, Lifecycle, State


def test_every_state_can_stop_except_the_stopped_ones() -> None:
    for state, targets in TRANSITIONS.items():
        if state not in (State.STOPPING, State.STOPPED):
            assert State.STOPPING in targets


@pytest.mark.parametrize(
    ("start", "target"),
    [
        (State.INITIALIZING, State.PROCESSING),
        (State.ERROR, State.PROCESSING),
        (State.STOPPED, State.READY),
        (State.STOPPING, State.READY),
    ],
)
def test_illegal_transitions_raise(start: State, target: State) -> None:
    lifecycle = Lifecycle()
    path = {
        State.ERROR: [State.READY, State.ERROR],
        State.STOPPING: [State.STOPPING],
        State.STOPPED: [State.STOPPING, State.STOPPED],
    }.get(start, [])
    for step in path:
        lifecycle.transition(step, "setup")
    with pytest.raises(IllegalTransition):
        lifecycle.transition(target, "not allowed")
    assert lifecycle.state is start


def test_work_moves_between_ready_and_processing_and_listeners_hear_it() -> None:
    heard: list[tuple[State, State]] = []
    lifecycle = Lifecycle()
    lifecycle.add_listener(lambda old, new, reason: heard.append((old, new)))
    lifecycle.transition(State.READY, "up")
    lifecycle.begin_work()
    lifecycle.begin_work()
    lifecycle.end_work()
    assert lifecycle.state is State.PROCESSING
    lifecycle.end_work()
    assert lifecycle.state is State.READY
    assert heard == [
        (State.INITIALIZING, State.READY),
        (State.READY, State.PROCESSING),
        (State.PROCESSING, State.READY),
    ]
    assert lifecycle.statistics().transitions == {
        "INITIALIZING->READY": 1,
        "READY->PROCESSING": 1,
        "PROCESSING->READY": 1,
    }


def test_error_until_every_failing_component_recovers() -> None:
    lifecycle = Lifecycle()
    lifecycle.transition(State.READY, "up")
    lifecycle.component_failed("store", "disk full")
    lifecycle.component_failed("gemini", "breaker open")
    assert lifecycle.state is State.ERROR
    lifecycle.component_recovered("store")
    assert lifecycle.state is State.ERROR
    lifecycle.component_recovered("gemini")
    assert lifecycle.state is State.READY


def test_recovery_with_work_in_flight_returns_to_processing() -> None:
    lifecycle = Lifecycle()
    lifecycle.transition(State.READY, "up")
    lifecycle.begin_work()
    lifecycle.component_failed("gemini", "breaker open")
    lifecycle.component_recovered("gemini")
    assert lifecycle.state is State.PROCESSING
