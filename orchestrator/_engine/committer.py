"""Commits a worker's finished offsets without ever blocking on an unreachable broker.

Why: a synchronous commit while the group coordinator is unreachable blocks the consumer thread for about
10 s (librdkafka then fails it with ``_WAIT_COORD``), so a worker doing one every 200 ms during an outage
would barely poll. Commits are asynchronous, one at a time (none pile up during an outage), and an offset
counts as committed only when the broker said so; a failed commit is simply made again next time. The one
synchronous commit is the last one before partitions are handed over in a rebalance or at shutdown.

All methods run on the consumer thread; `on_commit` is wired as the consumer's ``on_commit`` callback,
which librdkafka calls from inside `Consumer.poll`.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from orchestrator._engine.episodes import Episode
from orchestrator._engine.offsets import OffsetTracker

log = logging.getLogger("orchestrator.worker")

STALE_COMMIT_S = 60.0
"""An asynchronous commit without an answer for this long is given up on, and the next one is sent."""


class Committer:
    def __init__(self, tracker: OffsetTracker) -> None:
        self._tracker = tracker
        self._sent_at: float | None = None
        self.episode = Episode(log, "offset commits failing")

    def commit(self, consumer: Consumer) -> None:
        """Send the offsets that moved, unless a commit is still waiting for its answer."""
        if self._sent_at is not None and time.monotonic() - self._sent_at < STALE_COMMIT_S:
            return
        offsets = self._tracker.committable()
        if not offsets:
            return
        self._sent_at = time.monotonic()
        try:
            consumer.commit(offsets=_partitions(offsets), asynchronous=True)
        except KafkaException as exc:
            self._sent_at = None
            self.episode.failed(exc)

    def commit_now(self, consumer: Consumer, partitions: list[TopicPartition] | None = None) -> None:
        """A synchronous commit (before a rebalance hands partitions over, and at shutdown)."""
        offsets = self._tracker.committable()
        if partitions is not None:
            wanted = {(tp.topic, tp.partition) for tp in partitions}
            offsets = {tp: o for tp, o in offsets.items() if tp in wanted}
        if not offsets:
            return
        try:
            done = consumer.commit(offsets=_partitions(offsets), asynchronous=False)
        except KafkaException as exc:
            self.episode.failed(exc)
            return
        self._record(None, done or [])

    def on_commit(self, err: KafkaError | None, partitions: list[TopicPartition]) -> None:
        self._sent_at = None
        self._record(err, partitions)

    def _record(self, err: KafkaError | None, partitions: list[TopicPartition]) -> None:
        if err is not None and err.code() == KafkaError._NO_OFFSET:
            return
        if err is not None:
            self.episode.failed(err)
            return
        failed = [tp for tp in partitions if tp.error is not None]
        if failed:
            self.episode.failed(f"{failed[0].topic}[{failed[0].partition}]: {failed[0].error}")
        ok = {(tp.topic, tp.partition): tp.offset for tp in partitions if tp.error is None}
        if ok:
            self._tracker.mark_committed(ok)
            if not failed:
                self.episode.recovered()


def _partitions(offsets: dict[tuple[str, int], int]) -> list[Any]:
    return [TopicPartition(t, p, o) for (t, p), o in offsets.items()]
