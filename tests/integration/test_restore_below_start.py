"""An active store's restore when its offset fell below the changelog's start (records deleted, a topic
recreated): it starts again from empty, so a run deleted by a tombstone that is gone does not come back."""

from __future__ import annotations

from pathlib import Path

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
