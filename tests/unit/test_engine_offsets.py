"""OffsetTracker: commit below the oldest record still in flight."""

from __future__ import annotations

from orchestrator._engine.offsets import OffsetTracker

TP = ("app.tasks.default", 0)


def test_nothing_tracked_nothing_to_commit() -> None:
    assert OffsetTracker().committable() == {}


def test_in_order_finishes_commit_one_past_the_last() -> None:
    t = OffsetTracker()
    for off in (10, 11, 12):
        t.started(*TP, off)
    assert t.committable() == {TP: 10}  # nothing finished: the oldest in flight
    t.finished(*TP, 10)
    assert t.committable() == {TP: 11}
    t.finished(*TP, 11)
    t.finished(*TP, 12)
    assert t.committable() == {TP: 13}
    assert t.inflight_count() == 0


def test_out_of_order_finishes_hold_at_the_lowest_in_flight() -> None:
    t = OffsetTracker()
    for off in (5, 6, 7, 8):
        t.started(*TP, off)
    t.finished(*TP, 8)
    t.finished(*TP, 6)
    assert t.committable() == {TP: 5}
    t.finished(*TP, 5)
    assert t.committable() == {TP: 7}
    t.finished(*TP, 7)
    assert t.committable() == {TP: 9}


def test_only_moved_positions_are_returned() -> None:
    t = OffsetTracker()
    t.started(*TP, 0)
    t.finished(*TP, 0)
    first = t.committable()
    assert first == {TP: 1}
    t.mark_committed(first)
    assert t.committable() == {}
    t.started(*TP, 1)
    assert t.committable() == {}  # position is still 1
    t.finished(*TP, 1)
    assert t.committable() == {TP: 2}


def test_mark_committed_never_goes_back() -> None:
    t = OffsetTracker()
    t.started(*TP, 0)
    t.finished(*TP, 0)
    t.mark_committed({TP: 1})
    t.mark_committed({TP: 0})
    t.started(*TP, 0)  # a redelivery after a seek back
    assert t.committable() == {}
    t.mark_committed({("other", 9): 5})  # unknown partitions are ignored


def test_partitions_are_independent() -> None:
    t = OffsetTracker()
    a, b = ("t", 0), ("t", 1)
    t.started(*a, 100)
    t.started(*b, 7)
    t.finished(*b, 7)
    assert t.committable() == {a: 100, b: 8}
    assert t.inflight_count() == 1


def test_forget_on_revoke() -> None:
    t = OffsetTracker()
    t.started(*TP, 3)
    t.started(*TP, 4)
    t.forget(*TP)
    assert t.committable() == {}
    assert t.inflight_count() == 0
    t.finished(*TP, 3)  # a step that finished after the revoke: its new owner redoes it
    assert t.committable() == {}
    t.started(*TP, 50)  # reassigned later: tracked afresh
    assert t.committable() == {TP: 50}
