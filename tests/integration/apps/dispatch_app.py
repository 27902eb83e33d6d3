"""Steps that log every execution and can freeze the processor, for the early-dispatch crash tests (ADR 0025).

The app name, the side file and the freeze file come from the environment (``dispatch_env``), so that each
test and each child process works on its own topics and its own files.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

from orchestrator import App, WorkflowContext, step_info

app = App(os.environ.get("DISPATCH_APP_NAME", "dispatch"))
SIDE_FILE = os.environ.get("DISPATCH_SIDE_FILE", "/tmp/dispatch-side-file.log")
FREEZE_FILE = os.environ.get("DISPATCH_FREEZE_FILE", "")
GATE_FILE = os.environ.get("DISPATCH_GATE_FILE", "")


def _log_execution(name: str) -> None:
    info = step_info()
    line = f"{info.run_id} {name} {info.attempt} {os.getpid()} {time.time():.3f}\n"
    fd = os.open(SIDE_FILE, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())  # one write(2) of a short line to an O_APPEND file: never interleaved
    finally:
        os.close(fd)


@app.step
async def freeze(x: int) -> int:
    """Logs its execution; if the freeze file exists, takes it and stops (SIGSTOP) the process it names.

    Run by a worker as soon as its command arrives, which with early dispatch is before or while the
    processor commits the transaction that scheduled it: the processor is frozen with that transaction
    open or just committed, and the test kills it there.
    """
    _log_execution("freeze")
    if FREEZE_FILE:
        try:
            pid = int(Path(FREEZE_FILE).read_text())
            os.remove(FREEZE_FILE)  # once: a re-execution must not freeze the next processor
        except (FileNotFoundError, ValueError):
            pid = 0
        if pid:
            os.kill(pid, signal.SIGSTOP)
    return x + 7


@app.step
async def after(x: int) -> int:
    _log_execution("after")
    return x * 10


@app.step
async def held(x: int) -> int:
    """Logs its execution, then finishes only once the gate file exists (a worker is killed meanwhile)."""
    _log_execution("held")
    while GATE_FILE and not os.path.exists(GATE_FILE):
        await asyncio.sleep(0.05)
    return x + 5


@app.workflow
async def frozen(ctx: WorkflowContext, x: int) -> int:
    x = await ctx.step(freeze, x)
    return await ctx.step(after, x)


@app.workflow
async def gated(ctx: WorkflowContext, x: int) -> int:
    x = await ctx.step(held, x)
    return await ctx.step(after, x)
