"""Celery + Redis version: a workflow is a chain of N tasks (not durable: the baseline).

The broker URL comes from ``BENCH_REDIS_URL``. Worker: ``celery -A bench.peers.celery_app worker``.
Driver: ``python -m bench.peers.celery_app --workflow five --concurrency 1 8 32`` (one thread per caller).
"""

from __future__ import annotations

import os
import time

from celery import Celery, chain

from bench.load import STEPS, LoadResult, emit, parse_args, run_threads

url = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
app = Celery("bench", broker=url, backend=url)
app.conf.update(
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    worker_prefetch_multiplier=4,
    broker_connection_retry_on_startup=True,
)


@app.task(name="inc")
def inc(x: int) -> int:
    return x + 1


@app.task(name="inc_10ms")
def inc_10ms(x: int) -> int:
    time.sleep(0.01)  # Celery tasks are plain functions
    return x + 1


def workflow(name: str, x: int):  # type: ignore[no-untyped-def]
    step = inc_10ms if name == "five_10ms" else inc
    n = STEPS[name]
    return chain(step.s(x), *[step.s() for _ in range(n - 1)])


def main() -> None:
    args = parse_args()
    steps = STEPS[args.workflow]

    def one(i: int) -> None:
        value = workflow(args.workflow, i).apply_async().get(timeout=60)
        if value != i + steps:
            raise AssertionError(f"run {i}: got {value}, expected {i + steps}")

    one(-1)
    for c in args.concurrency:
        res = LoadResult("celery", args.workflow, steps, c, args.duration)
        run_threads(one, c, args.warmup, args.duration, res)
        emit(res)


if __name__ == "__main__":
    main()
    os._exit(0)
