"""Domain events on the user's own topics: triggers, waits routed by correlation key, schedules."""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from pathlib import Path

from confluent_kafka import Producer
from engine_support import ProcessorThread, WorkerThread, history, settings

from orchestrator import App, Trigger, WorkflowContext


def _produce(bootstrap: str, topic: str, *values: dict[str, object], key: bytes | None = None) -> None:
    """Plain confluent-kafka, as any service of the user's would write its events."""
    producer = Producer({"bootstrap.servers": bootstrap})
    for value in values:
        producer.produce(topic, json.dumps(value).encode(), key)
    producer.flush(10)


async def test_trigger_starts_one_run_per_event_even_when_redelivered(
    kafka_bootstrap: str, unique_name: str, tmp_path: Path, create_topics
) -> None:
    topic = f"{unique_name}-orders"
    create_topics(topic, partitions=2)
    app = App(unique_name, settings=settings(kafka_bootstrap))

    @app.step
    async def acknowledge(order_id: str) -> str:
        return f"ack {order_id}"

    @app.workflow(trigger=Trigger(topic, run_id="order_id", filter=lambda v: v["kind"] == "placed"))
    async def on_order(ctx: WorkflowContext, event: dict) -> str:  # type: ignore[type-arg]
        return await ctx.step(acknowledge, event["order_id"])

    _produce(
        kafka_bootstrap,
        topic,
        {"kind": "placed", "order_id": "o-1"},
        {"kind": "placed", "order_id": "o-2"},
        {"kind": "placed", "order_id": "o-1"},  # the same business key again: the same run
        {"kind": "cancelled", "order_id": "o-3"},  # filtered out
    )
    proc, worker = ProcessorThread(app, tmp_path / "a"), WorkerThread(app)
    try:
        async with app.client() as client:
            for run_id in ("o-1", "o-2"):
                assert await client.get_handle(run_id).result(timeout=60) == f"ack {run_id}"
        proc.stop()
        # The same records delivered again (a fresh consumer group reads the topic from the start).
        proc = ProcessorThread(
            app, tmp_path / "b", instance_id="again", consumer_overrides={"group.id": f"{unique_name}.again"}
        )
        await asyncio.sleep(8)
    finally:
        proc.stop()
        worker.stop()
    runs = history(app)
    assert sorted(runs) == ["o-1", "o-2"]
    for events in runs.values():
        assert [e.kind for e in events].count("RunStarted") == 1
        assert [e.kind for e in events].count("StepCompleted") == 1


def _approval_app(name: str, bootstrap: str, topic: str) -> App:
    app = App(name, settings=settings(bootstrap))
    app.event_source("approval", topic=topic, key="order_id", retention="10m")

    @app.step
    async def record(text: str) -> str:
        return text

    @app.workflow
    async def fulfil(ctx: WorkflowContext, order_id: str) -> str:
        await ctx.step(record, f"waiting for {order_id}")
        got = await ctx.wait_for_event("approval", key=order_id, timeout=20, lookback="5m")
        if got.timed_out:
            return await ctx.step(record, f"{order_id} timed out")
        return await ctx.step(record, f"{order_id} approved by {got.payload['by']}")

    return app


async def test_waiting_runs_resume_on_domain_events_by_key(
    kafka_bootstrap: str, unique_name: str, tmp_path: Path, create_topics
) -> None:
    topic = f"{unique_name}-approvals"
    create_topics(topic, partitions=3)
    app = _approval_app(unique_name, kafka_bootstrap, topic)
    proc, worker = ProcessorThread(app, tmp_path), WorkerThread(app)
    try:
        async with app.client() as client:
            # An approval that comes before its run even exists: kept within the look-back.
            _produce(kafka_bootstrap, topic, {"order_id": "early", "by": "eve"})
            await asyncio.sleep(2)
            runs = {k: await client.start("fulfil", k, run_id=k) for k in ("a", "b", "early", "never")}
            await asyncio.sleep(2)  # a and b are waiting now
            _produce(kafka_bootstrap, topic, {"order_id": "b", "by": "bob"}, {"order_id": "a", "by": "ann"})
            _produce(kafka_bootstrap, topic, {"order_id": "unrelated", "by": "x"})
            results = {k: await h.result(timeout=60) for k, h in runs.items()}
    finally:
        worker.stop()
        proc.stop()
    assert results == {
        "a": "a approved by ann",
        "b": "b approved by bob",
        "early": "early approved by eve",
        "never": "never timed out",
    }
    assert [e.kind for e in history(app)["never"]].count("WaitTimedOut") == 1


async def test_schedule_fires_once_per_tick_with_two_processors(
    kafka_bootstrap: str, unique_name: str, tmp_path: Path
) -> None:
    app = App(unique_name, settings=settings(kafka_bootstrap))
    ticks: list[str] = []

    @app.step
    async def report(when: str) -> str:
        ticks.append(when)
        return when

    @app.workflow(schedule="* * * * * */2", missed="skip")  # every 2 s (seconds field last)
    async def every_two(ctx: WorkflowContext, scheduled_for: str) -> str:
        return await ctx.step(report, scheduled_for)

    a, b = ProcessorThread(app, tmp_path, "a"), ProcessorThread(app, tmp_path, "b")
    worker = WorkerThread(app)
    try:
        await asyncio.sleep(12)
    finally:
        worker.stop()
        a.stop()
        b.stop()
    runs = history(app)
    assert len(runs) >= 3, runs.keys()
    done = {r.split("@")[1] for r, events in runs.items() if events[-1].kind == "RunCompleted"}
    assert len(ticks) == len(set(ticks)), ticks  # never two executions for one tick
    assert done <= set(ticks) and len(done) >= 3
    stamps = sorted(time.mktime(time.strptime(r.split("@")[1][:19], "%Y-%m-%dT%H:%M:%S")) for r in runs)
    assert all(b - a == 2 for a, b in itertools.pairwise(stamps)), stamps  # no tick missed


async def test_missed_ticks_follow_the_policy(kafka_bootstrap: str, unique_name: str, tmp_path: Path) -> None:
    app = App(unique_name, settings=settings(kafka_bootstrap))

    @app.step
    async def noop(when: str) -> str:
        return when

    @app.workflow(schedule="* * * * * */2", missed="skip")
    async def skipper(ctx: WorkflowContext, when: str) -> str:
        return await ctx.step(noop, when)

    @app.workflow(schedule="* * * * * */2", missed="run_all")
    async def catcher(ctx: WorkflowContext, when: str) -> str:
        return await ctx.step(noop, when)

    worker = WorkerThread(app)
    try:
        proc = ProcessorThread(app, tmp_path)
        await asyncio.sleep(5)
        proc.stop()
        await asyncio.sleep(10)  # everything down: about five ticks pass
        proc = ProcessorThread(app, tmp_path)
        await asyncio.sleep(6)
        proc.stop()
    finally:
        worker.stop()

    def gaps(workflow: str) -> list[float]:
        stamps = sorted(
            time.mktime(time.strptime(r.split("@")[1][:19], "%Y-%m-%dT%H:%M:%S"))
            for r in history(app)
            if r.startswith(workflow + "@")
        )
        return [b - a for a, b in itertools.pairwise(stamps)]

    assert set(gaps("catcher")) == {2}, gaps("catcher")  # every missed tick was run
    assert max(gaps("skipper")) >= 6, gaps("skipper")  # the ticks of the outage were skipped


async def test_schedules_are_listed_and_paused(
    kafka_bootstrap: str, unique_name: str, tmp_path: Path
) -> None:
    app = App(unique_name, settings=settings(kafka_bootstrap))

    @app.step
    async def noop(when: str) -> str:
        return when

    @app.workflow(schedule="* * * * * */2", timezone="Europe/Paris")
    async def ticking(ctx: WorkflowContext, when: str) -> str:
        return await ctx.step(noop, when)

    proc, worker = ProcessorThread(app, tmp_path), WorkerThread(app)
    try:
        async with app.client() as client:
            await asyncio.sleep(5)
            await client.pause_schedule("ticking")
            await asyncio.sleep(1)
            before = len(history(app))
            await asyncio.sleep(5)
            after_pause = len(history(app))
            listed = await client.list_schedules()
            await client.pause_schedule("ticking", paused=False)
            await asyncio.sleep(5)
            resumed = len(history(app))
    finally:
        worker.stop()
        proc.stop()
    assert before >= 1 and after_pause == before and resumed > before
    assert [(s["workflow"], s["timezone"], s["paused"]) for s in listed] == [
        ("ticking", "Europe/Paris", True)
    ]
