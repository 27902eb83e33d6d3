"""Recovery: state restored from the changelog, failover between processors, parked runs, dead letters."""

from __future__ import annotations

import asyncio
import shutil
import threading
import time
from pathlib import Path

from confluent_kafka import Producer
from engine_support import (
    APP_SPEC,
    EngineProcess,
    ProcessorThread,
    WorkerThread,
    child_env,
    history,
    settings,
)

from orchestrator import App, ProcessorFencedError, RunFailedError, WorkflowContext
from orchestrator._engine.events import Event, StartRun, StepCompleted, encode_event
from orchestrator._engine.partitioning import partition_for
from orchestrator._engine.reader import read_partitions
from orchestrator._engine.records import decode_dead_letter
from orchestrator.topology import dlq_topic, inbox_topic, tasks_topic


async def _wait_for(predicate, timeout: float = 60) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.1)


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


async def test_deleted_store_is_restored_from_changelog(
    kafka_bootstrap: str, unique_name: str, tmp_path: Path
) -> None:
    env = child_env(unique_name, kafka_bootstrap, tmp_path)
    state = tmp_path / "state"
    log = tmp_path / "engine.log"
    proc = EngineProcess(
        "processor", APP_SPEC, env, "--instance-id", "r0", "--state-dir", str(state), log=log
    )
    work = EngineProcess("worker", APP_SPEC, env, log=log)
    app = App(unique_name, settings=settings(kafka_bootstrap))
    proc.start()
    work.start()
    try:
        async with app.client() as client:
            handles = [await client.start("gated", i, run_id=f"g{i}") for i in range(40)]
            # Every run has done s1 and waits in the gate step: their state exists only in the store.
            await _wait_for(lambda: len(_lines(tmp_path / "executions.log")) >= 40)
            await asyncio.sleep(1.0)
            proc.kill()
            assert any(state.rglob("CURRENT")), "the processor had a RocksDB store"
            shutil.rmtree(state)
            proc.start()
            (tmp_path / "gate").touch()
            values = await asyncio.gather(*(h.result(timeout=120) for h in handles))
    finally:
        proc.terminate()
        work.terminate()
    assert values == [i + 11 for i in range(40)]
    assert "changelog records into" in log.read_text()  # the store was rebuilt from the changelog
    for run_id, events in history(app).items():
        kinds = [e.kind for e in events]
        assert kinds.count("StepCompleted") == 3 and kinds.count("RunCompleted") == 1, (run_id, kinds)


def _owns_inbox(log: Path) -> bool:
    """Whether the latest assignment (the last "assigned partitions" line of its log) has inbox partitions."""
    lines = [line for line in log.read_text().splitlines() if "assigned partitions" in line]
    return bool(lines) and ".inbox'" in lines[-1]


async def test_failover_between_two_processors(
    kafka_bootstrap: str, unique_name: str, tmp_path: Path
) -> None:
    env = child_env(unique_name, kafka_bootstrap, tmp_path)
    log_a, log_b = tmp_path / "a.log", tmp_path / "b.log"
    state = str(tmp_path / "state")
    a = EngineProcess("processor", APP_SPEC, env, "--instance-id", "fa", "--state-dir", state, log=log_a)
    b = EngineProcess("processor", APP_SPEC, env, "--instance-id", "fb", "--state-dir", state, log=log_b)
    work = EngineProcess("worker", APP_SPEC, env, log=tmp_path / "w.log")
    app = App(unique_name, settings=settings(kafka_bootstrap))
    a.start()
    b.start()
    work.start()
    try:
        # Each instance must own inbox partitions (not one all of the inbox, the other only the keyed
        # stage's partitions): that is what makes a second processor share the work.
        await _wait_for(lambda: _owns_inbox(log_a) and _owns_inbox(log_b))
        async with app.client() as client:
            handles = [await client.start("gated", i, run_id=f"f{i}") for i in range(40)]
            await _wait_for(lambda: len(_lines(tmp_path / "executions.log")) >= 40)
            a.kill()  # half of the runs were on a's partitions
            (tmp_path / "gate").touch()
            values = await asyncio.gather(*(h.result(timeout=120) for h in handles))
    finally:
        for p in (a, b, work):
            p.terminate()
    assert values == [i + 11 for i in range(40)]
    # b had its own partitions from the start, and got a's when a died.
    assert log_b.read_text().count("assigned partitions") >= 2


async def test_changed_step_order_parks_the_run(
    kafka_bootstrap: str, unique_name: str, tmp_path: Path
) -> None:
    gate = threading.Event()

    def make_app(changed: bool) -> App:
        app = App(unique_name, settings=settings(kafka_bootstrap))

        @app.step
        async def first() -> str:
            return "first"

        @app.step
        async def hold() -> str:
            await asyncio.to_thread(gate.wait, 60)
            return "hold"

        @app.step
        async def other() -> str:
            return "other"

        @app.workflow
        async def wf(ctx: WorkflowContext) -> list[str]:
            if changed:  # the "deploy": step order swapped under running runs
                return [await ctx.step(first), await ctx.step(other), await ctx.step(hold)]
            return [await ctx.step(first), await ctx.step(hold), await ctx.step(other)]

        return app

    old, new = make_app(False), make_app(True)
    worker = WorkerThread(old)
    proc = ProcessorThread(old, tmp_path)
    try:
        async with old.client() as client:
            handle = await client.start("wf", run_id="old-run")

            async def holding() -> bool:
                d = await client.describe("old-run")
                return d is not None and len(d.steps) == 2

            while not await holding():
                await asyncio.sleep(0.2)
            proc.stop()
            proc = ProcessorThread(new, tmp_path)  # new code, cold cache: must re-execute from the record
            gate.set()
            try:
                await handle.result(timeout=60)
                raise AssertionError("the changed run should have been parked")
            except RunFailedError as exc:
                assert exc.status == "parked"
                assert exc.error_type == "non_determinism"
                assert "'hold'" in exc.message and "'other'" in exc.message
            fresh = await client.start("wf", run_id="new-run")
            assert await fresh.result(timeout=60) == ["first", "other", "hold"]
    finally:
        proc.stop()
        worker.stop()
    assert history(new)["old-run"][-1].kind == "RunParked"


async def test_malformed_and_unknown_records_are_dead_lettered(
    kafka_bootstrap: str, unique_name: str, tmp_path: Path
) -> None:
    app = App(unique_name, settings=settings(kafka_bootstrap))

    @app.step
    async def echo(x: int) -> int:
        return x

    @app.workflow
    async def wf(ctx: WorkflowContext, x: int) -> int:
        return await ctx.step(echo, x)

    proc = ProcessorThread(app, tmp_path)
    worker = WorkerThread(app)
    try:
        async with app.client() as client:
            assert await (await client.start(wf, 1)).result(timeout=60) == 1
            producer = Producer({"bootstrap.servers": kafka_bootstrap})
            inbox = inbox_topic(app.name)
            producer.produce(inbox, b"not avro at all", b"k", partition=0)
            producer.produce(
                inbox, b"\x00\x00\x00\x03\xe7garbage", b"k", partition=1
            )  # unknown schema id 999
            orphan = Event("e1", "no-such-run", "wf", 1, StepCompleted(0, 1, b"1", 1, 2))
            p = partition_for(orphan.run_id, 4)
            producer.produce(inbox, encode_event(orphan), orphan.run_id.encode(), partition=p)
            misplaced = Event("e2", "misplaced", "wf", 1, StartRun(b"1"))
            wrong = (partition_for("misplaced", 4) + 1) % 4
            producer.produce(inbox, encode_event(misplaced), b"misplaced", partition=wrong)
            producer.produce(tasks_topic(app.name, "default"), b"garbage command", b"x")
            producer.flush(10)
            # The processor keeps going.
            assert await (await client.start(wf, 2)).result(timeout=60) == 2
            deadline = time.monotonic() + 30
            letters = []
            while len(letters) < 5 and time.monotonic() < deadline:
                msgs = read_partitions(app.settings, dlq_topic(app.name), [0])
                letters = [decode_dead_letter(m.value()) for m in msgs]
                await asyncio.sleep(0.2)
    finally:
        worker.stop()
        proc.stop()
    reasons = {(d.error_type, d.source_topic): d.reason for d in letters}
    assert len(letters) == 5, reasons
    assert sum(1 for d in letters if d.error_type == "SchemaError") == 3
    assert any("unknown schema id 999" in d.reason for d in letters)
    assert any(d.error_type == "Rejected" and "unknown run 'no-such-run'" in d.reason for d in letters)
    assert any(d.error_type == "WrongPartition" for d in letters)
    assert any(
        d.source_topic == tasks_topic(app.name, "default") and d.component.startswith("worker")
        for d in letters
    )
    assert any(d.value == b"not avro at all" for d in letters)


async def test_zombie_processor_is_fenced_and_stops(
    kafka_bootstrap: str, unique_name: str, tmp_path: Path
) -> None:
    app = App(unique_name, settings=settings(kafka_bootstrap))

    @app.step
    async def echo(x: int) -> int:
        return x

    @app.workflow
    async def wf(ctx: WorkflowContext, x: int) -> int:
        return await ctx.step(echo, x)

    zombie = ProcessorThread(app, tmp_path / "a", instance_id="same")
    worker = WorkerThread(app)
    successor = None
    try:
        async with app.client() as client:
            assert await (await client.start(wf, 1)).result(timeout=60) == 1
            # A second instance under the same name (a restarted pod whose old process still lives).
            successor = ProcessorThread(app, tmp_path / "b", instance_id="same")
            handles = [await client.start(wf, i) for i in range(20)]
            assert await asyncio.gather(*(h.result(timeout=90) for h in handles)) == list(range(20))
            deadline = time.monotonic() + 60
            while zombie.thread.is_alive() and time.monotonic() < deadline:
                await asyncio.sleep(0.2)
    finally:
        worker.stop()
        if successor is not None:
            successor.stop()
    assert not zombie.thread.is_alive(), "the fenced instance kept running"
    assert isinstance(zombie.thread.error, ProcessorFencedError), zombie.thread.error
