"""Load driver for our engine: C callers, each ``app.client().start(...)`` then ``handle.result()``.

Run by the harness as ``.venv/bin/python -m bench.ours_driver --workflow five --concurrency 1 8 32``.
"""

from __future__ import annotations

import asyncio
import os
import uuid

from bench.apps import app
from bench.load import STEPS, LoadResult, emit, parse_args, run_async, run_open


class _ShortWaitConsumer:
    """Experiment only (``BENCH_WATCHER_WAIT_MS``): caps the outcome watcher's ``consume`` timeout.

    librdkafka's batch ``consume(n, timeout)`` returns only when ``n`` records arrived or the timeout passed,
    so the client's watcher (``consume(1000, timeout=0.1)``) sees each outcome up to 100 ms late.
    """

    def __init__(self, inner: object, wait_s: float) -> None:
        self._inner, self._wait_s = inner, wait_s

    def consume(self, num_messages: int, timeout: float) -> list[object]:
        return self._inner.consume(num_messages, timeout=min(timeout, self._wait_s))  # type: ignore[attr-defined]

    def close(self) -> None:
        self._inner.close()  # type: ignore[attr-defined]


async def main() -> None:
    args = parse_args()
    steps = STEPS[args.workflow]
    system = "ours"
    async with app.client() as client:
        wait_ms = os.environ.get("BENCH_WATCHER_WAIT_MS")
        if wait_ms:
            watcher = await asyncio.to_thread(client._ensure_watcher)
            watcher._consumer = _ShortWaitConsumer(watcher._consumer, float(wait_ms) / 1000)  # type: ignore[assignment]
            system = f"ours, watcher {wait_ms} ms (experiment)"
        prefix = uuid.uuid4().hex[:8]

        async def one(i: int) -> None:
            handle = await client.start(args.workflow, i, run_id=f"{prefix}-{i}")
            value = await handle.result(timeout=60)
            if value != i + steps:
                raise AssertionError(f"run {i}: got {value}, expected {i + steps}")

        await one(-1)  # topics, watcher and producer up before timing
        if args.rate:
            prefix = uuid.uuid4().hex[:8]
            res = LoadResult(
                f"{system}, open loop {args.rate:g} runs/s", args.workflow, steps, 0, args.duration
            )
            await run_open(one, args.rate, args.warmup, args.duration, res)
            emit(res, run_prefix=prefix)
            return
        for c in args.concurrency:
            prefix = uuid.uuid4().hex[:8]  # fresh run ids for each level
            res = LoadResult(system, args.workflow, steps, c, args.duration)
            await run_async(one, c, args.warmup, args.duration, res)
            emit(res, run_prefix=prefix)


if __name__ == "__main__":
    asyncio.run(main())
    os._exit(0)  # do not wait for librdkafka threads at exit
