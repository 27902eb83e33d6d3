"""Order fulfilment: the example the README's first command runs.

Five steps, sync and async, one of them flaky so that retries with backoff show up in the history.
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass

from orchestrator import App, RetryPolicy, TerminalError, WorkflowContext, step_info

app = App("shop")


@dataclass
class Order:
    id: str
    customer: str
    items: list[str]
    amount_cents: int


@dataclass
class Receipt:
    order_id: str
    charge_id: str
    reservation_id: str
    tracking: str


@app.step
def validate_order(order: Order) -> Order:
    if order.amount_cents <= 0:
        raise TerminalError(f"order {order.id} has no amount")
    return order


@app.step(retry=RetryPolicy(max_attempts=5, initial_interval="200ms", backoff=2.0, max_interval="2s"))
async def charge_card(order: Order) -> str:
    # A real payment API would receive step_info().idempotency_key so that a retried call charges once.
    await asyncio.sleep(0.01)
    return f"ch_{step_info().idempotency_key.replace('/', '_')}"


@app.step(retry=RetryPolicy(max_attempts=5, initial_interval="200ms", backoff=2.0))
async def reserve_stock(order: Order) -> str:
    if random.random() < 0.3:  # the warehouse API is flaky
        raise ConnectionError("warehouse API timed out")
    return f"res_{order.id}"


@app.step
async def ship_order(order: Order, reservation_id: str) -> str:
    await asyncio.sleep(0.01)
    return f"TRK{abs(hash(reservation_id)) % 10**8:08d}"


@app.step
def send_receipt(order: Order, tracking: str) -> bool:
    return True


@app.workflow
async def fulfil_order(ctx: WorkflowContext, order: Order) -> Receipt:
    order = await ctx.step(validate_order, order)
    charge_id = await ctx.step(charge_card, order)
    reservation_id = await ctx.step(reserve_stock, order)
    tracking = await ctx.step(ship_order, order, reservation_id)
    await ctx.step(send_receipt, order, tracking)
    return Receipt(order.id, charge_id, reservation_id, tracking)
