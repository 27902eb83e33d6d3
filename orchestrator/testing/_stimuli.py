"""What made each recorded history event happen, so a replay can make it happen again.

A run's history mixes inputs (a start, a worker's result, a signal, a timer firing, a cancel, a resume)
with what the workflow decided in response (steps scheduled, timers and waits started, the run's end).
Replay feeds the inputs to the decider, at their recorded times, and checks that what it decides matches
what follows in the history. This module names the input behind a recorded event, and the identity of a
decided event that must not change between code versions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from orchestrator._engine import events as ev
from orchestrator._engine.events import Event


@dataclass(frozen=True)
class Input:
    """A request for ``Decider.handle`` (``event``), or a timer for ``Decider.fire_timer`` (``tag``)."""

    event: Event | None = None
    tag: str = ""


RESYNC = Input()
"""The history shows a fact the code need not reproduce (a park by the code of its time): take it as is."""


def input_for(recorded: Event) -> Input | None:
    """The input that produced ``recorded`` when it begins a reaction; None for a decided event."""
    body = recorded.body

    def request(req: ev.Body) -> Input:
        return Input(Event(recorded.event_id, recorded.run_id, recorded.workflow, recorded.timestamp_ms, req))

    if isinstance(body, ev.RunStarted):
        return request(
            ev.StartRun(body.input, "replay", body.parent_run_id, body.parent_position, body.admission_key)
        )
    if isinstance(body, ev.StepStarted | ev.StepCompleted | ev.StepFailed):
        return request(body)
    if isinstance(body, ev.EventReceived):
        return request(ev.Signal(body.event_name, body.key, body.payload, body.source))
    if isinstance(body, ev.RunResumed):
        return request(ev.ResumeRun(body.reason, body.from_position))
    if isinstance(body, ev.RunCancelled):
        return request(ev.CancelRun(body.reason))
    if isinstance(body, ev.CompensationStarted) and body.ending == "cancelled":
        return request(ev.CancelRun(body.message))
    if isinstance(body, ev.TimerFired):
        return Input(tag=f"timer:{body.position}")
    if isinstance(body, ev.WaitTimedOut):
        return Input(tag=f"wait:{body.position}")
    if isinstance(body, ev.StepTimedOut):
        return Input(tag=f"timeout:{body.position}:{body.attempt}")
    if isinstance(body, ev.StepScheduled) and body.attempt > 1:
        return Input(tag=f"retry:{body.position}")
    if isinstance(body, ev.RunFailed | ev.CompensationStarted) and body.error_type == "RunTimeout":
        return Input(tag="run")
    if isinstance(body, ev.RunParked):
        return RESYNC
    return None


def identity(event: Event) -> tuple[Any, ...]:
    """What must be equal for a replayed event to be the recorded one.

    The command sequence (kind and name at each position) and the way the run ends, as the processor's own
    divergence check sees it; not payloads or durations, which a compatible change may alter.
    """
    b = event.body
    if isinstance(b, ev.StepScheduled):
        return (event.kind, b.position, b.kind, b.step, b.attempt)
    if isinstance(b, ev.WaitStarted | ev.EventReceived):
        return (event.kind, b.position, b.event_name, b.key)
    if isinstance(b, ev.MarkerRecorded):
        return (event.kind, b.position, b.name)
    if isinstance(b, ev.ChildStarted):
        return (event.kind, b.position, b.workflow, b.child_run_id, b.detached)
    if isinstance(b, ev.RetryScheduled):
        return (event.kind, b.position, b.attempt)
    if isinstance(b, ev.RunParked):
        return (event.kind, b.kind)
    if isinstance(b, ev.RunFailed | ev.CompensationStarted):
        return (event.kind, b.error_type)
    return (event.kind, getattr(b, "position", None))


def describe(event: Event) -> str:
    """One event in words, for a divergence report."""
    b = event.body
    if isinstance(b, ev.StepScheduled):
        what = "compensation" if b.kind == "compensation" else "step"
        return f"{what} {b.step!r} scheduled at position {b.position} (attempt {b.attempt})"
    if isinstance(b, ev.TimerStarted):
        return f"a timer (ctx.sleep) at position {b.position}"
    if isinstance(b, ev.WaitStarted):
        key = f" with key {b.key!r}" if b.key else ""
        return f"a wait for event {b.event_name!r}{key} at position {b.position}"
    if isinstance(b, ev.MarkerRecorded):
        return f"version marker {b.name!r} at position {b.position}"
    if isinstance(b, ev.ChildStarted):
        return f"child workflow {b.workflow!r} ({b.child_run_id!r}) at position {b.position}"
    if isinstance(b, ev.RunFailed):
        return f"the run failing with {b.error_type}: {b.message}"
    if isinstance(b, ev.RunParked):
        return f"the run parked ({b.kind}: {b.reason})"
    if isinstance(b, ev.RunCompleted):
        return "the run completing"
    position = getattr(b, "position", None)
    return event.kind + (f" at position {position}" if position is not None else "")
