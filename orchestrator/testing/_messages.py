"""A stand-in for a consumed Kafka record, so ``env.emit`` goes through the same translation as a processor.

``orchestrator._engine.sources.translate`` reads only ``topic()``, ``partition()``, ``offset()`` and
``value()`` of a record; this class answers those (and ``key()``) without a broker.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class FakeMessage:
    """One record of a user topic, as the test emitted it."""

    topic_name: str
    partition_number: int
    offset_number: int
    raw_value: bytes | None
    raw_key: bytes | None = None

    def topic(self) -> str:
        return self.topic_name

    def partition(self) -> int:
        return self.partition_number

    def offset(self) -> int:
        return self.offset_number

    def value(self) -> bytes | None:
        return self.raw_value

    def key(self) -> bytes | None:
        return self.raw_key

    def error(self) -> None:
        return None
