"""`reach.first_contact` on a far cluster: each metadata try waits longer than the last.

A pure unit test: the admin client is a stand-in that answers only a try that waits one round trip, which
is what librdkafka's ``list_topics(timeout=...)`` does on a cluster with that round-trip time.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException

from orchestrator import Settings
from orchestrator._engine import reach
from orchestrator._kafka_config import ClientConfig


class FarAdmin:
    """Answers a metadata request only when the try's timeout covers the round trip ``rtt``."""

    def __init__(self, rtt: float) -> None:
        self.rtt = rtt
        self.timeouts: list[float] = []

    def list_topics(self, topic: str | None = None, timeout: float = -1) -> object:
        self.timeouts.append(timeout)
        if timeout < self.rtt:
            time.sleep(timeout)
            raise KafkaException(KafkaError(KafkaError._TIMED_OUT, "timed out"))
        return object()

    def poll(self, timeout: float = 0) -> int:
        return 0


def _probe(monkeypatch: pytest.MonkeyPatch, admin: FarAdmin) -> None:
    def new_admin(conf: Any) -> FarAdmin:
        return admin

    monkeypatch.setattr(reach.kafka, "new_admin", new_admin)


def test_a_cluster_with_a_long_round_trip_is_reached(monkeypatch: pytest.MonkeyPatch) -> None:
    admin = FarAdmin(rtt=0.6)  # every 0.25 s try would time out: a reachable cluster reported unreachable
    _probe(monkeypatch, admin)
    reach.first_contact(Settings(bootstrap_servers="far:9092"), ClientConfig({}), timeout=3.0)
    assert admin.timeouts[:3] == [0.25, 0.5, 1.0]  # grown per try


def test_the_tries_never_wait_past_the_deadline(monkeypatch: pytest.MonkeyPatch) -> None:
    admin = FarAdmin(rtt=60)  # silent: packets dropped
    _probe(monkeypatch, admin)
    started = time.monotonic()
    with pytest.raises(reach.KafkaUnreachableError, match="no answer within 2 s"):
        reach.first_contact(Settings(bootstrap_servers="far:9092"), ClientConfig({}), timeout=2.0)
    assert time.monotonic() - started < 3.0
    assert sum(admin.timeouts) == pytest.approx(2.0, abs=0.3)
    assert admin.timeouts[-1] < 1.0  # the last try only waits what is left
