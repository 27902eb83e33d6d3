"""Everything a recorded event asks of the outside world, derived from the event alone.

The decider decides events; this module is the one place that turns each recorded event (with the run's
state after it, and for events that cancel pending work, the steps they cancelled) into step commands
(and their cancellations), outcomes for waiting clients, keyed-stage requests (subscribe, unsubscribe,
admit, release) and inbox requests to children and parents. So a command can never be decided in one
branch and forgotten in another: if the event is in the history, its commands were sent.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

from orchestrator._core import events as ev
from orchestrator._core import formats as fm
from orchestrator._core import state as st
from orchestrator._core.effects import Effects, RunOutcome, StepCommand
from orchestrator._core.events import Body, Event
from orchestrator._core.evolve import STOPPING
from orchestrator.app import App
from orchestrator.triggers import extract

Stopped = list[tuple[st.CommandRecord, st.StepStatus]]
"""Steps an event cancelled, with the status each had just before it."""


def stopped_by(state: st.RunState | None, body: Body) -> Stopped:
    """What ``evolve`` is about to cancel for ``body``; taken before applying it (the statuses change)."""
    if state is None or type(body) not in STOPPING:
        return []
    return [(s, s.status) for s in state.steps if s.status in st.PENDING]


def outcome_of(state: st.RunState, now_ms: int) -> RunOutcome:
    """How the run stands, for clients waiting on the outcomes topic."""
    return RunOutcome(
        run_id=state.run_id,
        workflow=state.workflow,
        status=state.status,
        timestamp_ms=now_ms,
        result=state.result,
        error_type=state.error_type,
        error_message=state.error_message,
    )


class Commands:
    """Derives the records that follow from one recorded event (``derive``)."""

    def __init__(self, app: App, encode_command: Callable[[StepCommand], bytes]) -> None:
        self.app = app
        self._encode_command = encode_command  # an admitted step's command travels inside its AdmitRequest
        self._by_type: dict[type[Any], Callable[[Effects, Event, Any, st.RunState, Stopped], None]] = {
            ev.StepScheduled: self._step_scheduled,
            ev.StepCompleted: self._step_ended,
            ev.StepFailed: self._step_ended,
            ev.StepTimedOut: self._step_timed_out,
            ev.WaitStarted: self._wait_started,
            ev.EventReceived: self._event_received,
            ev.WaitTimedOut: self._wait_timed_out,
            ev.ChildStarted: self._child_started,
            ev.RunCompleted: self._run_ended,
            ev.RunFailed: self._run_ended,
            ev.RunCancelled: self._run_ended,
            ev.CompensationStarted: self._run_ended,
            ev.RunParked: self._run_parked,
        }

    def derive(self, fx: Effects, event: Event, after: st.RunState, stopped: Stopped) -> None:
        """Append to ``fx`` what ``event`` (already applied: ``after``) asks of the outside world."""
        handler = self._by_type.get(type(event.body))
        if handler is not None:
            handler(fx, event, event.body, after, stopped)

    # -- steps --------------------------------------------------------------------------------------------
    def _step_scheduled(
        self, fx: Effects, event: Event, b: ev.StepScheduled, after: st.RunState, stopped: Stopped
    ) -> None:
        if b.kind not in st.WORKER_KINDS:
            return
        cmd = StepCommand(
            run_id=after.run_id,
            workflow=after.workflow,
            position=b.position,
            step=b.step,
            attempt=b.attempt,
            args=b.args,
            idempotency_key=b.idempotency_key,
            scheduled_ms=event.timestamp_ms,
            timeout_ms=b.timeout_ms,
            report_start=bool(b.timeout_ms or b.schedule_to_start_ms),
            schedule_to_start_ms=b.schedule_to_start_ms,
        )
        limited = self._step_admission(b.step, b.args)
        if limited is None:
            fx.commands.append((b.queue, cmd))
            return
        name, key, priority = limited
        slot = fm.slot_id(after.run_id, b.position, b.attempt)
        request = ev.AdmitRequest(name, slot, self._encode_command(cmd), key, priority, "", b.queue)
        admit = Event(fm.admit_event_id(slot), after.run_id, after.workflow, event.timestamp_ms, request)
        fx.keyed.append((fm.admit_routing(name, key), admit))

    def _step_ended(
        self,
        fx: Effects,
        event: Event,
        b: ev.StepCompleted | ev.StepFailed,
        after: st.RunState,
        stopped: Stopped,
    ) -> None:
        step = after.steps[b.position]
        if isinstance(step, st.StepRecord):  # not a child's end
            self._release(fx, after, step, b.attempt, event.timestamp_ms)

    def _step_timed_out(
        self, fx: Effects, event: Event, b: ev.StepTimedOut, after: st.RunState, stopped: Stopped
    ) -> None:
        step = after.record_at(b.position, st.StepRecord)
        assert step is not None  # evolve refuses a StepTimedOut of anything else
        self._release(fx, after, step, b.attempt, event.timestamp_ms)
        fx.commands.append((step.queue, _cancel(after, step, b.attempt, event.timestamp_ms)))

    def _release(
        self, fx: Effects, state: st.RunState, step: st.StepRecord, attempt: int, now_ms: int
    ) -> None:
        """An attempt of a step with its own admission limit ended: free its slot."""
        limited = self._step_admission(step.step, step.args)
        if limited is None:
            return
        name, key, _ = limited
        slot = fm.slot_id(state.run_id, step.position, attempt)
        body = ev.Release(name, key, slot)
        fx.keyed.append(
            (
                fm.admit_routing(name, key),
                Event(fm.release_event_id(slot), state.run_id, state.workflow, now_ms, body),
            )
        )

    def _step_admission(self, step: str, args: bytes) -> tuple[str, str, float] | None:
        """(admission name, key, priority) of a step whose definition limits it, else None."""
        definition = self.app.steps.get(step)
        admission = definition.admission if definition is not None else None
        if admission is None:
            return None
        values = self.app.data.decode(args) if args else []
        first = values[0] if values else None
        key = str(extract(first, admission.key)) if admission.key else ""
        priority = float(admission.priority(first)) if admission.priority else 0.0
        return f"step:{step}", key, priority

    # -- waits --------------------------------------------------------------------------------------------
    def _wait_started(
        self, fx: Effects, event: Event, b: ev.WaitStarted, after: st.RunState, stopped: Stopped
    ) -> None:
        # A buffered signal that matches is taken by the wait at once (the next event): no subscription.
        if b.key and st.buffered_signal(after, b.event_name, b.key) < 0:
            sub = ev.Subscribe(b.event_name, b.key, after.run_id, b.position, b.lookback_ms)
            keyed = _keyed_event(after, event.seq + 1, sub, event.timestamp_ms)
            fx.keyed.append((fm.routing_key(b.event_name, b.key), keyed))

    def _event_received(
        self, fx: Effects, event: Event, b: ev.EventReceived, after: st.RunState, stopped: Stopped
    ) -> None:
        if b.position >= 0 and b.buffered < 0:  # came live, through the wait's subscription
            _unsubscribe(fx, after, after.steps[b.position], event)

    def _wait_timed_out(
        self, fx: Effects, event: Event, b: ev.WaitTimedOut, after: st.RunState, stopped: Stopped
    ) -> None:
        _unsubscribe(fx, after, after.steps[b.position], event)

    # -- children -----------------------------------------------------------------------------------------
    def _child_started(
        self, fx: Effects, event: Event, b: ev.ChildStarted, after: st.RunState, stopped: Stopped
    ) -> None:
        request = ev.StartRun(
            b.input,
            requested_by=f"parent:{after.run_id}",
            parent_run_id="" if b.detached else after.run_id,
            parent_position=-1 if b.detached else b.position,
        )
        start = Event(
            fm.child_start_id(after.run_id, b.position),
            b.child_run_id,
            b.workflow,
            event.timestamp_ms,
            request,
        )
        fx.inbox.append(start)

    # -- the run's end ------------------------------------------------------------------------------------
    def _run_ended(self, fx: Effects, event: Event, b: Body, after: st.RunState, stopped: Stopped) -> None:
        now_ms = event.timestamp_ms
        for step, status in stopped:  # cancel what the run still waited on; workers running it are told
            if isinstance(step, st.StepRecord):
                if status == st.STEP_SCHEDULED:
                    self._release(fx, after, step, step.attempt, now_ms)
                    fx.commands.append((step.queue, _cancel(after, step, step.attempt, now_ms)))
            elif isinstance(step, st.WaitRecord):
                _unsubscribe(fx, after, step, event)
            elif isinstance(step, st.ChildRecord):
                cancel = ev.CancelRun(f"parent {after.run_id} ended", requested_by=f"parent:{after.run_id}")
                fx.inbox.append(
                    Event(
                        fm.child_cancel_id(after.run_id, step.position),
                        step.child_run_id,
                        step.workflow,
                        now_ms,
                        cancel,
                    )
                )
        if after.terminal:
            _ended(fx, after, now_ms)

    def _run_parked(
        self, fx: Effects, event: Event, b: ev.RunParked, after: st.RunState, stopped: Stopped
    ) -> None:
        # Parked while compensating, the run keeps the error it is ending with (reported once the
        # compensations are done); the reason for parking goes to whoever is waiting now.
        outcome = outcome_of(after, event.timestamp_ms)
        fx.outcomes.append(replace(outcome, error_type=b.kind, error_message=b.reason))


def _ended(fx: Effects, state: st.RunState, now_ms: int) -> None:
    """Tell waiting clients and a parent run how the run ended, and free its admission slot."""
    fx.outcomes.append(outcome_of(state, now_ms))
    if state.parent_run_id:
        fx.inbox.append(_to_parent(state, now_ms))
    if state.admission_key:
        workflow, key = fm.admitted_workflow_key(state.admission_key)
        body = ev.Release(workflow, key, state.run_id)
        release = Event(fm.release_event_id(state.run_id), state.run_id, workflow, now_ms, body)
        fx.keyed.append((state.admission_key, release))


def _to_parent(state: st.RunState, now_ms: int) -> Event:
    """A child's end, as the result of the parent's ``ctx.child`` command."""
    who = f"child:{state.run_id}"
    body: Body
    if state.status == st.COMPLETED:
        body = ev.StepCompleted(
            state.parent_position, 1, state.result or b"null", state.created_ms, now_ms, who
        )
    else:
        body = ev.StepFailed(
            state.parent_position,
            1,
            state.error_type,
            state.error_message,
            False,
            state.created_ms,
            now_ms,
            who,
        )
    return Event(fm.child_end_id(state.run_id), state.parent_run_id, "", now_ms, body)


def _cancel(state: st.RunState, step: st.StepRecord, attempt: int, now_ms: int) -> StepCommand:
    return StepCommand(
        run_id=state.run_id,
        workflow=state.workflow,
        position=step.position,
        step=step.step,
        attempt=attempt,
        args=step.args,
        idempotency_key=fm.idempotency_key(state.run_id, step.position, step.step),
        scheduled_ms=now_ms,
        timeout_ms=step.timeout_ms,
        report_start=bool(step.timeout_ms or step.schedule_to_start_ms),
        cancel=True,
        schedule_to_start_ms=step.schedule_to_start_ms,
    )


def _unsubscribe(fx: Effects, state: st.RunState, step: st.CommandRecord, event: Event) -> None:
    if isinstance(step, st.WaitRecord) and step.key:
        body = ev.Unsubscribe(step.event_name, step.key, state.run_id, step.position)
        keyed = _keyed_event(state, event.seq, body, event.timestamp_ms)
        fx.keyed.append((fm.routing_key(step.event_name, step.key), keyed))


def _keyed_event(state: st.RunState, seq: int, body: Body, now_ms: int) -> Event:
    return Event(
        fm.keyed_event_id(state.run_id, seq, type(body).__name__), state.run_id, state.workflow, now_ms, body
    )
