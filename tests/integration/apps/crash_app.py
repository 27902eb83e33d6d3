"""A five-step workflow whose steps log every execution to a side file, for the crash tests.

The app name and the side file come from the environment, so that each test (and each child process it
starts) works on its own topics and its own log.
"""

from __future__ import annotations

import asyncio
import os
import random
import time

from orchestrator import App, WorkflowContext, step_info

app = App(os.environ.get("CRASH_APP_NAME", "crash"))
SIDE_FILE = os.environ.get("CRASH_SIDE_FILE", "/tmp/crash-side-file.log")
GATE_FILE = os.environ.get("CRASH_GATE_FILE", "")


def _log_execution() -> None:
    info = step_info()
    line = f"{info.run_id} {info.position} {info.attempt} {os.getpid()} {time.time():.3f}\n"
    fd = os.open(SIDE_FILE, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())  # one write(2) of a short line to an O_APPEND file: never interleaved
    finally:
        os.close(fd)


async def _work(x: int, add: int) -> int:
    _log_execution()
    await asyncio.sleep(random.uniform(0.005, 0.05))
    return x + add


@app.step
async def s1(x: int) -> int:
    return await _work(x, 1)


@app.step
async def s2(x: int) -> int:
    return await _work(x, 10)


@app.step
def s3(x: int) -> int:
    _log_execution()
    time.sleep(random.uniform(0.005, 0.03))
    return x + 100


@app.step
async def s4(x: int) -> int:
    return await _work(x, 1000)


@app.step
async def s5(x: int) -> int:
    return await _work(x, 10000)


@app.workflow
async def five(ctx: WorkflowContext, x: int) -> int:
    for step in (s1, s2, s3, s4, s5):
        x = await ctx.step(step, x)
    return x


@app.step
async def gate(x: int) -> int:
    """Blocks until the gate file exists: keeps runs in flight while a test changes things around them."""
    while GATE_FILE and not os.path.exists(GATE_FILE):
        await asyncio.sleep(0.05)
    return x


@app.workflow
async def gated(ctx: WorkflowContext, x: int) -> int:
    x = await ctx.step(s1, x)
    x = await ctx.step(gate, x)
    return await ctx.step(s2, x)


@app.step
async def held(x: int) -> int:
    """Logs its execution, then finishes only once the gate file exists (e.g. while the broker is down)."""
    _log_execution()
    while GATE_FILE and not os.path.exists(GATE_FILE):
        await asyncio.sleep(0.05)
    return x + 5


@app.workflow
async def outage(ctx: WorkflowContext, x: int) -> int:
    x = await ctx.step(s1, x)
    x = await ctx.step(held, x)
    return await ctx.step(s2, x)


@app.workflow
async def sleepy(ctx: WorkflowContext, seconds: float) -> dict[str, float]:
    before = ctx.now().timestamp()
    await ctx.step(s1, 0)
    await ctx.sleep(seconds)
    woke = ctx.now().timestamp()
    await ctx.step(s2, 0)
    return {"before": before, "woke": woke}


@app.step(
    timeout="2s", retry=__import__("orchestrator").RetryPolicy(max_attempts=8, initial_interval="100ms")
)
async def hangs_first(x: int) -> int:
    """Attempt 1 hangs (until cancelled); later attempts answer at once.

    Each attempt's 2 s count from its dispatch: attempts dispatched while a restarted worker is still starting
    time out too. Eight attempts (~30 s with the backoff) leave a loaded machine time to start it."""
    _log_execution()
    if step_info().attempt == 1:
        await asyncio.sleep(3600)
    return x


@app.workflow
async def timed(ctx: WorkflowContext, x: int) -> int:
    return await ctx.step(hangs_first, x)


_in_flight = {"now": 0}


@app.step
async def item(x: int) -> int:
    """Logs its execution, and how many items were running at once in this worker when it started."""
    _in_flight["now"] += 1
    try:
        info = step_info()
        now = _in_flight["now"]
        line = f"{info.run_id} {info.position} {info.attempt} {os.getpid()} {time.time():.3f} {now}\n"
        fd = os.open(SIDE_FILE, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line.encode())
        finally:
            os.close(fd)
        await asyncio.sleep(random.uniform(0.005, 0.03))
        return x * 2
    finally:
        _in_flight["now"] -= 1


@app.workflow
async def fanout(ctx: WorkflowContext, n: int) -> list[int]:
    return await ctx.map(item, range(n), max_in_flight=50)


def _log_named(name: str) -> None:
    info = step_info()
    line = f"{info.run_id} {name} {info.attempt} {os.getpid()} {time.time():.3f}\n"
    fd = os.open(SIDE_FILE, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def _make_saga_steps(i: int) -> tuple[object, object]:
    @app.step(name=f"book{i}")
    async def book(order: str) -> str:
        _log_named(f"book{i}")
        return f"{order}-b{i}"

    @app.step(name=f"unbook{i}")
    async def unbook(order: str) -> None:
        _log_named(f"unbook{i}-start")
        await asyncio.sleep(0.7)  # slow, so that a processor can be killed while compensating
        _log_named(f"unbook{i}")

    return book, unbook


_SAGA = [_make_saga_steps(i) for i in (1, 2, 3)]


@app.step(retry=__import__("orchestrator").RetryPolicy(max_attempts=1))
async def pay(order: str) -> None:
    raise __import__("orchestrator").TerminalError("card declined")


@app.workflow
async def saga(ctx: WorkflowContext, order: str) -> str:
    for book, unbook in _SAGA:
        await ctx.step(book, order, compensate=unbook)
    await ctx.step(pay, order)  # step 4 fails
    return "unreachable"


@app.step(local=True)
def l1(x: int) -> int:
    """A local step: runs inside the processor, so a processor kill is what may repeat it."""
    _log_execution()
    return x + 2


@app.step(local=True)
async def l2(x: int) -> int:
    _log_execution()
    await asyncio.sleep(0)
    return x + 20


@app.workflow
async def local_mix(ctx: WorkflowContext, x: int) -> int:
    x = await ctx.step(l1, x)
    x = await ctx.step(s1, x)  # a worker step between the local ones: the run crosses Kafka in between
    return await ctx.step(l2, x)
