"""Bringing a partition's store up to date from its changelog before the partition is processed."""

from __future__ import annotations

import logging
import time

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, TopicPartition

from orchestrator._engine import kafka
from orchestrator._engine.store import META_CHANGELOG_OFFSET, PartitionStore

log = logging.getLogger("orchestrator.restore")


def restore(store: PartitionStore, bootstrap: str, changelog: str, batch_size: int = 5000) -> int:
    """Apply changelog records from where the store says it stands to the end; returns records applied.

    Reads ``read_committed`` up to the partition's end (the last stable offset), so records of a transaction
    that a crashed instance left open are never restored.
    """
    start = store.meta_offset(META_CHANGELOG_OFFSET)
    consumer = Consumer(kafka.reader_config(bootstrap, **{"fetch.max.bytes": 52_428_800}))
    applied = 0
    t0 = time.monotonic()
    try:
        consumer.assign(
            [TopicPartition(changelog, store.partition, OFFSET_BEGINNING if start is None else start)]
        )
        pending: list[tuple[bytes, bytes | None]] = []
        next_offset = start
        while True:
            msgs = consumer.consume(batch_size, timeout=1.0)
            done = False
            for msg in msgs:
                err = msg.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        done = True
                        continue
                    raise KafkaException(err)
                key = msg.key()
                if key is None:
                    continue
                pending.append((key, msg.value()))
                next_offset = (msg.offset() or 0) + 1
            if pending and (done or len(pending) >= batch_size):
                store.restore_batch(pending, next_offset or 0)
                applied += len(pending)
                pending = []
            if done:
                break
    finally:
        consumer.close()
    if applied:
        log.info(
            "restored partition %d: %d changelog records in %.2fs",
            store.partition,
            applied,
            time.monotonic() - t0,
        )
    return applied
