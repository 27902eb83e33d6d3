"""A run whose state outgrows Kafka's record size limit gets an outcome; the processor does not wedge.

Each step result is within ``max_payload_bytes`` (512 KB), but a run's state holds every result, so after
a few the changelog record of the state is over the producer's ``message.max.bytes`` (1 MB). Before, the
produce failed, the batch aborted, was reprocessed, failed again: forever, for every run of the partition.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from engine_support import engine, history, settings

from orchestrator import App, RunFailedError, WorkflowContext
from orchestrator._engine import events as ev

BLOB = 400_000


async def test_state_over_the_record_limit_fails_the_step_and_other_runs_go_on(
    kafka_bootstrap: str, unique_name: str, tmp_path: Path
) -> None:
    app = App(unique_name, settings=settings(kafka_bootstrap))

    @app.step
    async def blob(i: int) -> str:
        return str(i) * BLOB

    @app.step
    async def echo(x: int) -> int:
        return x

    @app.workflow
    async def hoard(ctx: WorkflowContext, n: int) -> int:
        parts = [await ctx.step(blob, i) for i in range(n)]
        return sum(len(p) for p in parts)

    @app.workflow
    async def small(ctx: WorkflowContext, x: int) -> int:
        return await ctx.step(echo, x)

    with engine(app, tmp_path) as [proc]:
        async with app.client() as client:
            big = await client.start(hoard, 3, run_id="big")
            smalls = [await client.start(small, i, run_id=f"small{i}") for i in range(10)]
            with pytest.raises(RunFailedError) as failed:
                await big.result(timeout=90)
            assert await asyncio.gather(*(h.result(timeout=90) for h in smalls)) == list(range(10))
            # The engine goes on: a run started afterwards on the same partitions completes.
            later = await client.start(small, 99, run_id="later")
            assert await later.result(timeout=90) == 99
    assert failed.value.status == "failed"
    assert "RecordTooLarge" in str(failed.value) and "max.message.bytes" in str(failed.value)
    events = history(app)["big"]
    failures = [e.body for e in events if isinstance(e.body, ev.StepFailed)]
    assert [(f.position, f.error_type, f.retryable) for f in failures] == [(2, "RecordTooLarge", False)]
    assert [e.body.position for e in events if isinstance(e.body, ev.StepCompleted)] == [0, 1]
    print(f"aborted transactions: {proc.stats.aborts}")
