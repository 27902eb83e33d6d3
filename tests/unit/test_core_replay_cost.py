"""Re-executing a run costs work linear in its history (issue 12).

A sleeping run holds no coroutine, so each wake re-executes the workflow against its record. The work is
counted, not timed (timing assertions fail on a shared machine): every indexed read of the run's steps is
one comparison or lookup, and re-executing a run with n recorded commands must read each about once.
Checking the whole prefix after every resolution, as the core once did, reads n * n / 2 times.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, SupportsIndex

import pytest
from core_driver import no_leaked_workflow_loops  # noqa: F401 - an autouse fixture: applies here

from orchestrator import App, WorkflowContext
from orchestrator._core import events as ev
from orchestrator._core import state as st
from orchestrator._core.decide import Decider, timers_of
from orchestrator._core.events import Event

app = App("replay-cost")


@app.workflow
async def sleepy(ctx: WorkflowContext, n: int) -> int:
    for _ in range(n):
        await ctx.sleep("1s")
    return n


class CountingSteps(list[st.CommandRecord]):
    """The run's step list, counting reads by index (what the replay check and the resolutions do)."""

    reads = 0

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, SupportsIndex):
            CountingSteps.reads += 1
        return super().__getitem__(index)


@pytest.fixture
def decider() -> Iterator[Decider]:
    d = Decider(app)
    yield d
    d.cache.clear()


def _sleeping(decider: Decider, n: int) -> tuple[st.RunState, int]:
    """A run of ``sleepy(n)`` woken n - 1 times: it sleeps at its last timer. Returns it and the time."""
    state, fx = decider.handle(
        None, Event("in-1", "r", "sleepy", 1_000, ev.StartRun(app.data.encode(n))), 1_000
    )
    assert state is not None and not fx.dead_letter
    now = 1_000
    for _ in range(n - 1):
        [(now, tag)] = timers_of(state)
        decider.fire_timer(state, tag, now)
    return state, now


@pytest.mark.parametrize("n", [50, 200])
def test_a_wake_re_executes_the_run_reading_each_recorded_command_about_once(
    decider: Decider, n: int
) -> None:
    state, _ = _sleeping(decider, n)
    assert len(state.steps) == n and state.status == st.RUNNING
    state.steps = CountingSteps(state.steps)
    CountingSteps.reads = 0
    [(due, tag)] = timers_of(state)
    fx = decider.fire_timer(state, tag, due)  # the last wake: re-executed from the whole record
    assert [e.kind for e in fx.history] == ["TimerFired", "RunCompleted"]
    assert CountingSteps.reads <= 4 * n + 20, f"{CountingSteps.reads} reads of {n} recorded commands"


def test_a_divergence_late_in_a_long_history_is_still_found(decider: Decider) -> None:
    """Checking each command once must not skip any: a changed command at the end still parks the run."""
    state, _ = _sleeping(decider, 30)
    # as if the code had issued something else at position 20 (a version marker instead of a sleep)
    state.steps[20] = st.MarkerRecord(20, state.steps[20].scheduled_ms, "renamed")
    [(due, tag)] = timers_of(state)
    fx = decider.fire_timer(state, tag, due)
    [parked] = [e.body for e in fx.history if isinstance(e.body, ev.RunParked)]
    assert parked.kind == "non_determinism" and "at position 20" in parked.reason
