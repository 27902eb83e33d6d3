"""Child workflows: attached (awaited, cancelled with the parent) and detached."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from engine_support import ProcessorThread, WorkerThread, history, settings

from orchestrator import App, RunFailedError, StepFailedError, TerminalError, WorkflowContext
from orchestrator._engine import audit


async def test_children_attached_detached_and_cancelled(
    kafka_bootstrap: str, unique_name: str, tmp_path: Path
) -> None:
    app = App(unique_name, settings=settings(kafka_bootstrap))

    @app.step
    async def double(x: int) -> int:
        if x < 0:
            raise TerminalError("negative")
        return 2 * x

    @app.workflow
    async def child_wf(ctx: WorkflowContext, x: int) -> int:
        return await ctx.step(double, x)

    @app.workflow
    async def forever(ctx: WorkflowContext) -> None:
        await ctx.wait_for_event("never")

    @app.workflow
    async def parent(ctx: WorkflowContext, x: int) -> dict:  # type: ignore[type-arg]
        a, b = await asyncio.gather(ctx.child(child_wf, x), ctx.child(child_wf, x + 1))
        detached_id = await ctx.child(child_wf, 100, detach=True)
        try:
            await ctx.child(child_wf, -1)
        except StepFailedError as exc:
            failed = exc.error_type
        return {"a": a, "b": b, "detached": detached_id, "failed": failed}

    @app.workflow
    async def waits_on_child(ctx: WorkflowContext) -> None:
        await ctx.child(forever, run_id=f"{ctx.run_id}-kid")

    proc, worker = ProcessorThread(app, tmp_path), WorkerThread(app)
    try:
        async with app.client() as client:
            result = await (await client.start(parent, 5, run_id="p")).result(timeout=60)
            assert result == {"a": 10, "b": 12, "detached": "p/2", "failed": "TerminalError"}
            assert await client.get_handle("p/2").result(timeout=60) == 200
            handle = await client.start(waits_on_child, run_id="w")
            await asyncio.sleep(2)
            await handle.cancel("no longer needed")
            with pytest.raises(RunFailedError):
                await handle.result(timeout=60)
            with pytest.raises(RunFailedError) as kid:
                await client.get_handle("w-kid").result(timeout=60)
            assert kid.value.status == "cancelled"
    finally:
        worker.stop()
        proc.stop()
    runs = history(app)
    assert {"p", "p/0", "p/1", "p/2", "p/3", "w", "w-kid"} <= set(runs)
    assert audit.compare(audit.rebuild(audit.history_events(app)), audit.live_states(app)) == []
