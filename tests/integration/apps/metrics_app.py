"""Workflows with known outcomes, for the metrics test: some complete, some fail, one step fails once.

The app name comes from the environment, so that the test and the child processes it starts share it and
no other test's topics.
"""

from __future__ import annotations

import asyncio
import os

from orchestrator import App, RetryPolicy, TerminalError, WorkflowContext, step_info

app = App(os.environ.get("METRICS_APP_NAME", "metrics"))


@app.step
async def add_one(x: int) -> int:
    await asyncio.sleep(0.01)
    return x + 1


@app.step(queue="slow")
async def add_ten(x: int) -> int:
    await asyncio.sleep(0.05)
    return x + 10


@app.step(local=True)
async def stamp(x: int) -> int:
    """Runs in the processor (a local step): measured there, under queue "local"."""
    return x


@app.step(retry=RetryPolicy(max_attempts=3, initial_interval="100ms"))
async def flaky(x: int) -> int:
    """Fails its first attempt with a retryable error, then succeeds."""
    if step_info().attempt == 1:
        raise RuntimeError("first attempt fails")
    return x


@app.step
async def boom(x: int) -> int:
    raise TerminalError(f"no luck with {x}")


@app.workflow
async def good(ctx: WorkflowContext, x: int) -> int:
    x = await ctx.step(add_one, x)
    x = await ctx.step(stamp, x)
    return await ctx.step(add_ten, x)


@app.workflow
async def retried(ctx: WorkflowContext, x: int) -> int:
    return await ctx.step(flaky, x)


@app.workflow
async def bad(ctx: WorkflowContext, x: int) -> int:
    return await ctx.step(boom, x)
