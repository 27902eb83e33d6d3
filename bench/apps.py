"""The bench app: 1-, 5- and 20-step workflows of trivial steps, 5 steps that each sleep 10 ms, and 5 local
trivial steps (run inside the processor, as Temporal's local activities).

Step bodies are the same in every peer's app (``bench/peers/*_app.py``): ``x + 1``, async.
Settings (bootstrap servers, partitions) come from ``ORCHESTRATOR_*`` env vars set by the harness.
"""

from __future__ import annotations

import asyncio

from orchestrator import App, WorkflowContext

app = App("bench")


@app.step
async def inc(x: int) -> int:
    return x + 1


@app.step
async def inc_10ms(x: int) -> int:
    await asyncio.sleep(0.01)
    return x + 1


@app.step(local=True)
async def inc_local(x: int) -> int:
    return x + 1


async def _chain(ctx: WorkflowContext, step: object, x: int, n: int) -> int:
    for _ in range(n):
        x = await ctx.step(step, x)
    return x


@app.workflow
async def one(ctx: WorkflowContext, x: int) -> int:
    return await _chain(ctx, inc, x, 1)


@app.workflow
async def five(ctx: WorkflowContext, x: int) -> int:
    return await _chain(ctx, inc, x, 5)


@app.workflow
async def twenty(ctx: WorkflowContext, x: int) -> int:
    return await _chain(ctx, inc, x, 20)


@app.workflow
async def five_10ms(ctx: WorkflowContext, x: int) -> int:
    return await _chain(ctx, inc_10ms, x, 5)


@app.workflow
async def five_local(ctx: WorkflowContext, x: int) -> int:
    return await _chain(ctx, inc_local, x, 5)


@app.workflow
async def sleeper(ctx: WorkflowContext, x: int) -> int:
    """Sleeps an hour: for measuring what many sleeping runs cost the processor."""
    await ctx.sleep("1h")
    return x
