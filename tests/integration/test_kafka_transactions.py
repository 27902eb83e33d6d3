"""The Kafka guarantees the engine is built on, checked against the real broker with confluent-kafka.

Consume-transform-produce with the consumer's offsets inside the producer's transaction (KIP-447), aborts
invisible to ``read_committed`` readers, and zombie fencing by ``transactional.id``. If any of these broke
(broker config, client version), exactly-once processing would silently break with it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator

import pytest
from confluent_kafka import (
    OFFSET_INVALID,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)

_QUIET = logging.getLogger("tests.librdkafka.transactions")
_QUIET.addHandler(logging.NullHandler())
_QUIET.propagate = False

TIMEOUT_S = 30.0


def _producer(bootstrap: str, transactional_id: str | None = None) -> Producer:
    conf: dict[str, object] = {"bootstrap.servers": bootstrap, "logger": _QUIET, "linger.ms": 0}
    if transactional_id is not None:
        conf["transactional.id"] = transactional_id
    return Producer(conf)


def _consumer(bootstrap: str, group: str, isolation: str = "read_committed") -> Consumer:
    return Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": group,
            "isolation.level": isolation,
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "logger": _QUIET,
        }
    )


@pytest.fixture
def closing() -> Iterator[list[Consumer]]:
    """Consumers to close at test end, so a failed assertion leaves no client threads behind."""
    consumers: list[Consumer] = []
    yield consumers
    for consumer in consumers:
        consumer.close()


def _poll(consumer: Consumer, count: int, until: bytes | None = None) -> list[Message]:
    """Poll until ``count`` records (or the record whose value is ``until``) arrived, or fail."""
    records: list[Message] = []
    deadline = time.monotonic() + TIMEOUT_S
    while time.monotonic() < deadline:
        msg = consumer.poll(0.5)
        if msg is None:
            continue
        if msg.error() is not None:
            raise KafkaException(msg.error())
        records.append(msg)
        if (until is not None and msg.value() == until) or (until is None and len(records) >= count):
            return records
    raise AssertionError(f"got {len(records)} records, expected {count if until is None else until!r}")


def _seed_input(bootstrap: str, topic: str, values: list[bytes]) -> None:
    producer = _producer(bootstrap)
    for value in values:
        producer.produce(topic, value=value, key=b"k")
    assert producer.flush(TIMEOUT_S) == 0


def _committed(bootstrap: str, group: str, topic: str) -> int:
    consumer = _consumer(bootstrap, group)
    try:
        (partition,) = consumer.committed([TopicPartition(topic, 0)], timeout=TIMEOUT_S)
        return int(partition.offset)
    finally:
        consumer.close()


CreateTopics = Callable[..., list[str]]


def _transform_in_transaction(
    bootstrap: str, unique_name: str, closing: list[Consumer], create_topics: CreateTopics, *, commit: bool
) -> tuple[str, str, str]:
    """Consume 3 inputs and produce 3 outputs plus the input offsets in one transaction; commit or abort."""
    source, sink, group = f"{unique_name}.in", f"{unique_name}.out", f"{unique_name}.group"
    create_topics(source, sink)
    _seed_input(bootstrap, source, [b"a", b"b", b"c"])
    consumer = _consumer(bootstrap, group)
    closing.append(consumer)
    consumer.subscribe([source])
    producer = _producer(bootstrap, f"{unique_name}.txn")
    producer.init_transactions(TIMEOUT_S)
    inputs = _poll(consumer, 3)
    producer.begin_transaction()
    for msg in inputs:
        producer.produce(sink, key=msg.key(), value=(msg.value() or b"").upper())
    offsets = [TopicPartition(source, 0, (inputs[-1].offset() or 0) + 1)]
    producer.send_offsets_to_transaction(offsets, consumer.consumer_group_metadata(), TIMEOUT_S)
    # Flush so the records reach the log even when aborting: librdkafka would otherwise purge unsent ones
    # locally, and the test would prove nothing about what the broker hides from read_committed readers.
    assert producer.flush(TIMEOUT_S) == 0
    if commit:
        producer.commit_transaction(TIMEOUT_S)
    else:
        producer.abort_transaction(TIMEOUT_S)
    return source, sink, group


def test_committed_transaction_publishes_output_and_moves_offsets(
    kafka_bootstrap: str, unique_name: str, closing: list[Consumer], create_topics: CreateTopics
) -> None:
    source, sink, group = _transform_in_transaction(
        kafka_bootstrap, unique_name, closing, create_topics, commit=True
    )

    reader = _consumer(kafka_bootstrap, f"{unique_name}.reader")
    closing.append(reader)
    reader.subscribe([sink])
    assert [msg.value() for msg in _poll(reader, 3)] == [b"A", b"B", b"C"]
    assert _committed(kafka_bootstrap, group, source) == 3


def test_aborted_transaction_is_invisible_to_read_committed(
    kafka_bootstrap: str, unique_name: str, closing: list[Consumer], create_topics: CreateTopics
) -> None:
    source, sink, group = _transform_in_transaction(
        kafka_bootstrap, unique_name, closing, create_topics, commit=False
    )
    # A committed sentinel after the aborted batch tells the readers where to stop looking.
    sentinel_producer = _producer(kafka_bootstrap, f"{unique_name}.sentinel")
    sentinel_producer.init_transactions(TIMEOUT_S)
    sentinel_producer.begin_transaction()
    sentinel_producer.produce(sink, value=b"end")
    sentinel_producer.commit_transaction(TIMEOUT_S)

    committed_reader = _consumer(kafka_bootstrap, f"{unique_name}.rc")
    uncommitted_reader = _consumer(kafka_bootstrap, f"{unique_name}.ru", isolation="read_uncommitted")
    closing.extend([committed_reader, uncommitted_reader])
    committed_reader.subscribe([sink])
    uncommitted_reader.subscribe([sink])

    assert [msg.value() for msg in _poll(committed_reader, 0, until=b"end")] == [b"end"]
    assert [msg.value() for msg in _poll(uncommitted_reader, 0, until=b"end")] == [b"A", b"B", b"C", b"end"]
    assert _committed(kafka_bootstrap, group, source) == OFFSET_INVALID


def test_new_producer_with_same_transactional_id_fences_the_old_one(
    kafka_bootstrap: str, unique_name: str, closing: list[Consumer], create_topics: CreateTopics
) -> None:
    topic, transactional_id = f"{unique_name}.out", f"{unique_name}.txn"
    create_topics(topic)
    zombie = _producer(kafka_bootstrap, transactional_id)
    zombie.init_transactions(TIMEOUT_S)
    zombie.begin_transaction()
    zombie.produce(topic, value=b"zombie")
    zombie.flush(TIMEOUT_S)

    successor = _producer(kafka_bootstrap, transactional_id)
    successor.init_transactions(TIMEOUT_S)  # bumps the epoch and aborts the zombie's open transaction

    with pytest.raises(KafkaException) as raised:
        zombie.produce(topic, value=b"zombie again")
        zombie.commit_transaction(TIMEOUT_S)
    error: KafkaError = raised.value.args[0]
    fenced_codes = {KafkaError._FENCED, KafkaError.PRODUCER_FENCED, KafkaError.INVALID_PRODUCER_EPOCH}
    assert error.fatal() or error.code() in fenced_codes, error

    successor.begin_transaction()
    successor.produce(topic, value=b"successor")
    successor.commit_transaction(TIMEOUT_S)
    reader = _consumer(kafka_bootstrap, f"{unique_name}.reader")
    closing.append(reader)
    reader.subscribe([topic])
    assert [msg.value() for msg in _poll(reader, 0, until=b"successor")] == [b"successor"]
