"""Closed-loop load: C callers, each starting one workflow and awaiting its result, again and again.

Standard library only: every system's driver (ours and each peer's, in its own virtual environment) imports
this module and prints one JSON line with the result, which the harness reads.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class LoadResult:
    system: str
    workflow: str
    steps: int
    concurrency: int
    duration_s: float
    completed: int = 0
    errors: int = 0
    all_completed: int = 0
    """every run that completed, warm-up and stragglers included (for cost per run)"""
    first_error: str = ""
    latencies_ms: list[float] = field(default_factory=list)

    @property
    def runs_per_s(self) -> float:
        return self.completed / self.duration_s if self.duration_s else 0.0

    def summary(self) -> dict[str, Any]:
        lat = sorted(self.latencies_ms)
        return {
            "system": self.system,
            "workflow": self.workflow,
            "steps": self.steps,
            "concurrency": self.concurrency,
            "duration_s": self.duration_s,
            "completed": self.completed,
            "errors": self.errors,
            "all_completed": self.all_completed,
            "first_error": self.first_error,
            "runs_per_s": round(self.runs_per_s, 1),
            "steps_per_s": round(self.runs_per_s * self.steps, 1),
            "p50_ms": pct(lat, 50),
            "p95_ms": pct(lat, 95),
            "p99_ms": pct(lat, 99),
            "mean_ms": round(statistics.fmean(lat), 2) if lat else None,
            # a thinned sample for CDF plots
            "cdf_sample_ms": [round(lat[int(i * (len(lat) - 1) / 200)], 2) for i in range(201)]
            if lat
            else [],
        }


def pct(sorted_values: list[float], q: float) -> float | None:
    if not sorted_values:
        return None
    k = min(len(sorted_values) - 1, max(0, round(q / 100 * len(sorted_values) + 0.5) - 1))
    return round(sorted_values[k], 2)


async def run_async(
    one: Callable[[int], Awaitable[Any]],
    concurrency: int,
    warmup_s: float,
    duration_s: float,
    res: LoadResult,
) -> LoadResult:
    """``one(i)`` starts run ``i`` and returns once it has completed. Only runs that start after warm-up and
    finish before the end of the window are counted (the window is exactly ``duration_s`` long)."""
    t_start = time.perf_counter()
    t_measure = t_start + warmup_s
    t_end = t_measure + duration_s
    counter = iter(range(10**12))

    async def caller() -> None:
        while True:
            t0 = time.perf_counter()
            if t0 >= t_end:
                return
            try:
                await one(next(counter))
            except Exception as exc:
                res.errors += 1
                res.first_error = res.first_error or f"{type(exc).__name__}: {exc}"[:300]
                await asyncio.sleep(0.05)
                continue
            t1 = time.perf_counter()
            res.all_completed += 1
            if t0 >= t_measure and t1 <= t_end:
                res.completed += 1
                res.latencies_ms.append((t1 - t0) * 1000)

    await asyncio.gather(*(caller() for _ in range(concurrency)))
    return res


async def run_open(
    one: Callable[[int], Awaitable[Any]], rate: float, warmup_s: float, duration_s: float, res: LoadResult
) -> LoadResult:
    """Open loop: start a run every ``1/rate`` s whatever the others do (latency at a given load).

    Runs that start inside the window are counted once they end, however late; ``concurrency`` is then the
    most runs in flight at once."""
    t_measure = time.perf_counter() + warmup_s
    t_end = t_measure + duration_s
    in_flight = 0
    tasks: set[asyncio.Task[None]] = set()

    async def timed(i: int, t0: float) -> None:
        nonlocal in_flight
        in_flight += 1
        res.concurrency = max(res.concurrency, in_flight)
        try:
            await one(i)
        except Exception as exc:
            res.errors += 1
            res.first_error = res.first_error or f"{type(exc).__name__}: {exc}"[:300]
            return
        finally:
            in_flight -= 1
        res.all_completed += 1
        if t0 >= t_measure:
            res.completed += 1
            res.latencies_ms.append((time.perf_counter() - t0) * 1000)

    i = 0
    next_at = time.perf_counter()
    while next_at < t_end:
        await asyncio.sleep(max(0.0, next_at - time.perf_counter()))
        task = asyncio.create_task(timed(i, next_at))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        i += 1
        next_at += 1 / rate
    await asyncio.gather(*tasks)
    return res


def run_threads(
    one: Callable[[int], Any], concurrency: int, warmup_s: float, duration_s: float, res: LoadResult
) -> LoadResult:
    """The same closed loop with one thread per caller, for blocking clients (Celery)."""
    t_measure = time.perf_counter() + warmup_s
    t_end = t_measure + duration_s
    lock = threading.Lock()
    counter = iter(range(10**12))

    def caller() -> None:
        while True:
            t0 = time.perf_counter()
            if t0 >= t_end:
                return
            with lock:
                i = next(counter)
            try:
                one(i)
            except Exception as exc:
                with lock:
                    res.errors += 1
                    res.first_error = res.first_error or f"{type(exc).__name__}: {exc}"[:300]
                time.sleep(0.05)
                continue
            t1 = time.perf_counter()
            with lock:
                res.all_completed += 1
            if t0 >= t_measure and t1 <= t_end:
                with lock:
                    res.completed += 1
                    res.latencies_ms.append((t1 - t0) * 1000)

    threads = [threading.Thread(target=caller, daemon=True) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(warmup_s + duration_s + 120)
    return res


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The arguments every driver takes."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--workflow", default="five")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1])
    ap.add_argument("--warmup", type=float, default=2.0)
    ap.add_argument("--duration", type=float, default=5.0)
    ap.add_argument("--endpoint", default="")
    ap.add_argument("--rate", type=float, default=0.0, help="open loop at this many runs/s instead")
    return ap.parse_args(argv)


def emit(res: LoadResult, **extra: Any) -> None:
    """One JSON line on stdout, prefixed so the harness can find it among the SDKs' own prints."""
    # The driver's own CPU so far (it shares the 2 cores with the systems it measures).
    extra = {"driver_cpu_s": round(time.process_time(), 3), **extra}
    sys.stdout.write("BENCH-RESULT " + json.dumps(res.summary() | extra) + "\n")
    sys.stdout.flush()


STEPS = {"one": 1, "five": 5, "twenty": 20, "five_10ms": 5, "five_local": 5}
"""Workflow variants: name -> steps. Every step body is ``x + 1`` (``five_10ms`` sleeps 10 ms first;
``five_local`` runs its steps in-process: our local steps, Temporal's local activities)."""

__all__ = ["STEPS", "LoadResult", "asdict", "emit", "parse_args", "run_async", "run_open", "run_threads"]
