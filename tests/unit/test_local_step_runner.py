"""LocalSteps runs an attempt in the processor's thread and reports it exactly as a worker would."""

from __future__ import annotations

import asyncio
import time

from orchestrator import App, TerminalError, step_info
from orchestrator._engine.events import StepCompleted, StepFailed
from orchestrator._engine.local_steps import LocalSteps
from orchestrator._engine.records import StepCommand

app = App("local_runner")


@app.step(local=True)
async def uses_the_loop(x: int) -> int:
    """What async step code does: timeouts, threads, sleeps, the current task."""
    assert asyncio.current_task() is not None
    async with asyncio.timeout(5):
        await asyncio.sleep(0.01)
        doubled = await asyncio.to_thread(lambda: x * 2)
    return doubled + step_info().attempt


@app.step(local=True)
async def too_slow(x: int) -> int:
    await asyncio.sleep(10)
    return x


@app.step(local=True)
def too_slow_plain(x: int) -> int:
    time.sleep(3)
    return x


@app.step(local=True)
async def refuses(x: int) -> int:
    raise TerminalError("no")


@app.step(local=True)
def breaks(x: int) -> int:
    raise ValueError(f"bad {x}")


def _cmd(step: str, timeout_ms: int = 0, attempt: int = 1) -> StepCommand:
    return StepCommand(
        run_id="r",
        workflow="wf",
        position=2,
        step=step,
        attempt=attempt,
        args=app.data.encode([21]),
        idempotency_key=f"r/2/{step}",
        scheduled_ms=0,
        timeout_ms=timeout_ms,
    )


def test_async_local_steps_run_as_tasks_on_a_real_loop() -> None:
    runner = LocalSteps(app, "processor:t")
    try:
        for attempt in (1, 2):  # the loop is reused across attempts
            event = runner.run(_cmd("uses_the_loop", attempt=attempt))
            assert isinstance(event.body, StepCompleted)
            assert app.data.decode(event.body.result) == 42 + attempt
            assert event.body.worker == "processor:t"
            assert event.event_id == f"r/2/uses_the_loop/{attempt}/local"
    finally:
        runner.close()


def test_failures_and_timeouts_are_reported_like_a_workers() -> None:
    runner = LocalSteps(app, "processor:t")
    try:
        slow = runner.run(_cmd("too_slow", timeout_ms=50)).body
        assert isinstance(slow, StepFailed) and slow.error_type == "StepTimeout" and slow.retryable
        started = time.monotonic()
        slow_plain = runner.run(_cmd("too_slow_plain", timeout_ms=50)).body
        assert isinstance(slow_plain, StepFailed) and slow_plain.error_type == "StepTimeout"
        # The processor stopped waiting at the 50 ms timeout instead of the step's 3 s (a wide margin: the
        # check is that the timeout interrupts the wait, not how fast).
        assert time.monotonic() - started < 2
        terminal = runner.run(_cmd("refuses")).body
        assert isinstance(terminal, StepFailed) and not terminal.retryable
        broken = runner.run(_cmd("breaks")).body
        assert isinstance(broken, StepFailed) and broken.retryable and broken.error_type == "ValueError"
        assert "bad 21" in broken.message
        unknown = runner.run(_cmd("nowhere")).body
        assert isinstance(unknown, StepFailed) and unknown.error_type == "UnknownStepError"
        assert runner.executed == 5
    finally:
        runner.close()
