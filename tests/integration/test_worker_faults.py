"""A worker dead-letters the commands it cannot read and commits their offsets, on the shared broker.

(Its outage test, test_steps_finished_while_the_broker_is_down_are_reported_once, runs with the other
broker-outage scenarios on one broker kill: ``test_broker_outage.py``.)
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Callable
from pathlib import Path

from confluent_kafka import Consumer, Producer, TopicPartition
from engine_support import ProcessorThread, WorkerThread, settings

from orchestrator import App, WorkflowContext
from orchestrator._engine import kafka
from orchestrator._engine.events import Event, StartRun, encode_event
from orchestrator._engine.reader import read_partitions
from orchestrator._engine.records import (
    DeadLetter,
    StepCommand,
    decode_dead_letter,
    encode_command,
)
from orchestrator.topology import dlq_topic, tasks_topic


async def _wait_for(predicate: Callable[[], bool], what: Callable[[], str], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"{what()}: not reached in {timeout} s"
        await asyncio.sleep(0.2)


async def test_poison_commands_are_dead_lettered_and_their_offsets_committed(
    kafka_bootstrap: str, unique_name: str, tmp_path: Path
) -> None:
    app = App(unique_name, settings=settings(kafka_bootstrap))

    @app.step
    async def echo(x: int) -> int:
        return x

    @app.workflow
    async def wf(ctx: WorkflowContext, x: int) -> int:
        return await ctx.step(echo, x)

    tasks = tasks_topic(app.name, "default")
    command = StepCommand("r", "wf", 0, "echo", 1, b"[1]", "r/0/echo", scheduled_ms=1)
    poison = {
        "junk": b"not avro at all",
        "unknown schema id": b"\x00\x00\x00\x03\xe7garbage",
        "wrong type": encode_event(Event("e1", "r", "wf", 1, StartRun(b"1"))),
        "missing field": encode_command(command)[:-6],
        "unknown step": encode_command(dataclasses.replace(command, step="not_here")),
    }
    proc = ProcessorThread(app, tmp_path)
    worker = WorkerThread(app)
    try:
        async with app.client() as client:
            assert await (await client.start(wf, 1)).result(timeout=60) == 1
            producer = Producer({"bootstrap.servers": kafka_bootstrap})
            offsets: list[int] = []
            for value in poison.values():
                producer.produce(
                    tasks, value, b"r", partition=0, on_delivery=lambda _e, m: offsets.append(m.offset())
                )
            assert producer.flush(30) == 0 and len(offsets) == len(poison)
            # The worker goes on with good commands after them.
            assert await (await client.start(wf, 2)).result(timeout=60) == 2
            # Committed past the last poison record. Not up to the partition's end offset: that may be the
            # commit marker of a later transaction (the second run's command, when it lands in partition 0),
            # which the worker never consumes, so ~1 run in 4 would wait for it forever (seen: 8 of end 9).
            end = max(offsets) + 1
            letters: list[DeadLetter] = []
            committed = -1

            def settled() -> bool:
                nonlocal letters, committed
                msgs = read_partitions(app.settings, dlq_topic(app.name), [0])
                letters = [decode_dead_letter(m.value()) for m in msgs]
                group = Consumer(kafka.consumer_config(app.settings, f"{app.name}.workers"))
                try:
                    [tp] = group.committed([TopicPartition(tasks, 0)], timeout=10)
                finally:
                    group.close()
                committed = tp.offset
                return len(letters) >= len(poison) and committed >= end

            await _wait_for(
                settled,
                lambda: (
                    f"dead letters written ({len(letters)} of {len(poison)}) and offsets committed "
                    f"({committed}, past the poison: {end})"
                ),
                timeout=60,
            )
    finally:
        worker.stop()
        proc.stop()
    assert len(letters) == len(poison)
    by_value = {d.value: d for d in letters}
    for name, value in poison.items():
        letter = by_value[value]
        assert (letter.source_topic, letter.source_partition) == (tasks, 0), name
        assert letter.source_offset >= 0 and letter.component.startswith("worker:"), name
        expected = "UnknownStepError" if name == "unknown step" else "SchemaError"
        assert letter.error_type == expected, (name, letter)
    assert "unknown schema id 999" in by_value[poison["unknown schema id"]].reason
    assert "expected a orchestrator.v1.StepCommand" in by_value[poison["wrong type"]].reason
    assert "does not match its schema" in by_value[poison["missing field"]].reason
    assert "no step 'not_here'" in by_value[poison["unknown step"]].reason
    assert len({d.source_offset for d in letters}) == len(poison)
    assert committed >= end
