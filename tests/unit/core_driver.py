"""A broker-free stand-in for the processor around the engine's state machine, for the core's tests.

It drives ``Decider.handle`` / ``Decider.fire_timer`` the way the processor does (state read back from its
encoded bytes, events through the wire format, a restart = a new Decider with an empty instance cache) and
keeps everything the machine emitted, so tests can assert on effects and compare the live state with the
fold of the history. It uses only the interface the rewrite keeps (``Decider``, ``Effects``, ``timers_of``,
``fold``/``apply``, ``encode_state``/``decode_state``), never a private method.
"""

from __future__ import annotations

import dataclasses
import gc
import random
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from orchestrator import App
from orchestrator._core.instance_cache import InstanceCache
from orchestrator._engine import state as st
from orchestrator._engine.decider import Decider, Effects, timers_of
from orchestrator._engine.events import (
    Body,
    CancelRun,
    Event,
    ResumeRun,
    Signal,
    StartRun,
    StepCompleted,
    StepFailed,
    StepStarted,
    decode_event,
    encode_event,
)
from orchestrator._engine.fold import fold
from orchestrator._engine.records import RunOutcome, StepCommand
from orchestrator._engine.state import decode_state, encode_state


@dataclass(frozen=True)
class Input:
    """One concrete input as the processor would see it: an inbox event, a due timer, or a restart (with
    ``app``: a restart on another deployment)."""

    kind: str  # "event" | "timer" | "restart"
    now_ms: int = 0
    body: Body | None = None
    tag: str = ""
    app: App | None = None


@dataclass
class Step:
    """What one input produced (the input with its effects), kept so that two drives can be compared."""

    input: Input
    fx: Effects


@dataclass
class Driver:
    """One run fed to the engine's state machine, recording every input and effect.

    ``rng_seed`` seeds the Decider's retry-jitter generator on every (re)start, so that two drives with the
    same inputs can be compared event for event; ``fresh_every_input`` plays a processor that lost its
    instance cache before every input (everything is re-executed from the decoded state).
    """

    app: App
    workflow: str
    run_id: str = "run-1"
    rng_seed: int = 7
    fresh_every_input: bool = False
    check_fold: bool = False  # assert after every input that fold(history) is the live state
    cache_size: int = 100
    state: st.RunState | None = None
    history: list[Event] = field(default_factory=list)
    steps: list[Step] = field(default_factory=list)
    caches: list[InstanceCache] = field(default_factory=list)
    _decider: Decider | None = None
    _ids: int = 0
    first_app: App | None = None  # the deployment the run began on (``app`` changes with restarts)

    def __post_init__(self) -> None:
        self.first_app = self.app

    # -- the machine -----------------------------------------------------------------------------------------
    def decider(self) -> Decider:
        if self._decider is None or self.fresh_every_input:
            self._new_decider()
        assert self._decider is not None
        return self._decider

    def _new_decider(self) -> None:
        if self.caches:
            self.caches[-1].clear()  # the old processor is gone: its instances with it
        cache = InstanceCache(self.cache_size)
        self.caches.append(cache)
        self._decider = Decider(self.app, cache, rng=random.Random(self.rng_seed))

    def _loaded(self) -> st.RunState | None:
        """The state as the processor reads it: decoded from the bytes it wrote."""
        return decode_state(encode_state(self.state)) if self.state is not None else None

    def _keep(self, inp: Input, fx: Effects) -> Effects:
        self.history += [decode_event(encode_event(e)) for e in fx.history]
        self.steps.append(Step(inp, fx))
        if self.check_fold:
            assert_fold_matches(self)
        return fx

    # -- inputs ----------------------------------------------------------------------------------------------
    def apply(self, inp: Input) -> Effects:
        """Feed one recorded input (used to re-drive a second machine with the inputs of a first)."""
        if inp.kind == "restart":
            return self.restart(inp.app)
        if inp.kind == "timer":
            return self.fire(inp.tag, inp.now_ms)
        assert inp.body is not None
        return self.send(inp.body, inp.now_ms)

    def send(self, body: Body, now: int) -> Effects:
        self._ids += 1
        event = decode_event(encode_event(Event(f"in-{self._ids}", self.run_id, self.workflow, now, body)))
        state, fx = self.decider().handle(self._loaded(), event, now)
        self.state = state
        return self._keep(Input("event", now, body), fx)

    def fire(self, tag: str, now: int) -> Effects:
        state = self._loaded()
        assert state is not None
        fx = self.decider().fire_timer(state, tag, now)
        self.state = state
        return self._keep(Input("timer", now, tag=tag), fx)

    def restart(self, app: App | None = None) -> Effects:
        """A new processor (running ``app``'s code if given): new Decider, empty instance cache; the state is
        re-read from its bytes."""
        if app is not None:
            self.app = app
        self._new_decider()
        return self._keep(Input("restart", app=app), Effects())

    # -- inbox requests --------------------------------------------------------------------------------------
    def start(self, value: Any = None, now: int = 1_000, **kw: Any) -> Effects:
        return self.send(StartRun(self.app.data.encode(value), requested_by="client", **kw), now)

    def complete(self, position: int, now: int, value: Any = None, attempt: int | None = None) -> Effects:
        attempt = self.attempt(position) if attempt is None else attempt
        body = StepCompleted(position, attempt, self.app.data.encode(value), now - 5, now - 1, "w-1")
        return self.send(body, now)

    def fail(
        self,
        position: int,
        now: int,
        error_type: str = "ConnectionError",
        retryable: bool = True,
        attempt: int | None = None,
    ) -> Effects:
        attempt = self.attempt(position) if attempt is None else attempt
        body = StepFailed(position, attempt, error_type, "boom", retryable, now - 5, now - 1, "w-1")
        return self.send(body, now)

    def started(self, position: int, now: int, attempt: int | None = None) -> Effects:
        attempt = self.attempt(position) if attempt is None else attempt
        return self.send(StepStarted(position, attempt, now, "w-1"), now)

    def signal(self, name: str, now: int, payload: Any = None, key: str = "") -> Effects:
        return self.send(Signal(name, key, self.app.data.encode(payload), "test"), now)

    def cancel(self, now: int, reason: str = "by test") -> Effects:
        return self.send(CancelRun(reason, requested_by="client"), now)

    def resume(self, now: int, from_position: int = -1, reason: str = "fixed") -> Effects:
        return self.send(ResumeRun(reason, from_position), now)

    # -- observations ----------------------------------------------------------------------------------------
    def attempt(self, position: int) -> int:
        assert self.state is not None
        return st.attempts_of(self.state.steps[position])[0]  # a child's end is its one attempt

    @property
    def kinds(self) -> list[str]:
        return [e.kind for e in self.history]

    @property
    def status(self) -> str:
        assert self.state is not None
        return self.state.status

    def timers(self) -> list[tuple[int, str]]:
        return sorted(timers_of(self.state)) if self.state is not None else []

    def commands(self) -> list[StepCommand]:
        return [c for s in self.steps for _, c in s.fx.commands]

    def outcomes(self) -> list[RunOutcome]:
        return [o for s in self.steps for o in s.fx.outcomes]

    def keyed(self) -> list[tuple[str, Event]]:
        return [k for s in self.steps for k in s.fx.keyed]

    def inbox(self) -> list[Event]:
        return [e for s in self.steps for e in s.fx.inbox]

    def decoded_result(self) -> Any:
        assert self.state is not None and self.state.result is not None
        return self.app.data.decode(self.state.result)

    def close(self) -> None:
        for cache in self.caches:
            cache.clear()


def folded(history: list[Event]) -> st.RunState | None:
    """The state replay rebuilds from ``history`` alone."""
    return fold(history)


def state_diff(live: st.RunState | None, replayed: st.RunState | None) -> str:
    """Field-by-field difference of two states (empty when equal), for readable assertion messages."""
    if live is None or replayed is None:
        return "" if live is replayed else f"live={live!r} replayed={replayed!r}"
    a, b = dataclasses.asdict(live), dataclasses.asdict(replayed)
    lines = []
    for name in a:
        if name == "steps":
            for i, (x, y) in enumerate(zip(a["steps"], b["steps"], strict=False)):
                kx, ky = type(live.steps[i]).__name__, type(replayed.steps[i]).__name__
                if kx != ky:
                    lines.append(f"steps[{i}]: live is a {kx}, fold a {ky}")
                    continue
                lines += [f"steps[{i}].{k}: live={x[k]!r} fold={y[k]!r}" for k in x if x[k] != y[k]]
            if len(a["steps"]) != len(b["steps"]):
                lines.append(f"len(steps): live={len(a['steps'])} fold={len(b['steps'])}")
        elif a[name] != b[name]:
            lines.append(f"{name}: live={a[name]!r} fold={b[name]!r}")
    return "\n".join(lines)


def assert_fold_matches(driver: Driver) -> None:
    """The one-state-machine invariant: replaying the emitted history gives exactly the live state."""
    replayed = folded(driver.history)
    diff = state_diff(driver.state, replayed)
    assert diff == "", f"fold(history) differs from the live state after {driver.steps[-1].input}:\n{diff}"
    if driver.state is not None and replayed is not None:
        assert encode_state(replayed) == encode_state(driver.state)


@pytest.fixture(autouse=True)
def no_leaked_workflow_loops() -> Iterator[None]:
    """Fail a test that dropped a workflow instance without closing it (its private loop leaks).

    Import it into a test module to apply it there: it is not in a conftest, so other modules are untouched.
    """
    yield
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        gc.collect()
        gc.collect()
    leaks = [str(w.message) for w in caught if "unclosed event loop" in str(w.message)]
    assert leaks == [], "a workflow instance was dropped without close()"
