"""A standby replica's faults on the real broker (ADR 0024): a store whose offset fell below the changelog's
low watermark, or past its end, is rebuilt from what the changelog still holds; a broker restart is
ridden out."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from confluent_kafka import ConsumerGroupState, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from orchestrator._engine.processor.config import ProcessorTopics
from orchestrator._engine.processor.standby import KEYED, RUN, Standbys
from orchestrator._engine.store import META_CHANGELOG_OFFSET, PartitionStore
from orchestrator.settings import Settings
from tests.integration.conftest import CreateTopics
from tests.integration.engine_support import PrivateBroker


def _topics(name: str) -> ProcessorTopics:
    return ProcessorTopics(
        f"{name}.inbox", "h", f"{name}.changelog", "o", "d", f"{name}.keyed", f"{name}.keyed-changelog", ()
    )


def _described(topics: ProcessorTopics) -> Callable[[], Any]:
    """The group as the coordinator would describe it: ``other`` owns partition 0 of both stages, ``me``
    owns nothing, so ``me`` keeps both warm (N=1)."""

    def member(instance: str, *tps: TopicPartition) -> Any:
        assignment = SimpleNamespace(topic_partitions=list(tps))
        return SimpleNamespace(group_instance_id=f"processor-{instance}", assignment=assignment)

    owner = member("other", TopicPartition(topics.inbox, 0), TopicPartition(topics.keyed, 0))
    group = SimpleNamespace(state=ConsumerGroupState.STABLE, members=[owner, member("me")])
    return lambda: group


def _produce(bootstrap: str, topic: str, records: list[tuple[bytes, bytes | None]]) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True})
    for key, value in records:
        producer.produce(topic, value, key, partition=0)
    assert producer.flush(30) == 0


def _wait(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def _content(path: Path) -> dict[bytes, bytes]:
    store = PartitionStore(path, 0)
    try:
        return dict(store.scan(b"r/"))
    finally:
        store.close()


def _standbys(bootstrap: str, topics: ProcessorTopics, state: Path) -> Standbys:
    settings = Settings(bootstrap_servers=bootstrap, partitions=1)
    standbys = Standbys(settings, topics, state, "me", 1, "g", describe=_described(topics), refresh_s=0.5)
    standbys.start()
    return standbys


def test_a_store_below_the_low_watermark_is_rebuilt_from_what_the_changelog_holds(
    kafka_bootstrap: str, unique_name: str, create_topics: CreateTopics, tmp_path: Path
) -> None:
    topics = _topics(unique_name)
    create_topics(topics.changelog, topics.keyed_changelog)
    _produce(kafka_bootstrap, topics.changelog, [(f"r/a{i}".encode(), b"v1") for i in range(5)])
    standbys = _standbys(kafka_bootstrap, topics, tmp_path)
    try:
        _wait(lambda: standbys.positions().get((RUN, 0)) == 5, 30, "the standby at offset 5")
        assert set(standbys.positions()) == {(RUN, 0), (KEYED, 0)}
    finally:
        standbys.close()
    assert _content(tmp_path / "p0") == {f"r/a{i}".encode(): b"v1" for i in range(5)}

    # While the standby is down: a0 is deleted (a tombstone), more runs are written, and records up to
    # offset 8 are deleted from the log (what retention or a recreated topic does): the tombstone is gone.
    _produce(
        kafka_bootstrap, topics.changelog, [(b"r/a0", None), *((f"r/b{i}".encode(), b"v2") for i in range(4))]
    )
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    done = admin.delete_records([TopicPartition(topics.changelog, 0, 8)])
    assert next(iter(done.values())).result(30).low_watermark == 8
    standbys = _standbys(kafka_bootstrap, topics, tmp_path)
    try:
        _wait(lambda: standbys.positions().get((RUN, 0)) == 10, 30, "the standby rebuilt up to offset 10")
    finally:
        standbys.close()
    # Only what the changelog still holds (offsets 8 and 9): a0, deleted, must not linger.
    assert _content(tmp_path / "p0") == {b"r/b2": b"v2", b"r/b3": b"v2"}
    store = PartitionStore(tmp_path / "p0", 0)
    try:
        assert store.meta_offset(META_CHANGELOG_OFFSET) == 10
    finally:
        store.close()


def test_a_standby_past_the_changelog_end_is_rebuilt_from_the_first_record(
    kafka_bootstrap: str, unique_name: str, create_topics: CreateTopics, tmp_path: Path
) -> None:
    """A store whose offset is past the changelog's end (the topic was recreated, shorter): the broker
    answers the fetch with offset-out-of-range too, the store is rebuilt, and none of the new topic's
    records is skipped as "older than the store's position"."""
    topics = _topics(unique_name)
    create_topics(topics.changelog, topics.keyed_changelog)
    old = PartitionStore(tmp_path / "p0", 0)
    old.restore_batch([(b"r/old", b"v0")], 50)
    old.close()
    _produce(kafka_bootstrap, topics.changelog, [(f"r/n{i}".encode(), b"v1") for i in range(3)])
    standbys = _standbys(kafka_bootstrap, topics, tmp_path)
    try:
        _wait(lambda: standbys.positions().get((RUN, 0)) == 3, 30, "the standby rebuilt up to offset 3")
        assert standbys.faults() == []
    finally:
        standbys.close()
    assert _content(tmp_path / "p0") == {f"r/n{i}".encode(): b"v1" for i in range(3)}


def test_a_standby_rides_out_a_broker_restart(private_broker: PrivateBroker, tmp_path: Path) -> None:
    bootstrap = private_broker.bootstrap
    topics = _topics("outage")
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for future in admin.create_topics(
        [NewTopic(t, 1, 1) for t in (topics.changelog, topics.keyed_changelog)]
    ).values():
        future.result(30)
    _produce(bootstrap, topics.changelog, [(f"r/a{i}".encode(), b"v1") for i in range(3)])
    standbys = _standbys(bootstrap, topics, tmp_path)
    try:
        _wait(lambda: standbys.positions().get((RUN, 0)) == 3, 60, "the standby at offset 3")
        private_broker.kill()
        time.sleep(3)  # the standby's fetches and descriptions fail meanwhile
        private_broker.start()
        _produce(bootstrap, topics.changelog, [(b"r/a9", b"after")])
        _wait(lambda: standbys.positions().get((RUN, 0)) == 4, 90, "the standby past the restart")
        assert standbys._thread is not None and standbys._thread.is_alive()
    finally:
        standbys.close()
    assert _content(tmp_path / "p0")[b"r/a9"] == b"after"
