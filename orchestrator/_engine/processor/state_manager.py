"""The partition stores of one processor (Kafka Streams' ProcessorStateManager).

Run stores follow the inbox partitions, keyed-stage stores the keyed topic's; each has its changelog. A
store's writes of a batch are produced to its changelog in the batch's transaction and reach RocksDB only
after that commits, together with the consumed offset and the changelog offset they correspond to
(``store.PartitionStore.commit``); an aborted batch's writes are discarded. Assigned partitions are restored
from their changelogs before the first record is handled.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from confluent_kafka import Message, TopicPartition

from orchestrator._engine.faults import Retrier
from orchestrator._engine.processor.config import ProcessorTopics
from orchestrator._engine.processor.output import Output
from orchestrator._engine.processor.standby import KEYED, RUN, Standbys
from orchestrator._engine.processor.transactions import not_fatal
from orchestrator._engine.queries.index import RunIndexer
from orchestrator._engine.restore import restore
from orchestrator._engine.store import META_CHANGELOG_OFFSET, PartitionStore
from orchestrator.settings import Settings

log = logging.getLogger("orchestrator.processor")

DueTimer = tuple[str, int, bytes, str, str]
"""(input topic, partition, timer key, run id or keyed ident, tag) of a timer that is due."""


@dataclass(frozen=True)
class Restored:
    """What the last ``assign`` did: records restored, stores opened, and how many of those were warm
    (held data up to some changelog offset: kept by a standby, or by this instance before)."""

    records: int
    stores: int
    warm: int


class StateManager:
    def __init__(self, state_dir: Path, topics: ProcessorTopics, settings: Settings, retry: Retrier) -> None:
        self.state_dir = state_dir
        self.topics = topics
        self.settings = settings
        self.run_stores: dict[int, PartitionStore] = {}  # by inbox partition
        self.keyed_stores: dict[int, PartitionStore] = {}  # by keyed partition
        self._retry = retry
        self._changelog_offsets: dict[tuple[str, int], int] = {}
        self.standbys: Standbys | None = None  # set by the processor with --standby-replicas (ADR 0024)
        self.last_restore = Restored(0, 0, 0)

    def _sets(self) -> list[tuple[str, str, dict[int, PartitionStore]]]:
        """(input topic, changelog topic, stores) of each kind of partition this instance keeps state for."""
        return [
            (self.topics.inbox, self.topics.changelog, self.run_stores),
            (self.topics.keyed, self.topics.keyed_changelog, self.keyed_stores),
        ]

    def owns(self, topic: str, p: int) -> bool:
        """Whether a record of ``topic[p]`` may be handled: stateful inputs need their partition's store
        (a record of a partition revoked in the same poll has none); users' topics need none."""
        if topic == self.topics.inbox:
            return p in self.run_stores
        if topic == self.topics.keyed:
            return p in self.keyed_stores
        return True

    # -- assignment -----------------------------------------------------------------------------------------
    def assign(self, partitions: list[TopicPartition]) -> int:
        """Open the stores of the newly assigned partitions and restore them; the records restored.

        The stores join ``run_stores``/``keyed_stores`` only once restored (or once the restore failed, so
        that ``close`` still closes them): run queries read ``run_stores`` from another thread, and a store
        being restored is incomplete."""
        targets: list[tuple[PartitionStore, str]] = []
        opened: list[tuple[dict[int, PartitionStore], int, PartitionStore]] = []
        if self.standbys is not None:
            # A standby's store closes before the active one opens its directory (one RocksDB opener).
            self.standbys.release(self._keys(partitions))
        for tp in partitions:
            if tp.topic == self.topics.inbox:
                store = PartitionStore(self.state_dir / f"p{tp.partition}", tp.partition, RunIndexer())
                opened.append((self.run_stores, tp.partition, store))
                targets.append((store, self.topics.changelog))
            elif tp.topic == self.topics.keyed:
                store = PartitionStore(self.state_dir / f"k{tp.partition}", tp.partition)
                opened.append((self.keyed_stores, tp.partition, store))
                targets.append((store, self.topics.keyed_changelog))
        warm = sum(1 for store, _ in targets if store.meta_offset(META_CHANGELOG_OFFSET) is not None)
        try:
            restored: int = self._retry.call("restore", lambda: restore(self.settings, targets), not_fatal)
        finally:
            for stores, p, store in opened:
                stores[p] = store
        self.last_restore = Restored(restored, len(opened), warm)
        return restored

    def _keys(self, partitions: list[TopicPartition]) -> list[tuple[str, int]]:
        """The standby keys (stage, partition) of the stateful ones among ``partitions``."""
        stages = {self.topics.inbox: RUN, self.topics.keyed: KEYED}
        return [(stages[tp.topic], tp.partition) for tp in partitions if tp.topic in stages]

    def revoke(self, partitions: list[TopicPartition]) -> None:
        """Close the stores of revoked partitions (no transaction is open: every finished batch committed);
        with standby replicas, their warm stores are kept up to date as standbys from now on."""
        for tp in partitions:
            stores = {self.topics.inbox: self.run_stores, self.topics.keyed: self.keyed_stores}.get(tp.topic)
            store = stores.pop(tp.partition, None) if stores is not None else None
            if store is not None:
                store.close()
        if self.standbys is not None:
            self.standbys.adopt(self._keys(partitions))

    def close(self, keep_warm: bool = False) -> None:
        """Close every active store; ``keep_warm``: as standbys (a consumer replaced, not a shutdown)."""
        closed: list[tuple[str, int]] = []
        for stage, (_, _, stores) in zip((RUN, KEYED), self._sets(), strict=True):
            for p, store in stores.items():
                store.close()
                closed.append((stage, p))
            stores.clear()
        if keep_warm and self.standbys is not None:
            self.standbys.adopt(closed)

    # -- timers ---------------------------------------------------------------------------------------------
    def due_timers(self, now_ms: int, batch: int) -> list[DueTimer]:
        due: list[DueTimer] = []
        for topic, _, stores in self._sets():
            for p, store in stores.items():
                for key, _, ident, tag in store.due_timers(now_ms, batch):
                    due.append((topic, p, key, ident, tag))
        return due

    # -- the transaction ------------------------------------------------------------------------------------
    def produce_changelog(self, output: Output) -> None:
        """The batch's writes of every store to its changelog; the last record of each tells its offset."""
        for _, changelog, stores in self._sets():
            for p, store in stores.items():
                dirty = store.dirty()
                if not dirty:
                    continue
                last = len(dirty) - 1
                for i, (key, value) in enumerate(dirty.items()):
                    if i == last:
                        output.produce(changelog, value, key, partition=p, on_delivery=self._delivered)
                    else:
                        output.produce(changelog, value, key, partition=p)

    def _delivered(self, err: Any, msg: Message) -> None:
        if err is None:
            self._changelog_offsets[(msg.topic() or "", msg.partition() or 0)] = (msg.offset() or 0) + 1

    def commit(self, positions: dict[tuple[str, int], int]) -> None:
        """The transaction committed: each store takes its writes with the input and changelog offsets."""
        for topic, changelog, stores in self._sets():
            for p, store in stores.items():
                store.commit(positions.get((topic, p)), self._changelog_offsets.pop((changelog, p), None))

    def discard(self) -> None:
        """The transaction aborted: forget the batch's writes."""
        for _, _, stores in self._sets():
            for store in stores.values():
                store.discard()
        self._changelog_offsets.clear()
