"""Run outcomes are counted once the transaction that records them commits: an aborted batch, consumed and
processed again, counts once.

The processor runs in this process (its counters are read from the registry, as deltas); each of the
first transactions that would record a run's end fails just before its commit, the way a commit that hits a
broker fault does. The abort, the rewind and the second processing are the real ones, on the broker.
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

from confluent_kafka import KafkaError, KafkaException
from engine_support import WorkerThread, settings
from prometheus_client import REGISTRY

from orchestrator import App, WorkflowContext
from orchestrator._engine import metrics
from orchestrator._engine.processor import Processor, ProcessorConfig

RUNS = 6
ABORTS = 3


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_an_aborted_batch_is_counted_once_when_it_commits(
    kafka_bootstrap: str, unique_name: str, tmp_path: Path
) -> None:
    app = App(unique_name, settings=settings(kafka_bootstrap))

    @app.step
    async def double(x: int) -> int:
        return 2 * x

    workflow = f"wf_{unique_name}"  # a label no other test in this process uses

    @app.workflow(name=workflow)
    async def flow(ctx: WorkflowContext, x: int) -> int:
        return await ctx.step(double, x)

    before = {
        "started": sample("orchestrator_runs_started_total", workflow=workflow),
        "completed": sample("orchestrator_runs_completed_total", workflow=workflow),
        "aborts": sample("orchestrator_transactions_total", result="abort"),
    }
    proc = Processor(app, ProcessorConfig(instance_id="abort-p0", state_dir=tmp_path / "state"))
    real_commit = proc.transactions.commit
    injected: list[int] = []

    def commit_failing_on_ends() -> None:
        ends = sum(n for (c, _), n in proc.metrics.batch.counts.items() if c is metrics.RUNS_COMPLETED)
        if ends and len(injected) < ABORTS:
            injected.append(ends)
            raise KafkaException(KafkaError(KafkaError._TIMED_OUT, "injected before commit"))
        real_commit()

    proc.transactions.commit = commit_failing_on_ends  # type: ignore[method-assign]
    errors: list[BaseException] = []

    def run() -> None:
        try:
            proc.run(install_signal_handlers=False)
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    worker = WorkerThread(app)
    try:
        async with app.client() as client:
            handles = [await client.start(workflow, i, run_id=f"r{i}") for i in range(RUNS)]
            results = await asyncio.gather(*(h.result(timeout=120) for h in handles))
        assert results == [2 * i for i in range(RUNS)]
    finally:
        worker.stop()
        proc.stop()
        thread.join(60)
    assert not errors, errors
    assert len(injected) == ABORTS, injected  # the faults happened, on batches holding run ends
    assert sample("orchestrator_transactions_total", result="abort") - before["aborts"] == ABORTS
    assert sample("orchestrator_runs_started_total", workflow=workflow) - before["started"] == RUNS
    # Each aborted batch's ends were counted in it, dropped with it, and counted again when it committed.
    assert sample("orchestrator_runs_completed_total", workflow=workflow) - before["completed"] == RUNS
