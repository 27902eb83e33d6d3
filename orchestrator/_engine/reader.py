"""Reading topics by assignment, start to end: the client's and CLI's view of runs without a database.

The changelog is a compacted table of run states, so "the state of run X" is the last ``r/X`` record of
its partition, and "all runs" is one pass over the topic. Fine for operators and tests; hot paths never
scan (clients await outcomes instead).
"""

from __future__ import annotations

from collections.abc import Iterator

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, Message, TopicPartition

from orchestrator._engine import kafka


def read_partitions(
    bootstrap: str, topic: str, partitions: list[int], timeout: float = 30.0
) -> Iterator[Message]:
    """Every committed record of ``partitions`` of ``topic`` from the beginning to the current end."""
    consumer = Consumer(kafka.reader_config(bootstrap, **{"fetch.max.bytes": 52_428_800}))
    try:
        pending = set()
        tps = []
        for p in partitions:
            low, high = kafka.watermarks(consumer, TopicPartition(topic, p), timeout)
            if high > low:
                pending.add(p)
                tps.append(TopicPartition(topic, p, OFFSET_BEGINNING))
        if not tps:
            return
        consumer.assign(tps)
        while pending:
            for msg in consumer.consume(10_000, timeout=1.0):
                err = msg.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        pending.discard(msg.partition())
                        continue
                    raise KafkaException(err)
                yield msg
    finally:
        consumer.close()


def partition_count(bootstrap: str, topic: str, timeout: float = 10.0) -> int:
    consumer = Consumer(kafka.reader_config(bootstrap))
    try:
        md = consumer.list_topics(topic, timeout=timeout)
        meta = md.topics.get(topic)
        if meta is None or meta.error is not None:
            raise KafkaException(meta.error if meta else KafkaError(KafkaError.UNKNOWN_TOPIC_OR_PART))
        return len(meta.partitions)
    finally:
        consumer.close()
