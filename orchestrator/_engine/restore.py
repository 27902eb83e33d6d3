"""Bringing partition stores up to date from their changelogs before their partitions are processed."""

from __future__ import annotations

import logging
import time

from confluent_kafka import OFFSET_BEGINNING, KafkaError, KafkaException, TopicPartition

from orchestrator._engine import access, kafka
from orchestrator._engine.faults import is_transient
from orchestrator._engine.store import META_CHANGELOG_OFFSET, PartitionStore
from orchestrator.settings import Settings

log = logging.getLogger("orchestrator.restore")


def restore(settings: Settings, targets: list[tuple[PartitionStore, str]], batch_size: int = 5000) -> int:
    """Apply changelog records to each (store, changelog topic) from where the store stands to the end.

    All partitions are read by one consumer at once, and a partition already at its end is not read at
    all, so a clean restart costs one metadata round trip. Reads ``read_committed`` up to the last stable
    offset: records of a transaction a crashed instance left open are never restored. Returns the number
    of records applied. Safe to call again after it raised: every applied batch recorded its offset.
    """
    if not targets:
        return 0
    conf = kafka.reader_config(settings, **{"fetch.max.bytes": 52_428_800})
    consumer_group = conf["group.id"]
    consumer = kafka.new_consumer(conf)
    applied = 0
    t0 = time.monotonic()
    try:
        by_tp: dict[tuple[str, int], PartitionStore] = {}
        assignment = []
        for store, topic in targets:
            start = store.meta_offset(META_CHANGELOG_OFFSET)
            low, high = kafka.watermarks(consumer, TopicPartition(topic, store.partition))
            if high <= max(start or 0, low):
                continue  # nothing newer than what the store holds
            by_tp[(topic, store.partition)] = store
            if start is not None and start < low:
                # Tombstones between the store's offset and the changelog's start may be gone (ADR 0024).
                log.warning(
                    "%s[%d]: the store's changelog offset %d is below the changelog's start %d; "
                    "restoring it from empty",
                    topic,
                    store.partition,
                    start,
                    low,
                )
                store.clear()
            offset = OFFSET_BEGINNING if start is None or start < low else start
            assignment.append(TopicPartition(topic, store.partition, offset))
        if not assignment:
            return 0
        consumer.assign(assignment)
        pending: dict[tuple[str, int], list[tuple[bytes, bytes | None]]] = {tp: [] for tp in by_tp}
        next_offsets: dict[tuple[str, int], int] = {}
        open_tps = set(by_tp)
        while open_tps:
            for msg in consumer.consume(batch_size, timeout=1.0):
                tp = (msg.topic() or "", msg.partition() or 0)
                err = msg.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        open_tps.discard(tp)
                        continue
                    if is_transient(err):
                        continue  # a broker that is away: librdkafka reconnects and fetches again
                    topics = tp[0] or ", ".join(sorted({t for t, _ in by_tp}))
                    doing = f"restoring {topics} as an assign-only reader, group id {consumer_group}"
                    # A missing ACL is not retried as if the broker were restarting (ADR 0021).
                    raise access.denied(settings, KafkaException(err), "processor", doing) or KafkaException(
                        err
                    )
                key = msg.key()
                if key is not None:
                    pending[tp].append((key, msg.value()))
                next_offsets[tp] = (msg.offset() or 0) + 1
            for tp, records in pending.items():
                if records and (tp not in open_tps or len(records) >= batch_size):
                    by_tp[tp].restore_batch(records, next_offsets[tp])
                    applied += len(records)
                    pending[tp] = []
    finally:
        consumer.close()
    if applied:
        log.info(
            "restored %d changelog records into %d partition stores in %.2fs",
            applied,
            len(by_tp),
            time.monotonic() - t0,
        )
    return applied
