"""Testing ``examples/orders.py`` without a broker: a mocked payment, a flaky warehouse, a bad order.

Run it with ``pytest examples/test_orders.py``; it also runs with the project's unit tests.
"""

from __future__ import annotations

import pytest

from examples.orders import Order, Receipt, app, charge_card, fulfil_order, reserve_stock
from orchestrator import RunFailedError, step_info
from orchestrator.testing import WorkflowEnvironment

BOOK = Order(id="1", customer="c1", items=["book"], amount_cents=1200)


def reliable_warehouse(order: Order) -> str:
    """The real reserve_stock fails at random (to show retries in the demo); tests need a fixed answer."""
    return f"res_{order.id}"


async def test_order_ships_with_a_mocked_payment() -> None:
    charged: list[int] = []

    async def fake_charge(order: Order) -> str:  # no payment provider is called from a test
        charged.append(order.amount_cents)
        return "ch_test"

    async with WorkflowEnvironment(app) as env:
        env.mock_step(charge_card, fake_charge)
        env.mock_step(reserve_stock, reliable_warehouse)
        handle = await env.start(fulfil_order, BOOK, run_id="order-1")
        receipt = await handle.result()
        assert isinstance(receipt, Receipt)  # decoded to the workflow's return type, as the client does
        assert (receipt.charge_id, receipt.reservation_id) == ("ch_test", "res_1")
        assert charged == [1200]
        description = env.describe("order-1")
        assert description is not None
        assert [s.step for s in description.steps] == [
            "validate_order",
            "charge_card",
            "reserve_stock",
            "ship_order",
            "send_receipt",
        ]


async def test_flaky_warehouse_is_retried_by_policy() -> None:
    async def warehouse_times_out_twice(order: Order) -> str:
        if step_info().attempt <= 2:
            raise ConnectionError("warehouse API timed out")
        return "res_after_retries"

    async with WorkflowEnvironment(app) as env:
        env.mock_step(reserve_stock, warehouse_times_out_twice)
        receipt = await (await env.start(fulfil_order, BOOK)).result()
        assert receipt.reservation_id == "res_after_retries"
        description = env.describe(env.run_ids()[0])
        assert description is not None
        reserve = next(s for s in description.steps if s.step == "reserve_stock")
        assert reserve.attempts == 3
        assert reserve.attempt_errors == (
            "#1 ConnectionError: warehouse API timed out",
            "#2 ConnectionError: warehouse API timed out",
        )


async def test_order_without_amount_fails_without_charging() -> None:
    charged: list[Order] = []
    async with WorkflowEnvironment(app) as env:
        env.mock_step(charge_card, charged.append)
        handle = await env.start(fulfil_order, Order(id="2", customer="c1", items=[], amount_cents=0))
        with pytest.raises(RunFailedError) as failed:
            await handle.result()
        assert (failed.value.status, failed.value.error_type) == ("failed", "TerminalError")
        assert "order 2 has no amount" in failed.value.message
        assert charged == []  # validate_order stopped it: no retry, no charge
