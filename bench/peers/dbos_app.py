"""DBOS version: a ``@DBOS.workflow`` of N ``@DBOS.step`` calls, on Postgres (``BENCH_PG_URL``).

DBOS is a library: the driver process is also where workflows execute (that is its architecture), so the
callers start each workflow with ``DBOS.start_workflow_async`` and await ``get_result()``.
"""

from __future__ import annotations

import asyncio
import os

from dbos import DBOS, DBOSConfig

from bench.load import STEPS, LoadResult, emit, parse_args, run_async


@DBOS.step()
async def inc(x: int) -> int:
    return x + 1


@DBOS.step()
async def inc_10ms(x: int) -> int:
    await asyncio.sleep(0.01)
    return x + 1


async def _chain(step, x: int, n: int) -> int:  # type: ignore[no-untyped-def]
    for _ in range(n):
        x = await step(x)
    return x


@DBOS.workflow()
async def one(x: int) -> int:
    return await _chain(inc, x, 1)


@DBOS.workflow()
async def five(x: int) -> int:
    return await _chain(inc, x, 5)


@DBOS.workflow()
async def twenty(x: int) -> int:
    return await _chain(inc, x, 20)


@DBOS.workflow()
async def five_10ms(x: int) -> int:
    return await _chain(inc_10ms, x, 5)


WORKFLOWS = {"one": one, "five": five, "twenty": twenty, "five_10ms": five_10ms}


async def drive() -> None:
    args = parse_args()
    steps = STEPS[args.workflow]
    fn = WORKFLOWS[args.workflow]

    async def run_one(i: int) -> None:
        handle = await DBOS.start_workflow_async(fn, i)
        value = await handle.get_result()
        if value != i + steps:
            raise AssertionError(f"run {i}: got {value}, expected {i + steps}")

    await run_one(-1)
    for c in args.concurrency:
        res = LoadResult("dbos", args.workflow, steps, c, args.duration)
        await run_async(run_one, c, args.warmup, args.duration, res)
        emit(res)


if __name__ == "__main__":
    config: DBOSConfig = {"name": "bench", "system_database_url": os.environ["BENCH_PG_URL"]}
    DBOS(config=config)
    DBOS.launch()
    asyncio.run(drive())
    os._exit(0)
