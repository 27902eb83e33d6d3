"""A workflow that stays in flight until the test says the faults are over, for the failover test.

Every run does one worker step and one local step, then sleeps and polls a gate (a worker step that reads
the gate file) until the test opens it, then does one last worker step. So every run is alive, sleeping and
stepping, through every fault the test makes (broker SIGKILL, rolling restart, scale-in and out), however
slow the machine is: the runs end when the test says so, not after a guessed time.

Environment (as ``engine_support.child_env`` sets it): ``CRASH_APP_NAME``, ``CRASH_SIDE_FILE`` (each step
execution is logged there, in ``crash_app``'s format plus the step name, so ``engine_support.executions``
reads it),
``CRASH_GATE_FILE``; ``FAILOVER_PAUSE_S`` is the mean sleep between polls (each sleep 0.5-1.5 times it,
the first 1-10 s).
"""

from __future__ import annotations

import os
import time

from orchestrator import App, WorkflowContext, step_info

app = App(os.environ.get("CRASH_APP_NAME", "failover"))
SIDE_FILE = os.environ.get("CRASH_SIDE_FILE", "/tmp/failover-side-file.log")
GATE_FILE = os.environ.get("CRASH_GATE_FILE", "")
PAUSE_S = float(os.environ.get("FAILOVER_PAUSE_S", "20"))


def _log_execution() -> None:
    info = step_info()
    line = f"{info.run_id} {info.position} {info.attempt} {os.getpid()} {time.time():.3f} {info.step}\n"
    fd = os.open(SIDE_FILE, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())  # one write(2) of a short line to an O_APPEND file: never interleaved
    finally:
        os.close(fd)


@app.step
async def first(x: int) -> int:
    _log_execution()
    return x + 1


@app.step(local=True)
def local_add(x: int) -> int:
    """Run by the processor inside the transaction that scheduled it: a processor restart may repeat it."""
    _log_execution()
    return x + 10


@app.step
async def gate_open(x: int) -> bool:
    """True once the test has made the gate file: the faults are over."""
    _log_execution()
    return bool(GATE_FILE) and os.path.exists(GATE_FILE)


@app.step
async def last(x: int) -> int:
    _log_execution()
    return x + 100


@app.workflow
async def relay(ctx: WorkflowContext, x: int) -> dict[str, int]:
    """Result: ``x + 111`` and how many times the run polled the gate (the test checks both)."""
    x = await ctx.step(first, x)
    x = await ctx.step(local_add, x)
    polls = 0
    rng = ctx.random()  # seeded by the run id: the runs' wake-ups spread out instead of coming in waves
    pause = rng.uniform(1.0, 10.0)  # the first poll soon: the test starts the faults once every run polled
    while True:
        await ctx.sleep(pause)
        pause = PAUSE_S * rng.uniform(0.5, 1.5)
        polls += 1
        if await ctx.step(gate_open, x):
            break
    x = await ctx.step(last, x)
    return {"x": x, "polls": polls}
