"""Durable time and the outside world: timers across crashes, waits with timeouts, cancellation, timeouts."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from engine_support import (
    APP_SPEC,
    EngineProcess,
    ProcessorThread,
    WorkerThread,
    child_env,
    history,
    settings,
)

from orchestrator import App, RunFailedError, WorkflowContext


async def test_sleep_survives_processor_sigkill(
    kafka_bootstrap: str, unique_name: str, tmp_path: Path
) -> None:
    env = child_env(unique_name, kafka_bootstrap, tmp_path)
    log = tmp_path / "engine.log"
    proc = EngineProcess(
        "processor", APP_SPEC, env, "--instance-id", "s0", "--state-dir", str(tmp_path / "s"), log=log
    )
    work = EngineProcess("worker", APP_SPEC, env, log=log)
    app = App(unique_name, settings=settings(kafka_bootstrap))
    proc.start()
    work.start()
    try:
        async with app.client() as client:
            handles = [await client.start("sleepy", 6.0, run_id=f"z{i}") for i in range(20)]
            await asyncio.sleep(3.0)  # every run is asleep now
            proc.kill()
            await asyncio.sleep(1.0)
            proc.start()
            results = await asyncio.gather(*(h.result(timeout=90) for h in handles))
    finally:
        proc.terminate()
        work.terminate()
    for r in results:
        # Woke no earlier than asked, and within the stated tolerance of 3 s (a restart included).
        assert 6.0 <= r["woke"] - r["before"] < 9.0, r
    for events in history(app).values():
        kinds = [e.kind for e in events]
        assert kinds.count("TimerStarted") == 1 and kinds.count("TimerFired") == 1, kinds


def _waiting_app(name: str, bootstrap: str) -> App:
    app = App(name, settings=settings(bootstrap))

    @app.step
    async def note(text: str) -> str:
        return text

    @app.workflow
    async def approval(ctx: WorkflowContext, timeout_s: float) -> str:
        await ctx.step(note, "requested")
        got = await ctx.wait_for_event("approved", timeout=timeout_s)
        if got.timed_out:
            return await ctx.step(note, "escalated")
        return await ctx.step(note, f"approved by {got.payload['by']}")

    return app


async def test_wait_for_signal_and_timeout_branch(
    kafka_bootstrap: str, unique_name: str, tmp_path: Path
) -> None:
    app = _waiting_app(unique_name, kafka_bootstrap)
    proc, worker = ProcessorThread(app, tmp_path), WorkerThread(app)
    try:
        async with app.client() as client:
            approved = await client.start("approval", 30.0, run_id="a1")
            early = await client.start("approval", 30.0, run_id="a2")
            await early.signal("approved", {"by": "early bird"})  # before it waits: kept in the run
            lapsed = await client.start("approval", 1.0, run_id="a3")
            await asyncio.sleep(1.0)
            await approved.signal("approved", {"by": "ann"})
            assert await approved.result(timeout=60) == "approved by ann"
            assert await early.result(timeout=60) == "approved by early bird"
            assert await lapsed.result(timeout=60) == "escalated"
    finally:
        worker.stop()
        proc.stop()
    kinds = [e.kind for e in history(app)["a3"]]
    assert "WaitTimedOut" in kinds and "EventReceived" not in kinds


@pytest.mark.parametrize("where", ["running_step", "sleeping", "waiting"])
async def test_cancel_in_each_state(
    where: str, kafka_bootstrap: str, unique_name: str, tmp_path: Path
) -> None:
    app = App(unique_name, settings=settings(kafka_bootstrap))
    observed: list[str] = []
    running = asyncio.Event()
    loop = asyncio.get_running_loop()

    @app.step
    async def slow() -> None:
        loop.call_soon_threadsafe(running.set)
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            observed.append("step saw the cancellation")
            raise

    @app.workflow
    async def wf(ctx: WorkflowContext, where: str) -> None:
        if where == "running_step":
            await ctx.step(slow)
        elif where == "sleeping":
            await ctx.sleep(3600)
        else:
            await ctx.wait_for_event("never", timeout=3600)

    proc, worker = ProcessorThread(app, tmp_path), WorkerThread(app)
    try:
        async with app.client() as client:
            handle = await client.start(wf, where, run_id="victim")
            if where == "running_step":
                await asyncio.wait_for(running.wait(), 30)  # the step body is really running
            else:
                await asyncio.sleep(1.5)
            await handle.cancel("customer changed their mind")
            with pytest.raises(RunFailedError) as info:
                await handle.result(timeout=60)
            desc = await handle.describe()
            deadline = time.monotonic() + 10
            while where == "running_step" and not observed and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            for p, store in proc.processor.stores.run_stores.items():
                assert list(store.scan(b"t/")) == [], f"timers left on partition {p}"
    finally:
        worker.stop()
        proc.stop()
    assert info.value.status == "cancelled" and "customer changed their mind" in info.value.message
    assert desc is not None and desc.status == "cancelled"
    assert all(s.status == "cancelled" for s in desc.steps)
    assert history(app)["victim"][-1].kind == "RunCancelled"
    if where == "running_step":
        assert observed == ["step saw the cancellation"]


async def test_step_timeout_retries_after_worker_sigkill(
    kafka_bootstrap: str, unique_name: str, tmp_path: Path
) -> None:
    env = child_env(unique_name, kafka_bootstrap, tmp_path)
    log = tmp_path / "engine.log"
    proc = EngineProcess(
        "processor", APP_SPEC, env, "--instance-id", "t0", "--state-dir", str(tmp_path / "s"), log=log
    )
    work = EngineProcess("worker", APP_SPEC, env, "--instance-id", "tw", log=log)
    app = App(unique_name, settings=settings(kafka_bootstrap))
    proc.start()
    work.start()
    side = tmp_path / "executions.log"
    try:
        async with app.client() as client:
            handle = await client.start("timed", 5, run_id="hung")
            deadline = time.monotonic() + 60
            while not (side.exists() and side.read_text()) and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            work.kill()  # dies in the middle of attempt 1; nothing will report it
            await asyncio.sleep(3.5)  # past the 2 s timeout: only the processor's timer can notice
            work.start()
            assert await handle.result(timeout=60) == 5
    finally:
        proc.terminate()
        work.terminate()
    kinds = [e.kind for e in history(app)["hung"]]
    assert "StepTimedOut" in kinds, kinds
    assert kinds[-1] == "RunCompleted"
