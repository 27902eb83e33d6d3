"""Order fulfilment written against the typed API, type-checked by CI.

The same kind of app as ``examples/orders.py``, using every typed entry point: sync and async steps, with
and without decorator arguments, ``ctx.step`` with a compensation, ``ctx.map``, an attached and a detached
child workflow, ``client.start`` and ``RunHandle.result``. pyproject's ``[tool.mypy]`` lists this file, so
``mypy --strict`` (CI's ``.venv/bin/mypy``) fails if a change to the public API loses one of these types:
the values the API hands back are annotated with the type it must give them, and the file is checked with
``disallow_any_expr``, so a call that quietly returned ``Any`` (which fits any annotation) fails too.

Run it like the other example, against a broker (``orchestrator kafka start``):

    .venv/bin/orchestrator processor examples.typed_orders:app
    .venv/bin/orchestrator worker examples.typed_orders:app
    .venv/bin/python -m examples.typed_orders
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from orchestrator import App, RetryPolicy, RunHandle, TerminalError, WorkflowContext, step_info

app = App("typed_shop")


@dataclass(frozen=True)
class LineItem:
    sku: str
    quantity: int
    unit_cents: int


@dataclass(frozen=True)
class Order:
    id: str
    customer: str
    items: list[LineItem]


@dataclass(frozen=True)
class Shipment:
    carrier: str
    tracking: str


@dataclass(frozen=True)
class Receipt:
    order_id: str
    total_cents: int
    charge_id: str
    shipment: Shipment
    survey_run_id: str


# -- steps ------------------------------------------------------------------------------------------------
@app.step(local=True)
def validate_order(order: Order) -> Order:
    """A plain function, run in the processor: checks that need no I/O."""
    if not order.items:
        raise TerminalError(f"order {order.id} has no items")
    return order


@app.step(local=True)
def price_item(item: LineItem) -> int:
    """Mapped over the order's items; ``ctx.map`` returns ``list[int]``."""
    return item.quantity * item.unit_cents


@app.step(retry=RetryPolicy(max_attempts=5, initial_interval="200ms", backoff=2.0, max_interval="2s"))
async def charge_card(customer: str, amount_cents: int) -> str:
    # A real payment API would receive this key, so that a retried call charges once.
    return f"ch_{step_info().idempotency_key.replace('/', '_')}_{amount_cents}"


@app.step
async def refund_card(customer: str, amount_cents: int) -> None:
    """The compensation of ``charge_card``: called with the same arguments, so it has the same parameters."""
    await asyncio.sleep(0)


@app.step
def book_carrier(order_id: str, parcels: int, express: bool = False) -> Shipment:
    carrier = "express" if express else "standard"
    return Shipment(carrier, f"TRK-{order_id}-{parcels}")


@app.step
def send_survey(customer: str) -> bool:
    return True


# -- workflows --------------------------------------------------------------------------------------------
@app.workflow
async def ship_order(ctx: WorkflowContext, order: Order) -> Shipment:
    parcels = sum(item.quantity for item in order.items)
    return await ctx.step(book_carrier, order.id, parcels, parcels > 3)


@app.workflow(name="customer_survey")
async def customer_survey(ctx: WorkflowContext, customer: str) -> bool:
    await ctx.sleep("1h")
    return await ctx.step(send_survey, customer)


@app.workflow(timeout="1h")
async def fulfil_order(ctx: WorkflowContext, order: Order) -> Receipt:
    valid: Order = await ctx.step(validate_order, order)
    prices: list[int] = await ctx.map(price_item, valid.items)
    total = sum(prices)
    charge_id: str = await ctx.step(charge_card, valid.customer, total, compensate=refund_card)
    shipment: Shipment = await ctx.child(ship_order, valid)
    survey_run_id: str = await ctx.child(customer_survey, valid.customer, detach=True)
    return Receipt(valid.id, total, charge_id, shipment, survey_run_id)


# -- starting a run ---------------------------------------------------------------------------------------
async def main() -> None:
    order = Order("o-1", "ann", [LineItem("book", 2, 1200), LineItem("pen", 3, 150)])
    async with app.client() as client:
        run: RunHandle[Receipt] = await client.start(fulfil_order, order)
        receipt: Receipt = await run.result(timeout=60)
    print(f"run {run.run_id}: {receipt}")


if __name__ == "__main__":
    asyncio.run(main())
