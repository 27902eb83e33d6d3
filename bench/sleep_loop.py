"""``python -m bench.sleep_loop 100 500 1000``: the cost of a workflow that sleeps in a loop.

A sleeping run holds no coroutine (ADR 0004), so every wake re-executes the workflow from its record: a
run with n sleeps is re-executed n times, each time against a longer history. This drives the core's
``Decider`` the way the processor does for such a run (start, then fire each timer when it is due) and
the test kit's ``WorkflowEnvironment`` (which skips ahead through the timers), and prints CPU seconds per
run (process CPU time: less moved by other tenants than wall time). Compare runs made side by side;
never assert on them.
"""

from __future__ import annotations

import asyncio
import sys
import time

from orchestrator import App, WorkflowContext
from orchestrator._core import events as ev
from orchestrator._core.decide import Decider, timers_of
from orchestrator._core.events import Event

app = App("sleep-loop")


@app.workflow
async def sleepy(ctx: WorkflowContext, n: int) -> int:
    for _ in range(n):
        await ctx.sleep("1s")
    return n


def decider_seconds(n: int) -> float:
    """Seconds to drive one run of ``sleepy(n)`` through the core, as the processor would."""
    decider = Decider(app)
    now = 1_000
    start = Event("in-1", "run-1", "sleepy", now, ev.StartRun(app.data.encode(n)))
    began = time.process_time()
    state, fx = decider.handle(None, start, now)
    assert state is not None and not fx.dead_letter
    while not state.terminal:
        [(due, tag)] = timers_of(state)
        now = due
        fx = decider.fire_timer(state, tag, now)
        assert not fx.dead_letter and not fx.ignored, fx
    elapsed = time.process_time() - began
    assert state.status == "completed", state.error_message
    return elapsed


async def _kit(n: int) -> None:
    from orchestrator.testing import WorkflowEnvironment

    async with WorkflowEnvironment(app) as env:
        handle = await env.start(sleepy, n, run_id="run-1")
        assert await handle.result() == n


def kit_seconds(n: int) -> float:
    """Seconds for ``orchestrator.testing`` to run ``sleepy(n)`` to its end."""
    began = time.process_time()
    asyncio.run(_kit(n))
    return time.process_time() - began


def main(argv: list[str]) -> None:
    sizes = [int(a) for a in argv] or [100, 500, 1000]
    print(f"{'sleeps':>7} {'core cpu s':>10} {'test kit cpu s':>14}")
    for n in sizes:
        print(f"{n:>7} {decider_seconds(n):>10.3f} {kit_seconds(n):>14.3f}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
