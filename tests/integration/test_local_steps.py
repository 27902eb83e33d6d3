"""Local steps: run inside the processor, recorded like worker steps, repeated only by a processor crash."""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from pathlib import Path

import pytest
from engine_support import APP_SPEC, EngineProcess, child_env, engine, executions, history, settings

from orchestrator import App, RetryPolicy, RunFailedError, WorkflowContext, step_info
from orchestrator._engine import audit
from orchestrator._engine import events as ev
from orchestrator._engine.events import decode_event
from orchestrator._engine.processor.handling_time import LOCAL_STEPS_PER_INPUT
from orchestrator._engine.reader import read_partitions
from orchestrator.topology import inbox_topic


async def test_local_steps_need_no_worker_and_are_recorded_like_worker_steps(
    kafka_bootstrap: str, unique_name: str, tmp_path: Path
) -> None:
    app = App(unique_name, settings=settings(kafka_bootstrap))
    ran: list[tuple[str, int]] = []

    @app.step(local=True)
    def double(x: int) -> int:
        ran.append((step_info().run_id, step_info().position))
        return x * 2

    @app.step(local=True)
    async def plus_one(x: int) -> int:
        await asyncio.sleep(0)
        return x + 1

    @app.workflow
    async def chain(ctx: WorkflowContext, x: int) -> int:
        x = await ctx.step(double, x)
        x = await ctx.step(plus_one, x)
        return await ctx.step(double, x)

    assert app.queues == {"default"}  # local steps add no queue for workers to serve
    with engine(app, tmp_path, workers=0) as (proc,):
        async with app.client() as client:
            handles = [await client.start("chain", i, run_id=f"r{i}") for i in range(20)]
            assert [await h.result(timeout=60) for h in handles] == [(i * 2 + 1) * 2 for i in range(20)]
    assert proc.stats.local_steps == 60
    assert sorted(ran) == sorted((f"r{i}", p) for i in range(20) for p in (0, 2))
    events = history(app)["r3"]
    assert [e.kind for e in events] == [
        "RunStarted",
        *["StepScheduled", "StepCompleted"] * 3,
        "RunCompleted",
    ]
    assert {e.body.worker for e in events if isinstance(e.body, ev.StepCompleted)} == {"processor:p0"}
    assert [e.seq for e in events] == list(range(len(events)))
    # The history folds to the live state, as for worker steps.
    assert audit.compare(audit.rebuild(audit.history_events(app)), audit.live_states(app)) == []


async def test_local_step_failures_retry_time_out_and_mix_with_worker_steps(
    kafka_bootstrap: str, unique_name: str, tmp_path: Path
) -> None:
    app = App(unique_name, settings=settings(kafka_bootstrap))
    attempts: dict[str, int] = defaultdict(int)

    @app.step(local=True, retry=RetryPolicy(max_attempts=3, initial_interval="20ms"))
    def flaky(x: int) -> int:
        attempts[step_info().run_id] += 1
        if step_info().attempt < 3:
            raise ConnectionError("not yet")
        return x + 1

    @app.step
    async def on_worker(x: int) -> int:
        return x * 10

    @app.step(local=True, timeout="100ms", retry=RetryPolicy(max_attempts=2, initial_interval="10ms"))
    async def slow(x: int) -> int:
        await asyncio.sleep(30)
        return x

    @app.workflow
    async def mixed(ctx: WorkflowContext, x: int) -> int:
        x = await ctx.step(flaky, x)
        return await ctx.step(on_worker, x)

    @app.workflow
    async def too_slow(ctx: WorkflowContext, x: int) -> int:
        return await ctx.step(slow, x)

    with engine(app, tmp_path):
        async with app.client() as client:
            run = await client.start("mixed", 4, run_id="m")
            assert await run.result(timeout=60) == 50
            started = time.monotonic()
            slow_run = await client.start("too_slow", 1, run_id="s")
            with pytest.raises(RunFailedError) as info:
                await slow_run.result(timeout=60)
            assert info.value.status == "failed" and "StepTimeout" in info.value.message
            # Two attempts of a 30 s step ended by their 100 ms timeout (a wide margin: the check is that the
            # timeout interrupts the attempts, not how fast).
            assert time.monotonic() - started < 20
    assert attempts["m"] == 3
    kinds = [e.kind for e in history(app)["m"]]
    assert kinds.count("RetryScheduled") == 2 and kinds.count("StepFailed") == 2
    completed = [e.body for e in history(app)["m"] if isinstance(e.body, ev.StepCompleted)]
    assert [c.worker.startswith("processor:") for c in completed] == [True, False]
    assert [e.kind for e in history(app)["s"]].count("StepFailed") == 2


async def test_a_long_chain_of_local_steps_goes_through_the_inbox_every_so_often(
    kafka_bootstrap: str, unique_name: str, tmp_path: Path
) -> None:
    app = App(unique_name, settings=settings(kafka_bootstrap))
    steps = 150

    @app.step(local=True)
    def inc(x: int) -> int:
        return x + 1

    @app.workflow
    async def long_chain(ctx: WorkflowContext, n: int) -> int:
        x = 0
        for _ in range(n):
            x = await ctx.step(inc, x)
        return x

    with engine(app, tmp_path, workers=0):
        async with app.client() as client:
            run = await client.start("long_chain", steps, run_id="long")
            assert await run.result(timeout=60) == steps
    # One input folds in at most LOCAL_STEPS_PER_INPUT results; the next result is sent through the inbox,
    # which commits the progress so far and lets other runs' records in.
    inbox = [
        decode_event(m.value())
        for m in read_partitions(app.settings, inbox_topic(app.name), list(range(app.settings.partitions)))
    ]
    relayed = [e for e in inbox if e.run_id == "long" and isinstance(e.body, ev.StepCompleted)]
    assert [e.body.position for e in relayed] == [LOCAL_STEPS_PER_INPUT, 2 * LOCAL_STEPS_PER_INPUT + 1]
    positions = [e.body.position for e in history(app)["long"] if isinstance(e.body, ev.StepCompleted)]
    assert positions == list(range(steps))


def test_a_local_step_cannot_have_an_admission_limit() -> None:
    from orchestrator import Admission

    app = App("local_admission")
    with pytest.raises(ValueError, match="local step cannot have an admission limit"):

        @app.step(local=True, admission=Admission(concurrency=1))
        def limited(x: int) -> int:
            return x


def _lines(path: Path) -> int:
    return len(path.read_bytes().splitlines()) if path.exists() else 0


async def test_sigkill_of_the_processor_repeats_only_uncommitted_local_steps(
    kafka_bootstrap: str, unique_name: str, tmp_path: Path
) -> None:
    """Local step results are recorded exactly once; only a killed processor's uncommitted ones re-run."""
    side = tmp_path / "executions.log"
    env = child_env(unique_name, kafka_bootstrap, tmp_path)
    log = tmp_path / "engine.log"
    proc = EngineProcess(
        "processor", APP_SPEC, env, "--instance-id", "l0", "--state-dir", str(tmp_path / "s"), log=log
    )
    work = EngineProcess("worker", APP_SPEC, env, "--instance-id", "lw", log=log)
    app = App(unique_name, settings=settings(kafka_bootstrap))
    killed: set[int] = set()
    runs = 800
    proc.start()
    work.start()
    try:
        async with app.client() as client:
            handles = [await client.start("local_mix", i, run_id=f"x{i}") for i in range(runs)]
            results = [asyncio.ensure_future(h.result(timeout=300)) for h in handles]
            # Kill the processor each time the side file shows that much more progress.
            for progress in (100, 700, 1300, 1900):
                while _lines(side) < progress and not all(r.done() for r in results):
                    await asyncio.sleep(0.01)
                if all(r.done() for r in results):
                    break
                assert proc.proc is not None
                killed.add(proc.proc.pid)
                proc.kill()
                await asyncio.sleep(0.3)
                proc.start()
            values = await asyncio.wait_for(asyncio.gather(*results), 240)
    finally:
        proc.terminate()
        work.terminate()
    assert len(killed) >= 2
    assert values == [i + 23 for i in range(runs)]  # l1 (+2), s1 (+1), l2 (+20)
    hist = history(app)
    for run_id, events in hist.items():
        completions = [e.body.position for e in events if isinstance(e.body, ev.StepCompleted)]
        assert sorted(completions) == [0, 1, 2], (run_id, [e.kind for e in events])
        assert [e.seq for e in events] == list(range(len(events))), run_id
    ran = executions(side)
    assert len(ran) == runs * 3
    repeated = [k for k, done in ran.items() if len(done) > 1]
    print(f"processor kills={len(killed)} repeated step executions={len(repeated)} of {runs * 3}")
    for (run_id, position), done in ran.items():
        if position == 1 or len(done) == 1:
            continue
        earlier = sorted(done, key=lambda x: x[2])[:-1]  # every execution but the recorded (last) one
        assert all(pid in killed for _, pid, _ in earlier), (run_id, position, done, killed)
