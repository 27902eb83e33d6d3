"""OffsetTracker: commit below the oldest record still in flight."""

from __future__ import annotations

import builtins
import threading
from typing import Any

import pytest

from orchestrator._engine import offsets
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


def test_a_thread_cannot_change_the_tracker_while_another_reads_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """The worker's event loop, its consumer thread and librdkafka's delivery callbacks all use the tracker.

    ``committable()`` is held open (through the ``min`` it calls) while another thread starts an offset on
    a new partition. Without a lock the second thread gets in, and ``committable()`` iterates a dict that
    changed size; with it, the second thread waits until the read is over.
    """
    t = OffsetTracker()
    t.started(*TP, 1)
    inside, other_done = threading.Event(), threading.Event()

    def held_min(values: Any) -> int:
        inside.set()
        other_done.wait(1.0)  # give the other thread every chance to get in
        return int(builtins.min(values))

    monkeypatch.setattr(offsets, "min", held_min, raising=False)
    result: list[Any] = []
    reader = threading.Thread(target=lambda: result.append(_safely(t.committable)))
    reader.start()
    assert inside.wait(10)
    writer = threading.Thread(target=lambda: (t.started("other", 0, 5), other_done.set()))
    writer.start()
    reader.join(10)
    writer.join(10)
    assert result == [{TP: 1}], "the tracker changed while it was being read"
    assert t.committable() == {TP: 1, ("other", 0): 5}


def _safely(fn: Any) -> Any:
    try:
        return fn()
    except RuntimeError as exc:  # "dictionary changed size during iteration"
        return exc
