"""``evolve(state, event) -> state``: the only code that changes a run's state (ADR 0009).

The decider records an event and applies it through ``evolve``; restore reads states that ``evolve``
built; replay (``orchestrator replay``, ``replay --at``) and ``fold`` run the same function over the
history topic. So the live state and the state rebuilt from history cannot drift apart: there is no
second copy of the state machine to keep in step.

Every fact ``evolve`` needs is in the event or in the state before it; nothing is inferred from
coincidences (one exception, documented at ``_apply_event_received``: histories written before
event-v3 did not record which buffered signal a wait consumed).

``evolve`` mutates and returns the state it is given (copying a run's state per event would cost more than
deciding); a caller that needs the old state keeps a copy. Each ``_apply_`` checks the event against the
state before changing anything, so a FoldError leaves the state as it was.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from orchestrator._core import events as ev
from orchestrator._core import state as st
from orchestrator._core.events import Event


class FoldError(Exception):
    """A history that does not make sense (an event for a position never scheduled, ...)."""


def evolve(state: st.RunState | None, event: Event) -> st.RunState:
    """``state`` after ``event`` (a new state for ``RunStarted``); FoldError if the event cannot apply."""
    body = event.body
    if type(body) is ev.RunStarted:
        return st.RunState(
            run_id=event.run_id,
            workflow=event.workflow,
            status=st.RUNNING,
            input=body.input,
            created_ms=event.timestamp_ms,
            updated_ms=event.timestamp_ms,
            workflow_version=event.workflow_version,
            next_seq=event.seq + 1,
            deadline_ms=body.deadline_ms,
            parent_run_id=body.parent_run_id,
            parent_position=body.parent_position,
            admission_key=body.admission_key,
        )
    if state is None:
        raise FoldError(f"history of {event.run_id!r} does not begin with RunStarted (got {event.kind})")
    handler = _APPLY.get(type(body))
    if handler is None:
        raise FoldError(f"{event.kind} does not belong in a run's history")
    handler(state, body, event.timestamp_ms)
    state.updated_ms = event.timestamp_ms
    state.next_seq = event.seq + 1
    return state


def fold(events: Iterable[Event], until_ms: int | None = None) -> st.RunState | None:
    """The state of one run after ``events`` (in history order), optionally only those up to ``until_ms``."""
    state: st.RunState | None = None
    for event in events:
        if until_ms is not None and event.timestamp_ms > until_ms:
            break
        state = evolve(state, event)
    return state


def _step(state: st.RunState, position: int) -> st.CommandRecord:
    step = state.step_at(position)
    if step is None:
        raise FoldError(f"event for position {position}, which the history never scheduled")
    return step


def _at(state: st.RunState, position: int, kind: type[st.R], what: str) -> st.R:
    """The command at ``position``, which the event (``what``) requires to be a ``kind``."""
    record = _step(state, position)
    if not isinstance(record, kind):
        raise FoldError(f"{what} for position {position}, which is a {record.kind}")
    return record


def _ran(state: st.RunState, position: int, what: str) -> st.StepRecord | st.ChildRecord:
    """The step or attached child at ``position``: the commands a worker's (or a child's) result ends."""
    record = _step(state, position)
    if not isinstance(record, _RAN):
        raise FoldError(f"{what} for position {position}, which is a {record.kind}")
    return record


_RAN = (st.StepRecord, st.ChildRecord)


def _next_position(state: st.RunState, position: int) -> None:
    """A new command takes the next position of the run's command sequence, or the history is broken."""
    if position != len(state.steps):
        raise FoldError(f"new command at position {position}, but the run has {len(state.steps)} commands")


def _apply_step_scheduled(state: st.RunState, b: ev.StepScheduled, ts: int) -> None:
    if b.position == len(state.steps):
        kind = st.STEP_KINDS.get(b.kind) or st.StepKind(b.kind)
        if kind not in st.WORKER_KINDS:
            raise FoldError(f"StepScheduled of a {kind} at position {b.position}")
        # The event's ``compensate`` names a step's compensation, or the position a compensation undoes.
        undoes = kind is st.KIND_COMPENSATION
        if undoes and not b.compensate.isdigit():
            raise FoldError(f"compensation at position {b.position} undoes {b.compensate!r}, not a position")
        state.steps.append(
            st.StepRecord(
                b.position,
                b.step,
                b.queue,
                st.STEP_SCHEDULED,
                b.attempt,
                b.args,
                ts,
                retry=b.retry,
                timeout_ms=b.timeout_ms,
                schedule_to_start_ms=b.schedule_to_start_ms,
                kind=kind,
                compensate="" if undoes else b.compensate,
                undoes=int(b.compensate) if undoes else -1,
            )
        )
    step = _at(state, b.position, st.StepRecord, "StepScheduled")
    step.status, step.attempt, step.due_ms, step.started_ms = st.STEP_SCHEDULED, b.attempt, 0, 0
    step.error_type = step.error_message = ""
    first_limit = step.schedule_to_start_ms or step.timeout_ms  # waiting for a worker, then running
    step.deadline_ms = ts + first_limit if first_limit else 0


def _apply_step_started(state: st.RunState, b: ev.StepStarted, ts: int) -> None:
    step = _at(state, b.position, st.StepRecord, "StepStarted")
    step.started_ms = b.started_ms
    step.deadline_ms = ts + step.timeout_ms if step.timeout_ms else 0


def _apply_step_completed(state: st.RunState, b: ev.StepCompleted, ts: int) -> None:
    step = _ran(state, b.position, "StepCompleted")
    attempt = st.AttemptRecord(b.attempt, b.started_ms, b.finished_ms, worker=b.worker)
    if isinstance(step, st.StepRecord):
        step.attempts.append(attempt)
        step.deadline_ms = 0
    else:
        step.ended = attempt
    step.status, step.result = st.STEP_COMPLETED, b.result
    if step.kind != st.KIND_COMPENSATION:  # compensations are the engine's, the workflow never sees them
        state.resolutions.append(st.Resolution(b.position, ts))


def _apply_step_failed(state: st.RunState, b: ev.StepFailed, ts: int) -> None:
    step = _ran(state, b.position, "StepFailed")
    attempt = st.AttemptRecord(b.attempt, b.started_ms, b.finished_ms, b.error_type, b.message, b.worker)
    if isinstance(step, st.StepRecord):
        step.attempts.append(attempt)
    else:
        step.ended = attempt
    _attempt_failed(state, step, b.error_type, b.message, ts)


def timeout_message(step: st.StepRecord, attempt: int, which: str) -> str:
    """Why a timed-out attempt failed, as its record and the workflow's StepFailedError say."""
    limit = step.schedule_to_start_ms if which == "schedule_to_start" else step.timeout_ms
    return f"attempt {attempt} exceeded its {which.replace('_', '-')} timeout of {limit} ms"


def _apply_step_timed_out(state: st.RunState, b: ev.StepTimedOut, ts: int) -> None:
    step = _at(state, b.position, st.StepRecord, "StepTimedOut")
    message = timeout_message(step, b.attempt, b.timeout)
    step.attempts.append(st.AttemptRecord(b.attempt, step.started_ms, ts, "StepTimeout", message))
    _attempt_failed(state, step, "StepTimeout", message, ts)


def _attempt_failed(
    state: st.RunState, step: st.StepRecord | st.ChildRecord, error_type: str, message: str, ts: int
) -> None:
    # Final unless a RetryScheduled follows (the decider records it right after), which undoes this.
    step.status = st.STEP_FAILED
    if isinstance(step, st.StepRecord):
        step.deadline_ms = 0
    step.error_type, step.error_message = error_type, message
    if step.kind != st.KIND_COMPENSATION:
        state.resolutions.append(st.Resolution(step.position, ts))


def _apply_retry_scheduled(state: st.RunState, b: ev.RetryScheduled, ts: int) -> None:
    step = _at(state, b.position, st.StepRecord, "RetryScheduled")
    if step.kind != st.KIND_COMPENSATION:  # the failed attempt's resolution, just recorded, is taken back
        if not state.resolutions or state.resolutions[-1].position != b.position:
            raise FoldError(
                f"RetryScheduled for position {b.position} does not follow that step's failed attempt"
            )
        state.resolutions.pop()
    step.status, step.due_ms, step.error_type, step.error_message = st.STEP_BACKOFF, b.due_ms, "", ""


def _apply_timer_started(state: st.RunState, b: ev.TimerStarted, ts: int) -> None:
    _next_position(state, b.position)
    state.steps.append(st.TimerRecord(b.position, st.STEP_WAITING, ts, b.due_ms))


def _apply_timer_fired(state: st.RunState, b: ev.TimerFired, ts: int) -> None:
    _at(state, b.position, st.TimerRecord, "TimerFired").status = st.STEP_COMPLETED
    state.resolutions.append(st.Resolution(b.position, ts))


def _apply_wait_started(state: st.RunState, b: ev.WaitStarted, ts: int) -> None:
    _next_position(state, b.position)
    state.steps.append(st.WaitRecord(b.position, st.STEP_WAITING, ts, b.event_name, b.key, b.deadline_ms))


LEGACY_BUFFERED = -2
"""``EventReceived.buffered`` of records written before event-v3, which did not say."""


def _apply_event_received(state: st.RunState, b: ev.EventReceived, ts: int) -> None:
    if b.position < 0:  # arrived before anyone waited: kept in the run
        state.signals.append(st.BufferedSignal(b.event_name, b.key, b.payload, ts, b.source))
        return
    step = _at(state, b.position, st.WaitRecord, "EventReceived")
    if b.buffered >= 0:
        if b.buffered >= len(state.signals):
            raise FoldError(
                f"EventReceived for position {b.position} consumed buffered signal {b.buffered}, "
                f"but the run holds {len(state.signals)}"
            )
        del state.signals[b.buffered]
    elif b.buffered == LEGACY_BUFFERED and step.scheduled_ms == ts and step.status == st.STEP_WAITING:
        # Written before event-v3: a delivery at the very moment the wait began came from the buffer
        # (the only way the engine of that time resolved a wait in the event that started it).
        index = st.buffered_signal(state, step.event_name, step.key)
        if index >= 0:
            del state.signals[index]
    step.status, step.result, step.deadline_ms = st.STEP_COMPLETED, b.payload, 0
    state.resolutions.append(st.Resolution(b.position, ts))


def _apply_wait_timed_out(state: st.RunState, b: ev.WaitTimedOut, ts: int) -> None:
    step = _at(state, b.position, st.WaitRecord, "WaitTimedOut")
    step.status, step.result = st.STEP_TIMED_OUT, None
    state.resolutions.append(st.Resolution(b.position, ts))


def _apply_child_started(state: st.RunState, b: ev.ChildStarted, ts: int) -> None:
    _next_position(state, b.position)
    # The parent does not wait for a detached child: it is completed at once.
    status = st.STEP_COMPLETED if b.detached else st.STEP_SCHEDULED
    state.steps.append(
        st.ChildRecord(b.position, status, ts, b.workflow, b.child_run_id, b.input, b.detached)
    )
    if b.detached:
        state.resolutions.append(st.Resolution(b.position, ts))


def _apply_marker(state: st.RunState, b: ev.MarkerRecorded, ts: int) -> None:
    _next_position(state, b.position)
    state.steps.append(st.MarkerRecord(b.position, ts, b.name))


def _apply_tags_set(state: st.RunState, b: ev.TagsSet, ts: int) -> None:
    state.tags.update(b.tags)


def _stop_pending(state: st.RunState) -> None:
    """A run that ends (or starts compensating) cancels all it still waits on, buffered signals included."""
    for step in state.steps:
        if step.status not in st.PENDING:
            continue
        if isinstance(step, st.StepRecord):
            step.status, step.deadline_ms, step.due_ms = st.STEP_CANCELLED, 0, 0
        elif isinstance(step, st.TimerRecord):
            step.status, step.due_ms = st.STEP_CANCELLED, 0  # due never
        elif isinstance(step, st.WaitRecord):
            step.status, step.deadline_ms = st.STEP_CANCELLED, 0
        elif isinstance(step, st.ChildRecord):
            step.status = st.STEP_CANCELLED
    state.signals.clear()


def _apply_run_completed(state: st.RunState, b: ev.RunCompleted, ts: int) -> None:
    _stop_pending(state)
    state.status, state.result = st.COMPLETED, b.result


def _apply_run_failed(state: st.RunState, b: ev.RunFailed, ts: int) -> None:
    _stop_pending(state)
    state.status, state.error_type, state.error_message, state.ending = st.FAILED, b.error_type, b.message, ""


def _apply_run_cancelled(state: st.RunState, b: ev.RunCancelled, ts: int) -> None:
    _stop_pending(state)
    state.status, state.error_type, state.error_message, state.ending = (
        st.CANCELLED,
        "Cancelled",
        b.reason,
        "",
    )


def _apply_compensation_started(state: st.RunState, b: ev.CompensationStarted, ts: int) -> None:
    _stop_pending(state)
    state.status, state.ending = st.COMPENSATING, b.ending
    state.error_type, state.error_message = b.error_type, b.message


def _apply_run_parked(state: st.RunState, b: ev.RunParked, ts: int) -> None:
    state.status = st.PARKED
    if not state.ending:  # a run parked while compensating keeps the error it is ending with
        state.error_type, state.error_message = b.kind, b.reason


def _apply_run_resumed(state: st.RunState, b: ev.RunResumed, ts: int) -> None:
    if b.from_position >= 0:
        step = _step(state, b.from_position)  # checked before anything changes (FoldError leaves it)
        if step.kind != st.KIND_STEP:
            raise FoldError(f"RunResumed from position {b.from_position}, which is a {step.kind}")
    resume(state, b.from_position)
    if b.deadline_ms >= 0:  # -1: unchanged (records before event-v4, resumes into compensation)
        state.deadline_ms = b.deadline_ms


def resume(state: st.RunState, from_position: int) -> None:
    """Reopen a parked or failed run; with ``from_position``, forget everything from that step on.

    Completed steps before ``from_position`` keep their recorded results and never run again.
    """
    if from_position < 0 and state.ending:  # parked while compensating: compensation goes on
        state.status = st.COMPENSATING
        return
    state.status = st.RUNNING
    state.error_type = state.error_message = ""
    state.result = None
    state.ending = ""
    if from_position < 0:
        return
    step = state.steps[from_position]
    if not isinstance(step, st.StepRecord):
        raise FoldError(f"resume from position {from_position}, which is a {step.kind}")
    del state.steps[from_position + 1 :]
    state.resolutions = [r for r in state.resolutions if r.position < from_position]
    step.error_type = step.error_message = ""
    step.result = None


STOPPING: frozenset[type[Any]] = frozenset(
    {ev.RunCompleted, ev.RunFailed, ev.RunCancelled, ev.CompensationStarted}
)
"""Events whose ``evolve`` cancels every pending step (``_stop_pending``)."""

_APPLY: dict[type[Any], Callable[[st.RunState, Any, int], None]] = {
    ev.StepScheduled: _apply_step_scheduled,
    ev.StepStarted: _apply_step_started,
    ev.StepCompleted: _apply_step_completed,
    ev.StepFailed: _apply_step_failed,
    ev.StepTimedOut: _apply_step_timed_out,
    ev.RetryScheduled: _apply_retry_scheduled,
    ev.TimerStarted: _apply_timer_started,
    ev.TimerFired: _apply_timer_fired,
    ev.WaitStarted: _apply_wait_started,
    ev.EventReceived: _apply_event_received,
    ev.WaitTimedOut: _apply_wait_timed_out,
    ev.MarkerRecorded: _apply_marker,
    ev.RunCompleted: _apply_run_completed,
    ev.RunFailed: _apply_run_failed,
    ev.RunCancelled: _apply_run_cancelled,
    ev.RunParked: _apply_run_parked,
    ev.RunResumed: _apply_run_resumed,
    ev.CompensationStarted: _apply_compensation_started,
    ev.ChildStarted: _apply_child_started,
    ev.TagsSet: _apply_tags_set,
}
