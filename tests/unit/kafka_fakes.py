"""Stand-ins for librdkafka clients in unit tests: scripted delivery outcomes, no broker."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from confluent_kafka import KafkaError

TIMED_OUT = KafkaError(KafkaError._MSG_TIMED_OUT, "Local: Message timed out")


class FakeProducer:
    """Queues each produce call's delivery report; ``plan`` says what the n-th call gets (None = ack)."""

    def __init__(self, plan: list[Any], on_error: Callable[[KafkaError], None]) -> None:
        self.plan = plan
        self.on_error = on_error
        self.produced: list[bytes] = []
        self.topics: list[str] = []
        self.reports: list[tuple[Callable[..., None], KafkaError | None]] = []
        self.purged = False

    def produce(self, topic: str, value: bytes, key: bytes | None, **kw: Any) -> None:
        outcome = self.plan.pop(0) if self.plan else None
        if isinstance(outcome, BaseException):
            raise outcome
        self.topics.append(topic)
        self.produced.append(value)
        self.reports.append((kw["on_delivery"], outcome))

    def poll(self, timeout: float) -> int:
        reports, self.reports = self.reports, []
        if not reports:
            time.sleep(timeout)  # as librdkafka waits when there is nothing to report
        for callback, err in reports:
            callback(err, None)
        return len(reports)

    def purge(self) -> None:
        self.purged = True
