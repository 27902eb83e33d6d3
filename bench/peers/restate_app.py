"""Restate (Python SDK) version of the bench workflows, served by hypercorn; each step is a ``ctx.run``."""

from __future__ import annotations

import asyncio

import restate

svc = restate.Service("bench")


async def inc(x: int) -> int:
    return x + 1


async def inc_10ms(x: int) -> int:
    await asyncio.sleep(0.01)
    return x + 1


async def _chain(ctx: restate.Context, step, x: int, n: int) -> int:  # type: ignore[no-untyped-def]
    for i in range(n):
        x = await ctx.run_typed(f"s{i}", step, restate.RunOptions(), x)
    return x


@svc.handler()
async def one(ctx: restate.Context, x: int) -> int:
    return await _chain(ctx, inc, x, 1)


@svc.handler()
async def five(ctx: restate.Context, x: int) -> int:
    return await _chain(ctx, inc, x, 5)


@svc.handler()
async def twenty(ctx: restate.Context, x: int) -> int:
    return await _chain(ctx, inc, x, 20)


@svc.handler()
async def five_10ms(ctx: restate.Context, x: int) -> int:
    return await _chain(ctx, inc_10ms, x, 5)


app = restate.app(services=[svc])
