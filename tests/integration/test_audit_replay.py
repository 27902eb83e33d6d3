"""Replay and audit on the real broker: history as the system of record, code checks, recovery tooling."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

from confluent_kafka import Producer
from engine_support import ProcessorThread, WorkerThread, history, settings

from orchestrator import App, RunFailedError, TerminalError, WorkflowContext, step_info
from orchestrator._engine import audit
from orchestrator._engine.partitioning import partition_for
from orchestrator._engine.state import encode_state
from orchestrator._engine.store import run_key
from orchestrator.topology import changelog_topic

FIXED = {"flaky": False}
EXECUTED: list[tuple[str, str]] = []


def _mixed_app(name: str, bootstrap: str, *, reorder: bool = False, marker: bool = False) -> App:
    app = App(name, settings=settings(bootstrap))

    @app.step
    async def ok(i: int) -> int:
        EXECUTED.append((step_info().run_id, "ok"))
        return i

    @app.step(retry=__import__("orchestrator").RetryPolicy(max_attempts=3, initial_interval="50ms"))
    async def flaky(i: int) -> int:
        EXECUTED.append((step_info().run_id, "flaky"))
        if i % 5 == 1 and step_info().attempt == 1:
            raise ConnectionError("first attempt fails")
        if i % 5 == 2 and not FIXED["flaky"]:
            raise TerminalError("broken until fixed")
        return i * 10

    @app.workflow
    async def mixed(ctx: WorkflowContext, i: int) -> int:
        if reorder and not (marker and not ctx.patched("flaky-first")):
            first = await ctx.step(flaky, i)  # the changed order
            await ctx.step(ok, i)
            return first
        await ctx.step(ok, i)
        if i % 5 == 3:
            await ctx.sleep(3600)
        if i % 5 == 4:
            await ctx.wait_for_event("go", timeout=3600)
        return await ctx.step(flaky, i)

    return app


async def test_replay_reproduces_live_state_of_1000_mixed_runs(
    kafka_bootstrap: str, unique_name: str, tmp_path: Path
) -> None:
    FIXED["flaky"] = False
    app = _mixed_app(unique_name, kafka_bootstrap)
    proc, worker = ProcessorThread(app, tmp_path), WorkerThread(app, concurrency=64)
    try:
        async with app.client() as client:
            handles = [await client.start("mixed", i, run_id=f"m{i}") for i in range(1000)]

            async def settle(i: int) -> None:
                with contextlib.suppress(RunFailedError):
                    await handles[i].result(timeout=300)

            await asyncio.gather(*(settle(i) for i in range(1000) if i % 5 in (0, 1, 2)))
            for i in range(4, 1000, 5):
                await handles[i].cancel("not needed")
            await asyncio.gather(*(settle(i) for i in range(4, 1000, 5)))
            await asyncio.sleep(2)  # the sleepers reached their timers
    finally:
        worker.stop()
        proc.stop()
    live = audit.live_states(app)
    statuses = sorted({s.status for s in live.values()})
    assert statuses == ["cancelled", "completed", "failed", "running"], statuses
    replayed = audit.rebuild(audit.history_events(app))
    assert len(replayed) == 1000
    assert audit.compare(replayed, live) == []
    # A deliberately corrupted store entry is reported.
    victim = live["m5"]  # completed
    corrupted = replace(victim, status="failed", error_type="Corrupted")
    producer = Producer({"bootstrap.servers": kafka_bootstrap})
    producer.produce(
        changelog_topic(app.name), encode_state(corrupted), run_key("m5"), partition=partition_for("m5", 4)
    )
    producer.flush(10)
    diffs = audit.compare(replayed, audit.live_states(app))
    assert {(d.run_id, d.field) for d in diffs} == {("m5", "status"), ("m5", "error_type")}


async def test_code_check_rerun_and_export(kafka_bootstrap: str, unique_name: str, tmp_path: Path) -> None:
    FIXED["flaky"] = False
    EXECUTED.clear()
    app = _mixed_app(unique_name, kafka_bootstrap)
    proc, worker = ProcessorThread(app, tmp_path), WorkerThread(app)
    try:
        async with app.client() as client:
            handles = [await client.start("mixed", i, run_id=f"r{i}") for i in (0, 1, 2)]
            assert await handles[0].result(timeout=60) == 0
            assert await handles[1].result(timeout=60) == 10
            try:
                await handles[2].result(timeout=60)
                raise AssertionError("r2 should fail until fixed")
            except RunFailedError:
                pass
            states = audit.live_states(app)
            # The step order changed: every recorded run would diverge...
            changed = audit.check_code(_mixed_app(unique_name, kafka_bootstrap, reorder=True), states)
            assert {d.run_id for d in changed} == {"r0", "r1", "r2"}
            assert "'ok'" in changed[0].message and "'flaky'" in changed[0].message
            # ...unless the change is behind a version marker.
            assert (
                audit.check_code(_mixed_app(unique_name, kafka_bootstrap, reorder=True, marker=True), states)
                == []
            )
            # Re-running the failed run after the fix executes only the failed step (and what follows it).
            FIXED["flaky"] = True
            before = [e for e in EXECUTED if e[0] == "r2"]
            await client.rerun("r2")
            assert await client.get_handle("r2").result(timeout=60) == 20
            after = [e for e in EXECUTED if e[0] == "r2"][len(before) :]
            assert after == [("r2", "flaky")]
    finally:
        worker.stop()
        proc.stop()
    kinds = [e.kind for e in history(app)["r2"]]
    assert kinds[-3:] == ["StepScheduled", "StepCompleted", "RunCompleted"] and "RunResumed" in kinds
    assert audit.compare(audit.rebuild(audit.history_events(app)), audit.live_states(app)) == []
    # An exported run, read back by a script that uses only fastavro, gives the same events.
    out = tmp_path / "r2.avro"
    with out.open("wb") as fh:
        audit.export_avro(audit.history_events(app, run_id="r2"), fh)
    script = (
        "import fastavro, json, sys\n"
        "with open(sys.argv[1], 'rb') as f:\n"
        "    rows = fastavro.reader(f, return_record_name=True)\n"
        "    print(json.dumps([[r['seq'], r['body'][0].split('.')[-1]] for r in rows]))\n"
    )
    read = subprocess.run(
        [sys.executable, "-c", script, str(out)], capture_output=True, check=True, text=True
    )
    assert json.loads(read.stdout) == [[e.seq, e.kind] for e in history(app)["r2"]]
    buf = io.BytesIO()
    audit.export_jsonl(audit.history_events(app, run_id="r2"), buf)
    assert [json.loads(line)["type"] for line in buf.getvalue().splitlines()] == kinds
