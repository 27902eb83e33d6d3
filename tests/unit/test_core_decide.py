"""The decider's contract beyond the happy paths: timers of compensating runs, parking instead of raising,
the public ``park``, and that every state change goes through ``evolve`` (fold == live)."""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

import pytest

from orchestrator import App, WorkflowContext
from orchestrator._engine import state as st
from orchestrator._engine.decider import Decider, Effects, timers_of
from orchestrator._engine.events import (
    Body,
    Event,
    StartRun,
    StepCompleted,
    decode_event,
    encode_event,
)
from orchestrator._engine.fold import fold
from orchestrator._engine.instance_cache import InstanceCache
from orchestrator._engine.state import decode_state, encode_state

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

    def fire(self, tag: str, now: int) -> Effects:
        assert self.state is not None
        return self._absorb(self.decider.fire_timer(self.state, tag, now))

    def step(self, position: int) -> st.StepRecord:
        assert self.state is not None
        return self.state.steps[position]

    def close(self) -> None:
        self.cache.clear()


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
    assert (compensation.kind, compensation.compensate) == (st.KIND_COMPENSATION, "1")
    # A compensating run is past its deadline: its "run" timer must not be put back in the index.
    assert all(tag != "run" for _, tag in timers_of(driver.state))
    # Even if the index still held it (an older processor), firing it again changes nothing.
    again = driver.fire("run", now=deadline + 5)
    assert again.history == [] and again.commands == [] and again.ignored
    assert compensation.status == st.STEP_SCHEDULED
    # Both compensations run, newest first, then the run fails with RunTimeout.
    driver.complete(compensation.position, "u2", now=deadline + 10)
    second = driver.state.steps[-1]
    assert (second.kind, second.compensate) == (st.KIND_COMPENSATION, "0")
    driver.complete(second.position, "u1", now=deadline + 20)
    assert driver.state.status == st.FAILED
    assert driver.state.error_type == "RunTimeout"
    assert [s.compensate for s in driver.state.steps if s.kind == st.KIND_COMPENSATION] == ["1", "0"]
    assert fold(driver.history) == driver.state
