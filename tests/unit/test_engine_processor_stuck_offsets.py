"""A producer stuck in ``send_offsets_to_transaction`` (librdkafka#5456/#5511) is replaced, and the batch
is processed again with the new one, instead of the processor waiting forever (seen in test_worker_faults).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Message, TopicPartition

from orchestrator import App, Settings, WorkflowContext
from orchestrator._engine import events as ev
from orchestrator._engine import processor as processor_module
from orchestrator._engine.processor import Processor, ProcessorConfig
from orchestrator._engine.store import PartitionStore


class Consumer:
    def __init__(self, inbox: str) -> None:
        self.inbox = inbox
        self.seeks: list[tuple[str, int, int]] = []

    def consumer_group_metadata(self) -> object:
        return object()

    def assignment(self) -> list[TopicPartition]:
        return [TopicPartition(self.inbox, 0)]

    def committed(self, partitions: list[TopicPartition], timeout: float = 0) -> list[TopicPartition]:
        return [TopicPartition(tp.topic, tp.partition, 10) for tp in partitions]

    def seek(self, tp: TopicPartition) -> None:
        self.seeks.append((tp.topic, tp.partition, tp.offset))

    def close(self) -> None: ...


class Producer:
    """A transactional producer; ``stuck`` ones block in send_offsets_to_transaction until released."""

    made: list[Producer] = []
    release = threading.Event()

    def __init__(self, config: Any = None, *, stuck: bool = False) -> None:
        self.stuck = stuck
        self.calls: list[str] = []
        Producer.made.append(self)

    def init_transactions(self, timeout: float = 0) -> None:
        self.calls.append("init_transactions")

    def begin_transaction(self) -> None:
        self.calls.append("begin_transaction")

    def produce(self, topic: str, value: bytes | None = None, key: bytes | None = None, **_: Any) -> None:
        self.calls.append(f"produce {topic}")

    def poll(self, timeout: float = 0) -> int:
        return 0

    def send_offsets_to_transaction(self, offsets: Any, group: Any, timeout: float) -> None:
        self.calls.append("send_offsets_to_transaction")
        if self.stuck:
            Producer.release.wait()

    def flush(self, timeout: float = 0) -> int:
        return 0

    def commit_transaction(self, timeout: float = 0) -> None:
        self.calls.append("commit_transaction")

    def abort_transaction(self, timeout: float = 0) -> None:
        self.calls.append("abort_transaction")

    def purge(self, *_: Any) -> None:
        self.calls.append("purge")


@pytest.fixture
def processor(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Processor]:
    monkeypatch.setattr(processor_module, "Producer", Producer)
    monkeypatch.setattr(processor_module, "STUCK_CALL_GRACE_S", 0.05)
    Producer.made.clear()
    Producer.release.clear()
    app = App("unit", settings=Settings(bootstrap_servers="127.0.0.1:1", partitions=1))

    @app.workflow
    async def noop(ctx: WorkflowContext, x: int) -> int:
        return x

    proc = Processor(app, ProcessorConfig(instance_id="u0", state_dir=tmp_path))
    proc._running = True
    proc._txn_timeout_s = 0.1  # send_offsets gets its minimum timeout, 1 s
    proc.stores[0] = PartitionStore(tmp_path / "p0", 0)
    proc._consumer = Consumer(proc.inbox)  # type: ignore[assignment]
    yield proc
    Producer.release.set()
    proc._shutdown()


def test_a_producer_stuck_in_send_offsets_is_replaced_and_the_batch_processed_again(
    processor: Processor,
) -> None:
    stuck = Producer(stuck=True)
    processor._producer = stuck  # type: ignore[assignment]
    start = ev.Event("r/start", "r", "noop", 1, ev.StartRun(input=processor.app.data.encode(1)))
    msg = Message(topic=processor.inbox, partition=0, offset=10, key=b"r", value=ev.encode_event(start))

    processor._transaction([msg], [], 1_000)  # returns although send_offsets never does

    new = processor._producer
    assert isinstance(new, Producer) and new is not stuck and new.calls == ["init_transactions"]
    # Nothing else is asked of the stuck producer's transaction (an abort would be a conflicting call).
    assert "abort_transaction" not in stuck.calls and "commit_transaction" not in stuck.calls
    assert "purge" in stuck.calls
    assert processor.stats.aborts == 1 and processor.stats.transactions == 0
    assert processor.stores[0].dirty() == {}  # the batch's writes are discarded ...
    assert processor._consumer.seeks == [(processor.inbox, 0, 10)]  # type: ignore[union-attr]

    processor._transaction([msg], [], 1_000)  # ... and it is processed again with the new producer

    assert new.calls[-2:] == ["send_offsets_to_transaction", "commit_transaction"]
    assert processor.stats.transactions == 1
