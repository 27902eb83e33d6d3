"""Poison records on the user's topics and on the engine's own topics never stop the processor.

Each poison record must end in the DLQ with a reason and its topic/partition/offset, the good records
around it must still be processed, the processor must keep running, and a restarted processor must not
meet the poison again (its offset was committed with the dead letter).
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from pathlib import Path

import pytest
from confluent_kafka import Producer
from engine_support import ProcessorThread, WorkerThread, history, settings

from orchestrator import Admission, App, Trigger, WorkflowContext
from orchestrator._engine.events import (
    AdmitRequest,
    DomainEvent,
    Event,
    ScheduleRegister,
    StartRun,
    StepCompleted,
    encode_event,
)
from orchestrator._engine.partitioning import partition_for
from orchestrator._engine.reader import read_partitions
from orchestrator._engine.records import DeadLetter, StepCommand, decode_dead_letter, encode_command
from orchestrator.topology import dlq_topic, inbox_topic, keyed_changelog_topic, keyed_topic


def _produce(
    bootstrap: str, topic: str, *values: bytes | None, partition: int = 0, max_bytes: int = 1_000_000
) -> None:
    """Raw values on one partition, in order, as any service of the user's could write them."""
    producer = Producer({"bootstrap.servers": bootstrap, "message.max.bytes": max_bytes})
    for value in values:
        producer.produce(topic, value, b"k", partition=partition)
    producer.flush(10)


def _letters(app: App, wanted: int, timeout: float = 60.0) -> list[DeadLetter]:
    """The app's dead letters, once there are at least ``wanted`` (or the timeout passed)."""
    deadline = time.monotonic() + timeout
    while True:
        letters = [
            decode_dead_letter(m.value()) for m in read_partitions(app.settings, dlq_topic(app.name), [0])
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


def _shop(name: str, bootstrap: str, orders: str, approvals: str) -> App:
    """Orders start runs (through admission) that wait for an approval from another topic."""
    app = App(name, settings=settings(bootstrap))
    app.event_source("approval", topic=approvals, key=lambda v: v["order"]["id"], retention="10m")

    @app.step
    async def ack(order_id: str) -> str:
        return order_id

    def is_placed(value: dict) -> bool:  # type: ignore[type-arg]
        return bool(value["kind"] == "placed")

    def with_total(value: dict) -> dict:  # type: ignore[type-arg]
        return {**value, "total": float(value["price"]) * value["qty"]}

    @app.workflow(
        trigger=Trigger(orders, run_id="order_id", filter=is_placed, input=with_total),
        admission=Admission(key="user_id", concurrency=4, priority=lambda o: o["prio"]),
    )
    async def on_order(ctx: WorkflowContext, order: dict) -> str:  # type: ignore[type-arg]
        order_id = await ctx.step(ack, order["order_id"])
        got = await ctx.wait_for_event("approval", key=order_id, timeout=120, lookback="10m")
        return "timed out" if got.timed_out else f"{order_id} {order['total']} by {got.payload['by']}"

    return app


def _order(order_id: str, **changes: object) -> dict[str, object]:
    order: dict[str, object] = {
        "kind": "placed",
        "order_id": order_id,
        "user_id": "u1",
        "qty": 2,
        "price": "1.5",
        "prio": 1,
    }
    order.update(changes)
    return {k: v for k, v in order.items() if v is not None}


async def test_every_kind_of_poison_on_user_topics_is_dead_lettered_and_skipped_for_good(
    kafka_bootstrap: str, unique_name: str, tmp_path: Path, create_topics
) -> None:
    orders, approvals = f"{unique_name}-orders", f"{unique_name}-approvals"
    create_topics(orders, approvals)
    app = _shop(unique_name, kafka_bootstrap, orders, approvals)
    _produce(
        kafka_bootstrap,
        orders,
        _json(_order("o-1")),
        b"\x00\x01 not json {",  # 1 junk bytes
        _json([_order("o-x")]),  # 2 a list instead of an object (the filter meets it first)
        _json(_order("o-x3", user_id=None)),  # 3 no admission key
        _json(_order("o-x4", kind=None)),  # 4 the filter raises (KeyError)
        _json(_order("o-x5", price="abc")),  # 5 the input mapping raises (ValueError)
        _json(_order("o-x6", prio="high")),  # 6 a string where the priority must be a number
        None,  # 7 tombstone
        _json(_order("o-2", user_id="u2")),
    )
    _produce(
        kafka_bootstrap,
        approvals,
        b"\xff\xfe",  # 0 junk bytes
        _json({"by": "eve"}),  # 1 the key function raises (no "order")
        _json({"order": {"id": ["o-1"]}, "by": "mallory"}),  # 2 the key is a list
        None,  # 3 tombstone
        _json({"order": {"id": "o-1"}, "by": "ann"}),
        _json({"order": {"id": "o-2"}, "by": "bob"}),
    )
    expected = {
        (orders, 1): "decoding the value as json failed: ValueError: the value is not JSON",
        (orders, 2): "filter (function _shop.<locals>.is_placed) failed: TypeError",
        (orders, 3): "admission key (field 'user_id') failed: FieldNotFoundError: field 'user_id' not found",
        (orders, 4): "filter (function _shop.<locals>.is_placed) failed: KeyError",
        (orders, 5): "input mapping (function _shop.<locals>.with_total) failed: ValueError",
        (orders, 6): "admission priority (function _shop.<locals>.<lambda>) gave str 'high'",
        (orders, 7): "a tombstone",
        (approvals, 0): "event source 'approval' on topic",
        (approvals, 1): "correlation key (function _shop.<locals>.<lambda>) failed: KeyError: 'order'",
        (approvals, 2): "gave list ['o-1']; a key must be a non-empty string, an integer or a UUID",
        (approvals, 3): "a tombstone",
    }
    worker = WorkerThread(app)
    try:
        proc = ProcessorThread(app, tmp_path)
        async with app.client() as client:
            assert await client.get_handle("o-1").result(timeout=90) == "o-1 3.0 by ann"
            assert await client.get_handle("o-2").result(timeout=90) == "o-2 3.0 by bob"
            letters = _letters(app, len(expected))
            assert proc.thread.is_alive(), proc.thread.error
            proc.stop()
            # A restarted processor (same group) goes on after the poison: nothing is dead-lettered twice.
            proc = ProcessorThread(app, tmp_path)
            _produce(kafka_bootstrap, orders, _json(_order("o-3", user_id="u3")))
            _produce(kafka_bootstrap, approvals, _json({"order": {"id": "o-3"}, "by": "cy"}))
            assert await client.get_handle("o-3").result(timeout=90) == "o-3 3.0 by cy"
            assert proc.thread.is_alive(), proc.thread.error
            after_restart = _letters(app, len(expected) + 1, timeout=3)
    finally:
        worker.stop()
        proc.stop()
    found = {(d.source_topic, d.source_offset): d for d in letters}
    assert sorted(found) == sorted(expected), [(d.source_topic, d.source_offset, d.reason) for d in letters]
    for where, text in expected.items():
        letter = found[where]
        assert letter.error_type == "SourceError" and letter.source_partition == 0
        assert text in letter.reason, (where, letter.reason)
        assert f"record {where[0]}[0]@{where[1]}" in letter.reason
    assert found[(orders, 1)].value == b"\x00\x01 not json {" and found[(orders, 7)].value is None
    assert len(after_restart) == len(expected)
    assert sorted(history(app)) == ["o-1", "o-2", "o-3"]


@pytest.mark.parametrize(
    ("inbox_max_bytes", "big_bytes", "limit_named"),
    [
        (100_000, 150_000, "max.message.bytes of topic {app}.inbox"),  # the engine topic is the bound
        (None, 1_200_000, "message.max.bytes of the processor's producer"),  # the producer is the bound
    ],
    ids=["topic-limit", "producer-limit"],
)
async def test_record_too_large_for_the_engine_topics_is_dead_lettered_before_producing(
    kafka_bootstrap: str,
    unique_name: str,
    tmp_path: Path,
    create_topics,
    inbox_max_bytes: int | None,
    big_bytes: int,
    limit_named: str,
) -> None:
    """Produced, such a record would abort the transaction, and the batch would fail again forever."""
    topic = f"{unique_name}-big"
    create_topics(topic, config={"max.message.bytes": "3000000"})
    if inbox_max_bytes is not None:  # the engine creates missing topics and never alters existing ones
        inbox = inbox_topic(unique_name)
        create_topics(inbox, partitions=4, config={"max.message.bytes": str(inbox_max_bytes)})
    app = App(
        unique_name,
        settings=settings(kafka_bootstrap).model_copy(update={"max_payload_bytes": 4_000_000}),
    )

    @app.workflow(trigger=Trigger(topic, run_id="id"))
    async def ingest(ctx: WorkflowContext, doc: dict) -> int:  # type: ignore[type-arg]
        return len(doc["blob"])

    big = _json({"id": "big", "blob": "x" * big_bytes})
    _produce(
        kafka_bootstrap,
        topic,
        _json({"id": "small-1", "blob": "x"}),
        big,
        _json({"id": "small-2", "blob": "xy"}),
        max_bytes=3_000_000,
    )
    proc = ProcessorThread(app, tmp_path)
    try:
        async with app.client() as client:
            assert await client.get_handle("small-1").result(timeout=60) == 1
            assert await client.get_handle("small-2").result(timeout=60) == 2
        letters = _letters(app, 1)
        assert proc.thread.is_alive(), proc.thread.error
    finally:
        proc.stop()
    # The dead letter carries the record when it fits under every output's limit (the inbox's, here).
    copied = len(big) < (inbox_max_bytes or 1_000_000)
    error_type = "SourceError" if copied else "SourceError.RecordNotCopied"
    assert [(d.source_topic, d.source_offset, d.error_type) for d in letters] == [(topic, 1, error_type)]
    reason = letters[0].reason
    assert "trigger of workflow 'ingest'" in reason and f"record {topic}[0]@1" in reason
    assert "over the limit of" in reason and limit_named.format(app=unique_name) in reason, reason
    if copied:
        assert letters[0].value == big
    else:
        assert letters[0].value is None and f"read them from {topic}[0]@1" in reason
    assert sorted(history(app)) == ["small-1", "small-2"]


def _ticks(app: App) -> int:
    return sum(1 for run_id in history(app) if run_id.startswith("ticker@"))


async def _wait_for_ticks(app: App, count: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while _ticks(app) < count:
        assert time.monotonic() < deadline, f"the schedule stopped: {_ticks(app)} ticks, waited for {count}"
        await asyncio.sleep(0.5)


async def test_poison_on_the_inbox_and_keyed_topics_is_dead_lettered_with_the_reason(
    kafka_bootstrap: str, unique_name: str, tmp_path: Path
) -> None:
    app = App(unique_name, settings=settings(kafka_bootstrap))

    @app.step
    async def echo(x: str) -> str:
        return x

    @app.workflow
    async def held(ctx: WorkflowContext) -> str:
        got = await ctx.wait_for_event("go", timeout=120)
        return await ctx.step(echo, got.payload)

    @app.workflow(schedule="* * * * * */1")  # every second: its state lives in the keyed stage
    async def ticker(ctx: WorkflowContext, when: str) -> str:
        return when

    inbox, keyed = inbox_topic(app.name), keyed_topic(app.name)

    def on_inbox(run_id: str, value: bytes) -> tuple[str, int, bytes, bytes]:
        return (inbox, partition_for(run_id, 4), run_id.encode(), value)

    def on_keyed(routing: str, value: bytes) -> tuple[str, int, bytes, bytes]:
        return (keyed, partition_for(routing, 4), routing.encode(), value)

    command = encode_command(StepCommand("h-1", "held", 0, "echo", 1, b'"x"', "h-1/0/echo", 1))
    bad_cron = ScheduleRegister("ticker", "not a cron", "UTC", "skip")
    bad_step = AdmitRequest("step:echo", "h-9/0/1", command, "", 0.0, "", "no such queue!")
    poison = {
        on_inbox("h-1", b"not avro at all"): ("SchemaError", "bad magic byte"),
        on_inbox("h-1", b"\x00\x00\x00\x03\xe7garbage"): ("SchemaError", "unknown schema id 999"),
        on_inbox("h-1", command): ("SchemaError", "got orchestrator.v1.StepCommand"),
        on_inbox("h-1", encode_event(Event("x1", "h-1", "", 1, DomainEvent("go", "", b'"no"')))): (
            "Rejected",
            "DomainEvent is not a request the inbox accepts",
        ),
        on_keyed("go\x1fk", b"not avro at all"): ("SchemaError", "bad magic byte"),
        on_keyed("go\x1fk", b"\x00\x00\x00\x03\xe7garbage"): ("SchemaError", "unknown schema id 999"),
        on_keyed("go\x1fk", command): ("SchemaError", "got orchestrator.v1.StepCommand"),
        on_keyed("go\x1fk", encode_event(Event("x2", "h-9", "held", 1, StartRun(b"null")))): (
            "Rejected",
            "StartRun does not belong on the keyed topic",
        ),
        on_keyed("go\x1fk", encode_event(Event("x3", "h-9", "", 1, StepCompleted(0, 1, b"1", 1, 2)))): (
            "Rejected",
            "StepCompleted does not belong on the keyed topic",
        ),
        on_keyed("schedule\x1fticker", encode_event(Event("x4", "", "ticker", 1, bad_cron))): (
            "Rejected",
            "'not a cron' is not a cron expression",
        ),
        on_keyed("admit\x1fstep:echo\x1f", encode_event(Event("x5", "h-9", "held", 1, bad_step))): (
            "Rejected",
            "names task queue 'no such queue!'",
        ),
    }
    worker = WorkerThread(app)
    try:
        proc = ProcessorThread(app, tmp_path)
        async with app.client() as client:
            first = await client.start(held, run_id="h-1")
            await _wait_for_ticks(app, 1)
            producer = Producer({"bootstrap.servers": kafka_bootstrap})
            for topic, partition, key, value in poison:
                producer.produce(topic, value, key, partition=partition)
            producer.flush(10)
            letters = _letters(app, len(poison))
            await client.signal("h-1", "go", "went")
            assert await first.result(timeout=60) == "went"
            await _wait_for_ticks(app, _ticks(app) + 2)  # the schedule survived its poison
            assert proc.thread.is_alive(), proc.thread.error
            proc.stop()
            proc = ProcessorThread(app, tmp_path)  # same group: goes on after the poison
            second = await client.start(held, run_id="h-2")
            await client.signal("h-2", "go", "again")
            assert await second.result(timeout=60) == "again"
            await _wait_for_ticks(app, _ticks(app) + 2)
            assert proc.thread.is_alive(), proc.thread.error
            after_restart = _letters(app, len(poison) + 1, timeout=3)
    finally:
        worker.stop()
        proc.stop()
    found = {(d.source_topic, d.source_partition, d.key, d.value): d for d in letters}
    assert sorted(found) == sorted(poison), [(d.source_topic, d.error_type, d.reason) for d in letters]
    for record, (error_type, text) in poison.items():
        assert (found[record].error_type, record[0]) == (error_type, record[0]), found[record]
        assert text in found[record].reason, found[record].reason
    assert len(after_restart) == len(poison)


async def test_junk_too_large_to_copy_into_the_dlq_is_dead_lettered_without_its_value(
    kafka_bootstrap: str, unique_name: str, tmp_path: Path
) -> None:
    """A dead letter carrying this record would be over the DLQ's limit and fail the transaction."""
    app = App(unique_name, settings=settings(kafka_bootstrap))

    @app.workflow
    async def noop(ctx: WorkflowContext) -> str:
        return "done"

    keyed = keyed_topic(app.name)
    proc = ProcessorThread(app, tmp_path)
    try:
        async with app.client() as client:
            assert await (await client.start(noop, run_id="before")).result(timeout=60) == "done"
            # Under the keyed topic's limit (1,048,588), over the processor producer's (1,000,000).
            _produce(kafka_bootstrap, keyed, b"\x07" * 1_040_000, partition=2, max_bytes=1_048_000)
            assert await (await client.start(noop, run_id="after")).result(timeout=60) == "done"
            letters = _letters(app, 1)
            assert proc.thread.is_alive(), proc.thread.error
    finally:
        proc.stop()
    where = [(d.source_topic, d.source_partition, d.error_type) for d in letters]
    assert where == [(keyed, 2, "SchemaError.RecordNotCopied")]
    assert letters[0].value is None and letters[0].key is None
    assert "bad magic byte 7" in letters[0].reason and f"read them from {keyed}[2]@0" in letters[0].reason


async def test_large_starts_waiting_for_one_admission_key_do_not_stall_the_processor(
    kafka_bootstrap: str, unique_name: str, tmp_path: Path
) -> None:
    """Each start is under the payload limit; together, in one stored record, they were over Kafka's."""
    app = App(unique_name, settings=settings(kafka_bootstrap))
    gate = threading.Event()

    @app.step
    async def hold(n: int) -> int:
        while not gate.is_set():
            await asyncio.sleep(0.05)
        return n

    @app.workflow(admission=Admission(key="user", concurrency=1))
    async def upload(ctx: WorkflowContext, job: dict) -> int:  # type: ignore[type-arg]
        return await ctx.step(hold, job["n"])

    changelog = keyed_changelog_topic(app.name)
    proc, worker = ProcessorThread(app, tmp_path), WorkerThread(app)
    try:
        async with app.client() as client:
            jobs = [{"user": "u1", "n": n, "blob": "x" * 400_000} for n in range(4)]
            runs = [await client.start(upload, job) for job in jobs]
            deadline = time.monotonic() + 60
            while True:  # three starts wait for the slot, stored in the keyed stage
                stored = {
                    m.key()
                    for m in read_partitions(app.settings, changelog, list(range(4)))
                    if (m.key() or b"").startswith(b"w/") and m.value() is not None
                }
                if len(stored) >= 3 or proc.processor.stats.aborts:
                    break
                assert time.monotonic() < deadline, f"the starts never queued ({len(stored)} stored)"
                await asyncio.sleep(0.5)
            assert proc.processor.stats.aborts == 0, "a transaction aborted: a stored record over the limit?"
            gate.set()
            assert [await run.result(timeout=60) for run in runs] == [0, 1, 2, 3]
            assert proc.thread.is_alive(), proc.thread.error
    finally:
        gate.set()
        worker.stop()
        proc.stop()
