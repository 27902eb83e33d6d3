"""The deterministic workflow runtime, driven by hand: issue, resolve, observe."""

from __future__ import annotations

import asyncio
import gc
import logging
import uuid
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pytest

from orchestrator import App, RetryPolicy, WorkflowContext
from orchestrator._core.runtime import WorkflowInstance
from orchestrator.errors import StepFailedError, UnknownStepError

app = App("runtime-test")


@dataclass
class Order:
    id: str
    qty: int


@app.step
def reserve(order_id: str, qty: int) -> str:
    return f"res-{order_id}-{qty}"


@app.step(queue="payments", timeout="30s")
async def charge(amount: int) -> bool:
    return amount > 0


@app.step
def make_order(order_id: str) -> Order:
    return Order(order_id, 1)


@app.workflow
async def sequential(ctx: WorkflowContext, order: Order) -> list[Any]:
    r = await ctx.step(reserve, order.id, order.qty)
    ok = await ctx.step(charge, order.qty * 10)
    return [r, ok, ctx.now().isoformat()]


@app.workflow
async def parallel(ctx: WorkflowContext, n: int) -> list[Any]:
    seen: list[Any] = []

    async def one(i: int) -> str:
        r = await ctx.step(reserve, f"o{i}", i)
        seen.append((r, ctx.now().timestamp()))
        return r

    results = await asyncio.gather(*(one(i) for i in range(n)))
    return [list(results), seen]


@app.workflow
async def no_input(ctx: WorkflowContext) -> dict[str, Any]:
    return {"run": ctx.run_id, "wf": ctx.workflow, "now": ctx.now().isoformat()}


@app.workflow
async def randomness(ctx: WorkflowContext) -> list[Any]:
    return [ctx.random().random(), ctx.random().randint(0, 10**9), str(ctx.uuid4()), str(ctx.uuid4())]


@app.workflow
async def sleeper(ctx: WorkflowContext) -> None:
    await asyncio.sleep(5)


@app.workflow
async def yields(ctx: WorkflowContext) -> int:
    await asyncio.sleep(0)  # a bare yield: no timer
    return 1


@app.workflow
async def catches(ctx: WorkflowContext) -> str:
    try:
        await ctx.step(charge, 1)
    except StepFailedError as exc:
        return f"caught {exc.error_type} after {exc.attempts}"
    return "no failure"


@app.workflow
async def typed_result(ctx: WorkflowContext) -> str:
    order = await ctx.step(make_order, "o9")
    assert isinstance(order, Order)
    return order.id


@app.workflow
async def with_options(ctx: WorkflowContext) -> None:
    await ctx.step(reserve, "x", 1, queue="special", timeout="2m", retry=RetryPolicy(max_attempts=7))


@app.workflow
async def stubborn(ctx: WorkflowContext) -> None:
    try:
        await ctx.step(reserve, "a", 1)
    finally:
        ctx.step(reserve, "cleanup", 0)  # issued while dying: must be ignored, not crash


def unregistered(x: int) -> int:
    return x


@app.workflow
async def calls_unregistered(ctx: WorkflowContext) -> None:
    await ctx.step(unregistered, 1)


def _new(name: str, value: Any = None, run_id: str = "run-1", start_ms: int = 1_000) -> WorkflowInstance:
    data = app.data.encode(value)
    return WorkflowInstance(app, app.workflows[name], run_id, data, start_ms)


def _ok(inst: WorkflowInstance, position: int, value: Any, ts: int) -> None:
    inst.resolve(position, ts, app.data.encode(value), None)


@pytest.fixture
def instances() -> Iterator[list[WorkflowInstance]]:
    """Instances made by a test, closed at its end (and checked to leave nothing behind)."""
    made: list[WorkflowInstance] = []
    yield made
    for inst in made:
        inst.close()


def _collect_leaks() -> list[str]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        gc.collect()
        gc.collect()
    return [str(w.message) for w in caught]


def test_steps_are_issued_in_order_and_resolved(instances: list[WorkflowInstance]) -> None:
    inst = _new("sequential", Order("o1", 3))
    instances.append(inst)
    assert [s.step for s in inst.issued] == ["reserve"]
    assert app.data.decode(inst.issued[0].args) == ["o1", 3]
    assert inst.issued[0].position == 0
    assert inst.issued[0].queue == "default"
    assert not inst.done
    _ok(inst, 0, "res-o1-3", 2_000)
    assert [(s.position, s.step, s.queue, s.timeout_ms) for s in inst.issued] == [
        (0, "reserve", "default", 0),
        (1, "charge", "payments", 30_000),
    ]
    assert app.data.decode(inst.issued[1].args) == [30]
    _ok(inst, 1, True, 3_000)
    assert inst.done
    result, exc = inst.outcome()
    assert exc is None
    assert result == ["res-o1-3", True, datetime.fromtimestamp(3, tz=UTC).isoformat()]
    assert inst.applied == 2


def test_gather_issues_in_parallel_with_deterministic_positions(instances: list[WorkflowInstance]) -> None:
    inst = _new("parallel", 4)
    instances.append(inst)
    assert [app.data.decode(s.args) for s in inst.issued] == [["o0", 0], ["o1", 1], ["o2", 2], ["o3", 3]]
    assert [s.position for s in inst.issued] == [0, 1, 2, 3]
    again = _new("parallel", 4, run_id="run-2")
    instances.append(again)
    assert [(s.position, s.args) for s in again.issued] == [(s.position, s.args) for s in inst.issued]


def test_out_of_order_resolution(instances: list[WorkflowInstance]) -> None:
    inst = _new("parallel", 3)
    instances.append(inst)
    _ok(inst, 2, "r2", 5_000)
    _ok(inst, 0, "r0", 6_000)
    assert not inst.done
    _ok(inst, 1, "r1", 7_000)
    result, exc = inst.outcome()
    assert exc is None
    # gather keeps the call order; the workflow saw the results in resolution order, each at its time.
    assert result == [["r0", "r1", "r2"], [("r2", 5.0), ("r0", 6.0), ("r1", 7.0)]]
    assert len(inst.issued) == 3  # nothing issued after the fact


def test_now_is_the_start_time_then_each_resolution_time(instances: list[WorkflowInstance]) -> None:
    inst = _new("no_input", start_ms=1_234_567)
    instances.append(inst)
    result, exc = inst.outcome()
    assert exc is None
    assert result == {
        "run": "run-1",
        "wf": "no_input",
        "now": datetime.fromtimestamp(1234.567, tz=UTC).isoformat(),
    }
    assert inst.ctx.now() == datetime(1970, 1, 1, 0, 20, 34, 567000, tzinfo=UTC)
    assert inst.ctx.now().tzinfo is UTC


def test_random_and_uuid_depend_only_on_the_run_id(instances: list[WorkflowInstance]) -> None:
    a = _new("randomness", run_id="run-A", start_ms=1)
    b = _new("randomness", run_id="run-A", start_ms=999_999)
    c = _new("randomness", run_id="run-B", start_ms=1)
    instances += [a, b, c]
    ra, rb, rc = (i.outcome()[0] for i in (a, b, c))
    assert ra == rb
    assert ra != rc
    for r in (ra, rc):
        first, second = uuid.UUID(r[2]), uuid.UUID(r[3])
        assert first.version == 4 and second.version == 4
        assert first != second


def test_input_is_decoded_with_the_type_hint(instances: list[WorkflowInstance]) -> None:
    inst = _new("sequential", Order("o5", 2))
    instances.append(inst)
    assert app.data.decode(inst.issued[0].args) == ["o5", 2]  # order.id/qty were attributes: a real Order


def test_step_results_are_decoded_with_the_return_hint(instances: list[WorkflowInstance]) -> None:
    inst = _new("typed_result")
    instances.append(inst)
    _ok(inst, 0, Order("o9", 1), 2)
    assert inst.outcome() == ("o9", None)


def test_undecodable_result_fails_the_workflow_not_the_engine(instances: list[WorkflowInstance]) -> None:
    inst = _new("typed_result")
    instances.append(inst)
    inst.resolve(0, 2, b'"not an order"', None)
    assert inst.done
    _, exc = inst.outcome()
    assert exc is not None


def test_failure_is_raised_in_the_workflow(instances: list[WorkflowInstance]) -> None:
    inst = _new("catches")
    instances.append(inst)
    inst.resolve(0, 2, None, StepFailedError("charge", "ValueError", "boom", 3))
    assert inst.outcome() == ("caught ValueError after 3", None)


def test_duplicate_resolution_is_harmless(instances: list[WorkflowInstance]) -> None:
    inst = _new("sequential", Order("o1", 1))
    instances.append(inst)
    _ok(inst, 0, "r", 2)
    _ok(inst, 0, "r", 3)
    _ok(inst, 7, "r", 4)  # never issued
    assert len(inst.issued) == 2
    assert not inst.done


def test_per_call_options_are_recorded(instances: list[WorkflowInstance]) -> None:
    inst = _new("with_options")
    instances.append(inst)
    issued = inst.issued[0]
    assert issued.queue == "special"
    assert issued.timeout_ms == 120_000
    assert '"max_attempts": 7' in issued.retry


def test_unregistered_step_fails_the_workflow(instances: list[WorkflowInstance]) -> None:
    inst = _new("calls_unregistered")
    instances.append(inst)
    assert inst.done
    _, exc = inst.outcome()
    assert isinstance(exc, UnknownStepError)
    assert "@app.step" in str(exc)


def test_asyncio_sleep_is_detected(instances: list[WorkflowInstance]) -> None:
    inst = _new("sleeper")
    instances.append(inst)
    assert inst.uses_asyncio_timers
    assert not inst.done


def test_sleep_zero_is_not_a_timer(instances: list[WorkflowInstance]) -> None:
    inst = _new("yields")
    instances.append(inst)
    assert not inst.uses_asyncio_timers
    assert inst.outcome() == (1, None)


def test_the_process_loop_is_untouched() -> None:
    inst = _new("sequential", Order("o1", 1))
    with pytest.raises(RuntimeError):
        asyncio.get_running_loop()  # the instance's loop is only "running" while it is driven
    inst.close()


async def test_driving_inside_a_running_loop_restores_it() -> None:
    outer = asyncio.get_running_loop()
    inst = _new("sequential", Order("o1", 1))
    _ok(inst, 0, "r", 2)
    assert asyncio.get_running_loop() is outer
    inst.close()


@pytest.mark.parametrize("name", ["sequential", "parallel", "sleeper", "stubborn", "catches"])
def test_close_of_a_suspended_instance_leaves_nothing_behind(
    name: str, caplog: pytest.LogCaptureFixture
) -> None:
    value = {"sequential": Order("o", 1), "parallel": 3}.get(name)
    inst = _new(name, value)
    assert not inst.done
    inst.close()
    assert inst.loop.is_closed()
    del inst
    with caplog.at_level(logging.ERROR, logger="asyncio"):
        leaks = _collect_leaks()
    assert leaks == []
    assert not [r for r in caplog.records if r.name == "asyncio"], caplog.text


def test_close_of_a_finished_instance_leaves_nothing_behind(caplog: pytest.LogCaptureFixture) -> None:
    inst = _new("no_input")
    assert inst.done
    inst.close()
    inst.close()  # idempotent
    del inst
    with caplog.at_level(logging.ERROR, logger="asyncio"):
        assert _collect_leaks() == []
    assert not caplog.records


def test_close_runs_finally_blocks() -> None:
    inst = _new("stubborn")
    inst.close()
    assert inst.task.cancelled() or inst.task.done()
    result, exc = (None, None) if not inst.task.done() else inst.outcome()
    assert result is None
    assert exc is None or isinstance(exc, asyncio.CancelledError)
    del inst
    assert _collect_leaks() == []
