"""HTTP/2 stream slots without sockets: the limit holds, waiters are served in arrival order."""

from __future__ import annotations

from collections import Counter

from hypothesis import given
from hypothesis import strategies as st

from ballista.transport.slots import StreamSlots


def test_free_slots_are_taken_at_once_up_to_the_limit() -> None:
    slots: StreamSlots[str] = StreamSlots(2)
    assert slots.try_acquire()
    assert slots.try_acquire()
    assert not slots.try_acquire()
    assert slots.held == 2


def test_waiters_are_granted_in_arrival_order() -> None:
    slots: StreamSlots[str] = StreamSlots(1)
    assert slots.try_acquire()
    for name in "abc":
        assert slots.enqueue(name)
    assert slots.release() == ["a"]
    assert slots.release() == ["b"]
    assert slots.release() == ["c"]
    assert slots.release() == []
    assert slots.held == 0


def test_a_newcomer_never_overtakes_a_queued_waiter() -> None:
    slots: StreamSlots[str] = StreamSlots(1)
    assert slots.try_acquire()
    slots.enqueue("early")
    # The holder is done and comes straight back: the early waiter goes first.
    assert slots.release() == ["early"]
    assert not slots.try_acquire()
    slots.enqueue("holder again")
    assert slots.release() == ["holder again"]


def test_a_raised_limit_grants_the_waiters_it_makes_room_for() -> None:
    slots: StreamSlots[str] = StreamSlots(0)
    for name in "abc":
        slots.enqueue(name)
    assert slots.set_limit(2) == ["a", "b"]
    assert slots.held == 2


def test_a_lowered_limit_takes_no_slot_away() -> None:
    slots: StreamSlots[str] = StreamSlots(3)
    for _ in range(3):
        assert slots.try_acquire()
    slots.enqueue("w")
    assert slots.set_limit(1) == []
    assert slots.release() == []
    assert slots.release() == []
    assert slots.release() == ["w"]
    assert slots.held == 1


def test_withdraw_tells_a_queued_waiter_from_a_granted_one() -> None:
    slots: StreamSlots[str] = StreamSlots(1)
    assert slots.try_acquire()
    slots.enqueue("a")
    slots.enqueue("b")
    assert slots.withdraw("a")
    assert slots.release() == ["b"]
    # "b" was granted before it gave up: it holds a slot and must release it.
    assert not slots.withdraw("b")
    assert slots.held == 1


def test_close_hands_back_every_waiter_and_grants_nothing_more() -> None:
    slots: StreamSlots[str] = StreamSlots(1)
    assert slots.try_acquire()
    slots.enqueue("a")
    slots.enqueue("b")
    assert slots.close() == ["a", "b"]
    assert not slots.enqueue("c")
    assert not slots.try_acquire()
    assert slots.release() == []
    assert slots.held == 0


@given(
    limit=st.integers(min_value=1, max_value=5),
    ops=st.lists(st.sampled_from(["arrive", "finish"]), max_size=200),
)
def test_never_over_the_limit_and_first_come_first_served(limit: int, ops: list[str]) -> None:
    """Arrivals either take a free slot or queue; finishing hands the slot to the oldest."""
    slots: StreamSlots[int] = StreamSlots(limit)
    holding: list[int] = []
    arrived = 0
    granted_order: list[int] = []
    queued: list[int] = []
    for op in ops:
        if op == "arrive":
            arrived += 1
            if slots.try_acquire():
                holding.append(arrived)
                granted_order.append(arrived)
            else:
                slots.enqueue(arrived)
                queued.append(arrived)
        elif holding:
            holding.pop(0)
            for w in slots.release():
                holding.append(w)
                granted_order.append(w)
        assert slots.held == len(holding) <= limit
        # Someone waits only while every slot is taken.
        assert slots.waiting == 0 or slots.held == limit
    # Grants follow arrival order exactly, whichever way each came.
    assert granted_order == sorted(granted_order)
    assert Counter(granted_order) == Counter(range(1, len(granted_order) + 1))
    assert set(queued) <= set(range(1, arrived + 1))
