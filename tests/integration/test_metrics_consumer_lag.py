"""Consumer lag as the engine samples it (`metrics.ConsumerLag`), on the broker: cached end offset minus
position, without a broker call. On a transactional topic, a drained partition shows 0 (the position moves
past the commit markers); mid-way, the lag counts the records not consumed plus the markers ahead."""

from __future__ import annotations

import time

from confluent_kafka import Consumer, Producer
from conftest import CreateTopics
from prometheus_client import REGISTRY

from orchestrator._engine import metrics

RECORDS_PER_TXN, TXNS = 5, 2


def lag(topic: str) -> float | None:
    return REGISTRY.get_sample_value(
        "orchestrator_consumer_lag", {"component": "unit-lag", "topic": topic, "partition": "0"}
    )


def test_lag_counts_what_is_left_and_is_zero_once_drained(
    kafka_bootstrap: str, unique_name: str, create_topics: CreateTopics
) -> None:
    (topic,) = create_topics(unique_name)
    producer = Producer({"bootstrap.servers": kafka_bootstrap, "transactional.id": unique_name})
    producer.init_transactions(30)
    for _ in range(TXNS):
        producer.begin_transaction()
        for i in range(RECORDS_PER_TXN):
            producer.produce(topic, str(i).encode(), partition=0)
        producer.commit_transaction(30)
    consumer = Consumer(
        {
            "bootstrap.servers": kafka_bootstrap,
            "group.id": unique_name,
            "isolation.level": "read_committed",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    sampler = metrics.ConsumerLag("unit-lag")
    try:
        consumer.subscribe([topic])
        taken = 0
        deadline = time.monotonic() + 30
        while taken < 3 and time.monotonic() < deadline:
            taken += len([m for m in consumer.consume(3 - taken, 1.0) if m.error() is None])
        assert taken == 3
        sampler.refresh(consumer)
        total = TXNS * (RECORDS_PER_TXN + 1)  # records and one commit marker per transaction
        assert lag(topic) == total - 3
        while taken < TXNS * RECORDS_PER_TXN and time.monotonic() < deadline:
            taken += len([m for m in consumer.consume(10, 1.0) if m.error() is None])
        assert taken == TXNS * RECORDS_PER_TXN
        # librdkafka moves the position past the last marker with the next fetch.
        while time.monotonic() < deadline:
            consumer.poll(0.2)
            sampler.refresh(consumer)
            if lag(topic) == 0:
                break
        assert lag(topic) == 0
        sampler.forget()
        assert lag(topic) is None
    finally:
        consumer.close()
