"""The decider's contract beyond the happy paths: timers of compensating runs, parking instead of raising,
the public ``park``, and that every state change goes through ``evolve`` (fold == live)."""

from __future__ import annotations

import io
import json
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fastavro
import pytest

from orchestrator import App, RetryPolicy, WorkflowContext
from orchestrator._core.commands import Commands, stopped_by
from orchestrator._core.decide import PARK_INTERNAL_ERROR
from orchestrator._core.evolve import evolve
from orchestrator._core.instance_cache import InstanceCache
from orchestrator._engine import state as engine_state
from orchestrator._engine import state as st
from orchestrator._engine import wire
from orchestrator._engine.decider import Decider, Effects, timers_of
from orchestrator._engine.events import (
    Body,
    CancelRun,
    Event,
    EventReceived,
    RetryScheduled,
    RunFailed,
    RunParked,
    RunResumed,
    RunStarted,
    Signal,
    StartRun,
    StepCompleted,
    StepFailed,
    StepScheduled,
    StepStarted,
    TimerStarted,
    WaitStarted,
    decode_event,
    encode_event,
    event_record,
)
from orchestrator._engine.fold import FoldError, fold
from orchestrator._engine.records import encode_command
from orchestrator._engine.state import decode_state, encode_state

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"

app = App("core-test")


@app.step
def book(x: int) -> str:
    return f"b{x}"


@app.step
def unbook(x: int) -> str:
    return f"u{x}"


@app.step
def slow(x: int) -> int:
    return x


@app.workflow(timeout="10s")
async def booking(ctx: WorkflowContext, x: int) -> int:
    await ctx.step(book, x, compensate=unbook)
    await ctx.step(book, x + 1, compensate=unbook)
    return await ctx.step(slow, x)


NO_JITTER = RetryPolicy(max_attempts=3, initial_interval="1s", backoff=2.0, max_interval="1m", jitter=0)


@app.step(retry=NO_JITTER)
def flaky(x: int) -> int:
    return x


@app.step(timeout="5s", retry=RetryPolicy(max_attempts=2, initial_interval="1s", jitter=0))
def bounded(x: int) -> int:
    return x


@app.workflow
async def approval(ctx: WorkflowContext, order: str) -> Any:
    await ctx.step(book, 1)
    got = await ctx.wait_for_event("approved", key=order, timeout="1h")
    if got.timed_out:
        return "timed out"
    await ctx.sleep("1m")
    return got.payload


@app.workflow
async def retrying(ctx: WorkflowContext, x: int) -> int:
    a = await ctx.step(flaky, x)
    return await ctx.step(bounded, a)


@app.workflow
async def parent(ctx: WorkflowContext, x: int) -> Any:
    first = ctx.step(book, x)  # still running when the run is cancelled
    result = await ctx.child(booking, x, run_id="child-1")
    return [await first, result]


class Driver:
    """Feeds one run through a Decider, the state through its encoding, as the processor does."""

    def __init__(self, application: App, workflow: str, run_id: str = "r1") -> None:
        self.app, self.workflow, self.run_id = application, workflow, run_id
        self.cache = InstanceCache(10)
        self.decider = Decider(application, self.cache, rng=random.Random(3))
        self.state: st.RunState | None = None
        self.history: list[Event] = []
        self.effects: list[Effects] = []

    def _absorb(self, fx: Effects) -> Effects:
        self.history += [decode_event(encode_event(e)) for e in fx.history]
        self.effects.append(fx)
        # The contract, after every input: the live state is the fold of the history ...
        assert fold(self.history) == self.state
        if self.state is not None:
            assert encode_state(fold(self.history)) == encode_state(self.state)  # type: ignore[arg-type]
        # ... and everything sent besides the history follows from the history alone.
        rederived = rederive(self.app, self.history)
        sent = Effects()
        for one in self.effects:
            sent.extend(one)
        assert rederived.commands == sent.commands
        assert rederived.keyed == sent.keyed
        assert rederived.inbox == sent.inbox
        assert rederived.outcomes == sent.outcomes
        return fx

    def send(self, body: Body, now: int) -> Effects:
        loaded = decode_state(encode_state(self.state)) if self.state is not None else None
        event = decode_event(encode_event(Event(f"in-{now}", self.run_id, self.workflow, now, body)))
        self.state, fx = self.decider.handle(loaded, event, now)
        return self._absorb(fx)

    def start(self, value: Any, now: int = 1_000) -> Effects:
        return self.send(StartRun(self.app.data.encode(value)), now)

    def complete(self, position: int, value: Any, now: int) -> Effects:
        attempt = self.step(position).attempt
        return self.send(StepCompleted(position, attempt, self.app.data.encode(value), now - 2, now - 1), now)

    def fail(self, position: int, now: int, retryable: bool = True) -> Effects:
        attempt = self.step(position).attempt
        return self.send(
            StepFailed(position, attempt, "ConnectionError", "boom", retryable, now - 2, now - 1), now
        )

    def fire(self, tag: str, now: int) -> Effects:
        assert self.state is not None
        return self._absorb(self.decider.fire_timer(self.state, tag, now))

    def step(self, position: int) -> st.StepRecord:
        assert self.state is not None
        return self.state.steps[position]

    def close(self) -> None:
        self.cache.clear()


def rederive(application: App, history: list[Event]) -> Effects:
    """Commands, outcomes, keyed and inbox requests derived from the history from scratch."""
    commands = Commands(application, encode_command)
    fx = Effects()
    state: st.RunState | None = None
    for event in history:
        stopped = stopped_by(state, event.body)
        state = evolve(state, event)
        commands.derive(fx, event, state, stopped)
    return fx


@pytest.fixture
def driver() -> Iterator[Driver]:
    d = Driver(app, "booking")
    yield d
    d.close()


def test_run_deadline_fires_once_then_compensation_runs_to_the_end(driver: Driver) -> None:
    driver.start(1, now=1_000)
    driver.complete(0, "b1", now=2_000)
    driver.complete(1, "b2", now=3_000)
    assert driver.state is not None
    deadline = driver.state.deadline_ms
    assert (deadline, "run") in timers_of(driver.state)
    driver.fire("run", now=deadline)
    assert driver.state.status == st.COMPENSATING
    compensation = driver.state.steps[-1]
    assert (compensation.kind, compensation.undoes) == (st.KIND_COMPENSATION, 1)
    # A compensating run is past its deadline: its "run" timer must not be put back in the index.
    assert all(tag != "run" for _, tag in timers_of(driver.state))
    # Even if the index still held it (an older processor), firing it again changes nothing.
    again = driver.fire("run", now=deadline + 5)
    assert again.history == [] and again.commands == [] and again.ignored
    assert compensation.status == st.STEP_SCHEDULED
    # Both compensations run, newest first, then the run fails with RunTimeout.
    driver.complete(compensation.position, "u2", now=deadline + 10)
    second = driver.state.steps[-1]
    assert (second.kind, second.undoes) == (st.KIND_COMPENSATION, 0)
    driver.complete(second.position, "u1", now=deadline + 20)
    assert driver.state.status == st.FAILED
    assert driver.state.error_type == "RunTimeout"
    assert [s.undoes for s in driver.state.steps if s.kind == st.KIND_COMPENSATION] == [1, 0]
    assert fold(driver.history) == driver.state


def _received(d: Driver) -> list[EventReceived]:
    return [e.body for e in d.history if isinstance(e.body, EventReceived)]


def _new(runs: list[Driver], workflow: str, run_id: str = "r1") -> Driver:
    d = Driver(app, workflow, run_id)
    runs.append(d)
    return d


@pytest.fixture
def runs() -> Iterator[list[Driver]]:
    made: list[Driver] = []
    yield made
    for d in made:
        d.close()


def test_a_wait_takes_the_matching_buffered_signal_and_says_which(runs: list[Driver]) -> None:
    d = _new(runs, "approval")
    d.start("o-2", now=1_000)
    d.send(Signal("approved", "o-1", app.data.encode("not mine")), now=1_100)  # buffered, other key
    d.send(Signal("approved", "o-2", app.data.encode("yes")), now=1_200)  # buffered, ours
    assert d.state is not None and len(d.state.signals) == 2
    fx = d.complete(0, "b1", now=1_300)
    taken = _received(d)[-1]
    assert (taken.position, taken.buffered, app.data.decode(taken.payload)) == (1, 1, "yes")
    assert fx.keyed == []  # satisfied from the buffer: no subscription in the keyed stage
    assert [g.key for g in d.state.signals] == ["o-1"]
    assert d.step(1).status == st.STEP_COMPLETED
    d.fire(f"timer:{2}", now=61_300)
    assert d.state.status == st.COMPLETED and app.data.decode(d.state.result or b"") == "yes"


def test_a_live_signal_reaches_a_subscribed_wait(runs: list[Driver]) -> None:
    d = _new(runs, "approval")
    d.start("o-3", now=1_000)
    fx = d.complete(0, "b1", now=1_100)
    assert [e.body.__class__.__name__ for _, e in fx.keyed] == ["Subscribe"]
    fx = d.send(Signal("approved", "o-3", app.data.encode("ok")), now=2_000)
    assert [e.body.__class__.__name__ for _, e in fx.keyed] == ["Unsubscribe"]
    assert _received(d)[-1].buffered == -1


def test_a_wait_times_out(runs: list[Driver]) -> None:
    d = _new(runs, "approval")
    d.start("o-4", now=1_000)
    d.complete(0, "b1", now=1_100)
    assert d.state is not None
    ((due, tag),) = timers_of(d.state)
    assert tag == "wait:1"
    d.fire(tag, now=due)
    assert d.state.status == st.COMPLETED and app.data.decode(d.state.result or b"") == "timed out"
    assert d.step(1).status == st.STEP_TIMED_OUT


def test_retries_and_step_timeouts(runs: list[Driver]) -> None:
    d = _new(runs, "retrying")
    d.start(4, now=1_000)
    d.fail(0, now=1_100)
    assert d.step(0).status == st.STEP_BACKOFF
    d.fire("retry:0", now=2_100)
    assert (d.step(0).status, d.step(0).attempt) == (st.STEP_SCHEDULED, 2)
    d.complete(0, 4, now=2_200)
    d.send(StepStarted(1, 1, 2_300), now=2_300)
    fx = d.fire("timeout:1:1", now=7_300)
    assert [c.cancel for _, c in fx.commands] == [True]
    assert d.step(1).attempts[-1].error_type == "StepTimeout"
    d.fire("retry:1", now=8_300)
    d.complete(1, 4, now=8_400)
    assert d.state is not None and d.state.status == st.COMPLETED


def test_final_failure_reaches_the_workflow(runs: list[Driver]) -> None:
    d = _new(runs, "retrying")
    d.start(4, now=1_000)
    d.fail(0, now=1_100, retryable=False)
    assert d.state is not None and d.state.status == st.FAILED
    assert d.state.error_type == "ConnectionError"  # the step's error, as the workflow saw it


def test_cancel_tells_workers_and_children(runs: list[Driver]) -> None:
    d = _new(runs, "parent")
    fx = d.start(7, now=1_000)
    assert [e.body.__class__.__name__ for e in fx.inbox] == ["StartRun"]
    assert fx.inbox[0].run_id == "child-1"
    fx = d.send(CancelRun("stop"), now=2_000)
    assert [(c.position, c.cancel) for _, c in fx.commands] == [(0, True)]
    assert [(e.run_id, e.body.__class__.__name__) for e in fx.inbox] == [("child-1", "CancelRun")]
    assert d.state is not None and d.state.status == st.CANCELLED
    assert [o.status for o in fx.outcomes] == ["cancelled"]


def test_a_child_result_resumes_the_parent(runs: list[Driver]) -> None:
    d = _new(runs, "parent")
    d.start(7, now=1_000)
    d.complete(0, "b7", now=1_100)
    d.send(StepCompleted(1, 1, app.data.encode(3), 1_000, 5_000, "child:child-1"), now=5_000)
    assert d.state is not None and d.state.status == st.COMPLETED
    assert app.data.decode(d.state.result or b"") == ["b7", 3]


# -- deciding never raises ---------------------------------------------------------------------------------
def test_an_internal_error_parks_the_run_instead_of_raising(
    runs: list[Driver], monkeypatch: pytest.MonkeyPatch
) -> None:
    d = _new(runs, "booking")
    d.start(1, now=1_000)

    real = Commands.derive

    def broken(self: Commands, fx: Effects, event: Event, after: st.RunState, stopped: Any) -> None:
        if isinstance(event.body, StepCompleted):
            raise KeyError("boom")
        real(self, fx, event, after, stopped)

    monkeypatch.setattr(Commands, "derive", broken)
    assert d.state is not None
    loaded = decode_state(encode_state(d.state))
    event = Event("in", "r1", "booking", 2_000, StepCompleted(0, 1, app.data.encode("b1"), 1_998, 1_999))
    d.state, fx = d.decider.handle(loaded, event, 2_000)  # does not raise
    monkeypatch.undo()
    d._absorb(fx)  # and what it recorded is still a consistent history
    assert d.state is not None and d.state.status == st.PARKED
    parked = d.history[-1].body
    assert isinstance(parked, RunParked) and parked.kind == PARK_INTERNAL_ERROR
    assert "KeyError" in parked.reason and "handling StepCompleted" in parked.reason
    assert fx.dead_letter == ""


def test_an_internal_error_in_a_timer_parks_the_run(
    runs: list[Driver], monkeypatch: pytest.MonkeyPatch
) -> None:
    d = _new(runs, "approval")
    d.start("o", now=1_000)
    d.complete(0, "b1", now=1_100)
    monkeypatch.setattr(Decider, "_on_wait_timeout", lambda *a: 1 / 0)
    fx = d.fire("wait:1", now=3_601_100)
    assert d.state is not None and d.state.status == st.PARKED
    assert isinstance(fx.history[-1].body, RunParked) and "ZeroDivisionError" in fx.history[-1].body.reason


def test_an_internal_error_before_the_run_exists_is_dead_lettered(monkeypatch: pytest.MonkeyPatch) -> None:
    decider = Decider(app, InstanceCache(1))
    monkeypatch.setattr(Decider, "_on_start", lambda *a: 1 / 0)
    event = Event("e", "r9", "booking", 1, StartRun(app.data.encode(1)))
    state, fx = decider.handle(None, event, 1)
    assert state is None and fx.history == [] and "ZeroDivisionError" in fx.dead_letter


def test_park_is_public_and_leaves_ended_runs_alone(runs: list[Driver]) -> None:
    d = _new(runs, "booking")
    d.start(1, now=1_000)
    assert d.state is not None
    fx = d._absorb(d.decider.park(d.state, "poison", "cannot encode the state", 1_500))
    assert d.state.status == st.PARKED and (d.state.error_type, d.state.error_message) == (
        "poison",
        "cannot encode the state",
    )
    assert [o.status for o in fx.outcomes] == ["parked"]
    d.state.status = st.COMPLETED  # an ended run (set by hand: only for this check)
    assert d.decider.park(d.state, "poison", "x", 1_600).ignored


# -- old histories -------------------------------------------------------------------------------------------
def test_histories_without_the_buffered_field_still_fold() -> None:
    """An EventReceived written with event-v2 (no ``buffered``) decodes as -2 and is folded as before."""

    v2 = json.loads((SCHEMAS / "event-v2.avsc").read_text())  # id 6
    run = "old-1"

    def old(seq: int, ts: int, body: Body) -> Event:
        return Event(f"{run}/{seq}", run, "approval", ts, body, seq)

    events = [
        old(0, 1, RunStarted(b"null")),
        old(1, 2, EventReceived(-1, "approved", "k", b"1")),
        old(2, 3, WaitStarted(0, "approved", "k", 0, 0)),
        old(3, 3, EventReceived(0, "approved", "k", b"1")),
    ]
    decoded = []
    for e in events:
        record = event_record(e)
        name, body = record["body"]
        if name.endswith("EventReceived"):
            record["body"] = (name, {k: v for k, v in body.items() if k != "buffered"})

        buf = io.BytesIO()
        buf.write(b"\x00" + (6).to_bytes(4, "big"))
        fastavro.schemaless_writer(buf, fastavro.parse_schema(v2, named_schemas={}), record)
        decoded.append(decode_event(buf.getvalue()))
    assert [e.body.buffered for e in decoded if isinstance(e.body, EventReceived)] == [-2, -2]
    state = fold(decoded)
    assert state is not None and state.signals == [] and state.steps[0].status == st.STEP_COMPLETED
    assert wire.registry().current[wire.EVENT] != 6


def test_resumes_written_before_event_v4_keep_the_runs_deadline() -> None:
    """A RunResumed written with event-v3 (no ``deadline_ms``) decodes as -1: the deadline stays as it
    was, as the engine of that time left it; one written now sets the fresh deadline it records."""
    v3 = json.loads((SCHEMAS / "event-v3.avsc").read_text())  # id 9
    run = "old-2"

    def old(seq: int, ts: int, body: Body) -> Event:
        return Event(f"{run}/{seq}", run, "w", ts, body, seq)

    history = [
        old(0, 1_000, RunStarted(b"null", deadline_ms=31_000)),
        old(1, 1_000, StepScheduled(0, "act", "default", 1, b"[1]", f"{run}/0/act")),
        old(2, 2_000, StepFailed(0, 1, "TerminalError", "boom", False, 1_500, 1_900)),
        old(3, 2_000, RunFailed("StepFailedError", "boom")),
        old(4, 3_000, RunResumed("fixed", 0)),
    ]
    decoded = []
    for e in history:
        record = event_record(e)
        name, body = record["body"]
        if name.endswith("RunResumed"):
            record["body"] = (name, {k: v for k, v in body.items() if k != "deadline_ms"})
        buf = io.BytesIO()
        buf.write(b"\x00" + (9).to_bytes(4, "big"))
        fastavro.schemaless_writer(buf, fastavro.parse_schema(v3, named_schemas={}), record)
        decoded.append(decode_event(buf.getvalue()))
    assert [e.body.deadline_ms for e in decoded if isinstance(e.body, RunResumed)] == [-1]
    state = fold(decoded)
    assert state is not None and state.status == st.RUNNING and state.deadline_ms == 31_000
    now = decode_event(encode_event(old(5, 4_000, RunResumed("again", 0, 34_000))))
    assert wire.registry().current[wire.EVENT] != 9 and now.body == RunResumed("again", 0, 34_000)


def test_a_resume_from_a_command_that_is_not_a_step_does_not_fold() -> None:
    history = [
        Event("r/0", "r", "w", 1, RunStarted(b"null"), 0),
        Event("r/1", "r", "w", 2, TimerStarted(0, 10), 1),
        Event("r/2", "r", "w", 3, RunFailed("X", "x"), 2),
        Event("r/3", "r", "w", 4, RunResumed("fixed", 0, 0), 3),
    ]
    with pytest.raises(FoldError, match="which is a timer"):
        fold(history)


# -- the encoded-step cache --------------------------------------------------------------------------------
def test_encoded_step_cache_is_bounded_by_bytes() -> None:

    big = b"x" * 200_000
    state = st.RunState("r", "w", st.RUNNING, b"", 0, 0)
    for i in range(400):  # 400 distinct 200 kB steps: 160 MB if the cache kept them all
        state.steps = [st.StepRecord(i, "s", "q", st.STEP_COMPLETED, 1, big, 0, result=big)]
        engine_state.encode_state(state)
        assert engine_state.step_bytes_used() <= engine_state._STEP_BYTES_BUDGET


def test_statuses_and_kinds_are_enums_after_decoding(runs: list[Driver]) -> None:
    d = _new(runs, "booking")
    d.start(1, now=1_000)
    assert d.state is not None
    loaded = decode_state(encode_state(d.state))
    assert type(loaded.status) is st.RunStatus and loaded.status == "running"
    assert type(loaded.steps[0].status) is st.StepStatus and type(loaded.steps[0].kind) is st.StepKind


def test_a_retry_that_follows_no_failure_is_refused() -> None:
    def at(seq: int, body: Body) -> Event:
        return Event(f"x/{seq}", "x", "w", seq, body, seq)

    events = [
        at(0, RunStarted(b"null")),
        at(1, StepScheduled(0, "s", "q", 1, b"[]", "x/0/s")),
        at(2, RetryScheduled(0, 2, 100)),
    ]
    with pytest.raises(FoldError, match="does not follow"):
        fold(events)


def test_a_command_out_of_sequence_is_refused_and_leaves_the_state_alone() -> None:
    state = fold([Event("x/0", "x", "w", 0, RunStarted(b"null"), 0)])
    assert state is not None
    before = decode_state(encode_state(state))
    with pytest.raises(FoldError, match="position 3"):
        evolve(state, Event("x/1", "x", "w", 1, WaitStarted(3, "e", "", 0, 0), 1))
    assert state == before
