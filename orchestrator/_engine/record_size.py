"""The largest record the processor may produce, checked before producing.

Why: a record over the producer's ``message.max.bytes`` makes ``produce()`` raise MSG_SIZE_TOO_LARGE, and one
over its topic's ``max.message.bytes`` fails the transaction at commit. Either way the batch aborts, is
reprocessed, produces the same record and aborts again: the processor wedges on one run's oversized state
(a run's state holds its input and every step result, so it can outgrow the limit although each payload is
within ``max_payload_bytes``). Checked before anything of an input is produced, the oversize becomes an
outcome of that input instead (a failed step, a parked run, a dead letter).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

LIBRDKAFKA_DEFAULT_MESSAGE_MAX_BYTES = 1_000_000
OVERHEAD_BYTES = 1024
"""Room for what the broker counts besides key and value: the record batch header (61 bytes), the record's
own varints and headers, with a wide margin."""


def record_limit(producer_config: Mapping[str, Any], topic_configs: Iterable[Mapping[str, str]]) -> int:
    """Largest key + value the processor may produce to any of its output topics."""
    limits = [int(producer_config.get("message.max.bytes", LIBRDKAFKA_DEFAULT_MESSAGE_MAX_BYTES))]
    limits += [int(c["max.message.bytes"]) for c in topic_configs if "max.message.bytes" in c]
    return min(limits) - OVERHEAD_BYTES


def first_oversize(records: Iterable[tuple[str, bytes | None, bytes | None, int]], limit: int) -> str:
    """A description of the first (topic, value, key, partition) over ``limit``, or "" when all fit."""
    for topic, value, key, _ in records:
        size = len(value or b"") + len(key or b"")
        if size > limit:
            return (
                f"a {topic} record of {size} bytes is over the limit of {limit} bytes (the producer's "
                "message.max.bytes and the topics' max.message.bytes, less overhead)"
            )
    return ""
