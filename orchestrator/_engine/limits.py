"""How large a record the engine may produce, learnt from the producer and the broker: one notion for all.

A record over the limit does not fail alone: librdkafka refuses it in ``produce`` (over the producer's
``message.max.bytes``) or the broker refuses its batch (over the topic's ``max.message.bytes``), and the
whole transaction aborts. The processor would then consume the same input again and fail again, forever.
So inputs whose engine records would be too large are refused before anything is produced: their size is
checked against the smallest limit on their way, and the input is dead-lettered with that reason.

One `RecordLimit` (the smallest limit on a record's way, named after the setting that imposes it) serves
every check: the processor learns it once at start for all the topics it writes to, and checks against it
the records an input makes (`first_oversize`), the engine records of a user record (``sources``) and the
copy a dead letter carries (`dead_letter_copy`). The processor's records and the requests made from user
records travel through several engine topics, so the smallest limit of them all is the one that matters.

The topics' settings are asked from the broker once and kept for ``CACHE_SECONDS`` (a changed topic
config is seen within that time); if the broker cannot tell, the broker default is assumed and the
question is asked again after ``RETRY_SECONDS``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from confluent_kafka import KafkaException, Message
from confluent_kafka.admin import (  # type: ignore[attr-defined]  # re-exported without __all__
    ConfigResource,
    ResourceType,
)

from orchestrator._engine import kafka
from orchestrator.settings import Settings

log = logging.getLogger("orchestrator.limits")

PRODUCER_DEFAULT_MAX_BYTES = 1_000_000
"""librdkafka's default ``message.max.bytes``."""
BROKER_DEFAULT_MAX_BYTES = 1_048_588
"""Kafka's default ``max.message.bytes`` of a topic (``message.max.bytes`` of the broker)."""
RECORD_OVERHEAD_BYTES = 256
"""Room for the record batch header (61 bytes), the record's own framing and headers: a record whose key
and value fit in ``max_bytes - RECORD_OVERHEAD_BYTES`` fits in a batch of its own under every limit."""
CACHE_SECONDS = 300.0
RETRY_SECONDS = 60.0
DESCRIBE_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class RecordLimit:
    """The largest record (key + value, uncompressed) one may produce, and which setting says so."""

    max_bytes: int
    source: str  # e.g. "max.message.bytes of topic shop.inbox"

    @property
    def room(self) -> int:
        """The most key + value bytes one record may hold."""
        return self.max_bytes - RECORD_OVERHEAD_BYTES

    def fits(self, key_bytes: int, value_bytes: int) -> bool:
        return key_bytes + value_bytes <= self.room

    def describe(self) -> str:
        return f"{self.max_bytes} bytes ({self.source}, less {RECORD_OVERHEAD_BYTES} bytes of framing)"

    def lowered(self) -> RecordLimit:
        """An eighth lower: Kafka refused a record this limit let through (a topic's limit lowered since it
        was learnt, or overhead not counted); checking against less turns that input into an outcome (a
        failed step, a parked run, a dead letter) instead of an abort, again and again."""
        return RecordLimit(self.max_bytes * 7 // 8, f"{self.source}, lowered after Kafka refused a record")


SizedRecord = tuple[str, bytes | None, bytes | None, int] | tuple[str, bytes | None, bytes | None, int, Any]
"""(topic, value, key, partition[, headers]): what `first_oversize` checks; headers are not counted."""


def first_oversize(records: Iterable[SizedRecord], limit: RecordLimit) -> str:
    """A description of the first (topic, value, key, partition[, headers]) over ``limit``; "" if all fit.

    Every record an input makes is checked before any of it is produced: one produced record over a limit
    fails the whole transaction, and the input would be consumed and fail again, forever. Headers (trace
    context, < 200 bytes) are not counted; records with and without them are taken as they are, so the
    processor checks each input's records without copying them.
    """
    for topic, value, key, *_ in records:
        key_bytes, value_bytes = len(key or b""), len(value or b"")
        if not limit.fits(key_bytes, value_bytes):
            size = key_bytes + value_bytes
            return (
                f"a {topic} record of {size} bytes is over the limit of {limit.describe()}, "
                "the smallest of the producer's message.max.bytes and its topics' max.message.bytes"
            )
    return ""


_lock = threading.Lock()
_cache: dict[tuple[str, tuple[str, ...], int], tuple[float, RecordLimit]] = {}


def record_limit(
    settings: Settings, topics: tuple[str, ...], producer_conf: Mapping[str, Any] | None = None
) -> RecordLimit:
    """The smallest of the producer's ``message.max.bytes`` and the ``max.message.bytes`` of ``topics``."""
    producer_max = int((producer_conf or {}).get("message.max.bytes", PRODUCER_DEFAULT_MAX_BYTES))
    key = (settings.bootstrap_servers, tuple(sorted(topics)), producer_max)
    now = time.monotonic()
    with _lock:
        cached = _cache.get(key)
    if cached is not None and cached[0] > now:
        return cached[1]
    limit = RecordLimit(producer_max, "message.max.bytes of the processor's producer")
    topic_limits, complete = _topic_limits(settings, topics)
    for topic, max_bytes in sorted(topic_limits.items()):
        if max_bytes < limit.max_bytes:
            limit = RecordLimit(max_bytes, f"max.message.bytes of topic {topic}")
    with _lock:
        _cache[key] = (now + (CACHE_SECONDS if complete else RETRY_SECONDS), limit)
    return limit


def _topic_limits(settings: Settings, topics: tuple[str, ...]) -> tuple[dict[str, int], bool]:
    """``max.message.bytes`` per topic (the broker default for those it could not describe), and
    whether every topic was described."""
    out = {topic: BROKER_DEFAULT_MAX_BYTES for topic in topics}
    complete = True
    admin = kafka.new_admin(kafka.base(settings))
    resources = [ConfigResource(ResourceType.TOPIC, topic) for topic in topics]
    try:
        futures = admin.describe_configs(resources, request_timeout=DESCRIBE_TIMEOUT_S)
    except KafkaException as exc:
        log.warning("could not describe topics %s (%s); assuming the broker default", topics, exc)
        admin.poll(0)  # hands librdkafka's queued log lines to logging (ADR 0022)
        return out, False
    for resource, future in futures.items():
        try:
            entry = future.result(DESCRIBE_TIMEOUT_S).get("max.message.bytes")
            if entry is not None and entry.value is not None:
                out[resource.name] = int(entry.value)
        except (KafkaException, TimeoutError, ValueError) as exc:
            complete = False
            log.warning(
                "could not read max.message.bytes of topic %s (%s); assuming the broker default %d",
                resource.name,
                exc,
                BROKER_DEFAULT_MAX_BYTES,
            )
    admin.poll(0)  # hands librdkafka's queued log lines to logging (ADR 0022)
    return out, complete


NOT_COPIED = ".RecordNotCopied"
"""Suffix of the error type of a dead letter that left the record's key and value out: re-driving it must
read the record from its source, not produce the empty copy (a tombstone) back."""


def dead_letter_copy(
    msg: Message, error_type: str, reason: str, limit: RecordLimit
) -> tuple[Message, str, str]:
    """The record to put in the DLQ for ``msg``, with the error type and reason to give.

    A dead letter carries the record's key and value; if they would make it too large for the DLQ, the
    dead letter would fail the transaction like the record itself. The copy then leaves them out, its
    error type ends with `NOT_COPIED`, and the reason says where to read them (the source topic keeps them
    for its retention).
    """
    key, value = msg.key() or b"", msg.value() or b""
    if limit.fits(len(key), len(value) + len(reason.encode()) + len(msg.topic() or "")):
        return msg, error_type, reason
    stripped = Message(
        topic=msg.topic(), partition=msg.partition(), offset=msg.offset(), key=None, value=None
    )
    where = f"{msg.topic()}[{msg.partition()}]@{msg.offset()}"
    return (
        stripped,
        error_type + NOT_COPIED,
        f"{reason}. The record's key and value ({len(key) + len(value)} bytes) are not copied here, over "
        f"the DLQ's limit of {limit.describe()}: read them from {where}",
    )
