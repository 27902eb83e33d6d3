"""The Replayer against a real export: runs recorded by a processor on the broker, exported with the CLI.

Unchanged code replays every run; a reordered workflow is caught at the position it changed, in every
run (finished, failed over, cancelled and still open); the same change behind a version marker passes.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from engine_support import REPO, engine, settings

from orchestrator import App, Client, RetryPolicy, RunFailedError, WorkflowContext, step_info
from orchestrator._engine.events import Event
from orchestrator.testing import Replayer, read_events

EXPORT_APP = "tests.integration.apps.crash_app:app"
"""Any app module whose name can be set from the environment: ``export`` only needs the app's name and
broker to find its history topic, not its workflows."""


def checkout_app(name: str, bootstrap: str, *, change: str = "") -> App:
    """``change``: "" (as recorded), "reorder" (charge before the approval), "marked" (same, patched)."""
    app = App(name, settings=settings(bootstrap))

    @app.step(retry=RetryPolicy(max_attempts=3, initial_interval="100ms"))
    async def reserve(order_id: str) -> str:
        if order_id == "o-retry" and step_info().attempt == 1:
            raise ConnectionError("warehouse busy")
        return f"res-{order_id}"

    @app.step
    def release(order_id: str) -> None:
        return None

    @app.step
    def charge(order_id: str) -> str:
        return f"ch-{order_id}"

    @app.workflow
    async def checkout(ctx: WorkflowContext, order_id: str) -> str:
        reservation = await ctx.step(reserve, order_id, compensate=release)
        charge_first = change == "reorder" or (change == "marked" and ctx.patched("charge-first"))
        if charge_first:
            charged = await ctx.step(charge, order_id)
        approval = await ctx.wait_for_event("approved", timeout="1h")
        if approval.timed_out:
            return "expired"
        if not charge_first:
            charged = await ctx.step(charge, order_id)
        await ctx.sleep("100ms")
        return f"{reservation}/{charged}"

    return app


async def _until_waiting(client: Client, run_id: str) -> None:
    """Until the run's approval wait is committed (the processor's pace, not a timing check)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        description = await client.describe(run_id)
        if description is not None and any(s.status == "waiting" for s in description.steps):
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"{run_id} never reached its wait")


def _export(name: str, bootstrap: str, out: Path, fmt: str) -> None:
    env = {
        **os.environ,
        "CRASH_APP_NAME": name,
        "ORCHESTRATOR_BOOTSTRAP_SERVERS": bootstrap,
        "ORCHESTRATOR_PARTITIONS": "4",
    }
    args = [sys.executable, "-m", "orchestrator", "export", "--app", EXPORT_APP, "--out", str(out)]
    subprocess.run([*args, "--format", fmt], env=env, cwd=REPO, check=True, capture_output=True, timeout=120)


@pytest.fixture
def recorded(kafka_bootstrap: str, unique_name: str, tmp_path: Path) -> dict[str, Path]:
    """Four runs of ``checkout`` on the broker (completed, retried, cancelled, open), exported twice."""
    app = checkout_app(unique_name, kafka_bootstrap)

    async def drive() -> None:
        async with app.client() as client:
            handles = {r: await client.start("checkout", r, run_id=r) for r in ("o-1", "o-retry", "o-cancel")}
            open_run = await client.start("checkout", "o-open", run_id="o-open")
            for run_id in handles:
                await _until_waiting(client, run_id)
            await client.signal("o-1", "approved", {"by": "ann"})
            await client.signal("o-retry", "approved", {"by": "bob"})
            await client.cancel("o-cancel", "customer left")
            assert await handles["o-1"].result(timeout=60) == "res-o-1/ch-o-1"
            assert await handles["o-retry"].result(timeout=60) == "res-o-retry/ch-o-retry"
            with pytest.raises(RunFailedError, match="cancelled"):
                await handles["o-cancel"].result(timeout=60)
            await _until_waiting(client, open_run.run_id)

    with engine(app, tmp_path / "state"):
        asyncio.run(drive())
    files = {fmt: tmp_path / f"checkout.{fmt}" for fmt in ("avro", "jsonl")}
    for fmt, path in files.items():
        _export(unique_name, kafka_bootstrap, path, fmt)
    return files


def test_replayer_on_a_real_export(recorded: dict[str, Path], kafka_bootstrap: str, unique_name: str) -> None:
    def in_run_order(path: Path) -> list[Event]:  # partitions are read side by side: runs interleave
        return sorted(read_events(path), key=lambda e: (e.run_id, e.seq))

    events = in_run_order(recorded["avro"])
    assert in_run_order(recorded["jsonl"]) == events
    kinds = {e.run_id: [x.kind for x in events if x.run_id == e.run_id] for e in events}
    assert "RetryScheduled" in kinds["o-retry"] and "CompensationStarted" in kinds["o-cancel"]
    assert kinds["o-open"][-1] == "WaitStarted"

    for path in recorded.values():
        same = Replayer(checkout_app(unique_name, kafka_bootstrap)).replay_file(path)
        assert same.ok and same.runs == 4, same.report()

        changed = Replayer(checkout_app(unique_name, kafka_bootstrap, change="reorder")).replay_file(path)
        assert sorted(d.run_id for d in changed.divergences) == ["o-1", "o-cancel", "o-open", "o-retry"]
        for divergence in changed.divergences:
            assert divergence.position == 1, divergence.message
            assert "'approved'" in divergence.history and "'charge'" in divergence.code, divergence.message

        marked = Replayer(checkout_app(unique_name, kafka_bootstrap, change="marked")).replay_file(path)
        assert marked.ok, marked.report()
