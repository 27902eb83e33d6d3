"""Purchase requests: budget reserved, large amounts wait for a manager's approval, a survey 3 days later.

The example ``examples/test_approvals.py`` tests, without a broker: a durable wait for an approval that
arrives as a record on the ``approvals`` topic (or never does), a 3-day sleep, and a saga that gives
the budget back when the purchase is refused.
"""

from __future__ import annotations

from dataclasses import dataclass

from orchestrator import App, RetryPolicy, TerminalError, WorkflowContext, step_info

app = App("purchasing")
app.event_source("approval", topic="approvals", key="purchase_id")

APPROVAL_LIMIT_CENTS = 100_000
"""Purchases from this amount on need a manager's approval."""


@dataclass
class Purchase:
    id: str
    requester: str
    amount_cents: int


@app.step(retry=RetryPolicy(max_attempts=5, initial_interval="1s", backoff=2.0, max_interval="1m"))
async def reserve_budget(purchase: Purchase) -> str:
    # A budget service would be called here, with step_info().idempotency_key so a retry reserves once.
    return f"budget-{step_info().idempotency_key.replace('/', '-')}"


@app.step
async def release_budget(purchase: Purchase) -> None:
    return None


@app.step(retry=RetryPolicy(max_attempts=3, initial_interval="10s"))
async def place_order(purchase: Purchase) -> str:
    # The supplier's API would be called here.
    return f"PO-{purchase.id}"


@app.step
def send_survey(purchase: Purchase, order_id: str) -> None:
    # A mailer would be called here.
    return None


@app.workflow
async def purchase(ctx: WorkflowContext, request: Purchase) -> str:
    await ctx.step(reserve_budget, request, compensate=release_budget)
    if request.amount_cents >= APPROVAL_LIMIT_CENTS:
        decision = await ctx.wait_for_event("approval", key=request.id, timeout="2d")
        if decision.timed_out or not decision.payload["approved"]:
            raise TerminalError(f"purchase {request.id} was not approved")  # the budget is released
    order_id = await ctx.step(place_order, request)
    await ctx.sleep("3d")  # ask how the delivery went once it has arrived
    await ctx.step(send_survey, request, order_id)
    return order_id
