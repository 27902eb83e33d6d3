"""``orchestrator.testing``: the broker-free test environment and the history replayer.

The environment drives the engine's own decider and keyed stage, so these tests check that what users
get in a test is what a processor would do: step retries by policy, durable timers on a virtual clock,
signals, domain events, admission, children, sagas, cancel and resume, and results or errors as the
client gives them. The replayer is checked against histories the environment recorded, in memory and
through both export formats.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

import orchestrator.testing
from examples.test_approvals import (  # the README's example tests run with the unit suite
    test_large_purchase_is_approved_then_followed_up_after_three_days,
    test_purchase_without_approval_is_refused_and_budget_released,
    test_small_purchase_skips_approval,
)
from examples.test_orders import (
    test_flaky_warehouse_is_retried_by_policy,
    test_order_ships_with_a_mocked_payment,
    test_order_without_amount_fails_without_charging,
)
from orchestrator import (
    Admission,
    App,
    NonDeterminismError,
    RetryPolicy,
    RunFailedError,
    RunTimeoutError,
    StepFailedError,
    TerminalError,
    Trigger,
    WorkflowContext,
    step_info,
)
from orchestrator._engine import audit
from orchestrator._engine.fold import fold
from orchestrator.testing import HistoryFileError, Replayer, WorkflowEnvironment, read_events

T0 = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)
QUICK = RetryPolicy(max_attempts=3, initial_interval="1m", backoff=2.0, max_interval="1h", jitter=0)


# Imported test functions are collected as tests of this module: ``./dev test`` runs pytest on tests/ only,
# and the examples the README points to must not rot.
EXAMPLES = (
    test_order_ships_with_a_mocked_payment,
    test_flaky_warehouse_is_retried_by_policy,
    test_order_without_amount_fails_without_charging,
    test_large_purchase_is_approved_then_followed_up_after_three_days,
    test_purchase_without_approval_is_refused_and_budget_released,
    test_small_purchase_skips_approval,
)


def test_public_surface() -> None:
    assert sorted(orchestrator.testing.__all__) == [
        "HistoryFileError",
        "ReplayDivergence",
        "ReplayResult",
        "Replayer",
        "WorkflowEnvironment",
        "WorkflowHandle",
        "read_events",
    ]


# -- an app exercising most of the engine --------------------------------------------------------------------
@dataclass
class Calls:
    log: list[str]
    fail_first: int = 0


def shop(calls: Calls, *, reorder: bool = False, attempts: int = 3) -> App:
    app = App("kit")

    @app.step(retry=replace(QUICK, max_attempts=attempts))
    async def charge(amount: int) -> str:
        calls.log.append(f"charge:{step_info().attempt}")
        if calls.fail_first > 0:
            calls.fail_first -= 1
            raise ConnectionError("payment API down")
        if amount < 0:
            raise TerminalError("negative amount", error_type="BadAmount")
        return f"ch-{amount}"

    @app.step
    def refund(amount: int) -> None:
        calls.log.append("refund")

    @app.step
    def ship(amount: int) -> str:
        calls.log.append("ship")
        return "TRK1"

    @app.workflow
    async def order(ctx: WorkflowContext, amount: int) -> dict[str, Any]:
        if reorder:
            tracking = await ctx.step(ship, amount)
            charge_id = await ctx.step(charge, amount, compensate=refund)
        else:
            charge_id = await ctx.step(charge, amount, compensate=refund)
            tracking = await ctx.step(ship, amount)
        return {"charge": charge_id, "tracking": tracking, "at": ctx.now().isoformat()}

    @app.workflow
    async def subscription(ctx: WorkflowContext, months: int) -> list[str]:
        seen = []
        for _ in range(months):
            await ctx.sleep_until(ctx.now() + timedelta(days=30))
            seen.append(ctx.now().date().isoformat())
        return seen

    @app.workflow
    async def approval(ctx: WorkflowContext, order_id: str) -> str:
        got = await ctx.wait_for_event("approved", key=order_id, timeout="2d")
        if got.timed_out:
            return "expired"
        return f"approved by {got.payload['by']}"

    @app.workflow
    async def parent(ctx: WorkflowContext, amount: int) -> str:
        result = await ctx.child(order, amount, run_id=f"child-{amount}")
        return str(result["charge"])

    return app


@pytest.fixture
def calls() -> Calls:
    return Calls([])


async def test_steps_run_for_real_and_the_result_decodes(calls: Calls) -> None:
    async with WorkflowEnvironment(shop(calls), start_time=T0) as env:
        handle = await env.start("order", 12, run_id="o1")
        assert await handle.result() == {"charge": "ch-12", "tracking": "TRK1", "at": T0.isoformat()}
        assert calls.log == ["charge:1", "ship"]
        assert handle.status == "completed"
        kinds = [e.kind for e in env.history("o1")]
        assert kinds == [
            "RunStarted",
            "StepScheduled",
            "StepCompleted",
            "StepScheduled",
            "StepCompleted",
            "RunCompleted",
        ]
        description = await handle.describe()
        assert description is not None and [s.step for s in description.steps] == ["charge", "ship"]
        # The recorded history folds back to the state the environment holds, as replay would.
        state = fold(env.history("o1"))
        assert state is not None and state.status == "completed" and state.result is not None


async def test_thirty_day_sleeps_take_no_real_time(calls: Calls) -> None:
    async with WorkflowEnvironment(shop(calls), start_time=T0) as env:
        handle = await env.start("subscription", 3)
        assert await handle.result() == ["2026-03-31", "2026-04-30", "2026-05-30"]
        assert env.now() == T0 + timedelta(days=90)


async def test_sleep_moves_the_clock_and_fires_timers_on_the_way(calls: Calls) -> None:
    async with WorkflowEnvironment(shop(calls), start_time=T0) as env:
        handle = await env.start("subscription", 2, run_id="s")
        await env.sleep("29d")
        assert [e.kind for e in env.history("s")][-1] == "TimerStarted"
        await env.sleep("1d")
        assert [e.kind for e in env.history("s")].count("TimerFired") == 1
        assert env.now() == T0 + timedelta(days=30)
        await env.sleep_until(T0 + timedelta(days=61))
        assert handle.status == "completed"
        assert env.now() == T0 + timedelta(days=61)


async def test_retries_follow_the_step_policy_in_virtual_time(calls: Calls) -> None:
    calls.fail_first = 2
    async with WorkflowEnvironment(shop(calls), start_time=T0) as env:
        handle = await env.start("order", 5, run_id="o")
        assert (await handle.result())["charge"] == "ch-5"
        assert calls.log == ["charge:1", "charge:2", "charge:3", "ship"]
        # backoff 1m then 2m (no jitter): the run ended 3 virtual minutes after it started
        assert env.now() == T0 + timedelta(minutes=3)


async def test_exhausted_retries_fail_the_run_as_the_client_reports_it(calls: Calls) -> None:
    calls.fail_first = 99
    async with WorkflowEnvironment(shop(calls)) as env:
        handle = await env.start("order", 5)
        with pytest.raises(RunFailedError) as failed:
            await handle.result()
        assert failed.value.status == "failed"
        assert failed.value.error_type == "ConnectionError"  # the step's own error, as on a worker
        assert "payment API down" in failed.value.message
        assert calls.log == ["charge:1", "charge:2", "charge:3"]


async def test_a_terminal_error_is_not_retried(calls: Calls) -> None:
    async with WorkflowEnvironment(shop(calls)) as env:
        with pytest.raises(RunFailedError) as failed:
            await (await env.start("order", -1)).result()
        assert "BadAmount" in failed.value.message
        assert calls.log == ["charge:1"]


async def test_mocked_steps_keep_their_policy(calls: Calls) -> None:
    app = shop(calls)
    attempts: list[int] = []

    async def flaky_fake(amount: int) -> str:
        attempts.append(step_info().attempt)
        if len(attempts) == 1:
            raise ConnectionError("first call fails")
        return "fake-charge"

    async with WorkflowEnvironment(app) as env:
        env.mock_step("charge", flaky_fake)
        env.mock_step(app.steps["ship"].fn, lambda amount: "FAKE-TRK")  # a plain function works too
        result = await (await env.start("order", 3)).result()
        assert result["charge"] == "fake-charge" and result["tracking"] == "FAKE-TRK"
        assert attempts == [1, 2]
        assert calls.log == []  # the real functions never ran
        env.unmock_step("ship")
        assert (await (await env.start("order", 4)).result())["tracking"] == "TRK1"
    with pytest.raises(TypeError, match="callable"):
        WorkflowEnvironment(app).mock_step("charge", "not a function")  # type: ignore[arg-type]


async def test_signals_are_delivered_and_buffered(calls: Calls) -> None:
    async with WorkflowEnvironment(shop(calls)) as env:
        waiting = await env.start("approval", "A1", run_id="a1")
        await env.signal("a1", "approved", {"by": "ann"}, key="A1")
        assert await waiting.result() == "approved by ann"
        # A signal to a run that is not waiting yet is kept until it waits (here: sent before any await).
        early = await env.start("approval", "A2", run_id="a2")
        await early.signal("approved", {"by": "bob"}, key="A2")
        assert await early.result() == "approved by bob"
        with pytest.raises(ValueError, match="no run 'nope'"):
            await env.signal("nope", "approved")


async def test_a_wait_times_out_by_skipping_time(calls: Calls) -> None:
    async with WorkflowEnvironment(shop(calls), start_time=T0) as env:
        assert await (await env.start("approval", "A3")).result() == "expired"
        assert env.now() == T0 + timedelta(days=2)


async def test_a_run_that_can_never_end_says_what_it_waits_for() -> None:
    app = App("stuck")

    @app.workflow
    async def stuck(ctx: WorkflowContext) -> None:
        await ctx.wait_for_event("never", key="k")

    async with WorkflowEnvironment(app) as env:
        handle = await env.start(stuck)
        with pytest.raises(RunTimeoutError, match=r"can never end: it waits for event 'never' with key 'k'"):
            await handle.result()
        with pytest.raises(RunTimeoutError, match="within 60s of virtual time"):
            await handle.result(timeout=60)
    async with WorkflowEnvironment(shop(Calls([])), start_time=T0) as env:
        sleeper = await env.start("subscription", 1)
        with pytest.raises(RunTimeoutError, match=r"a timer due 2026-03-31T09:00:00\+00:00"):
            await sleeper.result(timeout=3600)
        assert env.now() == T0 + timedelta(hours=1)


async def test_a_concurrent_task_can_send_what_a_result_waits_for(calls: Calls) -> None:
    async with WorkflowEnvironment(shop(calls)) as env:
        handle = await env.start("approval", "C1")

        async def approve() -> None:
            await env.signal(handle.run_id, "approved", {"by": "cy"}, key="C1")

        result, _ = await asyncio.gather(handle.result(), approve())
        assert result == "approved by cy"


async def test_cancel_runs_compensations(calls: Calls) -> None:
    app = App("cancel")

    @app.step
    def book(x: int) -> int:
        calls.log.append("book")
        return x

    @app.step
    def unbook(x: int) -> None:
        calls.log.append("unbook")

    @app.workflow
    async def trip(ctx: WorkflowContext, x: int) -> None:
        await ctx.step(book, x, compensate=unbook)
        await ctx.sleep("7d")

    async with WorkflowEnvironment(app) as env:
        handle = await env.start(trip, 1)
        await handle.cancel("changed plans")
        with pytest.raises(RunFailedError) as failed:
            await handle.result()
        assert (failed.value.status, failed.value.message) == ("cancelled", "changed plans")
        assert calls.log == ["book", "unbook"]


async def test_children_run_and_report_to_their_parent(calls: Calls) -> None:
    async with WorkflowEnvironment(shop(calls)) as env:
        assert await (await env.start("parent", 8)).result() == "ch-8"
        assert env.status("child-8") == "completed"
        assert "ChildStarted" in [e.kind for e in env.history("parent-1")]


async def test_a_parked_run_resumes_after_the_fix() -> None:
    app = App("park")
    broken = {"undo": True}

    @app.step
    def do(x: int) -> int:
        return x

    @app.step(retry=RetryPolicy(max_attempts=1))
    def undo(x: int) -> None:
        if broken["undo"]:
            raise RuntimeError("undo API down")

    @app.step(retry=RetryPolicy(max_attempts=1))
    def explode(x: int) -> None:
        raise TerminalError("boom")

    @app.workflow
    async def saga(ctx: WorkflowContext, x: int) -> None:
        await ctx.step(do, x, compensate=undo)
        await ctx.step(explode, x)

    async with WorkflowEnvironment(app) as env:
        handle = await env.start(saga, 1)
        with pytest.raises(RunFailedError) as parked:
            await handle.result()
        assert (parked.value.status, parked.value.error_type) == ("parked", "compensation_failed")
        broken["undo"] = False
        await env.resume(handle.run_id)
        with pytest.raises(RunFailedError) as failed:
            await handle.result()
        assert failed.value.status == "failed" and "boom" in failed.value.message


async def test_a_failed_run_reruns_from_its_failed_step(calls: Calls) -> None:
    calls.fail_first = 3
    async with WorkflowEnvironment(shop(calls)) as env:
        handle = await env.start("order", 2)
        with pytest.raises(RunFailedError):
            await handle.result()
        await env.rerun(handle.run_id)
        assert (await handle.result())["charge"] == "ch-2"
        assert calls.log.count("refund") == 0


# -- topics, admission, schedules ----------------------------------------------------------------------------
def evented_app(log: list[str]) -> App:
    app = App("evented")
    app.event_source("payment", topic="payments", key="order_id")

    @app.workflow(trigger=Trigger("orders", run_id="id"))
    async def on_order(ctx: WorkflowContext, order: dict[str, Any]) -> int:
        paid = await ctx.wait_for_event("payment", key=order["id"], timeout="1h", lookback="10m")
        return -1 if paid.timed_out else int(paid.payload["cents"])

    @app.step
    def work(user: str) -> None:
        log.append(f"start {user}")

    @app.workflow(admission=Admission(key="user", concurrency=1))
    async def limited(ctx: WorkflowContext, job: dict[str, str]) -> None:
        await ctx.step(work, job["user"])
        await ctx.sleep("1h")

    @app.workflow(schedule="0 9 * * *")
    async def daily(ctx: WorkflowContext, tick: str) -> str:
        log.append(f"daily {tick}")
        return tick

    return app


async def test_emitted_records_go_through_triggers_and_event_sources() -> None:
    async with WorkflowEnvironment(evented_app([]), start_time=T0) as env:
        await env.emit("orders", {"id": "o-7", "items": 2})
        assert env.status("o-7") == "running"
        await env.emit("payments", {"order_id": "o-7", "cents": 1200}, key="o-7")
        assert await env.get_handle("o-7").result() == 1200
        # A payment that came first is still seen by a wait with a look-back.
        await env.emit("payments", {"order_id": "o-8", "cents": 800})
        await env.sleep("5m")
        await env.emit("orders", {"id": "o-8"})
        assert await env.get_handle("o-8").result() == 800
        with pytest.raises(ValueError, match="no trigger or event source"):
            await env.emit("unknown-topic", {})


async def test_admission_holds_a_start_until_a_slot_frees() -> None:
    log: list[str] = []
    async with WorkflowEnvironment(evented_app(log), start_time=T0) as env:
        first = await env.start("limited", {"user": "u1"}, run_id="j1")
        second = await env.start("limited", {"user": "u1"}, run_id="j2")
        assert (env.status("j1"), env.status("j2")) == ("running", None)
        await first.result()
        assert await second.result() is None
        assert log == ["start u1", "start u1"]
        assert env.now() == T0 + timedelta(hours=2)  # one after the other


async def test_an_idempotency_key_gives_the_first_run(calls: Calls) -> None:
    async with WorkflowEnvironment(shop(calls)) as env:
        first = await env.start("order", 1, run_id="i1", idempotency_key="cart-1")
        again = await env.start("order", 1, run_id="i2", idempotency_key="cart-1")
        assert again.run_id == "i1" and env.status("i2") is None
        assert await first.result() == await again.result()


async def test_schedules_tick_when_the_clock_moves() -> None:
    log: list[str] = []
    async with WorkflowEnvironment(evented_app(log), start_time=T0) as env:
        await env.sleep("2d")
        assert log == ["daily 2026-03-02T09:00:00+00:00", "daily 2026-03-03T09:00:00+00:00"]
        assert env.status("daily@2026-03-02T09:00:00+00:00") == "completed"


# -- the replayer --------------------------------------------------------------------------------------------
async def _recorded(calls: Calls, *amounts: int) -> dict[str, list[Any]]:
    async with WorkflowEnvironment(shop(calls)) as env:
        for amount in amounts:
            handle = await env.start("order", amount, run_id=f"r{amount}")
            with contextlib.suppress(RunFailedError):
                await handle.result()
        return {run_id: env.history(run_id) for run_id in env.run_ids()}


async def test_replay_of_unchanged_code_agrees(calls: Calls) -> None:
    calls.fail_first = 1  # one run with a retry in its history
    histories = await _recorded(calls, 1, 2, -3)
    result = Replayer(shop(Calls([]))).replay(histories)
    assert result.ok and result.runs == 3, result.report()
    result.raise_for_divergence()


async def test_replay_reports_reordered_steps(calls: Calls) -> None:
    histories = await _recorded(calls, 1, 2)
    result = Replayer(shop(Calls([]), reorder=True)).replay(histories)
    assert not result.ok and len(result.divergences) == 2
    first = result.divergences[0]
    assert (first.run_id, first.workflow, first.seq, first.position) == ("r1", "order", 1, 0)
    assert "'charge'" in first.history and "'ship'" in first.code
    with pytest.raises(NonDeterminismError, match="run 'r1'"):
        result.raise_for_divergence()


async def test_replay_reports_a_step_removed_or_added_at_the_end(calls: Calls) -> None:
    histories = await _recorded(calls, 1)

    def variant(extra: bool) -> App:
        app = shop(Calls([]))
        charge, ship = app.steps["charge"].fn, app.steps["ship"].fn

        async def order(ctx: WorkflowContext, amount: int) -> str:
            charge_id = await ctx.step(charge, amount)
            if extra:
                await ctx.step(ship, amount)
                await ctx.step(ship, amount)
            return str(charge_id)

        app.workflows["order"] = replace(app.workflows["order"], fn=order)
        return app

    shorter = Replayer(variant(extra=False)).replay(histories).divergences
    assert len(shorter) == 1 and "'ship'" in shorter[0].history and "completing" in shorter[0].code
    longer = Replayer(variant(extra=True)).replay(histories).divergences
    assert len(longer) == 1 and longer[0].position == 2 and "'ship'" in longer[0].code


async def test_replay_accepts_a_change_behind_a_version_marker(calls: Calls) -> None:
    histories = await _recorded(calls, 1)
    app = shop(Calls([]))
    charge, ship, refund = (app.steps[n].fn for n in ("charge", "ship", "refund"))

    async def order(ctx: WorkflowContext, amount: int) -> dict[str, Any]:
        if ctx.patched("ship-first"):
            tracking = await ctx.step(ship, amount)
            charge_id = await ctx.step(charge, amount, compensate=refund)
        else:
            charge_id = await ctx.step(charge, amount, compensate=refund)
            tracking = await ctx.step(ship, amount)
        return {"charge": charge_id, "tracking": tracking, "at": ctx.now().isoformat()}

    app.workflows["order"] = replace(app.workflows["order"], fn=order)
    assert Replayer(app).replay(histories).ok


async def test_replay_of_signals_timers_and_children(calls: Calls) -> None:
    async with WorkflowEnvironment(shop(calls)) as env:
        await env.start("approval", "A", run_id="sig")
        await env.signal("sig", "approved", {"by": "x"}, key="A")
        await env.start("approval", "B", run_id="late")
        await env.start("subscription", 2, run_id="sub")
        await env.start("parent", 4, run_id="par")
        await env.sleep("90d")
        histories = {r: env.history(r) for r in env.run_ids()}
    assert {r: h[-1].kind for r, h in histories.items()} == dict.fromkeys(histories, "RunCompleted")
    assert Replayer(shop(Calls([]))).replay(histories).ok


async def test_replay_goes_past_a_park_that_the_new_code_does_not_repeat() -> None:
    app = App("deploys")

    @app.step
    def a() -> int:
        return 1

    @app.step
    def b() -> int:
        return 2

    @app.workflow
    async def flow(ctx: WorkflowContext) -> int:
        await ctx.step(a)
        await ctx.sleep("1d")
        return int(await ctx.step(b))

    async def bad_deploy(ctx: WorkflowContext) -> int:
        await ctx.step(b)
        await ctx.sleep("1d")
        return 0

    good = app.workflows["flow"]
    async with WorkflowEnvironment(app) as env:
        handle = await env.start(flow, run_id="d1")
        app.workflows["flow"] = replace(good, fn=bad_deploy)  # deployed under the sleeping run
        with pytest.raises(RunFailedError, match="non_determinism"):
            await handle.result()
        app.workflows["flow"] = good  # rolled back, then resumed
        await env.resume("d1")
        assert await handle.result() == 2
        history = env.history("d1")
    assert [e.kind for e in history].count("RunParked") == 1
    assert Replayer(app).replay(history).ok
    app.workflows["flow"] = replace(good, fn=bad_deploy)
    parked = Replayer(app).replay(history).divergences
    assert len(parked) == 1 and "position 0" in parked[0].code and "'b'" in parked[0].code


async def test_exports_read_back_and_replay(calls: Calls, tmp_path: Path) -> None:
    calls.fail_first = 1
    histories = await _recorded(calls, 1, -2)
    events = [e for run in histories.values() for e in run]
    for fmt, export in (("jsonl", audit.export_jsonl), ("avro", audit.export_avro)):
        buf = io.BytesIO()
        export(iter(events), buf)
        path = tmp_path / f"runs.{fmt}"
        path.write_bytes(buf.getvalue())
        assert read_events(path) == events, fmt
        assert Replayer(shop(Calls([]))).replay_file(path).ok
        only = Replayer(shop(Calls([]), reorder=True)).replay_file(path, run_ids=["r1"])
        assert only.runs == 1 and not only.ok
    partial = Replayer(shop(Calls([]))).replay(events[2:])
    assert partial.runs == 1  # r-2 is whole, r1 lost its start
    assert partial.skipped == (("r1", f"its history begins with {events[2].kind}, not RunStarted"),)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"not": "an event"}\n')
    with pytest.raises(HistoryFileError, match="line 1"):
        read_events(bad)


async def test_replay_reports_an_unknown_workflow(calls: Calls) -> None:
    histories = await _recorded(calls, 1)
    other = App("other")

    @other.workflow
    async def unrelated(ctx: WorkflowContext) -> None:
        return None

    divergences = Replayer(other).replay(histories).divergences
    assert len(divergences) == 1 and "no workflow named 'order'" in divergences[0].code


def test_step_failures_inside_workflows_are_step_failed_errors() -> None:
    # What a workflow catches when a mocked step fails for good: the same error a worker's failure gives.
    app = App("catch")

    @app.step(retry=RetryPolicy(max_attempts=1))
    def risky() -> None:
        raise TerminalError("no")

    @app.workflow
    async def careful(ctx: WorkflowContext) -> str:
        try:
            await ctx.step(risky)
        except StepFailedError as exc:
            return f"caught {exc.error_type}"
        return "not reached"

    async def go() -> Any:
        async with WorkflowEnvironment(app) as env:
            return await (await env.start(careful)).result()

    assert asyncio.run(go()) == "caught TerminalError"


def marker_app(change: str) -> App:
    """a, then a wait; ``change``: "" as recorded, "marked" (b before the wait, behind a marker),
    "bad-old-branch" (marked, but the old branch no longer waits)."""
    app = App("markers")

    @app.step
    def a() -> str:
        return "a"

    @app.step
    def b() -> str:
        return "b"

    @app.workflow
    async def flow(ctx: WorkflowContext) -> str:
        await ctx.step(a)
        if change and ctx.patched("b-first"):
            await ctx.step(b)
        elif change == "bad-old-branch":
            await ctx.sleep("1h")
        got = await ctx.wait_for_event("go")
        return str(got.payload)

    return app


async def test_replay_takes_the_recorded_path_of_a_marker_after_the_start() -> None:
    async with WorkflowEnvironment(marker_app("")) as env:
        await env.start("flow", run_id="done")
        await env.signal("done", "go", "x")
        await env.start("flow", run_id="open")  # still waiting when "exported"
        histories = {r: env.history(r) for r in env.run_ids()}
    assert histories["open"][-1].kind == "WaitStarted"
    assert Replayer(marker_app("marked")).replay(histories).ok
    bad = Replayer(marker_app("bad-old-branch")).replay(histories)
    assert sorted(d.run_id for d in bad.divergences) == ["done", "open"], bad.report()
    assert all("non_determinism" in d.code and "position 1" in d.code for d in bad.divergences)


async def test_step_admission_lets_one_attempt_through_at_a_time() -> None:
    app = App("step-limits")
    running: list[str] = []

    @app.step(admission=Admission(key="region", concurrency=1))
    def call_region(job: dict[str, str]) -> str:
        running.append(job["id"])
        return job["id"]

    @app.workflow
    async def fan(ctx: WorkflowContext) -> list[str]:
        jobs = [{"id": str(i), "region": "eu"} for i in range(3)]
        return list(await asyncio.gather(*(ctx.step(call_region, job) for job in jobs)))

    async with WorkflowEnvironment(app) as env:
        assert await (await env.start(fan)).result() == ["0", "1", "2"]
        assert running == ["0", "1", "2"]


async def test_replay_is_not_fooled_by_a_retry_policy_change(calls: Calls) -> None:
    calls.fail_first = 1  # recorded: a retry, then success
    retried = await _recorded(calls, 1)
    assert Replayer(shop(Calls([]), attempts=1)).replay(retried).ok  # fewer attempts now
    async with WorkflowEnvironment(shop(Calls([], fail_first=1), attempts=1)) as env:
        with contextlib.suppress(RunFailedError):
            await (await env.start("order", 1, run_id="g")).result()
        recorded_without_retry = env.history("g")
    assert recorded_without_retry[-1].kind == "RunFailed"
    assert Replayer(shop(Calls([]), attempts=3)).replay(recorded_without_retry).ok  # more attempts now


async def test_replay_of_a_parked_run_says_whether_resuming_it_would_work() -> None:
    app = App("parked")

    @app.step
    def a() -> int:
        return 1

    async def with_asyncio_sleep(ctx: WorkflowContext) -> int:
        await ctx.step(a)
        await asyncio.sleep(60)  # not durable: the engine parks the run (workflow_error)
        return 1

    async def fixed(ctx: WorkflowContext) -> int:
        await ctx.step(a)
        await ctx.sleep(60)
        return 1

    app.workflow(name="flow")(with_asyncio_sleep)
    async with WorkflowEnvironment(app) as env:
        with pytest.raises(RunFailedError, match="workflow_error"):
            await (await env.start("flow", run_id="p1")).result()
        history = env.history("p1")  # exported while parked
    still_bad = Replayer(app).replay(history)
    assert len(still_bad.divergences) == 1, still_bad.report()
    assert "parked run" in still_bad.divergences[0].history and "asyncio" in still_bad.divergences[0].code
    app.workflows["flow"] = replace(app.workflows["flow"], fn=fixed)
    assert Replayer(app).replay(history).ok  # the fix: resuming the run re-executes it cleanly


async def test_a_step_can_call_the_environment_back(calls: Calls) -> None:
    app = shop(calls)
    async with WorkflowEnvironment(app) as env:
        waiting = await env.start("approval", "S1", run_id="waiting")

        async def approving_charge(amount: int) -> str:  # a fake service that answers another run
            await env.signal("waiting", "approved", {"by": "fake"}, key="S1")
            return "ch"

        async def impatient_charge(amount: int) -> str:
            return str(await waiting.result())  # would wait for itself

        env.mock_step("charge", approving_charge)
        await (await env.start("order", 1)).result()
        assert await waiting.result() == "approved by fake"
        env.mock_step("charge", impatient_charge)
        with pytest.raises(RunFailedError, match="cannot be awaited inside a step"):
            await (await env.start("order", 2)).result()


async def test_an_endless_run_is_called_endless(monkeypatch: pytest.MonkeyPatch) -> None:
    from orchestrator.testing import _environment

    monkeypatch.setattr(_environment, "MAX_SKIPS", 20)
    app = App("endless")

    @app.step
    def tick() -> None:
        return None

    @app.workflow
    async def forever(ctx: WorkflowContext) -> None:
        while True:
            await ctx.step(tick)
            await ctx.sleep("1h")

    async with WorkflowEnvironment(app) as env:
        with pytest.raises(RunTimeoutError, match="after 20 skips"):
            await (await env.start(forever)).result()


async def test_timeouts_in_the_environment_and_in_replay() -> None:
    app = App("timeouts")

    @app.step(timeout="50ms", retry=RetryPolicy(max_attempts=2, initial_interval="1s"))
    async def slow_once() -> str:
        if step_info().attempt == 1:
            await asyncio.sleep(30)  # interrupted by the step's (real) timeout
        return "done"

    @app.workflow(timeout="1h")
    async def bounded(ctx: WorkflowContext) -> str:
        result = str(await ctx.step(slow_once))
        await ctx.wait_for_event("never")
        return result

    async with WorkflowEnvironment(app) as env:
        handle = await env.start(bounded, run_id="t")
        with pytest.raises(RunFailedError) as failed:
            await handle.result()
        assert failed.value.error_type == "RunTimeout"
        kinds = [e.kind for e in env.history("t")]
        assert kinds.count("StepStarted") == 2 and "RetryScheduled" in kinds
        description = env.describe("t")
        assert description is not None and description.steps[0].attempt_errors[0].startswith("#1 StepTimeout")
        history = env.history("t")
    assert Replayer(app).replay(history).ok


async def test_replay_of_runs_started_by_topics_admission_and_schedules() -> None:
    log: list[str] = []
    async with WorkflowEnvironment(evented_app(log), start_time=T0) as env:
        await env.emit("orders", {"id": "o-1"})
        await env.emit("payments", {"order_id": "o-1", "cents": 5})
        await env.emit("orders", {"id": "o-2"})  # times out
        await env.start("limited", {"user": "u"}, run_id="j1")
        await env.start("limited", {"user": "u"}, run_id="j2")
        await env.sleep("1d")
        histories = {r: env.history(r) for r in env.run_ids()}
    assert len(histories) == 5 and all(h[-1].kind == "RunCompleted" for h in histories.values())
    result = Replayer(evented_app([])).replay(histories)
    assert result.ok and result.runs == 5, result.report()


async def test_rate_limits_and_debounce_go_through_the_keyed_stage() -> None:
    app = App("rates")
    inputs: list[int] = []

    @app.step
    def record(n: int) -> None:
        inputs.append(n)

    @app.workflow(admission=Admission(rate=1, per="1h", rate_mode="drop"))
    async def once_an_hour(ctx: WorkflowContext, n: int) -> int:
        return n

    @app.workflow(admission=Admission(debounce="5m"))
    async def settle(ctx: WorkflowContext, n: int) -> None:
        await ctx.step(record, n)

    async with WorkflowEnvironment(app, start_time=T0) as env:
        assert await (await env.start(once_an_hour, 1)).result() == 1
        with pytest.raises(RunFailedError) as refused:
            await (await env.start(once_an_hour, 2)).result()
        assert (refused.value.status, refused.value.error_type) == ("rejected", "RateLimited")
        await env.sleep("1h")
        assert await (await env.start(once_an_hour, 3)).result() == 3
        # A burst of starts within the debounce period starts one run, with the last input.
        for n in (1, 2, 3):
            await env.start(settle, n, run_id=f"burst-{n}")
        await env.sleep("10m")
        assert inputs == [3]


def _tagging(calls: Calls, before: dict[str, str], between: dict[str, str]) -> App:
    """``shop`` whose order and approval workflows set tags (none when the dicts are empty)."""
    app = shop(calls)
    charge, ship, refund = (app.steps[n].fn for n in ("charge", "ship", "refund"))

    async def order(ctx: WorkflowContext, amount: int) -> dict[str, Any]:
        if before:
            ctx.set_tags(**before)
        charge_id = await ctx.step(charge, amount, compensate=refund)
        if between:
            ctx.set_tags(**between)
        tracking = await ctx.step(ship, amount)
        return {"charge": charge_id, "tracking": tracking, "at": ctx.now().isoformat()}

    async def approval(ctx: WorkflowContext, order_id: str) -> str:
        if before:
            ctx.set_tags(**before)
        got = await ctx.wait_for_event("approved", key=order_id, timeout="2d")
        return "expired" if got.timed_out else "approved"

    app.workflows["order"] = replace(app.workflows["order"], fn=order)
    app.workflows["approval"] = replace(app.workflows["approval"], fn=approval)
    return app


@pytest.mark.parametrize(
    ("recorded", "replayed"),
    [
        (({}, {}), ({"customer": "c"}, {"stage": "paid"})),  # tags added
        (({"customer": "c"}, {"stage": "paid"}), ({}, {})),  # tags removed
        (({"customer": "c"}, {}), ({"customer": "d"}, {"customer": "e", "x": "y"})),  # tags changed
    ],
)
async def test_tags_never_diverge_in_replay(
    calls: Calls,
    recorded: tuple[dict[str, str], dict[str, str]],
    replayed: tuple[dict[str, str], dict[str, str]],
) -> None:
    """Tags are metadata (ADR 0016): the processor's replay check ignores them, so the Replayer must too,
    for ended runs and for an open one (re-executed at its end)."""
    async with WorkflowEnvironment(_tagging(calls, *recorded)) as env:
        handle = await env.start("order", 1, run_id="r1")
        await handle.result()
        await env.start("approval", "A", run_id="open")  # still waiting when the history is taken
        histories = {r: env.history(r) for r in env.run_ids()}
    result = Replayer(_tagging(Calls([]), *replayed)).replay(histories)
    assert result.ok and result.runs == 2, result.report()
