"""Reading topics by assignment, start to end: the client's and CLI's view of runs without a database.

The changelog is a compacted table of run states, so "the state of run X" is the last ``r/X`` record of
its partition, and "all runs" is one pass over the topic. Fine for operators and tests; hot paths never
scan (clients await outcomes instead).
"""

from __future__ import annotations

from collections.abc import Iterator

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, Message, TopicPartition

from orchestrator._engine import access, kafka, reach
from orchestrator.settings import Settings


def read_partitions(
    settings: Settings, topic: str, partitions: list[int], timeout: float = 30.0, since_ms: int | None = None
) -> Iterator[Message]:
    """Every committed record of ``partitions`` of ``topic``, from the beginning (or from the first record
    at or after ``since_ms``, found through Kafka's time index) to the current end.

    A cluster that cannot be reached fails the read at once (`reach.KafkaUnreachableError`), not after
    ``timeout``."""
    reach.first_contact(settings, kafka.base(settings), topic)
    conf = kafka.reader_config(settings, **{"fetch.max.bytes": 52_428_800})
    consumer = kafka.new_consumer(conf)
    try:
        try:
            pending, tps = _starts(consumer, topic, partitions, timeout, since_ms)
        except KafkaException:
            access.raise_if_refused(settings, conf)  # a wrong password, not a slow broker: say so
            raise
        if not tps:
            return
        consumer.assign(tps)
        while pending:
            # consume() waits for a full batch or the timeout: a long timeout made every read of a small
            # topic take at least that long (1 s per CLI/UI read); a short one just loops more.
            for msg in consumer.consume(10_000, timeout=0.05):
                err = msg.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        pending.discard(msg.partition())
                        continue
                    raise KafkaException(err)
                yield msg
    finally:
        consumer.close()


def _starts(
    consumer: Consumer, topic: str, partitions: list[int], timeout: float, since_ms: int | None
) -> tuple[set[int], list[TopicPartition]]:
    """The partitions with records to read, and where each read starts."""
    starts: dict[int, int] = {}
    if since_ms is not None:
        wanted = [TopicPartition(topic, p, since_ms) for p in partitions]
        starts = {tp.partition: tp.offset for tp in consumer.offsets_for_times(wanted, timeout=timeout)}
    pending = set()
    tps = []
    for p in partitions:
        low, high = kafka.watermarks(consumer, TopicPartition(topic, p), timeout)
        start = starts.get(p, OFFSET_BEGINNING)
        if high > low and (since_ms is None or 0 <= start < high):
            pending.add(p)
            tps.append(TopicPartition(topic, p, start))
    return pending, tps


def partition_count(settings: Settings, topic: str, timeout: float = 10.0) -> int:
    conf = kafka.reader_config(settings)
    consumer = kafka.new_consumer(conf)
    try:
        try:
            md = consumer.list_topics(topic, timeout=timeout)
        except KafkaException:
            access.raise_if_refused(settings, conf)
            raise
        meta = md.topics.get(topic)
        if meta is None or meta.error is not None:
            raise KafkaException(meta.error if meta else KafkaError(KafkaError.UNKNOWN_TOPIC_OR_PART))
        return len(meta.partitions)
    finally:
        consumer.close()
