"""The HTTP/2 control-frame budget without sockets: burst, rate, credit from responses."""

from __future__ import annotations

from ballista.transport.budget import CONTROL_BURST, CONTROL_RATE, ControlBudget


def test_the_burst_is_allowed_and_one_more_frame_is_a_flood() -> None:
    budget = ControlBudget(0.0)
    assert budget.spend(0.0, CONTROL_BURST)
    assert budget.tokens == 0
    assert not budget.spend(0.0)


def test_the_rate_refills_the_budget_with_time() -> None:
    budget = ControlBudget(10.0, burst=100, rate=50.0)
    assert budget.spend(10.0, 100)
    # 0.5 s later: 25 more frames, not 26.
    assert budget.spend(10.5, 25)
    assert not budget.spend(10.5)


def test_the_refill_stops_at_the_burst() -> None:
    budget = ControlBudget(0.0, burst=100, rate=50.0)
    # An hour of silence does not buy an hour of flooding.
    assert budget.spend(3600.0, 100)
    assert not budget.spend(3600.0)


def test_a_steady_rate_below_the_limit_is_never_a_flood() -> None:
    budget = ControlBudget(0.0)
    per_tick = int(CONTROL_RATE / 10) - 1
    for tick in range(1, 36_000):  # an hour, ten reads a second
        assert budget.spend(tick / 10, per_tick), tick


def test_a_rate_just_above_the_limit_is_a_flood_once_the_burst_is_spent() -> None:
    # Ticks of 1/8 s (exact in binary): 8 frames a tick refilled, 9 received.
    budget = ControlBudget(0.0, burst=100, rate=64.0)
    ticks = 1
    while budget.spend(ticks / 8, 9):
        ticks += 1
    # The first tick finds the bucket full (100 - 9), then it loses one a tick.
    assert ticks == 93


def test_responses_explain_frames_up_to_the_burst() -> None:
    budget = ControlBudget(0.0, burst=10, rate=0.0)
    assert budget.spend(0.0, 10)
    budget.credit(3)
    assert budget.spend(0.0, 3)
    assert not budget.spend(0.0)
    budget.credit(1000)
    assert budget.tokens == 10


def test_a_clock_that_does_not_move_forward_refills_nothing() -> None:
    budget = ControlBudget(5.0, burst=10, rate=100.0)
    assert budget.spend(5.0, 10)
    assert not budget.spend(4.0)
