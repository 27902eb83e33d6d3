"""Committer: asynchronous commits, one at a time, an offset counted only once the broker confirmed it."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from confluent_kafka import KafkaError, TopicPartition

from orchestrator._engine.committer import Committer
from orchestrator._engine.offsets import OffsetTracker

TP = ("app.tasks.default", 0)


class FakeConsumer:
    def __init__(self) -> None:
        self.commits: list[tuple[list[tuple[str, int, int]], bool]] = []

    def commit(self, offsets: list[TopicPartition], asynchronous: bool) -> Any:
        self.commits.append(([(tp.topic, tp.partition, tp.offset) for tp in offsets], asynchronous))
        return None if asynchronous else offsets


def _setup() -> tuple[OffsetTracker, Committer, FakeConsumer]:
    tracker = OffsetTracker()
    tracker.started(*TP, 0)
    tracker.finished(*TP, 0)
    return tracker, Committer(tracker), FakeConsumer()


def test_one_commit_at_a_time_and_a_failed_one_is_made_again() -> None:
    tracker, committer, consumer = _setup()
    committer.commit(consumer)  # type: ignore[arg-type]
    committer.commit(consumer)  # type: ignore[arg-type]  # still waiting for the answer: nothing sent
    assert consumer.commits == [([(*TP, 1)], True)]
    # The coordinator was unreachable (broker down): the offset is not committed, and is sent again.
    committer.on_commit(KafkaError(KafkaError._WAIT_COORD), [TopicPartition(*TP, 1)])
    assert committer.episode.active
    committer.commit(consumer)  # type: ignore[arg-type]
    assert len(consumer.commits) == 2
    committer.on_commit(None, [TopicPartition(*TP, 1)])
    assert not committer.episode.active
    assert tracker.committable() == {}
    committer.commit(consumer)  # type: ignore[arg-type]  # nothing moved since
    assert len(consumer.commits) == 2


def test_a_partition_refused_in_a_commit_is_not_counted() -> None:
    tracker, committer, consumer = _setup()
    committer.commit(consumer)  # type: ignore[arg-type]
    refused = SimpleNamespace(topic=TP[0], partition=TP[1], offset=1, error=KafkaError(22))
    committer.on_commit(None, [refused])  # type: ignore[list-item]
    assert tracker.committable() == {TP: 1}


def test_commit_now_is_synchronous_and_limited_to_the_given_partitions() -> None:
    tracker, committer, consumer = _setup()
    tracker.started("other", 3, 7)
    tracker.finished("other", 3, 7)
    committer.commit_now(consumer, [TopicPartition(*TP)])  # type: ignore[arg-type]
    assert consumer.commits == [([(*TP, 1)], False)]
    assert tracker.committable() == {("other", 3): 8}
