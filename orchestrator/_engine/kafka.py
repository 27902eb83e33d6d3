"""Kafka client configurations the engine components share, in one place so they cannot drift apart.

Every consumer of engine topics reads ``read_committed``: records of aborted transactions must never be
acted on. Producers partition with murmur2 like the Java client, so keyed records land where
`partitioning.partition_for` says.
"""

from __future__ import annotations

import time
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient

from orchestrator import topology
from orchestrator.app import App

# How long the broker may hold a fetch that has nothing new for a tailing consumer. The broker answers a held
# fetch as soon as records (or, for read_committed, a transaction marker) arrive, so this costs no latency;
# a short value only makes every idle consumer re-ask ~100 times a second. Measured (bench, one processor,
# one worker, 5-step runs): 10 ms kept the idle broker at 0.20 cores (0.02 with 500 ms), and at 256 callers
# gave 297 runs/s against 464 with 500 ms. Readers that must notice the end of a partition (restore, replay)
# keep a short wait: they get their end-of-partition answer only when a fetch returns.
TAIL_FETCH_WAIT_MS = 500


def base(bootstrap: str) -> dict[str, Any]:
    return {"bootstrap.servers": bootstrap, "client.dns.lookup": "use_all_dns_ips"}


def consumer_config(bootstrap: str, group: str, **extra: Any) -> dict[str, Any]:
    conf = base(bootstrap) | {
        "group.id": group,
        "isolation.level": "read_committed",
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
        "session.timeout.ms": 10_000,
        "heartbeat.interval.ms": 1_000,
        "fetch.wait.max.ms": TAIL_FETCH_WAIT_MS,
        "partition.assignment.strategy": "cooperative-sticky",
    }
    conf.update(extra)
    return conf


def reader_config(bootstrap: str, **extra: Any) -> dict[str, Any]:
    """A group-less consumer for reading partitions by assignment (restore, watchers, the CLI)."""
    conf = base(bootstrap) | {
        "group.id": "orchestrator-reader",
        "isolation.level": "read_committed",
        "enable.auto.commit": False,
        "enable.partition.eof": True,
        "fetch.wait.max.ms": 10,
    }
    conf.update(extra)
    return conf


def producer_config(bootstrap: str, **extra: Any) -> dict[str, Any]:
    conf = base(bootstrap) | {
        "enable.idempotence": True,
        "acks": "all",
        "linger.ms": 1,
        "partitioner": "murmur2_random",
        "compression.type": "lz4",
    }
    conf.update(extra)
    return conf


def transactional_producer_config(bootstrap: str, transactional_id: str, **extra: Any) -> dict[str, Any]:
    return producer_config(
        bootstrap,
        **{
            "transactional.id": transactional_id,
            # A dead instance's open transaction blocks read_committed readers until it times out.
            "transaction.timeout.ms": 10_000,
            # send_offsets_to_transaction right after a commit gets CONCURRENT_TRANSACTIONS from the
            # coordinator and retries after retry.backoff.ms (default 100 ms: KAFKA-5477,
            # confluent-kafka-python#967). Measured with bench txn-floor: 100 ms -> 10.6 ms per transaction.
            "retry.backoff.ms": 5,
        }
        | extra,
    )


def ensure_topics(app: App, timeout: float = 30.0) -> None:
    """Create the app's missing topics; never alters existing ones (`topics plan` shows drift)."""
    from orchestrator import _topic_admin

    specs = topology.engine_topics(app.name, app.settings, sorted(app.queues))
    admin = AdminClient(base(app.settings.bootstrap_servers))
    _topic_admin.apply(admin, specs, timeout=timeout)


_NOT_READY = (
    KafkaError.NOT_LEADER_FOR_PARTITION,
    KafkaError.LEADER_NOT_AVAILABLE,
    KafkaError.UNKNOWN_TOPIC_OR_PART,
    KafkaError._UNKNOWN_PARTITION,
    KafkaError._UNKNOWN_TOPIC,
)


def watermarks(consumer: Consumer, tp: TopicPartition, timeout: float = 30.0) -> tuple[int, int]:
    """(low, high) offsets, waiting out a just-created topic whose leader is not known yet."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            low, high = consumer.get_watermark_offsets(tp, timeout=max(1.0, deadline - time.monotonic()))
            return int(low), int(high)
        except KafkaException as exc:
            err = exc.args[0] if exc.args else None
            if not isinstance(err, KafkaError) or err.code() not in _NOT_READY or time.monotonic() > deadline:
                raise
            time.sleep(0.1)
