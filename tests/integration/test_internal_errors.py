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
from orchestrator._engine.processor import run_task


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

    raised: list[Any] = []
    with engine(app, tmp_path):
        # The core never raises (it parks runs itself): what can still fail is outside it, here encoding
        # the run's state once the first step result is in.
        encode = run_task.encode_state

        def fails_once(state: Any) -> bytes:
            if state.run_id == "bad" and any(s.result is not None for s in state.steps) and not raised:
                raised.append(state)
                raise RuntimeError("bug in the engine")
            return encode(state)

        monkeypatch.setattr(run_task, "encode_state", fails_once)
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
