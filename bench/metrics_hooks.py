"""``python -m bench.metrics_hooks``: CPU cost of the metrics hooks, per call and per 5-step run.

`bench cpu-path` drives the decider and the codecs, not `Output.produce_records`, the loop's commit or the
worker's `_attempt`, so it cannot see the hooks (ADR 0017). This times each hook alone, with the same calls
the engine makes, and prints microseconds per call and per 5-step run (12 history events, 5 attempts, 6
held results on the worker; about one transaction per step on the processor at low load).
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from orchestrator._core.effects import StepCommand
from orchestrator._core.events import (
    Event,
    RunCompleted,
    RunStarted,
    StepCompleted,
    StepScheduled,
)
from orchestrator._engine import metrics
from orchestrator._engine.faults import FaultLog
from orchestrator._engine.store import PartitionStore, run_key, timer_key

STEPS = 5


def per_call_us(fn: Callable[[], object], calls: int, repeats: int = 5) -> float:
    """Best of ``repeats`` (the least disturbed by other tenants of the machine), in microseconds."""
    best = float("inf")
    for _ in range(repeats):
        t0 = time.process_time()
        for _ in range(calls):
            fn()
        best = min(best, time.process_time() - t0)
    return best / calls * 1e6


def history_of_a_run() -> list[Event]:
    wf = "five"
    events = [Event("e", "r", wf, 0, RunStarted(b""))]
    for i in range(STEPS):
        events.append(Event("e", "r", wf, 0, StepScheduled(i, f"s{i}", "default", 1, b"", "k")))
        events.append(Event("e", "r", wf, 0, StepCompleted(i, 1, b"", 0, 1)))
    events.append(Event("e", "r", wf, 0, RunCompleted(b"")))
    return events


def main() -> None:
    out: dict[str, float] = {}
    history = history_of_a_run()
    pm = metrics.ProcessorMetrics()

    def count_history() -> None:
        pm.batch.history(history)
        pm.batch.drop()

    out["processor: count a 5-step run's history (12 events), us"] = per_call_us(count_history, 20_000)

    def one_commit() -> None:
        pm.batch.history(history[-1:])
        pm.committed(records=1, seconds=0.01)

    out["processor: publish at commit (1 run end), us per transaction"] = per_call_us(one_commit, 20_000)
    plain, counted = FaultLog(logging.getLogger("x")), metrics.CountedFaultLog(logging.getLogger("x"), "p")
    out["processor: FaultLog.recovered (plain), us"] = per_call_us(lambda: plain.recovered("commit"), 200_000)
    out["processor: FaultLog.recovered (counted), us"] = per_call_us(
        lambda: counted.recovered("commit"), 200_000
    )

    cmd = StepCommand("r", "five", 0, "s0", 1, b"", "k", int(time.time() * 1000) - 5)
    body = StepCompleted(0, 1, b"", cmd.scheduled_ms + 2, cmd.scheduled_ms + 4)

    def attempt_hooks() -> None:
        metrics.STEPS_IN_FLIGHT.inc()
        metrics.STEPS_IN_FLIGHT.dec()
        metrics.observe_attempt(cmd, "default", body)

    out["worker: hooks of one attempt (in flight, attempts, 2 histograms), us"] = per_call_us(
        attempt_hooks, 20_000
    )

    def outbox_hooks() -> None:
        metrics.OUTBOX_HELD.inc()
        metrics.OUTBOX_HELD.dec()

    out["worker: outbox held +1/-1 per result, us"] = per_call_us(outbox_hooks, 50_000)
    out["per 5-step run, processor, us"] = (
        out["processor: count a 5-step run's history (12 events), us"]
        + (STEPS + 1) * out["processor: publish at commit (1 run end), us per transaction"]
        + 4 * (STEPS + 1) * (out["processor: FaultLog.recovered (counted), us"])
    )
    out["per 5-step run, worker, us"] = (
        STEPS * out["worker: hooks of one attempt (in flight, attempts, 2 histograms), us"]
        + (STEPS + 1) * out["worker: outbox held +1/-1 per result, us"]
    )

    with tempfile.TemporaryDirectory() as tmp:
        store = PartitionStore(Path(tmp) / "p0", 0)
        now = int(time.time() * 1000)
        for i in range(20_000):
            store.put(run_key(f"r{i}"), b"x" * 300)
            store.put(timer_key(now + (i - 1000) * 1000, f"r{i}", "t"), b"")  # 1,000 due
        store.commit(None, None)
        out["processor: sample one store (20k runs, 1k due timers), us per second"] = per_call_us(
            lambda: pm.refresh_stores([("run", 0, store)], now), 50, repeats=3
        )
        store.close()
    print(json.dumps({k: round(v, 2) for k, v in out.items()}, indent=2))


if __name__ == "__main__":
    main()
