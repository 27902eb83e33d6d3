"""Temporal (Python SDK) version: a workflow of N activities, each ``x + 1``.

Worker: ``python -m bench.peers.temporal_app worker --endpoint HOST:PORT``; driver: the same module with the
usual load arguments (``--workflow five --concurrency 1 8 32 --endpoint HOST:PORT``).
"""

from __future__ import annotations

import asyncio
import os
import sys
import uuid
from datetime import timedelta

from temporalio import activity, workflow
from temporalio.client import Client
from temporalio.worker import Worker

from bench.load import STEPS, LoadResult, emit, parse_args, run_async

QUEUE = "bench"


@activity.defn
async def inc(x: int) -> int:
    return x + 1


@activity.defn
async def inc_10ms(x: int) -> int:
    await asyncio.sleep(0.01)
    return x + 1


async def _chain(step, x: int, n: int) -> int:  # type: ignore[no-untyped-def]
    for _ in range(n):
        x = await workflow.execute_activity(step, x, start_to_close_timeout=timedelta(seconds=30))
    return x


@workflow.defn(name="one")
class One:
    @workflow.run
    async def run(self, x: int) -> int:
        return await _chain(inc, x, 1)


@workflow.defn(name="five")
class Five:
    @workflow.run
    async def run(self, x: int) -> int:
        return await _chain(inc, x, 5)


@workflow.defn(name="twenty")
class Twenty:
    @workflow.run
    async def run(self, x: int) -> int:
        return await _chain(inc, x, 20)


@workflow.defn(name="five_10ms")
class Five10ms:
    @workflow.run
    async def run(self, x: int) -> int:
        return await _chain(inc_10ms, x, 5)


@workflow.defn(name="five_local")
class FiveLocal:
    """Local activities: run in the workflow worker, recorded with the workflow task (no task queue hop)."""

    @workflow.run
    async def run(self, x: int) -> int:
        for _ in range(5):
            x = await workflow.execute_local_activity(inc, x, start_to_close_timeout=timedelta(seconds=30))
        return x


async def serve(endpoint: str) -> None:
    client = await Client.connect(endpoint)
    worker = Worker(
        client,
        task_queue=QUEUE,
        workflows=[One, Five, Twenty, Five10ms, FiveLocal],
        activities=[inc, inc_10ms],
        max_concurrent_activities=64,
        max_concurrent_workflow_tasks=64,
    )
    await worker.run()


async def drive() -> None:
    args = parse_args()
    steps = STEPS[args.workflow]
    client = await Client.connect(args.endpoint)
    prefix = uuid.uuid4().hex[:8]

    async def one(i: int) -> None:
        value = await client.execute_workflow(args.workflow, i, id=f"{prefix}-{i}", task_queue=QUEUE)
        if value != i + steps:
            raise AssertionError(f"run {i}: got {value}, expected {i + steps}")

    await one(-1)
    for c in args.concurrency:
        prefix = uuid.uuid4().hex[:8]
        res = LoadResult("temporal", args.workflow, steps, c, args.duration)
        await run_async(one, c, args.warmup, args.duration, res)
        emit(res)


if __name__ == "__main__":
    if sys.argv[1:2] == ["worker"]:
        asyncio.run(serve(sys.argv[sys.argv.index("--endpoint") + 1]))
    else:
        asyncio.run(drive())
        os._exit(0)  # the SDK may hang at interpreter exit
