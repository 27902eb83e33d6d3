"""Where each processor instance answers run queries: the ``{app}.instances`` topic (compacted, keyed by
instance id, JSON values), written by a processor when its HTTP server starts, read by fan-out clients.

Why a topic and not the consumer group's member ``client.id``: the group coordinator keeps a static
member's ``client.id`` (and host) from its first join when the instance restarts under the same
``group.instance.id`` (measured on Kafka 4.3: a restarted member advertising a new port kept showing the
old one), so an endpoint that changes with a restart (an OS-picked port, a pod's new IP) would be stale.
The group still says which instances are live and which partitions each owns (ADR 0016); this registry
only maps an instance id to its latest endpoint.
"""

from __future__ import annotations

import json
import socket
import threading
import time

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, TopicPartition

from orchestrator import topology
from orchestrator._engine import kafka
from orchestrator.settings import Settings

ROLE = "instances"


def registry_topic(app_name: str) -> str:
    return topology.topic_name(ROLE, app_name)


def default_host(settings: Settings) -> str:
    """The address of the interface this host reaches the first bootstrap server through (no packet is
    sent): what other hosts on that network can reach it at, without configuration."""
    first = settings.bootstrap_servers.split(",")[0].strip()
    host, _, port = first.rpartition(":")
    host = host.strip("[]") or "127.0.0.1"
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.connect((host, int(port or 9092)))
            address: str = sock.getsockname()[0]
            return address
    except (OSError, ValueError):
        return socket.gethostname()


def publish(settings: Settings, app_name: str, instance_id: str, url: str, timeout_s: float = 30.0) -> None:
    """Record (replace) ``instance_id``'s endpoint; KafkaException if it is not acknowledged in time."""
    producer = kafka.new_producer(kafka.producer_config(settings))
    value = json.dumps({"instance_id": instance_id, "url": url, "published_ms": int(time.time() * 1000)})
    errors: list[KafkaError] = []
    producer.produce(
        registry_topic(app_name),
        value.encode(),
        instance_id.encode(),
        partition=0,
        on_delivery=lambda err, _msg: errors.append(err) if err is not None else None,
    )
    left = producer.flush(timeout_s)
    if errors:
        raise KafkaException(errors[0])
    if left:
        raise KafkaException(KafkaError(KafkaError._TIMED_OUT, "publishing the query endpoint timed out"))


class Endpoints:
    """The registry as a client keeps it: one consumer, read up to the end on each ``refresh``."""

    def __init__(self, settings: Settings, app_name: str) -> None:
        self.topic = registry_topic(app_name)
        self._consumer: Consumer | None = kafka.new_consumer(kafka.reader_config(settings))
        self._consumer.assign([TopicPartition(self.topic, 0, OFFSET_BEGINNING)])
        self._next = 0
        self.urls: dict[str, str] = {}
        self._lock = threading.Lock()  # one reader at a time: a UI may share a client between requests

    def refresh(self, timeout_s: float = 5.0) -> dict[str, str]:
        """instance id -> URL, as of the end of the registry now (one watermark round trip when unchanged)."""
        with self._lock:
            return self._refresh(timeout_s)

    def _refresh(self, timeout_s: float) -> dict[str, str]:
        assert self._consumer is not None
        _, high = kafka.watermarks(self._consumer, TopicPartition(self.topic, 0), timeout_s)
        deadline = time.monotonic() + timeout_s
        while self._next < high and time.monotonic() < deadline:
            for msg in self._consumer.consume(500, timeout=0.2):
                if msg.error() is not None:
                    continue  # partition EOF, or a broker away: the loop reads again until the deadline
                self._next = (msg.offset() or 0) + 1
                key = msg.key()
                value = msg.value()
                if key is None:
                    continue
                if value is None:
                    self.urls.pop(key.decode(), None)
                    continue
                try:
                    self.urls[key.decode()] = str(json.loads(value)["url"])
                except (ValueError, KeyError, TypeError):
                    continue  # not ours: ignored, the instance then answers nothing (reported missing)
        return dict(self.urls)

    def close(self) -> None:
        with self._lock:
            if self._consumer is not None:
                self._consumer.close()
                self._consumer = None
