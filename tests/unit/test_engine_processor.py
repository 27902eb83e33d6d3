"""The processor's per-record handling without a broker: a recording producer and real stores in a temp dir.

What needs Kafka itself (transactions, outages, the client's wait) is in tests/integration.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Message

from orchestrator import App, Settings
from orchestrator._engine import events as ev
from orchestrator._engine.processor import Processor, ProcessorConfig
from orchestrator._engine.records import decode_dead_letter
from orchestrator._engine.store import PartitionStore


class RecordingProducer:
    """Stands in for the transactional producer: keeps what would have been produced."""

    def __init__(self) -> None:
        self.records: list[tuple[str, bytes | None, bytes | None]] = []

    def produce(self, topic: str, value: bytes | None = None, key: bytes | None = None, **_: Any) -> None:
        self.records.append((topic, key, value))

    def poll(self, timeout: float = 0) -> int:
        return 0

    def to(self, topic: str) -> list[bytes | None]:
        return [value for t, _, value in self.records if t == topic]


@pytest.fixture
def app() -> App:
    return App("unit", settings=Settings(bootstrap_servers="127.0.0.1:1", partitions=1))


@pytest.fixture
def processor(app: App, tmp_path: Path) -> Iterator[Processor]:
    proc = Processor(app, ProcessorConfig(instance_id="u0", state_dir=tmp_path))
    proc._producer = RecordingProducer()  # type: ignore[assignment]
    proc.stores[0] = PartitionStore(tmp_path / "p0", 0)
    proc.keyed_stores[0] = PartitionStore(tmp_path / "k0", 0)
    yield proc
    proc._shutdown()


def _produced(proc: Processor) -> RecordingProducer:
    producer = proc._producer
    assert isinstance(producer, RecordingProducer)
    return producer


def test_keyed_record_that_raises_midway_leaves_none_of_its_writes(
    processor: Processor, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = processor.keyed_stores[0]
    store.put(b"e/earlier", b"from an earlier record of the batch")

    def half_done(store: PartitionStore, event: ev.Event, now_ms: int) -> Any:
        store.put(b"e/half", b"written before the bug")
        store.delete(b"e/earlier")
        raise RuntimeError("router bug")

    monkeypatch.setattr(processor.router, "handle", half_done)
    body = ev.DomainEvent("approved", "k1", b"{}", "test")
    value = ev.encode_event(ev.Event("d1", "", "", 1, body))
    msg = Message(topic=processor.keyed, partition=0, offset=7, key=b"approved\x1fk1", value=value)

    processor._handle_keyed(msg, 1_000)

    assert store.dirty() == {b"e/earlier": b"from an earlier record of the batch"}
    (letter,) = [decode_dead_letter(v) for v in _produced(processor).to(processor.dlq)]
    assert letter.error_type == "InternalError.RuntimeError" and letter.source_offset == 7
