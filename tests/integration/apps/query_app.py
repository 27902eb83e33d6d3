"""Tagged workflows for the run-query tests (``test_run_queries.py``), runnable as a child process.

The app name comes from the environment (``QUERY_APP_NAME``) so that each test works on its own topics.
"""

from __future__ import annotations

import asyncio
import os

from orchestrator import App, TerminalError, WorkflowContext

app = App(os.environ.get("QUERY_APP_NAME", "queries"))


@app.step
async def work(n: int) -> int:
    await asyncio.sleep(0.005)
    return n + 1


@app.step
async def refuse(n: int) -> int:
    raise TerminalError(f"order {n} refused")


@app.workflow
async def order(ctx: WorkflowContext, n: int) -> int:
    """Tagged with its customer (n % 3) and plan; every 5th run fails with a TerminalError."""
    ctx.set_tags(customer=f"c-{n % 3}", plan="pro" if n % 2 else "free")
    n = await ctx.step(work, n)
    if n % 5 == 0:
        await ctx.step(refuse, n)
    ctx.set_tags(stage="done")
    return await ctx.step(work, n)


@app.workflow
async def refund(ctx: WorkflowContext, n: int) -> int:
    ctx.set_tags(customer=f"c-{n % 3}")
    return await ctx.step(work, n)
