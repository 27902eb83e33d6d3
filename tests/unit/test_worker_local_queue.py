"""The worker's local queue of commands waiting for a slot (`Worker._poll_buffered`, ADR 0025 amendment).

A fake consumer stands in for librdkafka here (pure unit test of the bookkeeping); what librdkafka does on
pause and resume is checked on the real broker in tests/integration/test_worker_buffer.py.
"""

from __future__ import annotations

from typing import Any

from confluent_kafka import TopicPartition

from orchestrator import App, Settings
from orchestrator._engine.worker import Worker, WorkerConfig

TOPIC = "q.tasks.default"


class Rec:
    def __init__(self, partition: int, offset: int) -> None:
        self._p, self._o = partition, offset

    def topic(self) -> str:
        return TOPIC

    def partition(self) -> int:
        return self._p

    def offset(self) -> int:
        return self._o

    def error(self) -> None:
        return None


class Consumer:
    """Records per partition; paused partitions yield nothing, as a paused librdkafka partition does."""

    def __init__(self, partitions: int, per_partition: int) -> None:
        self.pending = {p: [Rec(p, o) for o in range(per_partition)] for p in range(partitions)}
        self.paused: set[int] = set()
        self.pause_calls = 0
        self.committed: list[TopicPartition] = []

    def assignment(self) -> list[TopicPartition]:
        return [TopicPartition(TOPIC, p) for p in self.pending]

    def pause(self, tps: list[TopicPartition]) -> None:
        self.pause_calls += 1
        self.paused |= {tp.partition for tp in tps}

    def resume(self, tps: list[TopicPartition]) -> None:
        self.paused -= {tp.partition for tp in tps}

    def poll(self, timeout: float) -> Rec | None:
        for p, recs in self.pending.items():
            if p not in self.paused and recs:
                return recs.pop(0)
        return None

    def commit(self, offsets: list[TopicPartition], asynchronous: bool) -> list[TopicPartition]:
        self.committed = offsets
        return offsets

    def consume(self, n: int, timeout: float) -> list[Rec]:
        out = []
        while len(out) < n and (rec := self.poll(0)) is not None:
            out.append(rec)
        return out


def _worker(buffer: int) -> Worker:
    app = App("q", settings=Settings(bootstrap_servers="unused:1", partitions=2))
    return Worker(app, WorkerConfig(concurrency=2, buffer=buffer))


def test_full_slots_fill_the_queue_then_pause_once_and_resume_at_half() -> None:
    w = _worker(buffer=4)
    c: Any = Consumer(partitions=1, per_partition=20)
    assert [r.offset() for r in w._poll(c, 2, 0)] == [0, 1]  # two slots, four more queued
    assert len(w._buffered) == 4 and c.pause_calls == 0
    for _ in range(3):  # every slot busy, the queue full: paused once, however often it polls
        assert w._poll(c, 0, 0) == []
    assert c.pause_calls == 1 and c.paused == {0}
    assert [r.offset() for r in w._poll(c, 1, 0)] == [2]  # 3 left queued: still paused (above half)
    assert c.paused == {0}
    assert [r.offset() for r in w._poll(c, 1, 0)] == [3]  # 2 left = half
    assert w._poll(c, 0, 0) == []  # the next poll resumes and refills the queue to the limit
    assert c.paused == set() and [r.offset() for r in w._buffered] == [4, 5, 6, 7]
    # nothing queued is committable: the position stays at the lowest record taken and not finished
    for offset in range(4):
        w._tracker.finished(TOPIC, 0, offset)
    assert w._tracker.committable() == {(TOPIC, 0): 4}


def test_a_revoked_partitions_queued_records_are_dropped_and_never_committed() -> None:
    w = _worker(buffer=6)
    c: Any = Consumer(partitions=2, per_partition=4)
    w._poll(c, 0, 0)
    assert sorted((r.partition(), r.offset()) for r in w._buffered) == [
        (0, 0),
        (0, 1),
        (0, 2),
        (0, 3),
        (1, 0),
        (1, 1),
    ]
    w._on_revoke(c, [TopicPartition(TOPIC, 0)])
    assert [(r.partition(), r.offset()) for r in w._buffered] == [(1, 0), (1, 1)]
    assert c.committed == [] or all(tp.offset <= 0 for tp in c.committed)  # the revoke commit passed nothing
    assert w._tracker.committable() == {(TOPIC, 1): 0}  # partition 1: at its first queued record, not past


def test_buffer_zero_keeps_the_old_pause_at_every_full_house() -> None:
    w = _worker(buffer=0)
    c: Any = Consumer(partitions=1, per_partition=5)
    assert [r.offset() for r in w._poll(c, 2, 0)] == [0, 1]
    assert w._poll(c, 0, 0) == [] and w._poll(c, 0, 0) == []
    assert c.pause_calls == 2 and not w._buffered
