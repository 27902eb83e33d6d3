"""Poison records on the user's topics and on the engine's own topics never stop the processor.

Each poison record must end in the DLQ with a reason and its topic/partition/offset, the good records
around it must still be processed, the processor must keep running, and a restarted processor must not
meet the poison again (its offset was committed with the dead letter).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from confluent_kafka import Producer
from engine_support import ProcessorThread, WorkerThread, history, settings

from orchestrator import Admission, App, Trigger, WorkflowContext
from orchestrator._engine.reader import read_partitions
from orchestrator._engine.records import DeadLetter, decode_dead_letter
from orchestrator.topology import dlq_topic


def _produce(bootstrap: str, topic: str, *values: bytes | None, partition: int = 0) -> None:
    """Raw values on one partition, in order, as any service of the user's could write them."""
    producer = Producer({"bootstrap.servers": bootstrap})
    for value in values:
        producer.produce(topic, value, b"k", partition=partition)
    producer.flush(10)


def _letters(app: App, wanted: int, timeout: float = 60.0) -> list[DeadLetter]:
    """The app's dead letters, once there are at least ``wanted`` (or the timeout passed)."""
    deadline = time.monotonic() + timeout
    while True:
        letters = [
            decode_dead_letter(m.value())
            for m in read_partitions(app.settings.bootstrap_servers, dlq_topic(app.name), [0])
        ]
        if len(letters) >= wanted or time.monotonic() > deadline:
            return letters
        time.sleep(0.3)


def _json(value: object) -> bytes:
    return json.dumps(value).encode()


async def test_trigger_record_without_the_admission_key_is_dead_lettered(
    kafka_bootstrap: str, unique_name: str, tmp_path: Path, create_topics
) -> None:
    """The reported case: one order without ``user_id`` killed the processor, and every restart with it."""
    topic = f"{unique_name}-orders"
    create_topics(topic)
    app = App(unique_name, settings=settings(kafka_bootstrap))

    @app.step
    async def ack(order_id: str) -> str:
        return f"ack {order_id}"

    @app.workflow(
        trigger=Trigger(topic, run_id="order_id"), admission=Admission(key="user_id", concurrency=2)
    )
    async def on_order(ctx: WorkflowContext, order: dict) -> str:  # type: ignore[type-arg]
        return await ctx.step(ack, order["order_id"])

    _produce(
        kafka_bootstrap,
        topic,
        _json({"order_id": "o-1", "user_id": "u1"}),
        _json({"order_id": "o-2"}),  # no user_id
        _json({"order_id": "o-3", "user_id": "u2"}),
    )
    proc, worker = ProcessorThread(app, tmp_path), WorkerThread(app)
    try:
        async with app.client() as client:
            for run_id in ("o-1", "o-3"):
                assert await client.get_handle(run_id).result(timeout=60) == f"ack {run_id}"
        letters = _letters(app, 1)
        assert proc.thread.is_alive(), proc.thread.error
    finally:
        worker.stop()
        proc.stop()
    assert len(letters) == 1, letters
    letter = letters[0]
    assert (letter.source_topic, letter.source_partition, letter.source_offset) == (topic, 0, 1)
    assert letter.error_type == "SourceError"
    assert "on_order" in letter.reason and "'user_id'" in letter.reason and "admission key" in letter.reason
    assert letter.value == _json({"order_id": "o-2"})
    assert sorted(history(app)) == ["o-1", "o-3"]
