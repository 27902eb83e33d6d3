"""Sagas: compensations run newest first, once each, also across a processor SIGKILL."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from engine_support import APP_SPEC, EngineProcess, child_env, history, settings

from orchestrator import App, RunFailedError
from orchestrator._engine import audit


async def test_failing_step_4_compensates_3_2_1_once_across_a_kill(
    kafka_bootstrap: str, unique_name: str, tmp_path: Path
) -> None:
    side = tmp_path / "executions.log"
    env = child_env(unique_name, kafka_bootstrap, tmp_path)
    log = tmp_path / "engine.log"
    proc = EngineProcess(
        "processor", APP_SPEC, env, "--instance-id", "g0", "--state-dir", str(tmp_path / "s"), log=log
    )
    # A second instance shares the partitions (the issue asks for two).
    other = EngineProcess(
        "processor", APP_SPEC, env, "--instance-id", "g1", "--state-dir", str(tmp_path / "s1"), log=log
    )
    work = EngineProcess("worker", APP_SPEC, env, log=log)
    app = App(unique_name, settings=settings(kafka_bootstrap))
    proc.start()
    other.start()
    work.start()
    try:
        async with app.client() as client:
            handles = [await client.start("saga", f"o{i}", run_id=f"s{i}") for i in range(5)]
            while "unbook3-start" not in (side.read_text() if side.exists() else ""):
                await asyncio.sleep(0.05)
            proc.kill()  # while compensating
            await asyncio.sleep(0.5)
            proc.start()
            for h in handles:
                with pytest.raises(RunFailedError) as info:
                    await h.result(timeout=120)
                assert info.value.status == "failed" and "card declined" in info.value.message
    finally:
        proc.terminate()
        other.terminate()
        work.terminate()
    for i in range(5):
        done = [line.split()[1] for line in side.read_text().splitlines() if line.startswith(f"s{i} ")]
        assert [n for n in done if not n.endswith("-start")] == [
            "book1",
            "book2",
            "book3",
            "unbook3",
            "unbook2",
            "unbook1",
        ], done
    events = history(app)["s0"]
    kinds = [e.kind for e in events]
    assert "CompensationStarted" in kinds and kinds[-1] == "RunFailed"
    assert audit.compare(audit.rebuild(audit.history_events(app)), audit.live_states(app)) == []


async def test_a_compensation_that_keeps_failing_parks_the_run(
    kafka_bootstrap: str, unique_name: str, tmp_path: Path
) -> None:
    from engine_support import ProcessorThread, WorkerThread

    from orchestrator import RetryPolicy, TerminalError, WorkflowContext

    app = App(unique_name, settings=settings(kafka_bootstrap))
    fixed = {"refund": False}
    undone: list[str] = []

    @app.step
    async def charge(order: str) -> str:
        return f"ch-{order}"

    @app.step(retry=RetryPolicy(max_attempts=2, initial_interval="10ms"))
    async def refund(order: str) -> None:
        if not fixed["refund"]:
            raise ConnectionError("payment provider down")
        undone.append(order)

    @app.step
    async def ship(order: str) -> None:
        raise TerminalError("no courier")

    @app.workflow
    async def order_flow(ctx: WorkflowContext, order: str) -> None:
        await ctx.step(charge, order, compensate=refund)
        await ctx.step(ship, order)

    proc, worker = ProcessorThread(app, tmp_path), WorkerThread(app)
    try:
        async with app.client() as client:
            handle = await client.start(order_flow, "o1", run_id="o1")
            with pytest.raises(RunFailedError) as parked:
                await handle.result(timeout=60)
            assert parked.value.status == "parked" and parked.value.error_type == "compensation_failed"
            assert "refund" in parked.value.message and "payment provider down" in parked.value.message
            fixed["refund"] = True
            await client.resume("o1")
            while (desc := await client.describe("o1")) is None or desc.status == "parked":
                await asyncio.sleep(0.2)
            with pytest.raises(RunFailedError) as failed:
                await client.get_handle("o1").result(timeout=60)
    finally:
        worker.stop()
        proc.stop()
    assert failed.value.status == "failed" and "no courier" in failed.value.message
    assert undone == ["o1"]
    assert audit.compare(audit.rebuild(audit.history_events(app)), audit.live_states(app)) == []
