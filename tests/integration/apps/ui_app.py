"""The app the web UI tests run in real processes: runs that complete (with a retried step, a sleep and
a child), runs that wait for a signal, runs that fail until a fix file exists, and a saga that
compensates. Its name and the fix file come from the environment, so each test has its own topics.
"""

from __future__ import annotations

import os

from orchestrator import App, RetryPolicy, TerminalError, WorkflowContext, step_info

app = App(os.environ.get("UI_APP_NAME", "uiapp"))
FIX_FILE = os.environ.get("UI_FIX_FILE", "")
FAST = RetryPolicy(max_attempts=3, initial_interval="200ms", backoff=2.0, max_interval="1s")


@app.step
async def reserve(order: int) -> str:
    return f"res-{order}"


@app.step(retry=FAST)
async def charge(order: int) -> str:
    """Fails its first attempt, so every order's timeline shows a failed attempt and a backoff."""
    if step_info().attempt == 1:
        raise ConnectionError("card network timed out")
    return f"ch-{order}"


@app.step
async def pack(order: int) -> int:
    return order * 10


@app.workflow
async def ship(ctx: WorkflowContext, order: int) -> int:
    return await ctx.step(pack, order)


@app.workflow
async def order(ctx: WorkflowContext, n: int) -> dict[str, object]:
    ctx.set_tags(customer=f"c-{n}", plan="pro" if n % 2 else "free")
    reservation = await ctx.step(reserve, n)
    await ctx.sleep("300ms")
    charged = await ctx.step(charge, n)
    parcel = await ctx.child(ship, n)
    return {"reservation": reservation, "charge": charged, "parcel": parcel}


@app.workflow
async def approval(ctx: WorkflowContext, n: int) -> str:
    got = await ctx.wait_for_event("approved", timeout="1h")
    return "timed out" if got.timed_out else f"approved by {got.payload}"


@app.step
async def check(n: int) -> str:
    """Fails for good until the test writes the fix file: a failed run, then a re-run that completes."""
    if not (FIX_FILE and os.path.exists(FIX_FILE)):
        raise TerminalError(f"stock record {n} is corrupt")
    return "ok"


@app.workflow
async def fragile(ctx: WorkflowContext, n: int) -> str:
    await ctx.step(reserve, n)
    return await ctx.step(check, n)


@app.step
async def book(n: int) -> str:
    return f"room-{n}"


@app.step
async def unbook(n: int) -> None:
    return None


@app.step
async def pay(n: int) -> None:
    raise TerminalError("payment declined")


@app.workflow
async def trip(ctx: WorkflowContext, n: int) -> None:
    await ctx.step(book, n, compensate=unbook)
    await ctx.step(pay, n)


@app.workflow(schedule="0 0 1 1 *")  # once a year: listed on the schedules page, never fires during a test
async def yearly_report(ctx: WorkflowContext, when: str) -> str:
    return when
