"""Workflows end to end on the real broker: chaining, sync and async steps, retries, terminal errors."""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass
from pathlib import Path

import pytest
from engine_support import engine, history, settings

from orchestrator import App, RetryPolicy, RunFailedError, StepFailedError, TerminalError, WorkflowContext
from orchestrator._engine import events as ev


@dataclass
class Box:
    value: int
    trail: list[str]


def _app(name: str, bootstrap: str) -> App:
    app = App(name, settings=settings(bootstrap))

    @app.step
    async def add_one(box: Box) -> Box:
        return Box(box.value + 1, [*box.trail, "add_one"])

    @app.step
    def double(box: Box) -> Box:  # a plain function: runs on the worker's thread pool
        return Box(box.value * 2, [*box.trail, "double"])

    @app.step
    async def square(box: Box) -> Box:
        return Box(box.value**2, [*box.trail, "square"])

    @app.workflow
    async def chain(ctx: WorkflowContext, start: int) -> Box:
        box = Box(start, [])
        for step in (add_one, double, square, add_one, double):
            box = await ctx.step(step, box)
        return box

    return app


async def test_five_steps_chain_results(kafka_bootstrap: str, unique_name: str, tmp_path: Path) -> None:
    app = _app(unique_name, kafka_bootstrap)
    with engine(app, tmp_path):
        async with app.client() as client:
            handle = await client.start("chain", 3, run_id="r1")
            result = await handle.result(timeout=60)
            desc = await handle.describe()
    assert result == Box(((3 + 1) * 2) ** 2 * 2 + 2, ["add_one", "double", "square", "add_one", "double"])
    assert desc is not None and desc.status == "completed"
    assert [s.step for s in desc.steps] == ["add_one", "double", "square", "add_one", "double"]
    assert all(s.status == "completed" and s.attempts == 1 for s in desc.steps)
    kinds = [e.kind for e in history(app)["r1"]]
    assert kinds == ["RunStarted"] + ["StepScheduled", "StepCompleted"] * 5 + ["RunCompleted"]
    assert [e.seq for e in history(app)["r1"]] == list(range(len(kinds)))


async def test_same_run_id_twice_is_one_run(kafka_bootstrap: str, unique_name: str, tmp_path: Path) -> None:
    app = _app(unique_name, kafka_bootstrap)
    with engine(app, tmp_path):
        async with app.client() as client:
            first = await client.start("chain", 1, run_id="once")
            await first.result(timeout=60)
            second = await client.start("chain", 99, run_id="once")  # after completion: same run, same result
            assert (await second.result(timeout=60)).value == (await first.result(timeout=60)).value
    assert sum(1 for e in history(app)["once"] if e.kind == "RunStarted") == 1


async def test_step_failing_twice_is_retried_with_backoff(
    kafka_bootstrap: str, unique_name: str, tmp_path: Path
) -> None:
    app = App(unique_name, settings=settings(kafka_bootstrap))
    calls: dict[str, int] = {}
    lock = threading.Lock()

    @app.step(retry=RetryPolicy(max_attempts=5, initial_interval="100ms", backoff=2.0, jitter=0))
    def flaky(key: str) -> str:
        with lock:
            calls[key] = calls.get(key, 0) + 1
            n = calls[key]
        if n <= 2:
            raise ConnectionError(f"attempt {n} failed")
        return f"ok after {n}"

    @app.workflow
    async def wf(ctx: WorkflowContext, key: str) -> str:
        return await ctx.step(flaky, key)

    with engine(app, tmp_path):
        async with app.client() as client:
            assert await (await client.start(wf, "k", run_id="retry")).result(timeout=60) == "ok after 3"
            desc = await client.describe("retry")
    assert calls == {"k": 3}
    assert desc is not None and desc.steps[0].attempts == 3
    assert len(desc.steps[0].attempt_errors) == 2
    events = history(app)["retry"]
    failed = [e for e in events if isinstance(e.body, ev.StepFailed)]
    retries = [e.body for e in events if isinstance(e.body, ev.RetryScheduled)]
    assert [r.attempt for r in retries] == [2, 3]
    # Backoff as declared, without jitter: 100 ms after the first failure, 200 ms after the second.
    assert [r.due_ms - f.timestamp_ms for r, f in zip(retries, failed, strict=True)] == [100, 200]
    scheduled = [e for e in events if isinstance(e.body, ev.StepScheduled)]
    assert [e.body.attempt for e in scheduled] == [1, 2, 3]
    assert all(s.timestamp_ms >= r.due_ms for s, r in zip(scheduled[1:], retries, strict=True))


async def test_terminal_error_fails_the_run(kafka_bootstrap: str, unique_name: str, tmp_path: Path) -> None:
    app = App(unique_name, settings=settings(kafka_bootstrap))
    calls = []

    @app.step(retry=RetryPolicy(max_attempts=5, initial_interval="10ms"))
    async def refuse(amount: int) -> None:
        calls.append(amount)
        raise TerminalError(f"card declined for {amount}")

    @app.workflow
    async def pay(ctx: WorkflowContext, amount: int) -> None:
        await ctx.step(refuse, amount)

    with engine(app, tmp_path):
        async with app.client() as client:
            handle = await client.start(pay, 42, run_id="declined")
            with pytest.raises(RunFailedError) as info:
                await handle.result(timeout=60)
            desc = await handle.describe()
    assert calls == [42]  # not retried
    assert info.value.status == "failed" and "card declined for 42" in info.value.message
    assert info.value.error_type == "TerminalError"  # the failed step's error, surfaced as the run's
    assert desc is not None and desc.status == "failed" and desc.steps[0].status == "failed"
    assert "TerminalError: card declined for 42" in desc.steps[0].error
    assert history(app)["declined"][-1].kind == "RunFailed"


async def test_workflow_can_catch_a_failed_step(
    kafka_bootstrap: str, unique_name: str, tmp_path: Path
) -> None:
    app = App(unique_name, settings=settings(kafka_bootstrap))

    @app.step(retry=RetryPolicy(max_attempts=2, initial_interval="10ms"))
    async def broken() -> None:
        raise ValueError("always")

    @app.step
    async def fallback() -> str:
        return "fallback"

    @app.workflow
    async def wf(ctx: WorkflowContext) -> str:
        try:
            await ctx.step(broken)
        except StepFailedError as exc:
            assert exc.attempts == 2 and exc.error_type == "ValueError"
            return await ctx.step(fallback)
        return "unreachable"

    with engine(app, tmp_path):
        async with app.client() as client:
            assert await (await client.start(wf)).result(timeout=60) == "fallback"


async def test_parallel_steps_with_gather(kafka_bootstrap: str, unique_name: str, tmp_path: Path) -> None:
    app = App(unique_name, settings=settings(kafka_bootstrap))

    @app.step
    async def slow_echo(x: int) -> int:
        await asyncio.sleep(0.05 * (5 - x))  # finish in reverse order
        return x

    @app.workflow
    async def fan(ctx: WorkflowContext, n: int) -> list[int]:
        return list(await asyncio.gather(*(ctx.step(slow_echo, i) for i in range(n))))

    with engine(app, tmp_path):
        async with app.client() as client:
            assert await (await client.start(fan, 5)).result(timeout=60) == [0, 1, 2, 3, 4]


async def test_many_runs_on_all_partitions(kafka_bootstrap: str, unique_name: str, tmp_path: Path) -> None:
    app = _app(unique_name, kafka_bootstrap)
    with engine(app, tmp_path):
        async with app.client() as client:
            handles = [await client.start("chain", i, run_id=f"m{i}") for i in range(60)]
            results = await asyncio.gather(*(h.result(timeout=90) for h in handles))
    assert [r.value for r in results] == [((i + 1) * 2) ** 2 * 2 + 2 for i in range(60)]


async def test_batch_linger_gathers_records_into_fewer_transactions(
    kafka_bootstrap: str, unique_name: str, tmp_path: Path
) -> None:
    # The latency/throughput knob: with a linger, records that arrive together share one transaction.
    app = _app(unique_name, kafka_bootstrap)
    with engine(app, tmp_path, processor_config={"batch_linger_ms": 300}) as (proc,):
        async with app.client() as client:
            await (await client.start("chain", 0, run_id="warm-up")).result(timeout=90)  # partitions assigned
            before_events, before_transactions = proc.stats.events, proc.stats.transactions
            handles = []
            for i in range(30):  # trickling in: 30 starts over ~0.6 s
                handles.append(await client.start("chain", i, run_id=f"l{i}"))
                await asyncio.sleep(0.02)
            results = await asyncio.gather(*(h.result(timeout=90) for h in handles))
        events = proc.stats.events - before_events
        transactions = proc.stats.transactions - before_transactions
    assert [r.value for r in results] == [((i + 1) * 2) ** 2 * 2 + 2 for i in range(30)]
    # 30 runs x 6 inbox records (start + 5 step results). Without a linger, the trickle takes more than 40
    # transactions (each start alone, results in small groups); with 300 ms, about 2 per 0.6 s of starts
    # and then whole waves of results.
    assert events == 180
    assert transactions <= 20, (events, transactions)
