"""An active store's restore when its offset is out of the changelog's range (records deleted, a topic
recreated) or its last write is older than the changelog's delete.retention.ms: it starts again from empty,
so a run deleted by a tombstone that is gone does not come back."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from confluent_kafka import Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from orchestrator._engine.restore import restore
from orchestrator._engine.store import META_CHANGELOG_OFFSET, PartitionStore
from orchestrator.settings import Settings
from tests.integration.conftest import CreateTopics


def _produce(bootstrap: str, topic: str, records: list[tuple[bytes, bytes | None]]) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True})
    for key, value in records:
        producer.produce(topic, value, key, partition=0)
    assert producer.flush(30) == 0


def test_a_store_below_the_changelog_start_is_restored_from_empty(
    kafka_bootstrap: str, unique_name: str, create_topics: CreateTopics, tmp_path: Path
) -> None:
    changelog = f"{unique_name}.changelog"
    create_topics(changelog)
    settings = Settings(bootstrap_servers=kafka_bootstrap, partitions=1)
    _produce(kafka_bootstrap, changelog, [(f"r/a{i}".encode(), b"v1") for i in range(5)])
    store = PartitionStore(tmp_path / "p0", 0)
    try:
        assert restore(settings, [(store, changelog)]) == 5
    finally:
        store.close()

    # While the store is closed: a0 is deleted (a tombstone), more runs are written, and the log's start
    # moves to offset 8, past the tombstone.
    _produce(kafka_bootstrap, changelog, [(b"r/a0", None), *((f"r/b{i}".encode(), b"v2") for i in range(4))])
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    done = admin.delete_records([TopicPartition(changelog, 0, 8)])
    assert next(iter(done.values())).result(30).low_watermark == 8

    store = PartitionStore(tmp_path / "p0", 0)
    try:
        assert restore(settings, [(store, changelog)]) == 2
        assert dict(store.scan(b"r/")) == {b"r/b2": b"v2", b"r/b3": b"v2"}
        assert store.meta_offset(META_CHANGELOG_OFFSET) == 10
    finally:
        store.close()


def _restored_store(settings: Settings, path: Path, changelog: str, expected: int) -> None:
    store = PartitionStore(path, 0)
    try:
        assert restore(settings, [(store, changelog)]) == expected
    finally:
        store.close()


def test_a_store_whose_whole_tail_was_deleted_is_cleared(
    kafka_bootstrap: str, unique_name: str, create_topics: CreateTopics, tmp_path: Path
) -> None:
    """``low == high > start``: nothing is left to read, but what was deleted included a tombstone; the
    store must not keep the run it deleted (the old order skipped the store as "up to date")."""
    changelog = f"{unique_name}.changelog"
    create_topics(changelog)
    settings = Settings(bootstrap_servers=kafka_bootstrap, partitions=1)
    _produce(kafka_bootstrap, changelog, [(f"r/a{i}".encode(), b"v1") for i in range(5)])
    _restored_store(settings, tmp_path / "p0", changelog, 5)
    _produce(kafka_bootstrap, changelog, [(b"r/a0", None), (b"r/b0", b"v2"), (b"r/b1", b"v2")])
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    done = admin.delete_records([TopicPartition(changelog, 0, 8)])
    assert next(iter(done.values())).result(30).low_watermark == 8

    store = PartitionStore(tmp_path / "p0", 0)
    try:
        assert restore(settings, [(store, changelog)]) == 0
        assert dict(store.scan(b"r/")) == {}
        assert store.meta_offset(META_CHANGELOG_OFFSET) is None
    finally:
        store.close()


def test_a_store_past_the_changelog_end_is_cleared_and_restored_from_the_start(
    kafka_bootstrap: str, unique_name: str, create_topics: CreateTopics, tmp_path: Path
) -> None:
    """``start > high``: the changelog was recreated, shorter (here: another topic standing in for the
    recreated one). Its records are the store's content now, from offset 0; none may be skipped as
    "older than the store's offset", and nothing of the old content may stay."""
    old, new = f"{unique_name}.old", f"{unique_name}.new"
    create_topics(old, new)
    settings = Settings(bootstrap_servers=kafka_bootstrap, partitions=1)
    _produce(kafka_bootstrap, old, [(f"r/a{i}".encode(), b"v1") for i in range(5)])
    _restored_store(settings, tmp_path / "p0", old, 5)
    _produce(kafka_bootstrap, new, [(b"r/n0", b"v2"), (b"r/n1", b"v2")])

    store = PartitionStore(tmp_path / "p0", 0)
    try:
        assert restore(settings, [(store, new)]) == 2
        assert dict(store.scan(b"r/")) == {b"r/n0": b"v2", b"r/n1": b"v2"}
        assert store.meta_offset(META_CHANGELOG_OFFSET) == 2
    finally:
        store.close()


def test_a_store_idle_longer_than_delete_retention_is_restored_from_empty(
    kafka_bootstrap: str,
    unique_name: str,
    create_topics: CreateTopics,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Compaction drops a tombstone ``delete.retention.ms`` after cleaning without moving the low
    watermark: a store last written longer ago than that may lack deletes its tail no longer shows. The
    restore reads the topic's ``delete.retention.ms`` from the broker and clears such a store. Here the
    topic's setting is one hour and the store's last write is set two hours back; ``r/gone`` stands for
    an entry whose tombstone compaction removed."""
    changelog = f"{unique_name}.changelog"
    create_topics(changelog, config={"cleanup.policy": "compact", "delete.retention.ms": "3600000"})
    settings = Settings(bootstrap_servers=kafka_bootstrap, partitions=1)
    _produce(kafka_bootstrap, changelog, [(b"r/a", b"v1"), (b"r/b", b"v1")])
    store = PartitionStore(tmp_path / "p0", 0)
    try:
        real = time.time()
        monkeypatch.setattr("orchestrator._engine.store.time.time", lambda: real - 7200)
        store.restore_batch([(b"r/gone", b"v0")], 1)  # an old store: offset 1, written 2 h ago
        monkeypatch.undo()
    finally:
        store.close()
    _produce(kafka_bootstrap, changelog, [(b"r/c", b"v1")])
    fresh = PartitionStore(tmp_path / "fresh", 0)
    fresh.restore_batch([(b"r/gone", b"v0")], 1)  # the same, written just now: only the tail is read
    fresh.close()

    store = PartitionStore(tmp_path / "p0", 0)
    fresh = PartitionStore(tmp_path / "fresh", 0)
    try:
        assert restore(settings, [(store, changelog)]) == 3
        assert restore(settings, [(fresh, changelog)]) == 2
        assert dict(store.scan(b"r/")) == {b"r/a": b"v1", b"r/b": b"v1", b"r/c": b"v1"}
        assert dict(fresh.scan(b"r/")) == {b"r/gone": b"v0", b"r/b": b"v1", b"r/c": b"v1"}
    finally:
        store.close()
        fresh.close()
