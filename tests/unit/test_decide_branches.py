"""Every branch of the core's decisions that test_engine_decider.py does not cover, asserted on what the
machine emits (history, commands, outcomes, keyed, inbox), never on private methods.

Covered here: durable timers, event waits (keyed and unkeyed, timeouts, buffered signals), signals to
parked and ended runs, sagas (order, parking, resuming), children (attached, detached, cancel cascade,
result delivery), admission release, cancel in every state, step schedule-to-start and start-to-close
timeouts, run timeouts, ``ctx.patched`` and resumes. Every driver also checks after each input that the
fold of the history is the live state (``check_fold``), so each scenario is a fold test too.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from core_driver import (
    Driver,
    no_leaked_workflow_loops,  # noqa: F401 - an autouse fixture: applies here
)

from orchestrator import App, RetryPolicy, StepFailedError, WorkflowContext
from orchestrator._engine import events as ev
from orchestrator._engine import state as st
from orchestrator._engine.admission import admit_routing
from orchestrator._engine.decider import routing_key
from orchestrator.flow import Admission

FAST = RetryPolicy(max_attempts=2, initial_interval="1s", backoff=2.0, max_interval="10s", jitter=0)

app = App("branches")


@app.step(retry=FAST)
def act(x: int) -> int:
    return x


@app.step(retry=RetryPolicy(max_attempts=1))
def once(x: int) -> int:
    return x


@app.step(retry=FAST)
def undo(x: int) -> int:
    return x


@app.step(timeout="5s", schedule_to_start_timeout="2s", retry=FAST)
def guarded(x: int) -> int:
    return x


@app.step(timeout="5s", schedule_to_start_timeout="2s", retry=FAST)
def guarded_undo(x: int) -> int:
    return x


@app.step(timeout="5s", retry=RetryPolicy(max_attempts=1))
def closes(x: int) -> int:
    return x


@app.step(admission=Admission(key="user", concurrency=1), retry=FAST)
def limited(order: dict[str, Any]) -> int:
    return 0


@app.workflow
async def sleeper(ctx: WorkflowContext) -> list[float]:
    before = ctx.now().timestamp()
    await ctx.sleep("10s")
    woke = ctx.now().timestamp()
    await ctx.step(act, 1)
    return [before, woke]


@app.workflow
async def waiter(ctx: WorkflowContext, spec: dict[str, Any]) -> list[Any]:
    got = await ctx.wait_for_event(
        spec["name"], key=spec.get("key", ""), timeout=spec.get("timeout"), type_hint=None
    )
    await ctx.step(act, 1)
    return [got.name, got.key, got.payload, got.timed_out]


@app.workflow
async def two_waits(ctx: WorkflowContext) -> list[Any]:
    a, b = await asyncio.gather(ctx.wait_for_event("go"), ctx.wait_for_event("go"))
    return [a.payload, b.payload]


@app.workflow
async def saga(ctx: WorkflowContext, fail_at: int) -> str:
    """Three compensated steps, one uncompensated, then a step that the test fails."""
    await ctx.step(act, 0, compensate=undo)
    await ctx.step(act, 1)
    await ctx.step(act, 2, compensate=undo)
    await ctx.step(act, 3, compensate=undo)
    await ctx.step(once, fail_at)
    return "done"


@app.workflow
async def guarded_saga(ctx: WorkflowContext) -> None:
    await ctx.step(act, 0, compensate=guarded_undo)
    await ctx.step(once, 1)


@app.workflow(timeout="30s")
async def timed_saga(ctx: WorkflowContext) -> str:
    await ctx.step(act, 0, compensate=undo)
    await ctx.step(act, 1, compensate=undo)
    await ctx.step(once, 2)
    return "done"


@app.workflow(timeout="30s")
async def timed(ctx: WorkflowContext) -> int:
    return await ctx.step(act, 1)


@app.workflow
async def chain2(ctx: WorkflowContext) -> list[int]:
    first = await ctx.step(act, 1)
    return [first, await ctx.step(act, first + 1)]


@app.workflow
async def pair(ctx: WorkflowContext) -> list[int]:
    return list(await asyncio.gather(ctx.step(act, 1), ctx.step(act, 2)))


@app.workflow
async def kid(ctx: WorkflowContext, x: int) -> int:
    return await ctx.step(act, x)


@app.workflow
async def parent(ctx: WorkflowContext, detach: bool) -> list[Any]:
    try:
        got = await ctx.child(kid, 5, detach=detach)
    except StepFailedError as exc:
        return ["child failed", exc.error_type]
    await ctx.step(act, 1)
    return ["child", got]


@app.workflow
async def parent_of_two(ctx: WorkflowContext) -> list[Any]:
    detached = await ctx.child(kid, 1, run_id="free-kid", detach=True)
    return [detached, await ctx.child(kid, 2)]


@app.workflow
async def guarded_flow(ctx: WorkflowContext) -> int:
    return await ctx.step(guarded, 1)


@app.workflow
async def guarded_pair(ctx: WorkflowContext) -> list[int]:
    return list(await asyncio.gather(ctx.step(act, 1), ctx.step(guarded, 2)))


@app.workflow
async def buggy(ctx: WorkflowContext) -> None:
    await ctx.step(act, 1)
    raise ValueError("a bug in the workflow")


@app.workflow
async def closes_flow(ctx: WorkflowContext) -> int:
    return await ctx.step(closes, 1)


@app.workflow
async def limited_flow(ctx: WorkflowContext) -> int:
    return await ctx.step(limited, {"user": "ann"})


@app.workflow
async def pending_everything(ctx: WorkflowContext) -> None:
    """A scheduled step, a keyed wait, a timer and a child, all pending at once."""
    await asyncio.gather(
        ctx.step(act, 1),
        ctx.wait_for_event("paid", key="o-1"),
        ctx.sleep("1h"),
        ctx.child(kid, 3),
    )


# Two deployments of one workflow, before and after a ``ctx.patched`` change.
old_app, new_app = App("patching"), App("patching")


@old_app.step(name="a")
@new_app.step(name="a")
def step_a(x: int) -> int:
    return x


@new_app.step(name="b")
def step_b(x: int) -> int:
    return x


@old_app.workflow(name="flow")
async def flow_old(ctx: WorkflowContext) -> list[int]:
    return [await ctx.step(step_a, 1), await ctx.step(step_a, 2)]


@new_app.workflow(name="flow")
async def flow_new(ctx: WorkflowContext) -> list[int]:
    first = await ctx.step(step_a, 1)
    if ctx.patched("b-instead"):
        return [first, await ctx.step(step_b, 2)]
    return [first, await ctx.step(step_a, 2)]


_buffer_app = App("buffering")


@_buffer_app.workflow
async def sleeper_then_wait(ctx: WorkflowContext) -> Any:
    await ctx.sleep("10s")
    return (await ctx.wait_for_event("go", key="k")).payload


# -- helpers ------------------------------------------------------------------------------------------------
Make = Callable[..., Driver]


@pytest.fixture
def make() -> Iterator[Make]:
    made: list[Driver] = []

    def new(workflow: str, application: App = app, run_id: str = "run-1", **kw: Any) -> Driver:
        kw.setdefault("check_fold", True)
        d = Driver(application, workflow, run_id, **kw)
        made.append(d)
        return d

    yield new
    for d in made:
        d.close()


def kinds(fx: Any) -> list[str]:
    return [e.kind for e in fx.history]


def bodies(fx: Any, cls: type[Any]) -> list[Any]:
    return [e.body for e in fx.history if isinstance(e.body, cls)]


def ignored(fx: Any) -> None:
    """The input changed nothing and is normal under at-least-once delivery (late, duplicate, stale).

    Only the category is asserted, not the wording of the reason, which is the implementation's.
    """
    assert (fx.history, fx.commands, fx.keyed, fx.inbox) == ([], [], [], [])
    assert fx.ignored and not fx.dead_letter


def refused(fx: Any) -> None:
    """The input changed nothing and makes no sense for this run: kept for an operator (dead letter)."""
    assert (fx.history, fx.commands, fx.outcomes, fx.keyed, fx.inbox) == ([], [], [], [], [])
    assert fx.dead_letter


def decoded(d: Driver, data: bytes | None) -> Any:
    assert data is not None
    return d.app.data.decode(data)


# -- durable timers ------------------------------------------------------------------------------------------
def test_sleep_records_a_timer_and_wakes_at_its_due_time(make: Make) -> None:
    d = make("sleeper")
    fx = d.start(now=1_000)
    assert kinds(fx) == ["RunStarted", "TimerStarted"]
    assert bodies(fx, ev.TimerStarted) == [ev.TimerStarted(0, 11_000)]
    assert fx.commands == [] and d.timers() == [(11_000, "timer:0")]
    fx = d.fire("timer:0", 11_000)
    assert kinds(fx) == ["TimerFired", "StepScheduled"]
    assert [c.step for _, c in fx.commands] == ["act"]
    d.complete(1, 12_000, value=1)
    assert d.decoded_result() == [1.0, 11.0]  # ctx.now() is the time of the event reacted to


def test_a_timer_fires_once(make: Make) -> None:
    d = make("sleeper")
    d.start(now=1_000)
    d.fire("timer:0", 11_000)
    ignored(d.fire("timer:0", 11_001))


def test_a_timer_of_an_ended_run_is_ignored(make: Make) -> None:
    d = make("sleeper")
    d.start(now=1_000)
    d.cancel(2_000)
    assert d.timers() == []
    ignored(d.fire("timer:0", 11_000))


# -- event waits ---------------------------------------------------------------------------------------------
def test_unkeyed_wait_takes_a_signal_with_any_key(make: Make) -> None:
    d = make("waiter")
    fx = d.start({"name": "approved"}, now=1_000)
    assert bodies(fx, ev.WaitStarted) == [ev.WaitStarted(0, "approved", "", 0, 0)]
    assert fx.keyed == [] and d.timers() == []  # no key: nothing to subscribe; no timeout: no timer
    fx = d.signal("approved", 2_000, payload={"by": "ann"}, key="whatever")
    assert kinds(fx) == ["EventReceived", "StepScheduled"]
    received = bodies(fx, ev.EventReceived)[0]
    assert (received.position, received.key) == (0, "whatever")
    d.complete(1, 3_000, value=1)
    assert d.decoded_result() == ["approved", "", {"by": "ann"}, False]


def test_keyed_wait_subscribes_and_takes_only_its_key(make: Make) -> None:
    d = make("waiter")
    fx = d.start({"name": "paid", "key": "o-1"}, now=1_000)
    [(routing, sub)] = fx.keyed
    assert routing == routing_key("paid", "o-1")
    assert sub.body == ev.Subscribe("paid", "o-1", "run-1", 0, 0)
    fx = d.signal("paid", 2_000, payload=1, key="o-2")  # another order's event: kept, not taken
    assert bodies(fx, ev.EventReceived) == [
        ev.EventReceived(-1, "paid", "o-2", fx.history[0].body.payload, "test")
    ]
    assert fx.keyed == [] and d.state is not None and len(d.state.signals) == 1
    fx = d.signal("paid", 3_000, payload=2, key="o-1")
    assert kinds(fx) == ["EventReceived", "StepScheduled"]
    [(routing, unsub)] = fx.keyed
    assert routing == routing_key("paid", "o-1") and unsub.body == ev.Unsubscribe("paid", "o-1", "run-1", 0)
    assert len(d.state.signals) == 1  # the other key's signal is still kept


def test_wait_timeout_resolves_the_wait_as_timed_out(make: Make) -> None:
    d = make("waiter")
    d.start({"name": "paid", "key": "o-1", "timeout": "5s"}, now=1_000)
    assert d.timers() == [(6_000, "wait:0")]
    fx = d.fire("wait:0", 6_000)
    assert kinds(fx) == ["WaitTimedOut", "StepScheduled"]
    assert [k.body for _, k in fx.keyed] == [ev.Unsubscribe("paid", "o-1", "run-1", 0)]
    ignored(d.fire("wait:0", 6_001))
    assert d.signal("paid", 7_000, key="o-1").history[0].body.position == -1  # too late: only buffered
    d.complete(1, 8_000, value=1)
    assert d.decoded_result() == ["paid", "o-1", None, True]


def test_signal_before_the_wait_is_consumed_when_the_wait_begins(make: Make) -> None:
    d = make("sleeper_then_wait", application=_buffer_app)
    d.start(now=1_000)
    d.signal("go", 1_500, payload="other key", key="x")
    fx = d.signal("go", 2_000, payload="early", key="k")
    assert bodies(fx, ev.EventReceived)[0].position == -1
    assert d.state is not None and [s.key for s in d.state.signals] == ["x", "k"]
    fx = d.fire("timer:0", 11_000)  # the wait begins now and finds the buffered signal of its key
    assert kinds(fx) == ["TimerFired", "WaitStarted", "EventReceived", "RunCompleted"]
    assert bodies(fx, ev.EventReceived)[0].position == 1
    assert fx.keyed == []  # taken from the buffer: nothing to subscribe to
    assert d.decoded_result() == "early"


def test_keyed_wait_leaves_buffered_signals_of_other_keys(make: Make) -> None:
    d = make("sleeper_then_wait", application=_buffer_app)
    d.start(now=1_000)
    d.signal("go", 1_500, payload="other key", key="x")
    fx = d.fire("timer:0", 11_000)
    assert kinds(fx) == ["TimerFired", "WaitStarted"]
    assert [k.body for _, k in fx.keyed] == [ev.Subscribe("go", "k", "run-1", 1, 0)]
    assert d.state is not None and [s.key for s in d.state.signals] == ["x"]


def test_buffered_signals_go_to_waits_in_order(make: Make) -> None:
    d = make("two_waits")
    d.start(now=1_000)
    d.signal("go", 2_000, payload="first")
    fx = d.signal("go", 2_000, payload="second")  # same millisecond
    assert kinds(fx) == ["EventReceived", "RunCompleted"]
    assert d.decoded_result() == ["first", "second"]


# -- signals to parked and ended runs ------------------------------------------------------------------------
def _parked_waiter(make: Make) -> Driver:
    """A waiting run parked by a deployment that no longer has its workflow."""
    d = make("waiter")
    d.start({"name": "go"}, now=1_000)
    d.restart(App("branches"))  # redeployed without the workflow
    d.signal("go", 2_000, payload=1)  # resolves the wait; re-executing it then finds no workflow
    assert d.status == st.PARKED and d.kinds[-2:] == ["EventReceived", "RunParked"]
    return d


def test_signal_to_a_parked_run_resolves_its_wait_and_resume_continues(make: Make) -> None:
    d = _parked_waiter(make)
    d.restart(app)
    fx = d.resume(3_000)
    assert kinds(fx) == ["RunResumed", "StepScheduled"]  # the wait's payload was kept while parked
    d.complete(1, 4_000, value=1)
    assert d.decoded_result() == ["go", "", 1, False]


def test_signal_kept_while_parked_for_a_later_wait(make: Make) -> None:
    d = make("sleeper_then_wait", application=_buffer_app)
    d.start(now=1_000)
    d.restart(App("buffering"))
    d.fire("timer:0", 11_000)
    assert d.status == st.PARKED
    fx = d.signal("go", 12_000, payload="while parked", key="k")
    assert bodies(fx, ev.EventReceived)[0].position == -1
    d.restart(_buffer_app)
    d.resume(13_000)
    assert d.decoded_result() == "while parked"


@pytest.mark.parametrize("end", ["complete", "fail", "cancel"])
def test_signal_to_an_ended_run_is_ignored(make: Make, end: str) -> None:
    d = make("timed")
    d.start(now=1_000)
    if end == "complete":
        d.complete(0, 2_000, value=1)
    elif end == "fail":
        d.fail(0, 2_000, "TerminalError", retryable=False)
    else:
        d.cancel(2_000)
    assert d.state is not None and d.state.terminal
    ignored(d.signal("go", 3_000))


# -- sagas ---------------------------------------------------------------------------------------------------
def _saga_failed(make: Make, **kw: Any) -> Driver:
    d = make("saga", **kw)
    d.start(4, now=1_000)
    for position in range(4):
        d.complete(position, 2_000 + position, value=position)
    fx = d.fail(4, 3_000, "TerminalError", retryable=False)
    assert kinds(fx) == ["StepFailed", "CompensationStarted", "StepScheduled"]
    assert bodies(fx, ev.CompensationStarted) == [
        ev.CompensationStarted(
            st.FAILED, "TerminalError", "step 'once' failed after 1 attempt(s): TerminalError: boom"
        )
    ]
    assert d.status == st.COMPENSATING and fx.outcomes == []
    return d


def test_compensations_run_newest_first_with_the_steps_arguments(make: Make) -> None:
    d = _saga_failed(make)
    undone = []
    for position in (5, 6, 7):
        cmd = [c for c in d.commands() if c.position == position][-1]
        assert cmd.step == "undo"
        undone.append(decoded(d, cmd.args))
        fx = d.complete(position, 4_000 + position, value=0)
    assert undone == [[3], [2], [0]]  # step 1 has no compensation
    assert [s.undoes for s in d.state.steps[5:]] == [3, 2, 0]  # type: ignore[union-attr]
    assert kinds(fx) == ["StepCompleted", "RunFailed"]
    assert d.state is not None and (d.state.status, d.state.error_type) == (st.FAILED, "TerminalError")
    assert [o.status for o in fx.outcomes] == [st.FAILED]


def test_compensation_retries_by_its_own_policy(make: Make) -> None:
    d = _saga_failed(make)
    fx = d.fail(5, 4_000)
    assert bodies(fx, ev.RetryScheduled) == [ev.RetryScheduled(5, 2, 5_000)]
    assert d.timers() == [(5_000, "retry:5")]
    fx = d.fire("retry:5", 5_000)
    assert (
        bodies(fx, ev.StepScheduled)[0].attempt == 2
        and bodies(fx, ev.StepScheduled)[0].kind == "compensation"
    )


def test_failed_compensation_parks_the_run_keeping_its_error(make: Make) -> None:
    d = _saga_failed(make)
    d.fail(5, 4_000)
    d.fire("retry:5", 5_000)
    fx = d.fail(5, 6_000)  # second and last attempt
    assert kinds(fx) == ["StepFailed", "RunParked"]
    assert bodies(fx, ev.RunParked)[0].kind == "compensation_failed"
    assert d.state is not None and d.state.status == st.PARKED
    assert (d.state.ending, d.state.error_type) == (st.FAILED, "TerminalError")  # what it ends with
    [outcome] = fx.outcomes
    assert (outcome.status, outcome.error_type) == (st.PARKED, "compensation_failed")  # why it waits
    assert d.timers() == [] and fx.inbox == []


def test_resume_of_a_parked_compensation_goes_on_compensating(make: Make) -> None:
    d = _saga_failed(make)
    d.fail(5, 4_000, retryable=False)
    assert d.status == st.PARKED
    fx = d.resume(5_000)
    assert kinds(fx) == ["RunResumed", "StepScheduled"]
    assert [(c.position, c.step, c.attempt) for _, c in fx.commands] == [(5, "undo", 2)]
    assert d.status == st.COMPENSATING
    d.complete(5, 6_000, value=0)
    d.complete(6, 6_100, value=0)
    fx = d.complete(7, 6_200, value=0)
    assert kinds(fx) == ["StepCompleted", "RunFailed"]


def test_cancel_runs_the_compensations_then_ends_cancelled(make: Make) -> None:
    d = make("saga")
    d.start(4, now=1_000)
    d.complete(0, 2_000, value=0)
    fx = d.cancel(2_500, "customer changed their mind")
    assert kinds(fx) == ["CompensationStarted", "StepScheduled"]
    assert bodies(fx, ev.CompensationStarted)[0].ending == st.CANCELLED
    assert [(c.position, c.cancel) for _, c in fx.commands] == [(1, True), (2, False)]  # stop step 1, undo 0
    ignored(d.cancel(2_600))
    fx = d.complete(2, 3_000, value=0)
    assert kinds(fx) == ["StepCompleted", "RunCancelled"]
    assert d.state is not None and d.state.error_message == "customer changed their mind"
    assert [o.status for o in fx.outcomes] == [st.CANCELLED]


def _compensating_with_timeouts(make: Make) -> Driver:
    """guarded_saga compensating at 3 000 ms with guarded_undo (5 s start-to-close, 2 s schedule-to-start)."""
    d = make("guarded_saga")
    d.start(now=1_000)
    d.complete(0, 2_000, value=0)
    d.fail(1, 3_000, "TerminalError", retryable=False)
    assert d.status == st.COMPENSATING and d.commands()[-1].step == "guarded_undo"
    return d


def test_a_compensation_has_its_steps_schedule_to_start_timeout(make: Make) -> None:
    d = _compensating_with_timeouts(make)
    assert d.commands()[-1].schedule_to_start_ms == 2_000
    assert d.timers() == [(5_000, "timeout:2:1")]


def test_a_compensations_start_report_starts_its_start_to_close_timeout(make: Make) -> None:
    d = _compensating_with_timeouts(make)
    assert d.commands()[-1].report_start
    fx = d.started(2, 4_500)
    assert bodies(fx, ev.StepStarted) == [ev.StepStarted(2, 1, 4_500, "w-1")]
    assert d.timers() == [(9_500, "timeout:2:1")]


def test_a_start_report_while_parked_is_kept_for_the_resume(make: Make) -> None:
    """A parked run keeps its scheduled steps running; a worker that starts one reports it (the command
    asked), so after the resume the attempt is held to its start-to-close limit from that start."""
    d = make("guarded_pair")
    d.start(now=1_000)
    d.restart(no_workflows)
    d.complete(0, 1_500, value=1)  # parks: the workflow is gone; guarded(2) is still out
    assert d.status == st.PARKED
    fx = d.started(1, 1_600)
    assert bodies(fx, ev.StepStarted) == [ev.StepStarted(1, 1, 1_600, "w-1")]
    d.restart(app)
    d.resume(1_700)
    assert d.timers() == [(6_600, "timeout:1:1")]


def test_a_compensation_times_out_and_retries(make: Make) -> None:
    d = _compensating_with_timeouts(make)
    [(due, tag)] = d.timers()
    fx = d.fire(tag, due)
    assert kinds(fx) == ["StepTimedOut", "RetryScheduled"]
    assert [(c.position, c.cancel) for _, c in fx.commands] == [(2, True)]
    fx = d.fire("retry:2", due + 1_000)
    assert [(c.step, c.attempt) for _, c in fx.commands] == [("guarded_undo", 2)]


def test_signal_while_compensating_is_ignored(make: Make) -> None:
    d = _saga_failed(make)
    ignored(d.signal("go", 4_000))


def test_a_late_result_of_a_cancelled_step_is_ignored_while_compensating(make: Make) -> None:
    d = make("saga")
    d.start(4, now=1_000)
    d.complete(0, 2_000, value=0)
    d.cancel(2_500)
    ignored(d.complete(1, 2_600, value=1))


# -- children ------------------------------------------------------------------------------------------------
def test_attached_child_is_started_and_its_result_delivered(make: Make) -> None:
    d = make("parent")
    fx = d.start(False, now=1_000)
    assert bodies(fx, ev.ChildStarted) == [ev.ChildStarted(0, "kid", "run-1/0", d.app.data.encode(5), False)]
    [request] = fx.inbox
    assert (request.run_id, request.workflow) == ("run-1/0", "kid")
    assert request.body == ev.StartRun(
        d.app.data.encode(5), requested_by="parent:run-1", parent_run_id="run-1", parent_position=0
    )
    assert d.timers() == [] and fx.commands == []
    fx = d.send(ev.StepCompleted(0, 1, d.app.data.encode(5), 1_000, 2_000, "child:run-1/0"), 2_000)
    assert kinds(fx) == ["StepCompleted", "StepScheduled"]
    d.complete(1, 3_000, value=1)
    assert d.decoded_result() == ["child", 5]


def test_a_start_report_for_a_child_position_is_ignored(make: Make) -> None:
    """No worker runs a child: a start report there is stale (a step that position held before a re-run)."""
    d = make("parent")
    d.start(False, now=1_000)
    fx = d.started(0, 1_500)
    assert kinds(fx) == [] and fx.ignored
    d.complete(0, 2_000, value=5)  # the child's end, its one attempt
    child = d.state.record_at(0, st.ChildRecord)  # type: ignore[union-attr]
    assert child is not None and child.status == st.STEP_COMPLETED and child.ended is not None


def test_detached_child_resolves_at_once_with_its_run_id(make: Make) -> None:
    d = make("parent")
    fx = d.start(True, now=1_000)
    assert kinds(fx) == ["RunStarted", "ChildStarted", "StepScheduled"]
    assert bodies(fx, ev.ChildStarted)[0].detached
    [request] = fx.inbox
    assert (request.body.parent_run_id, request.body.parent_position) == ("", -1)
    d.complete(1, 2_000, value=1)
    assert d.decoded_result() == ["child", "run-1/0"]


def test_failed_child_raises_in_the_parent(make: Make) -> None:
    d = make("parent")
    d.start(False, now=1_000)
    fx = d.send(ev.StepFailed(0, 1, "ValueError", "bad", False, 1_000, 2_000, "child:run-1/0"), 2_000)
    assert kinds(fx) == ["StepFailed", "RunCompleted"]
    assert d.decoded_result() == ["child failed", "ValueError"]


def test_parent_cancel_cascades_to_attached_children_only(make: Make) -> None:
    d = make("parent_of_two")
    fx = d.start(now=1_000)
    assert [e.run_id for e in fx.inbox] == ["free-kid", "run-1/1"]
    fx = d.cancel(2_000, "stop")
    assert kinds(fx) == ["RunCancelled"]
    [cancel] = fx.inbox
    assert cancel.run_id == "run-1/1"
    assert cancel.body == ev.CancelRun("parent run-1 ended", requested_by="parent:run-1")


@pytest.mark.parametrize(
    ("end", "expected"),
    [
        ("complete", ev.StepCompleted),
        ("fail", ev.StepFailed),
        ("cancel", ev.StepFailed),
    ],
)
def test_a_child_reports_its_end_to_its_parent(make: Make, end: str, expected: type[Any]) -> None:
    d = make("kid", run_id="run-1/0")
    d.start(5, now=1_000, parent_run_id="run-1", parent_position=0)
    if end == "complete":
        fx = d.complete(0, 2_000, value=5)
    elif end == "fail":
        fx = d.fail(0, 2_000, "TerminalError", retryable=False)
    else:
        fx = d.cancel(2_000, "parent ended")
    [report] = fx.inbox
    assert report.run_id == "run-1" and isinstance(report.body, expected)
    assert (report.body.position, report.body.attempt) == (0, 1)
    if end == "complete":
        assert decoded(d, report.body.result) == 5
    else:
        assert report.body.retryable is False
        assert report.body.error_type == ("Cancelled" if end == "cancel" else "TerminalError")


def test_a_parked_child_does_not_report_to_its_parent(make: Make) -> None:
    d = make("gone", run_id="run-1/0")
    fx = d.start(5, now=1_000, parent_run_id="run-1", parent_position=0)
    assert d.status == st.PARKED and fx.inbox == []


# -- admission -----------------------------------------------------------------------------------------------
ADMITTED = admit_routing("kid", "ann")


@pytest.mark.parametrize("end", ["complete", "fail", "cancel"])
def test_an_admitted_run_releases_its_slot_when_it_ends(make: Make, end: str) -> None:
    d = make("kid")
    fx = d.start(1, now=1_000, admission_key=ADMITTED)
    assert fx.keyed == []
    if end == "complete":
        fx = d.complete(0, 2_000, value=1)
    elif end == "fail":
        fx = d.fail(0, 2_000, "TerminalError", retryable=False)
    else:
        fx = d.cancel(2_000)
    [(routing, release)] = fx.keyed
    assert routing == ADMITTED and release.body == ev.Release("kid", "ann", "run-1")


def test_a_parked_admitted_run_keeps_its_slot(make: Make) -> None:
    d = make("gone")
    fx = d.start(1, now=1_000, admission_key=ADMITTED)
    assert d.status == st.PARKED and fx.keyed == []


def test_a_limited_step_asks_for_a_slot_and_frees_it_with_its_result(make: Make) -> None:
    d = make("limited_flow")
    fx = d.start(now=1_000)
    assert fx.commands == []  # held by the keyed stage until admitted
    [(routing, ask)] = fx.keyed
    assert routing == admit_routing("step:limited", "ann")
    assert (ask.body.workflow, ask.body.run_id, ask.body.key) == ("step:limited", "run-1/0/1", "ann")
    fx = d.fail(0, 2_000)
    assert [k.body for _, k in fx.keyed] == [ev.Release("step:limited", "ann", "run-1/0/1")]
    fx = d.fire("retry:0", 3_000)
    assert [k.body.run_id for _, k in fx.keyed] == ["run-1/0/2"]  # the retry asks again


# -- cancel in every state -----------------------------------------------------------------------------------
def test_cancel_stops_everything_pending(make: Make) -> None:
    d = make("pending_everything")
    d.start(now=1_000)
    d.signal("other", 1_500)  # buffered
    fx = d.cancel(2_000, "stop")
    assert kinds(fx) == ["RunCancelled"]
    assert [(c.position, c.cancel) for _, c in fx.commands] == [(0, True)]
    assert [k.body for _, k in fx.keyed] == [ev.Unsubscribe("paid", "o-1", "run-1", 1)]
    assert [e.body for e in fx.inbox] == [ev.CancelRun("parent run-1 ended", requested_by="parent:run-1")]
    assert d.state is not None and d.state.signals == [] and d.timers() == []
    assert {s.status for s in d.state.steps} == {st.STEP_CANCELLED}
    [outcome] = fx.outcomes
    assert (outcome.status, outcome.error_type, outcome.error_message) == (st.CANCELLED, "Cancelled", "stop")


def test_cancel_of_a_step_in_backoff_sends_no_cancel_command(make: Make) -> None:
    d = make("timed")
    d.start(now=1_000)
    d.fail(0, 2_000)
    fx = d.cancel(2_500)
    assert kinds(fx) == ["RunCancelled"] and fx.commands == []
    ignored(d.fire("retry:0", 3_000))


def test_cancel_of_a_run_parked_while_compensating_ends_it_cancelled(make: Make) -> None:
    d = _saga_failed(make)
    d.fail(5, 4_000, retryable=False)  # undo(3) fails: parked, undo(2) and undo(0) still to run
    assert d.status == st.PARKED
    fx = d.cancel(5_000, "give up")
    # the cancel goes on compensating what is left (the failed compensation counts as done) ...
    assert kinds(fx) == ["CompensationStarted", "StepScheduled"]
    assert bodies(fx, ev.CompensationStarted)[0].ending == st.CANCELLED
    d.complete(6, 6_000, value=0)
    fx = d.complete(7, 6_100, value=0)
    # ... and ends the run cancelled
    assert kinds(fx) == ["StepCompleted", "RunCancelled"] and [o.status for o in fx.outcomes] == [
        st.CANCELLED
    ]


def test_cancel_of_a_parked_run_ends_it(make: Make) -> None:
    d = make("gone")
    d.start(now=1_000)
    fx = d.cancel(2_000)
    assert kinds(fx) == ["RunCancelled"] and d.status == st.CANCELLED


@pytest.mark.parametrize("end", ["complete", "fail", "cancel"])
def test_cancel_of_an_ended_run_answers_with_its_outcome(make: Make, end: str) -> None:
    d = make("timed")
    d.start(now=1_000)
    if end == "complete":
        d.complete(0, 2_000, value=1)
    elif end == "fail":
        d.fail(0, 2_000, "TerminalError", retryable=False)
    else:
        d.cancel(2_000)
    status = d.status
    fx = d.cancel(3_000)
    ignored(fx)
    assert [o.status for o in fx.outcomes] == [status]


# -- step timeouts -------------------------------------------------------------------------------------------
def test_schedule_to_start_timeout_retries_the_step(make: Make) -> None:
    d = make("guarded_flow")
    fx = d.start(now=1_000)
    [(_, cmd)] = fx.commands
    assert (cmd.timeout_ms, cmd.schedule_to_start_ms, cmd.report_start) == (5_000, 2_000, True)
    assert d.timers() == [(3_000, "timeout:0:1")]
    fx = d.fire("timeout:0:1", 3_000)
    assert kinds(fx) == ["StepTimedOut", "RetryScheduled"]
    assert bodies(fx, ev.StepTimedOut) == [ev.StepTimedOut(0, 1, "schedule_to_start")]
    assert [(c.position, c.attempt, c.cancel) for _, c in fx.commands] == [(0, 1, True)]
    ignored(d.fire("timeout:0:1", 3_001))
    ignored(d.started(0, 3_002, attempt=1))


def test_start_report_moves_the_deadline_to_start_to_close(make: Make) -> None:
    d = make("guarded_flow")
    d.start(now=1_000)
    fx = d.started(0, 2_500)
    assert bodies(fx, ev.StepStarted) == [ev.StepStarted(0, 1, 2_500, "w-1")]
    assert d.timers() == [(7_500, "timeout:0:1")]
    fx = d.fire("timeout:0:1", 7_500)
    assert bodies(fx, ev.StepTimedOut) == [ev.StepTimedOut(0, 1, "start_to_close")]
    assert bodies(fx, ev.RetryScheduled) == [ev.RetryScheduled(0, 2, 8_500)]


def test_start_to_close_timeout_without_retries_fails_the_run(make: Make) -> None:
    d = make("closes_flow")
    d.start(now=1_000)
    assert d.timers() == [(6_000, "timeout:0:1")]  # no schedule-to-start limit: the whole attempt counts
    fx = d.fire("timeout:0:1", 6_000)
    assert kinds(fx) == ["StepTimedOut", "RunFailed"]
    assert d.state is not None and "start-to-close timeout of 5000 ms" in d.state.error_message
    ignored(d.complete(0, 6_500, value=1))


def test_a_result_before_the_timeout_disarms_it(make: Make) -> None:
    d = make("closes_flow")
    d.start(now=1_000)
    d.complete(0, 2_000, value=1)
    assert d.timers() == [] and d.decoded_result() == 1


# -- run timeouts --------------------------------------------------------------------------------------------
def test_run_timeout_fails_the_run_and_stops_its_steps(make: Make) -> None:
    d = make("timed")
    fx = d.start(now=1_000)
    assert bodies(fx, ev.RunStarted)[0].deadline_ms == 31_000
    assert (31_000, "run") in d.timers()
    ignored(d.fire("run", 30_999))
    fx = d.fire("run", 31_000)
    assert kinds(fx) == ["RunFailed"]
    assert bodies(fx, ev.RunFailed) == [ev.RunFailed("RunTimeout", "run exceeded its timeout of 30000 ms")]
    assert [(c.position, c.cancel) for _, c in fx.commands] == [(0, True)]
    assert d.timers() == []


def test_run_timeout_compensates_completed_steps(make: Make) -> None:
    d = make("timed_saga")
    d.start(now=1_000)
    d.complete(0, 2_000, value=0)
    fx = d.fire("run", 31_000)
    assert kinds(fx) == ["CompensationStarted", "StepScheduled"]
    assert bodies(fx, ev.CompensationStarted)[0].error_type == "RunTimeout"


def _timed_out_while_compensating(make: Make) -> Driver:
    d = make("timed_saga")
    d.start(now=1_000)
    d.complete(0, 2_000, value=0)
    d.complete(1, 3_000, value=1)
    d.fail(2, 4_000, "TerminalError", retryable=False)  # compensating: undo(1) runs, undo(0) is next
    assert d.status == st.COMPENSATING and [c.position for c in d.commands()][-1] == 3
    d.fire("run", 31_000)  # the run's deadline passes while undo(1) runs
    return d


def test_run_timeout_while_compensating_does_not_fire_again(make: Make) -> None:
    d = _timed_out_while_compensating(make)
    assert all(tag != "run" for _, tag in d.timers())


def test_run_timeout_while_compensating_skips_no_compensation(make: Make) -> None:
    d = _timed_out_while_compensating(make)
    for _, tag in d.timers():  # whatever the machine still has armed comes due in the next loop
        d.fire(tag, 31_000)
    now = 32_000
    while d.status == st.COMPENSATING:  # every compensation asked for completes
        pending = [s for s in d.state.steps if s.status == st.STEP_SCHEDULED]  # type: ignore[union-attr]
        assert pending, "compensating with nothing scheduled"
        d.complete(pending[0].position, now, value=0)
        now += 100
    undone = [
        s.undoes
        for s in d.state.records(st.StepRecord)  # type: ignore[union-attr]
        if s.kind == st.KIND_COMPENSATION and s.status == st.STEP_COMPLETED
    ]
    assert sorted(undone) == [0, 1]
    assert d.status == st.FAILED


# -- ctx.patched ---------------------------------------------------------------------------------------------
def test_patched_is_true_for_a_new_run_and_recorded(make: Make) -> None:
    d = make("flow", application=new_app)
    d.start(now=1_000)
    fx = d.complete(0, 2_000, value=1)
    assert kinds(fx) == ["StepCompleted", "MarkerRecorded", "StepScheduled"]
    assert bodies(fx, ev.MarkerRecorded) == [ev.MarkerRecorded(1, "b-instead")]
    assert [c.step for _, c in fx.commands] == ["b"]
    d.restart()  # re-executed from its record, the marker takes the new path again
    d.complete(2, 3_000, value=2)
    assert d.decoded_result() == [1, 2]


def test_patched_is_false_for_a_run_that_passed_the_point_on_old_code(make: Make) -> None:
    d = make("flow", application=old_app)
    d.start(now=1_000)
    d.complete(0, 2_000, value=1)  # step a(2) issued at position 1 by the old code
    d.restart(new_app)
    fx = d.complete(1, 3_000, value=2)
    assert kinds(fx) == ["StepCompleted", "RunCompleted"]  # no marker, no divergence
    assert d.decoded_result() == [1, 2]


def test_patched_for_a_run_that_reaches_it_after_the_deploy(make: Make) -> None:
    d = make("flow", application=old_app)
    d.start(now=1_000)  # step a(1) pending on the old code
    d.restart(new_app)
    fx = d.complete(0, 2_000, value=1)
    assert kinds(fx) == ["StepCompleted", "MarkerRecorded", "StepScheduled"]


# -- resumes -------------------------------------------------------------------------------------------------
def test_resume_of_a_failed_run_retries_its_failed_step(make: Make) -> None:
    d = make("timed")
    d.start(now=1_000)
    d.fail(0, 2_000, "TerminalError", retryable=False)
    fx = d.resume(3_000)
    assert bodies(fx, ev.RunResumed) == [ev.RunResumed("fixed", 0, 33_000)]  # a fresh deadline
    assert [(c.position, c.attempt) for _, c in fx.commands] == [(0, 2)]
    d.complete(0, 4_000, value=7)
    assert d.decoded_result() == 7


def test_resume_from_a_position_forgets_what_followed(make: Make) -> None:
    d = make("chain2")
    d.start(now=1_000)
    d.complete(0, 2_000, value=1)
    d.fail(1, 3_000, "TerminalError", retryable=False)
    assert d.status == st.FAILED
    fx = d.resume(4_000, from_position=0)  # re-run from the first step: the failed second one is forgotten
    assert bodies(fx, ev.RunResumed) == [ev.RunResumed("fixed", 0, 0)]  # no timeout: no deadline
    assert d.state is not None and len(d.state.steps) == 1 and d.state.resolutions == []
    assert [(c.position, c.step, c.attempt) for _, c in fx.commands] == [(0, "act", 2)]
    d.complete(0, 5_000, value=5)
    d.complete(1, 6_000, value=6)
    assert d.decoded_result() == [5, 6]


def test_resume_after_compensations_does_not_build_on_undone_steps(make: Make) -> None:
    d = _saga_failed(make)
    for position in (5, 6, 7):  # undo(3), undo(2), undo(0) all ran
        d.complete(position, 4_000 + position, value=0)
    assert d.status == st.FAILED
    fx = d.resume(5_000, from_position=4)  # re-run the failed step
    redone = {c.position for _, c in fx.commands}
    assert fx.dead_letter or {0, 2, 3} <= redone  # refuse, or do again what was undone


@pytest.mark.parametrize("position", [-1, 1, 2, 3, 4])
def test_a_rerun_after_the_first_undone_step_is_refused_with_where_to_rerun_from(
    make: Make, position: int
) -> None:
    d = _saga_failed(make)
    for undo_at in (5, 6, 7):
        d.complete(undo_at, 4_000 + undo_at, value=0)
    fx = d.resume(5_000, from_position=position)
    refused(fx)
    assert "0, 2, 3" in fx.dead_letter and "from position 0 or earlier" in fx.dead_letter
    assert d.status == st.FAILED


def test_a_rerun_from_the_first_undone_step_does_the_undone_work_again(make: Make) -> None:
    d = _saga_failed(make)
    for undo_at in (5, 6, 7):
        d.complete(undo_at, 4_000 + undo_at, value=0)
    fx = d.resume(5_000, from_position=0)
    assert bodies(fx, ev.RunResumed) == [ev.RunResumed("fixed", 0, 0)]  # saga has no timeout: none
    assert d.state is not None and len(d.state.steps) == 1  # the compensation records went with the rest
    assert [(c.position, c.step, c.attempt) for _, c in fx.commands] == [(0, "act", 2)]
    now = 6_000
    for position in range(4):  # each undone (or not) step runs again, and is compensable again
        cmds = d.complete(position, now, value=position).commands
        now += 100
        assert [c.position for _, c in cmds] == [position + 1]
    fx = d.fail(4, now, "TerminalError", retryable=False)
    assert [c.step for _, c in fx.commands] == ["undo"] and d.status == st.COMPENSATING


def test_a_rerun_behind_a_cancelled_command_is_refused(make: Make) -> None:
    d = make("pair")
    d.start(now=1_000)
    d.fail(1, 2_000, "TerminalError", retryable=False)  # step 0 is cancelled when the run fails
    assert d.status == st.FAILED and d.state is not None
    assert d.state.steps[0].status == st.STEP_CANCELLED
    fx = d.resume(3_000, from_position=1)
    refused(fx)
    assert "from position 0 or earlier" in fx.dead_letter
    fx = d.resume(3_000)  # the default is the earliest stopped step
    assert bodies(fx, ev.RunResumed)[0].from_position == 0
    assert [(c.position, c.attempt) for _, c in fx.commands] == [(0, 2)]
    d.complete(0, 4_000, value=1)
    d.complete(1, 4_100, value=2)  # re-issued by the re-executed workflow
    assert d.decoded_result() == [1, 2]


@pytest.mark.parametrize("position", [-1, 9])
def test_resume_that_names_no_step_is_refused(make: Make, position: int) -> None:
    d = make("buggy")
    d.start(now=1_000)
    d.complete(0, 2_000, value=1)  # the workflow raises: it failed with no failed or cancelled step
    assert d.status == st.FAILED
    refused(d.resume(3_000, from_position=position))


def test_resume_of_a_running_run_is_ignored(make: Make) -> None:
    d = make("timed")
    d.start(now=1_000)
    ignored(d.resume(2_000))


def test_a_resumed_timed_out_run_gets_to_run(make: Make) -> None:
    d = make("timed")
    d.start(now=1_000)
    d.fire("run", 31_000)
    d.resume(40_000, from_position=0)
    assert all(due > 40_000 for due, _ in d.timers())


@pytest.mark.parametrize("position", [-1, 0])
def test_a_resumed_timed_out_run_gets_a_fresh_deadline_and_finishes(make: Make, position: int) -> None:
    d = make("timed")
    d.start(now=1_000)
    d.fire("run", 31_000)  # step 0 was running: cancelled, no step failed
    fx = d.resume(40_000, from_position=position)
    assert bodies(fx, ev.RunResumed) == [ev.RunResumed("fixed", 0, 70_000)]  # now + the 30 s timeout
    assert [(c.position, c.attempt) for _, c in fx.commands] == [(0, 2)]
    assert d.timers() == [(70_000, "run")]
    ignored(d.fire("run", 31_000))  # the old deadline, should it still be in an index, moved
    d.complete(0, 41_000, value=3)
    assert d.decoded_result() == 3


def test_a_resumed_run_that_times_out_again_says_its_timeout(make: Make) -> None:
    d = make("timed")
    d.start(now=1_000)
    d.fire("run", 31_000)
    d.resume(40_000)
    fx = d.fire("run", 70_000)
    assert bodies(fx, ev.RunFailed) == [ev.RunFailed("RunTimeout", "run exceeded its timeout of 30000 ms")]


def test_a_parked_run_resumed_after_its_deadline_gets_a_fresh_one(make: Make) -> None:
    d = make("timed")
    d.start(now=1_000)
    d.restart(no_workflows)
    d.complete(0, 2_000, value=1)  # parks: the workflow is gone
    d.restart(app)
    fx = d.resume(50_000)  # parked past its deadline (31 000)
    assert bodies(fx, ev.RunResumed) == [ev.RunResumed("fixed", -1, 80_000)]
    assert d.decoded_result() == 1


def test_a_run_resumed_into_compensation_keeps_its_deadline(make: Make) -> None:
    d = make("timed_saga")
    d.start(now=1_000)
    d.complete(0, 2_000, value=0)
    d.fail(1, 3_000, "TerminalError", retryable=False)  # compensating
    d.fail(2, 4_000, retryable=False)  # undo(0) fails: parked while compensating
    assert d.status == st.PARKED
    fx = d.resume(50_000)
    assert bodies(fx, ev.RunResumed) == [ev.RunResumed("fixed", -1, -1)]
    assert d.state is not None and d.state.deadline_ms == 31_000 and d.status == st.COMPENSATING


no_workflows = App("branches")  # a deployment with the steps but without the workflows
no_workflows.steps.update(app.steps)


# -- parked runs ---------------------------------------------------------------------------------------------
def test_results_while_parked_are_kept_and_delivered_on_resume(make: Make) -> None:
    d = make("chain2")
    d.start(now=1_000)
    d.restart(no_workflows)  # the workflow is gone
    fx = d.complete(0, 2_000, value=1)
    assert kinds(fx) == ["StepCompleted", "RunParked"] and d.status == st.PARKED
    fx = d.start(now=2_100)  # a parked run answers a duplicate start with its outcome
    ignored(fx)
    assert [o.status for o in fx.outcomes] == [st.PARKED]
    d.restart(app)
    fx = d.resume(3_000)
    assert kinds(fx) == ["RunResumed", "StepScheduled"]  # the kept result goes in, the next step comes out
    assert [(c.position, decoded(d, c.args)) for _, c in fx.commands] == [(1, [2])]
    d.complete(1, 4_000, value=2)
    assert d.decoded_result() == [1, 2]


def test_a_parked_run_arms_no_timers_until_resumed(make: Make) -> None:
    d = make("pair")
    d.start(now=1_000)
    d.restart(no_workflows)
    d.complete(0, 2_000, value=1)  # parks (workflow gone) with step 1 still out
    fx = d.fail(1, 3_000)  # a retryable failure while parked: backs off...
    assert kinds(fx) == ["StepFailed", "RetryScheduled"] and d.status == st.PARKED
    assert d.timers() == []  # ...but nothing fires for a parked run
    d.restart(app)
    d.resume(10_000)
    assert d.timers() == [(4_000, "retry:1")]  # overdue: fires on the next loop
    fx = d.fire("retry:1", 10_000)
    assert [(c.position, c.attempt) for _, c in fx.commands] == [(1, 2)]
    d.complete(1, 11_000, value=2)
    assert d.decoded_result() == [1, 2]
