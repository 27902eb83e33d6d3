"""Testing ``examples/approvals.py`` without a broker: approvals, a 3-day sleep, a refusal, in milliseconds.

Run it with ``pytest examples/test_approvals.py``; it also runs with the project's unit tests.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from examples.approvals import Purchase, app, place_order, purchase, release_budget, send_survey
from orchestrator import RunFailedError
from orchestrator.testing import WorkflowEnvironment

MONDAY = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)


async def test_large_purchase_is_approved_then_followed_up_after_three_days() -> None:
    surveys: list[str] = []
    async with WorkflowEnvironment(app, start_time=MONDAY) as env:
        env.mock_step(send_survey, lambda request, order_id: surveys.append(order_id))
        handle = await env.start(purchase, Purchase("p-1", "ann", 250_000), run_id="purchase-p-1")
        assert handle.status == "running"  # waiting for the approval

        # The manager's decision arrives on the approvals topic, routed to the run by its key.
        await env.emit("approvals", {"purchase_id": "p-1", "approved": True, "by": "bob"})
        assert surveys == []  # the order is placed; the survey waits 3 days

        await env.sleep("3d")
        assert surveys == ["PO-p-1"]
        assert await handle.result() == "PO-p-1"
        assert env.now() == MONDAY + timedelta(days=3)


async def test_purchase_without_approval_is_refused_and_budget_released() -> None:
    released: list[str] = []
    ordered: list[str] = []
    async with WorkflowEnvironment(app, start_time=MONDAY) as env:
        env.mock_step(release_budget, lambda request: released.append(request.id))
        env.mock_step(place_order, lambda request: ordered.append(request.id))
        handle = await env.start(purchase, Purchase("p-2", "ann", 300_000))

        # Nobody approves: result() skips the 2 days the wait allows, and the run fails.
        with pytest.raises(RunFailedError, match="not approved") as refused:
            await handle.result()
        assert refused.value.status == "failed"
        assert env.now() == MONDAY + timedelta(days=2)
        assert released == ["p-2"] and ordered == []


async def test_small_purchase_skips_approval() -> None:
    async def supplier_down_once(request: Purchase) -> str:
        calls.append(request.id)
        if len(calls) == 1:
            raise ConnectionError("supplier API unavailable")  # retried by place_order's policy
        return "PO-small"

    calls: list[str] = []
    async with WorkflowEnvironment(app, start_time=MONDAY) as env:
        env.mock_step(place_order, supplier_down_once)
        handle = await env.start(purchase, Purchase("p-3", "cy", 4_000))
        assert await handle.result() == "PO-small"
        assert calls == ["p-3", "p-3"]
        kinds = [event.kind for event in handle.history()]
        assert "WaitStarted" not in kinds and kinds.count("RetryScheduled") == 1
