"""An exception inside the processor while it handles a run's input parks that run; nothing is stranded.

Before, the input was dead-lettered (a step result among them) and the run waited forever, invisible to
``runs list --status parked``, its client never answered.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from engine_support import engine, history, settings

from orchestrator import App, RunFailedError, WorkflowContext
from orchestrator._engine import events as ev


async def test_internal_error_on_a_step_result_parks_the_run_and_resume_completes_it(
    kafka_bootstrap: str, unique_name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = App(unique_name, settings=settings(kafka_bootstrap))

    @app.step
    async def add(x: int) -> int:
        return x + 1

    @app.workflow
    async def twice(ctx: WorkflowContext, x: int) -> int:
        x = await ctx.step(add, x)
        return await ctx.step(add, x)

    raised: list[ev.Event] = []
    with engine(app, tmp_path) as [proc]:
        handle = proc.decider.handle

        def fails_once(state: Any, event: ev.Event, now_ms: int) -> Any:
            if event.run_id == "bad" and isinstance(event.body, ev.StepCompleted) and not raised:
                raised.append(event)
                raise RuntimeError("bug in the engine")
            return handle(state, event, now_ms)

        monkeypatch.setattr(proc.decider, "handle", fails_once)
        async with app.client() as client:
            bad = await client.start(twice, 0, run_id="bad")
            good = [await client.start(twice, i * 10, run_id=f"good{i}") for i in range(5)]
            with pytest.raises(RunFailedError) as failed:
                await bad.result(timeout=60)
            assert failed.value.status == "parked", failed.value
            assert failed.value.error_type == "internal_error"
            assert "bug in the engine" in failed.value.message
            parked = await client.list_runs(status="parked")
            assert [r.run_id for r in parked] == ["bad"]
            assert await asyncio.gather(*(h.result(timeout=60) for h in good)) == [
                i * 10 + 2 for i in range(5)
            ]
            await client.resume("bad")
            assert await client.get_handle("bad").result(timeout=60) == 2
    assert len(raised) == 1
    events = history(app)["bad"]
    kinds = [e.kind for e in events]
    assert kinds.count("RunParked") == 1 and kinds.count("RunResumed") == 1, kinds
    parked_event = next(e.body for e in events if isinstance(e.body, ev.RunParked))
    assert parked_event.kind == "internal_error"
    # The step result that hit the bug was kept (recorded on the parked run), not dead-lettered.
    assert [e.body.position for e in events if isinstance(e.body, ev.StepCompleted)] == [0, 1]
    assert [e.seq for e in events] == list(range(len(events)))
