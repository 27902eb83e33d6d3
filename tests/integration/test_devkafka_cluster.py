"""A local 3-broker cluster loses the leader of a partition and keeps serving, transactions included.

On a cluster of its own (``shared_brokers.three_brokers``: three JVMs of 384 MB in a temp dir on free ports),
never the session broker. This test is the cluster's first user (listed first in its group,
tests/scheduling.py), so the internal topics it makes while a broker is down are made then: it checks they did
not exist before. It leaves the killed node back in the ISR for ``test_cluster_failover``, which uses the same
cluster next.
"""

from __future__ import annotations

import logging
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, KafkaError, Message, Producer
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic  # type: ignore[attr-defined]

from orchestrator import _devkafka
from orchestrator._devkafka import BrokerInfo

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]  # three JVMs on a shared 2-core machine
QUIET_LOGGER = logging.getLogger("tests.librdkafka")  # set up silent by tests/integration/conftest.py


def _produce(producer: Producer, topic: str, values: range) -> None:
    errors: list[KafkaError] = []

    def delivered(err: KafkaError | None, _msg: Message) -> None:
        if err is not None:
            errors.append(err)

    for value in values:
        producer.produce(topic, key=b"k", value=str(value).encode(), on_delivery=delivered)
        producer.poll(0)
    assert producer.flush(120) == 0, "messages still undelivered after 120 s"
    assert errors == []


def _partition(admin: AdminClient, topic: str) -> Any:
    return admin.list_topics(topic, timeout=10).topics[topic].partitions[0]


def _wait_for(check: Any, what: str, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"not true after {timeout} s: {what}"
        time.sleep(0.5)


INTERNAL = ("__consumer_offsets", "__transaction_state")


def test_killed_leader_fails_over_and_rejoins_the_isr(three_brokers: tuple[BrokerInfo, Path]) -> None:
    info, data_dir = three_brokers
    assert len(info.nodes) == 3
    assert info.bootstrap == ",".join(node.bootstrap for node in info.nodes)
    common: dict[str, Any] = {"bootstrap.servers": info.bootstrap, "logger": QUIET_LOGGER}
    admin = AdminClient(common)
    # The internal topics are to be made below, while a broker is down: the cluster must be fresh.
    assert not set(INTERNAL) & set(admin.list_topics(timeout=30).topics), "the cluster was used before"
    topic = f"t{uuid.uuid4().hex[:10]}"
    for future in admin.create_topics([NewTopic(topic, 1, 3)], operation_timeout=30).values():
        future.result(30)
    _wait_for(lambda: topic in admin.list_topics(timeout=10).topics, "topic visible")
    assert len(_partition(admin, topic).replicas) == 3

    producer = Producer({**common, "acks": "all", "enable.idempotence": True})
    _produce(producer, topic, range(100))
    leader = _partition(admin, topic).leader

    assert _devkafka.kill_node(data_dir, leader)
    _wait_for(lambda: _partition(admin, topic).leader not in (leader, -1), "a new leader")
    _produce(producer, topic, range(100, 200))  # acks=all: the two survivors are the min ISR
    transactional = Producer({**common, "transactional.id": f"tx-{topic}"})
    transactional.init_transactions(120)
    transactional.begin_transaction()
    _produce(transactional, topic, range(200, 210))
    transactional.commit_transaction(120)

    consumer = Consumer(
        {
            **common,
            "group.id": f"g-{topic}",
            "auto.offset.reset": "earliest",
            "isolation.level": "read_committed",
        }
    )
    consumer.subscribe([topic])
    seen: list[int] = []
    deadline = time.monotonic() + 180
    while len(seen) < 210 and time.monotonic() < deadline:
        message = consumer.poll(1.0)
        if message is not None and message.error() is None:
            seen.append(int(message.value() or b"-1"))
    consumer.commit(asynchronous=False)
    consumer.close()
    assert seen == list(range(210))
    topics = admin.list_topics(timeout=10).topics
    for internal in INTERNAL:  # made while a broker was down
        assert len(topics[internal].partitions[0].replicas) == 3
    resource = ConfigResource(ConfigResource.Type.TOPIC, topic)
    configs = admin.describe_configs([resource])[resource].result(30)
    assert configs["min.insync.replicas"].value == "2"

    again = _devkafka.restart_node(data_dir, leader)
    assert {node.node_id for node in again.nodes} == {1, 2, 3}
    print(f"node {leader} back in {again.seconds:.1f} s")
    _wait_for(lambda: leader in _partition(admin, topic).isrs, f"node {leader} back in the ISR")
    status = _devkafka.status(data_dir)
    assert status is not None and status.ready
