"""Saying what a run is waiting for, so a test that would hang fails with a reason instead."""

from __future__ import annotations

from datetime import UTC, datetime

from orchestrator._engine import state as st


def waiting_on(state: st.RunState | None) -> str:
    """What keeps the run from ending, in words (used in the error of a result that can never come)."""
    if state is None:
        return "it has not started (its start is waiting for admission, or none was sent)"
    waits: list[str] = []
    for step in state.steps:
        if isinstance(step, st.WaitRecord) and step.status == st.STEP_WAITING:
            key = f" with key {step.key!r}" if step.key else ""
            waits.append(f"event {step.event_name!r}{key} (position {step.position})")
        elif isinstance(step, st.TimerRecord) and step.status == st.STEP_WAITING:
            waits.append(f"a timer due {_when(step.due_ms)} (position {step.position})")
        elif isinstance(step, st.StepRecord) and step.status == st.STEP_BACKOFF:
            waits.append(f"a retry of step {step.step!r} due {_when(step.due_ms)} (position {step.position})")
        elif isinstance(step, st.ChildRecord) and step.status == st.STEP_SCHEDULED:
            waits.append(f"child run {step.child_run_id!r} (position {step.position})")
        elif isinstance(step, st.StepRecord) and step.status == st.STEP_SCHEDULED:
            waits.append(f"step {step.step!r} (position {step.position}), which is waiting for admission")
    if not waits:
        return f"it is {state.status}"
    return "it waits for " + ", ".join(waits)


def _when(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat()
