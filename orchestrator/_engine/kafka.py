"""Kafka client configurations the engine components share, in one place so they cannot drift apart.

Every consumer of engine topics reads ``read_committed``: records of aborted transactions must never be
acted on. Producers partition with murmur2 like the Java client, so keyed records land where
`partitioning.partition_for` says.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from orchestrator import topology
from orchestrator._engine import access
from orchestrator._kafka_config import ClientConfig, KafkaConfigError, scrub
from orchestrator._logging import librdkafka_logger
from orchestrator.app import App
from orchestrator.settings import Settings

_C = TypeVar("_C")

# How long the broker may hold a fetch that has nothing new for a tailing consumer. The broker answers a held
# fetch as soon as records (or, for read_committed, a transaction marker) arrive, so this costs no latency;
# a short value only makes every idle consumer re-ask ~100 times a second. Measured (bench, one processor,
# one worker, 5-step runs): 10 ms kept the idle broker at 0.20 cores (0.02 with 500 ms), and at 256 callers
# gave 297 runs/s against 464 with 500 ms. Readers that must notice the end of a partition (restore, replay)
# keep a short wait: they get their end-of-partition answer only when a fetch returns.
TAIL_FETCH_WAIT_MS = 500


def base(settings: Settings, **extra: Any) -> ClientConfig:
    """Where the cluster is and how to reach it: the operator's settings (``Settings.kafka``) included.

    Every builder below starts here, and so does every client the engine makes: taking the settings
    rather than a bootstrap string is what keeps a secured cluster's SASL/TLS settings from being left
    out of any one client. Order: engine defaults, then ``Settings.kafka``, then the caller's ``extra``.
    """
    return _build(settings, {}, extra)


def _build(settings: Settings, defaults: dict[str, Any], extra: dict[str, Any]) -> ClientConfig:
    conf = ClientConfig(
        {"bootstrap.servers": settings.bootstrap_servers, "client.dns.lookup": "use_all_dns_ips"}
    )
    conf.update(defaults)
    conf.update(settings.kafka_client_settings())  # may tune the defaults; engine-owned keys are refused
    conf.update(extra)
    if "logger" not in conf:
        # librdkafka's lines go through Python logging (orchestrator.kafka.librdkafka), never raw to stderr.
        conf["logger"] = librdkafka_logger(conf)
    return conf


def consumer_config(settings: Settings, group: str, **extra: Any) -> ClientConfig:
    defaults = {
        "group.id": group,
        "isolation.level": "read_committed",
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
        "session.timeout.ms": 10_000,
        "heartbeat.interval.ms": 1_000,
        "fetch.wait.max.ms": TAIL_FETCH_WAIT_MS,
        "partition.assignment.strategy": "cooperative-sticky",
    }
    return _build(settings, defaults, extra)


def reader_config(settings: Settings, **extra: Any) -> ClientConfig:
    """A group-less consumer for reading partitions by assignment (restore, watchers, the CLI)."""
    defaults = {
        "group.id": "orchestrator-reader",
        "isolation.level": "read_committed",
        "enable.auto.commit": False,
        "enable.partition.eof": True,
        "fetch.wait.max.ms": 10,
    }
    return _build(settings, defaults, extra)


def producer_config(settings: Settings, **extra: Any) -> ClientConfig:
    defaults = {
        "enable.idempotence": True,
        "acks": "all",
        "linger.ms": 1,
        "partitioner": "murmur2_random",
        "compression.type": "lz4",
    }
    return _build(settings, defaults, extra)


def transactional_producer_config(settings: Settings, transactional_id: str, **extra: Any) -> ClientConfig:
    return producer_config(
        settings,
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


def new_producer(conf: ClientConfig) -> Producer:
    """A Producer, or a `KafkaConfigError` saying which setting librdkafka refused (no secret in it)."""
    return _create(Producer, conf)


def new_consumer(conf: ClientConfig) -> Consumer:
    """A Consumer, or a `KafkaConfigError` saying which setting librdkafka refused (no secret in it)."""
    return _create(Consumer, conf)


def new_admin(conf: ClientConfig) -> AdminClient:
    """An AdminClient, or a `KafkaConfigError` saying which setting librdkafka refused (no secret in it)."""
    return _create(AdminClient, conf)


def _create(factory: Callable[[dict[str, Any]], _C], conf: ClientConfig) -> _C:
    try:
        return factory(dict(conf))
    except (KafkaException, ValueError, TypeError) as exc:
        err = exc.args[0] if exc.args else exc
        text = err.str() if isinstance(err, KafkaError) else str(err)
        # `from None`: the original exception's text is not scrubbed, so it must not ride along.
        raise KafkaConfigError(
            f"Kafka client settings refused: {scrub(text, conf)}. Check the Kafka settings "
            "(ORCHESTRATOR_KAFKA__*, ORCHESTRATOR_KAFKA_CONFIG, ORCHESTRATOR_KAFKA_CONFIG_FILE)."
        ) from None


def ensure_topics(app: App, timeout: float = 30.0, component: str = "client") -> None:
    """Create the app's missing topics; never alters existing ones (`topics plan` shows drift).

    A principal whose ACLs deny the check gets a `KafkaAccessError` naming ``component``'s ACL plan."""
    from orchestrator import _topic_admin

    specs = topology.engine_topics(app.name, app.settings, sorted(app.queues))
    conf = base(app.settings)
    admin = new_admin(conf)
    try:
        _topic_admin.apply(admin, specs, timeout=timeout)
    except (_topic_admin.TopicAdminError, KafkaException) as exc:
        # Wrong credentials look like an unreachable broker: say so rather than retry them for ever.
        access.raise_if_refused(app.settings, conf)
        refused = access.denied(app.settings, exc, component)
        if refused is not None:
            raise refused from None
        raise
    finally:
        # An admin client's log lines wait in its queue until it is polled; nothing else polls this one.
        admin.poll(0)


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
