"""Bringing partition stores up to date from their changelogs before their partitions are processed."""

from __future__ import annotations

import logging
import time
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import (  # type: ignore[attr-defined]  # re-exported without __all__
    ConfigResource,
    ResourceType,
)

from orchestrator._engine import access, kafka
from orchestrator._engine.faults import is_transient
from orchestrator._engine.store import META_CHANGELOG_OFFSET, META_WRITTEN_MS, PartitionStore
from orchestrator.settings import Settings

log = logging.getLogger("orchestrator.restore")

DEFAULT_DELETE_RETENTION_MS = 86_400_000
"""Kafka's default ``delete.retention.ms`` (24 h), assumed when the topic's config cannot be read."""


def delete_retention_ms(admin: Any, topic: str, timeout: float = 10.0) -> int | None:
    """The changelog's ``delete.retention.ms``: how long compaction keeps a tombstone. None when it
    cannot be read (the caller then assumes Kafka's default, ``DEFAULT_DELETE_RETENTION_MS``)."""
    try:
        futures = admin.describe_configs([ConfigResource(ResourceType.TOPIC, topic)], request_timeout=timeout)
        entry = next(iter(futures.values())).result(timeout).get("delete.retention.ms")
        return int(entry.value) if entry is not None and entry.value is not None else None
    except (KafkaException, TimeoutError, ValueError) as exc:
        log.warning("could not read delete.retention.ms of %s (%s); assuming 24 h", topic, exc)
        return None


def clear_if_cold(
    store: PartitionStore, topic: str, retention_ms: int | None, now_ms: int | None = None
) -> bool:
    """Clear a store whose last write is older than its changelog's ``delete.retention.ms``: compaction may
    have dropped tombstones written after its offset since (without moving the low watermark), so the
    tail it would restore could lack deletes (ADR 0024, 1e). True if it was cleared."""
    raw = store.meta_offset(META_WRITTEN_MS)
    if raw is None or store.meta_offset(META_CHANGELOG_OFFSET) is None:
        return False  # empty, or written before this was recorded: no age to judge by
    now = int(time.time() * 1000) if now_ms is None else now_ms
    limit = DEFAULT_DELETE_RETENTION_MS if retention_ms is None else retention_ms
    if now - raw <= limit:
        return False
    log.warning(
        "%s[%d]: the store was last written %.1f h ago, longer than the changelog's delete.retention.ms "
        "(%.1f h): deletes it missed may be gone; restoring it from empty",
        topic,
        store.partition,
        (now - raw) / 3_600_000,
        limit / 3_600_000,
    )
    store.clear()
    return True


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
    admin: Any = None
    t0 = time.monotonic()
    try:
        by_tp: dict[tuple[str, int], PartitionStore] = {}
        assignment = []
        retentions: dict[str, int | None] = {}
        for store, topic in targets:
            start = store.meta_offset(META_CHANGELOG_OFFSET)
            low, high = kafka.watermarks(consumer, TopicPartition(topic, store.partition))
            if start is not None and (start < low or start > high):
                # Below the start: tombstones between the store's offset and the start may be gone. Past
                # the end: the topic was recreated, shorter. Either way the content is not the
                # changelog's: clear it and restore from the beginning (ADR 0024).
                log.warning(
                    "%s[%d]: the store's changelog offset %d is out of the changelog's range [%d, %d]; "
                    "restoring it from empty",
                    topic,
                    store.partition,
                    start,
                    low,
                    high,
                )
                store.clear()
                start = None
            elif start is not None and start < high:
                if topic not in retentions:
                    if admin is None:
                        admin = kafka.new_admin(kafka.base(settings))
                    retentions[topic] = delete_retention_ms(admin, topic)
                if clear_if_cold(store, topic, retentions[topic]):
                    start = None
            if high <= max(start or 0, low):
                continue  # nothing newer than what the store holds
            by_tp[(topic, store.partition)] = store
            offset = OFFSET_BEGINNING if start is None else start
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
