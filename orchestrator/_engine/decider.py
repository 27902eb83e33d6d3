"""The heart of the engine: (run state, event) -> (new state, effects).

No Kafka, no RocksDB: the processor loop does all I/O around it, and tests drive it directly. User-code
failures become events (a failed run, a parked run), never exceptions out of here. One ``_on_<event>``
method per input, and one per kind of timer.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field, replace
from typing import Any

from orchestrator._engine import events as ev
from orchestrator._engine import state as st
from orchestrator._engine.admission import admit_routing
from orchestrator._engine.events import Body, Event
from orchestrator._engine.instance_cache import InstanceCache
from orchestrator._engine.records import RunOutcome, StepCommand, encode_command
from orchestrator._engine.runtime import IssuedStep, WorkflowInstance
from orchestrator.app import App, WorkflowDefinition
from orchestrator.errors import NonDeterminismError, StepFailedError
from orchestrator.retry import RetryPolicy
from orchestrator.triggers import extract

PARK_NON_DETERMINISM = "non_determinism"
PARK_UNKNOWN_WORKFLOW = "unknown_workflow"
PARK_WORKFLOW_ERROR = "workflow_error"


@dataclass
class Effects:
    """What handling one input produced, to be written in the current transaction."""

    history: list[Event] = field(default_factory=list)
    commands: list[tuple[str, StepCommand]] = field(default_factory=list)  # (queue, command)
    outcomes: list[RunOutcome] = field(default_factory=list)
    keyed: list[tuple[str, Event]] = field(default_factory=list)  # (routing key, event) for the keyed stage
    inbox: list[Event] = field(default_factory=list)  # requests to other runs (children, parents)
    ignored: str = ""  # why the input changed nothing (duplicate, stale attempt: normal under at-least-once)
    dead_letter: str = ""  # why the input makes no sense here (unknown run, ...): kept for an operator

    def extend(self, other: Effects) -> None:
        self.history.extend(other.history)
        self.commands.extend(other.commands)
        self.outcomes.extend(other.outcomes)
        self.keyed.extend(other.keyed)
        self.inbox.extend(other.inbox)


def routing_key(event_name: str, key: str) -> str:
    """Frozen format: what the keyed stage partitions waits and domain events by."""
    return f"{event_name}\x1f{key}"


def idempotency_key(run_id: str, position: int, step: str) -> str:
    """Frozen format: stable across retries and redeliveries of one step of one run."""
    return f"{run_id}/{position}/{step}"


class Decider:
    def __init__(
        self, app: App, cache: InstanceCache | None = None, rng: random.Random | None = None
    ) -> None:
        self.app = app
        self.cache = cache if cache is not None else InstanceCache()
        self._rng = rng or random.Random()

    # -- entry points -------------------------------------------------------------------------------------
    def handle(
        self, state: st.RunState | None, event: Event, now_ms: int
    ) -> tuple[st.RunState | None, Effects]:
        body = event.body
        if isinstance(body, ev.StartRun):
            return self._on_start(state, event, body, now_ms)
        if state is None:
            return None, Effects(dead_letter=f"{event.kind} for unknown run {event.run_id!r}")
        if isinstance(body, ev.StepCompleted | ev.StepFailed):
            return state, self._on_step_result(state, body, now_ms)
        if isinstance(body, ev.StepStarted):
            return state, self._on_step_started(state, body, now_ms)
        if isinstance(body, ev.Signal):
            return state, self._on_signal(state, body, now_ms)
        if isinstance(body, ev.CancelRun):
            return state, self._on_cancel(state, body, now_ms)
        if isinstance(body, ev.ResumeRun):
            return state, self._on_resume(state, body, now_ms)
        return state, Effects(dead_letter=f"{event.kind} is not a request the inbox accepts")

    def fire_timer(self, state: st.RunState, tag: str, now_ms: int) -> Effects:
        kind, _, arg = tag.partition(":")
        if state.status not in (st.RUNNING, st.COMPENSATING):
            return Effects(ignored=f"timer {tag} of a {state.status} run")
        if kind == "retry":
            return self._on_retry_due(state, int(arg), now_ms)
        if kind == "timer":
            return self._on_timer(state, int(arg), now_ms)
        if kind == "wait":
            return self._on_wait_timeout(state, int(arg), now_ms)
        if kind == "timeout":
            position, _, attempt = arg.partition(":")
            return self._on_step_timeout(state, int(position), int(attempt), now_ms)
        if kind == "run":
            return self._on_run_timeout(state, now_ms)
        return Effects(ignored=f"unknown timer {tag!r}")

    # -- inputs -------------------------------------------------------------------------------------------
    def _on_start(
        self, state: st.RunState | None, event: Event, body: ev.StartRun, now_ms: int
    ) -> tuple[st.RunState | None, Effects]:
        if state is not None:
            fx = Effects(ignored="duplicate start")
            if state.terminal or state.status == st.PARKED:
                fx.outcomes.append(_outcome(state, now_ms))
            return state, fx
        definition = self.app.workflows.get(event.workflow)
        state = st.RunState(
            run_id=event.run_id,
            workflow=event.workflow,
            status=st.RUNNING,
            input=body.input,
            created_ms=now_ms,
            updated_ms=now_ms,
            workflow_version=definition.version if definition else "",
            parent_run_id=body.parent_run_id,
            parent_position=body.parent_position,
            admission_key=body.admission_key,
        )
        fx = Effects()
        if definition is not None and definition.timeout_ms:
            state.deadline_ms = now_ms + definition.timeout_ms
        self._record(
            state,
            fx,
            ev.RunStarted(
                body.input, state.deadline_ms, body.parent_run_id, body.parent_position, body.admission_key
            ),
            now_ms,
        )
        if definition is None:
            known = ", ".join(sorted(self.app.workflows)) or "none"
            reason = (
                f"no workflow named {event.workflow!r} in app {self.app.name!r} (known: {known}); "
                "deploy code that registers it, then resume the run"
            )
            self._park(state, fx, PARK_UNKNOWN_WORKFLOW, reason, now_ms)
            return state, fx
        try:
            inst = WorkflowInstance(self.app, definition, state.run_id, state.input, state.created_ms)
        except Exception as exc:  # noqa: BLE001 - bad input or a workflow that fails before its first await
            self._fail(state, fx, exc, now_ms)
            return state, fx
        self._advance(state, inst, fx, now_ms)
        return state, fx

    def _on_step_result(
        self, state: st.RunState, body: ev.StepCompleted | ev.StepFailed, now_ms: int
    ) -> Effects:
        step = state.step_at(body.position)
        if step is None or step.kind not in (st.KIND_STEP, st.KIND_COMPENSATION, st.KIND_CHILD):
            return Effects(dead_letter=f"result for position {body.position}, which the run never scheduled")
        if state.status not in (st.RUNNING, st.PARKED, st.COMPENSATING):
            return Effects(ignored=f"run is {state.status}")
        if step.status != st.STEP_SCHEDULED or step.attempt != body.attempt:
            return Effects(
                ignored=f"stale or duplicate result (step is {step.status}, attempt {step.attempt})"
            )
        fx = Effects()
        self._release_step(state, step, fx, now_ms)
        attempt = st.AttemptRecord(body.attempt, body.started_ms, body.finished_ms, worker=body.worker)
        step.attempts.append(attempt)
        self._record(state, fx, body, now_ms)
        if isinstance(body, ev.StepCompleted):
            step.status = st.STEP_COMPLETED
            step.result = body.result
            step.deadline_ms = 0
            if step.kind == st.KIND_COMPENSATION:
                if state.status == st.COMPENSATING:
                    self._next_compensation(state, fx, now_ms)
            else:
                self._deliver(state, step.position, fx, now_ms)
        else:
            attempt.error_type, attempt.message = body.error_type, body.message
            self._attempt_failed(state, step, body.error_type, body.message, body.retryable, fx, now_ms)
        return fx

    def _on_step_started(self, state: st.RunState, body: ev.StepStarted, now_ms: int) -> Effects:
        step = state.step_at(body.position)
        if step is None or step.status != st.STEP_SCHEDULED or step.attempt != body.attempt:
            return Effects(ignored="start report of an attempt that is no longer running")
        if state.status != st.RUNNING:
            return Effects(ignored=f"run is {state.status}")
        fx = Effects()
        step.started_ms = body.started_ms
        step.deadline_ms = now_ms + step.timeout_ms if step.timeout_ms else 0
        self._record(state, fx, body, now_ms)
        return fx

    def _on_signal(self, state: st.RunState, body: ev.Signal, now_ms: int) -> Effects:
        if state.status not in (st.RUNNING, st.PARKED):
            return Effects(ignored=f"signal {body.name!r} for a {state.status} run")
        fx = Effects()
        waiting = next(
            (
                s
                for s in state.steps
                if s.kind == st.KIND_WAIT
                and s.status == st.STEP_WAITING
                and s.event_name == body.name
                and (not s.event_key or s.event_key == body.key)
            ),
            None,
        )
        if waiting is None:  # kept until the workflow waits for it
            state.signals.append(st.BufferedSignal(body.name, body.key, body.payload, now_ms, body.source))
            self._record(
                state, fx, ev.EventReceived(-1, body.name, body.key, body.payload, body.source), now_ms
            )
            return fx
        waiting.status = st.STEP_COMPLETED
        waiting.result = body.payload
        waiting.deadline_ms = 0
        self._unsubscribe(state, waiting, fx, now_ms)
        self._record(
            state,
            fx,
            ev.EventReceived(waiting.position, body.name, body.key, body.payload, body.source),
            now_ms,
        )
        self._deliver(state, waiting.position, fx, now_ms)
        return fx

    def _on_cancel(self, state: st.RunState, body: ev.CancelRun, now_ms: int) -> Effects:
        if state.terminal:
            fx = Effects(ignored=f"cancel of a {state.status} run")
            fx.outcomes.append(_outcome(state, now_ms))
            return fx
        if state.status == st.COMPENSATING:
            return Effects(ignored="cancel of a run that is already compensating")
        fx = Effects()
        self._stop_pending(state, fx, now_ms)
        if self._begin_compensation(state, fx, st.CANCELLED, "Cancelled", body.reason, now_ms):
            return fx
        state.status = st.CANCELLED
        state.error_type, state.error_message = "Cancelled", body.reason
        self._record(state, fx, ev.RunCancelled(body.reason), now_ms)
        self._ended(state, fx, now_ms)
        self.cache.evict(state.run_id)
        return fx

    def _on_resume(self, state: st.RunState, body: ev.ResumeRun, now_ms: int) -> Effects:
        if state.status == st.PARKED and body.from_position < 0 and state.ending:
            fx = Effects()
            self._record(state, fx, ev.RunResumed(body.reason, -1), now_ms)
            st.resume(state, -1)  # back to compensating
            for comp in state.steps:
                if comp.kind == st.KIND_COMPENSATION and comp.status == st.STEP_FAILED:
                    comp.attempt += 1
                    comp.status = st.STEP_SCHEDULED
                    comp.error_type = comp.error_message = ""
                    self._schedule(state, comp, fx, now_ms)
            return fx
        if state.status == st.PARKED and body.from_position < 0:
            fx = Effects()
            self._record(state, fx, ev.RunResumed(body.reason, -1), now_ms)
            st.resume(state, -1)
            self.cache.evict(state.run_id)
            inst = self._instance(state, fx, now_ms)  # parks again if the code still diverges
            if inst is not None:
                self._advance(state, inst, fx, now_ms)
            return fx
        if state.status != st.FAILED:
            return Effects(ignored=f"resume of a {state.status} run (only parked or failed runs resume)")
        position = body.from_position
        if position < 0:
            failed = [s.position for s in state.steps if s.status == st.STEP_FAILED]
            if not failed:
                return Effects(dead_letter="re-run of a run with no failed step: name the step position")
            position = failed[0]
        step = state.step_at(position)
        if step is None or step.kind != st.KIND_STEP:
            return Effects(dead_letter=f"re-run from position {position}, which is not a step of the run")
        fx = Effects()
        self._record(state, fx, ev.RunResumed(body.reason, position), now_ms)
        st.resume(state, position)
        self.cache.evict(state.run_id)
        step.attempt += 1
        step.status = st.STEP_SCHEDULED
        self._schedule(state, step, fx, now_ms)
        return fx

    # -- timers -------------------------------------------------------------------------------------------
    def _on_retry_due(self, state: st.RunState, position: int, now_ms: int) -> Effects:
        step = state.step_at(position)
        if step is None or step.status != st.STEP_BACKOFF:
            return Effects(ignored="retry timer for a step that is no longer waiting")
        fx = Effects()
        step.status = st.STEP_SCHEDULED
        step.attempt += 1
        step.due_ms = 0
        self._schedule(state, step, fx, now_ms)
        return fx

    def _on_timer(self, state: st.RunState, position: int, now_ms: int) -> Effects:
        step = state.step_at(position)
        if step is None or step.kind != st.KIND_TIMER or step.status != st.STEP_WAITING:
            return Effects(ignored="timer already fired")
        fx = Effects()
        step.status = st.STEP_COMPLETED
        self._record(state, fx, ev.TimerFired(position), now_ms)
        self._deliver(state, position, fx, now_ms)
        return fx

    def _on_wait_timeout(self, state: st.RunState, position: int, now_ms: int) -> Effects:
        step = state.step_at(position)
        if step is None or step.kind != st.KIND_WAIT or step.status != st.STEP_WAITING:
            return Effects(ignored="wait already resolved")
        fx = Effects()
        step.status = "timed_out"
        step.result = None
        self._unsubscribe(state, step, fx, now_ms)
        self._record(state, fx, ev.WaitTimedOut(position), now_ms)
        self._deliver(state, position, fx, now_ms)
        return fx

    def _on_step_timeout(self, state: st.RunState, position: int, attempt: int, now_ms: int) -> Effects:
        step = state.step_at(position)
        if step is None or step.status != st.STEP_SCHEDULED or step.attempt != attempt:
            return Effects(ignored="timeout of an attempt that already ended")
        fx = Effects()
        which = "schedule_to_start" if not step.started_ms and step.schedule_to_start_ms else "start_to_close"
        limit = step.schedule_to_start_ms if which == "schedule_to_start" else step.timeout_ms
        self._record(state, fx, ev.StepTimedOut(position, attempt, which), now_ms)
        self._release_step(state, step, fx, now_ms)
        fx.commands.append((step.queue, self._command(state, step, now_ms, cancel=True)))
        message = f"attempt {attempt} exceeded its {which.replace('_', '-')} timeout of {limit} ms"
        step.attempts.append(st.AttemptRecord(attempt, step.started_ms, now_ms, "StepTimeout", message))
        self._attempt_failed(state, step, "StepTimeout", message, True, fx, now_ms)
        return fx

    def _on_run_timeout(self, state: st.RunState, now_ms: int) -> Effects:
        if state.status != st.RUNNING:  # compensating: the deadline already fired and started it
            return Effects(ignored=f"run deadline of a {state.status} run")
        if not state.deadline_ms or now_ms < state.deadline_ms:
            return Effects(ignored="run deadline moved")
        fx = Effects()
        self._stop_pending(state, fx, now_ms)
        message = f"run exceeded its timeout of {state.deadline_ms - state.created_ms} ms"
        if not self._begin_compensation(state, fx, st.FAILED, "RunTimeout", message, now_ms):
            self._fail_with(state, fx, "RunTimeout", message, now_ms)
        return fx

    # -- shared transitions -------------------------------------------------------------------------------
    def _attempt_failed(
        self,
        state: st.RunState,
        step: st.StepRecord,
        error_type: str,
        message: str,
        retryable: bool,
        fx: Effects,
        now_ms: int,
    ) -> None:
        policy = self._policy(step)
        step.deadline_ms = 0
        if retryable and policy.allows_retry(step.attempt, error_type):
            step.status = st.STEP_BACKOFF
            step.due_ms = now_ms + policy.delay_ms(step.attempt, self._rng)
            self._record(state, fx, ev.RetryScheduled(step.position, step.attempt + 1, step.due_ms), now_ms)
            return
        step.status = st.STEP_FAILED
        step.error_type, step.error_message = error_type, message
        if step.kind == st.KIND_COMPENSATION:
            reason = (
                f"compensation {step.step!r} (undoing position {step.compensate}) failed after "
                f"{step.attempt} attempt(s): {error_type}: {message}; fix it, then resume the run to go on "
                "compensating"
            )
            self._park(state, fx, "compensation_failed", reason, now_ms)
            return
        failure = StepFailedError(step.step, error_type, message, step.attempt)
        self._deliver(state, step.position, fx, now_ms, failure)

    def _deliver(
        self,
        state: st.RunState,
        position: int,
        fx: Effects,
        now_ms: int,
        failure: StepFailedError | None = None,
    ) -> None:
        """A command of the workflow has its outcome: feed it to the workflow and record what follows.

        The outcome is recorded before the instance is (re)built, so a run parked during re-execution still
        keeps it for a resume.
        """
        inst = self._instance(state, fx, now_ms) if state.status == st.RUNNING else None
        state.resolutions.append(st.Resolution(position, now_ms))
        if inst is not None:
            inst.resolve(position, now_ms, state.steps[position].result, failure)
            self._advance(state, inst, fx, now_ms)

    def _stop_pending(self, state: st.RunState, fx: Effects, now_ms: int) -> None:
        """Cancel everything the run still waits on; workers running its steps are told."""
        for step in state.steps:
            if step.status == st.STEP_SCHEDULED and step.kind in (st.KIND_STEP, st.KIND_COMPENSATION):
                self._release_step(state, step, fx, now_ms)
                fx.commands.append((step.queue, self._command(state, step, now_ms, cancel=True)))
            if step.status == st.STEP_WAITING:
                self._unsubscribe(state, step, fx, now_ms)
            if step.status == st.STEP_SCHEDULED and step.kind == st.KIND_CHILD:
                cancel = ev.CancelRun(f"parent {state.run_id} ended", requested_by=f"parent:{state.run_id}")
                fx.inbox.append(
                    Event(f"{state.run_id}/{step.position}/cancel", step.event_key, step.step, now_ms, cancel)
                )
            if step.status in (st.STEP_SCHEDULED, st.STEP_BACKOFF, st.STEP_WAITING):
                step.status = st.STEP_CANCELLED
                step.deadline_ms = 0
                step.due_ms = 0
        state.signals.clear()
        self.cache.evict(state.run_id)

    # -- workflow execution -------------------------------------------------------------------------------
    def _instance(self, state: st.RunState, fx: Effects, now_ms: int) -> WorkflowInstance | None:
        """The live instance of ``state``'s run, re-executed from its record when not cached."""
        inst = self.cache.get(state.run_id)
        if (
            inst is not None
            and inst.applied == len(state.resolutions)
            and len(inst.issued) == len(state.steps)
        ):
            return inst
        if inst is not None:
            self.cache.evict(state.run_id)
        definition = self.app.workflows.get(state.workflow)
        if definition is None:
            reason = f"workflow {state.workflow!r} is no longer registered"
            self._park(state, fx, PARK_UNKNOWN_WORKFLOW, reason, now_ms)
            return None
        try:
            inst = self._replay(state, definition)
        except NonDeterminismError as exc:
            self._park(state, fx, PARK_NON_DETERMINISM, str(exc), now_ms)
            return None
        except Exception as exc:  # noqa: BLE001 - user code raising differently on replay is also divergence
            reason = f"re-execution raised {type(exc).__name__}: {exc}"
            self._park(state, fx, PARK_NON_DETERMINISM, reason, now_ms)
            return None
        self.cache.put(state.run_id, inst)
        return inst

    def _replay(self, state: st.RunState, definition: WorkflowDefinition) -> WorkflowInstance:
        """Re-execute the workflow against its record; NonDeterminismError at the first divergence."""
        recorded = [(s.kind, s.step) for s in state.steps]
        inst = WorkflowInstance(self.app, definition, state.run_id, state.input, state.created_ms, recorded)
        try:
            _check_replay(state, inst)
            for res in state.resolutions:
                step = state.steps[res.position]
                failure = None
                if step.status == st.STEP_FAILED:
                    failure = StepFailedError(step.step, step.error_type, step.error_message, step.attempt)
                inst.resolve(res.position, res.timestamp_ms, step.result, failure)
                _check_replay(state, inst)
            if len(inst.issued) < len(state.steps):
                missing = state.steps[len(inst.issued)]
                raise NonDeterminismError(
                    f"history has {missing.kind} {missing.step!r} at position {missing.position}, "
                    "but the current code did not issue it"
                )
        except BaseException:
            inst.close()
            raise
        return inst

    def _advance(self, state: st.RunState, inst: WorkflowInstance, fx: Effects, now_ms: int) -> None:
        """Record the commands the workflow issued since last time, and its end if it ended."""
        while True:
            ready = [self._issue(state, issued, fx, now_ms) for issued in inst.issued[len(state.steps) :]]
            ready_positions = [p for p in ready if p is not None]
            if not ready_positions:
                break
            for position in ready_positions:  # waits satisfied by signals that came earlier
                state.resolutions.append(st.Resolution(position, now_ms))
                inst.resolve(position, now_ms, state.steps[position].result, None)
        if not inst.done and not inst.uses_asyncio_timers:
            if any(s.status in (st.STEP_SCHEDULED, st.STEP_BACKOFF) for s in state.steps):
                self.cache.put(state.run_id, inst)
            else:  # only sleeping or waiting: hold no coroutine; it is re-executed when it wakes
                self.cache.evict(state.run_id)
                inst.close()
            return
        try:
            self._end(state, inst, fx, now_ms)
        finally:
            inst.close()  # ended runs free their loop whether or not they were ever cached

    def _issue(self, state: st.RunState, issued: IssuedStep, fx: Effects, now_ms: int) -> int | None:
        """Record one new command; returns its position when it is already resolved (a buffered signal)."""
        step = st.StepRecord(
            position=issued.position,
            step=issued.step,
            queue=issued.queue,
            status=st.STEP_SCHEDULED,
            attempt=1,
            args=issued.args,
            scheduled_ms=now_ms,
            retry=issued.retry,
            timeout_ms=issued.timeout_ms,
            kind=issued.kind,
            schedule_to_start_ms=issued.schedule_to_start_ms,
            compensate=issued.compensate,
        )
        state.steps.append(step)
        if issued.kind == st.KIND_STEP:
            self._schedule(state, step, fx, now_ms)
            return None
        if issued.kind == st.KIND_CHILD:
            step.event_key = issued.key
            started = ev.ChildStarted(step.position, issued.step, issued.key, issued.args, issued.detach)
            self._record(state, fx, started, now_ms)
            request = ev.StartRun(
                issued.args,
                requested_by=f"parent:{state.run_id}",
                parent_run_id="" if issued.detach else state.run_id,
                parent_position=-1 if issued.detach else step.position,
            )
            fx.inbox.append(
                Event(f"{state.run_id}/{step.position}/start", issued.key, issued.step, now_ms, request)
            )
            if issued.detach:
                step.status = st.STEP_COMPLETED
                return step.position
            return None
        if issued.kind == st.KIND_MARKER:
            step.status = st.STEP_COMPLETED
            self._record(state, fx, ev.MarkerRecorded(step.position, step.step), now_ms)
            return None
        step.status = st.STEP_WAITING
        step.deadline_ms = issued.due_ms
        if issued.kind == st.KIND_TIMER:
            self._record(state, fx, ev.TimerStarted(step.position, step.deadline_ms), now_ms)
            return None
        step.event_name, step.event_key = issued.step, issued.key
        self._record(
            state,
            fx,
            ev.WaitStarted(step.position, issued.step, issued.key, issued.due_ms, issued.lookback_ms),
            now_ms,
        )
        for i, signal in enumerate(state.signals):
            if signal.name == issued.step and (not issued.key or signal.key == issued.key):
                del state.signals[i]
                step.status = st.STEP_COMPLETED
                step.deadline_ms = 0
                step.result = signal.payload
                body = ev.EventReceived(step.position, signal.name, signal.key, signal.payload, signal.source)
                self._record(state, fx, body, now_ms)
                return step.position
        if issued.key:
            sub = ev.Subscribe(issued.step, issued.key, state.run_id, step.position, issued.lookback_ms)
            fx.keyed.append((routing_key(issued.step, issued.key), self._keyed_event(state, sub, now_ms)))
        return None

    def _unsubscribe(self, state: st.RunState, step: st.StepRecord, fx: Effects, now_ms: int) -> None:
        if step.kind == st.KIND_WAIT and step.event_key:
            body = ev.Unsubscribe(step.event_name, step.event_key, state.run_id, step.position)
            fx.keyed.append(
                (routing_key(step.event_name, step.event_key), self._keyed_event(state, body, now_ms))
            )

    @staticmethod
    def _keyed_event(state: st.RunState, body: Body, now_ms: int) -> Event:
        return Event(
            f"{state.run_id}/k{state.next_seq}/{type(body).__name__}",
            state.run_id,
            state.workflow,
            now_ms,
            body,
        )

    def _end(self, state: st.RunState, inst: WorkflowInstance, fx: Effects, now_ms: int) -> None:
        if inst.uses_asyncio_timers:
            reason = (
                "workflow awaited an asyncio timer (asyncio.sleep/wait_for); use ctx.sleep for durable time"
            )
            self._park(state, fx, PARK_WORKFLOW_ERROR, reason, now_ms)
            return
        result, exc = inst.outcome()
        if exc is not None:
            self._fail(state, fx, exc, now_ms)
            return
        try:
            data = self.app.data.encode(result, what=f"result of workflow {state.workflow!r}")
        except Exception as enc_exc:  # noqa: BLE001
            self._fail(state, fx, enc_exc, now_ms)
            return
        self._stop_pending(state, fx, now_ms)  # a workflow may return while steps it did not await run
        state.status = st.COMPLETED
        state.result = data
        self._record(state, fx, ev.RunCompleted(result=data), now_ms)
        self._ended(state, fx, now_ms)

    # -- helpers ------------------------------------------------------------------------------------------
    def _schedule(self, state: st.RunState, step: st.StepRecord, fx: Effects, now_ms: int) -> None:
        key = idempotency_key(state.run_id, step.position, step.step)
        step.started_ms = 0
        step.error_type = step.error_message = ""
        first_limit = step.schedule_to_start_ms or step.timeout_ms
        step.deadline_ms = now_ms + first_limit if first_limit else 0
        body = ev.StepScheduled(
            step.position,
            step.step,
            step.queue,
            step.attempt,
            step.args,
            key,
            step.retry,
            step.timeout_ms,
            step.schedule_to_start_ms,
            step.kind,
            step.compensate,
        )
        self._record(state, fx, body, now_ms)
        self._dispatch(state, step, fx, now_ms)

    # -- step admission (a step's own concurrency / rate limits, held in the keyed stage) -------------------
    def _step_admission(self, step: st.StepRecord) -> tuple[str, str, float] | None:
        """(admission name, key, priority) of a step whose definition limits it, else None."""
        definition = self.app.steps.get(step.step)
        admission = definition.admission if definition is not None else None
        if admission is None:
            return None
        args = self.app.data.decode(step.args) if step.args else []
        first = args[0] if args else None
        key = str(extract(first, admission.key)) if admission.key else ""
        priority = float(admission.priority(first)) if admission.priority else 0.0
        return f"step:{step.step}", key, priority

    def _dispatch(self, state: st.RunState, step: st.StepRecord, fx: Effects, now_ms: int) -> None:
        cmd = self._command(state, step, now_ms)
        limited = self._step_admission(step)
        if limited is None:
            fx.commands.append((step.queue, cmd))
            return
        name, key, priority = limited
        slot = f"{state.run_id}/{step.position}/{step.attempt}"
        request = ev.AdmitRequest(name, slot, encode_command(cmd), key, priority, "", step.queue)
        fx.keyed.append(
            (admit_routing(name, key), Event(f"{slot}/admit", state.run_id, state.workflow, now_ms, request))
        )

    def _release_step(self, state: st.RunState, step: st.StepRecord, fx: Effects, now_ms: int) -> None:
        """An admitted attempt ended: free its slot."""
        limited = self._step_admission(step)
        if limited is None:
            return
        name, key, _ = limited
        slot = f"{state.run_id}/{step.position}/{step.attempt}"
        release = Event(f"{slot}/release", state.run_id, state.workflow, now_ms, ev.Release(name, key, slot))
        fx.keyed.append((admit_routing(name, key), release))

    @staticmethod
    def _command(state: st.RunState, step: st.StepRecord, now_ms: int, cancel: bool = False) -> StepCommand:
        return StepCommand(
            run_id=state.run_id,
            workflow=state.workflow,
            position=step.position,
            step=step.step,
            attempt=step.attempt,
            args=step.args,
            idempotency_key=idempotency_key(state.run_id, step.position, step.step),
            scheduled_ms=now_ms,
            timeout_ms=step.timeout_ms,
            report_start=bool(step.timeout_ms or step.schedule_to_start_ms),
            cancel=cancel,
            schedule_to_start_ms=step.schedule_to_start_ms,
        )

    def _policy(self, step: st.StepRecord) -> RetryPolicy:
        if step.retry:
            return RetryPolicy(**_policy_fields(json.loads(step.retry)))
        definition = self.app.steps.get(step.step)
        return definition.retry if definition else RetryPolicy(max_attempts=1)

    def _fail(self, state: st.RunState, fx: Effects, exc: BaseException, now_ms: int) -> None:
        error_type = getattr(exc, "error_type", None) or type(exc).__name__
        self._stop_pending(state, fx, now_ms)
        if not self._begin_compensation(state, fx, st.FAILED, error_type, str(exc), now_ms):
            self._fail_with(state, fx, error_type, str(exc), now_ms)

    # -- sagas --------------------------------------------------------------------------------------------
    @staticmethod
    def _to_compensate(state: st.RunState) -> list[st.StepRecord]:
        """Completed steps with a compensation not yet run, newest first."""
        done = {int(s.compensate) for s in state.steps if s.kind == st.KIND_COMPENSATION}
        return [
            s
            for s in reversed(state.steps)
            if s.kind == st.KIND_STEP
            and s.status == st.STEP_COMPLETED
            and s.compensate
            and s.position not in done
        ]

    def _begin_compensation(
        self, state: st.RunState, fx: Effects, ending: str, error_type: str, message: str, now_ms: int
    ) -> bool:
        if not self._to_compensate(state):
            return False
        state.status, state.ending = st.COMPENSATING, ending
        state.error_type, state.error_message = error_type, message
        self._record(state, fx, ev.CompensationStarted(ending, error_type, message), now_ms)
        self._next_compensation(state, fx, now_ms)
        return True

    def _next_compensation(self, state: st.RunState, fx: Effects, now_ms: int) -> None:
        todo = self._to_compensate(state)
        if not todo:
            ending, state.ending = state.ending, ""
            if ending == st.CANCELLED:
                state.status = st.CANCELLED
                self._record(state, fx, ev.RunCancelled(state.error_message), now_ms)
                self._ended(state, fx, now_ms)
            else:
                self._fail_with(state, fx, state.error_type, state.error_message, now_ms)
            return
        original = todo[0]
        definition = self.app.steps.get(original.compensate)
        step = st.StepRecord(
            position=len(state.steps),
            step=original.compensate,
            queue=definition.queue if definition else original.queue,
            status=st.STEP_SCHEDULED,
            attempt=1,
            args=original.args,
            scheduled_ms=now_ms,
            timeout_ms=definition.timeout_ms if definition else 0,
            kind=st.KIND_COMPENSATION,
            compensate=str(original.position),
        )
        state.steps.append(step)
        self._schedule(state, step, fx, now_ms)

    def _fail_with(self, state: st.RunState, fx: Effects, error_type: str, message: str, now_ms: int) -> None:
        state.status = st.FAILED
        state.error_type, state.error_message = error_type, message
        self._record(state, fx, ev.RunFailed(error_type, message), now_ms)
        self._ended(state, fx, now_ms)
        self.cache.evict(state.run_id)

    def _park(self, state: st.RunState, fx: Effects, kind: str, reason: str, now_ms: int) -> None:
        state.status = st.PARKED
        self._record(state, fx, ev.RunParked(kind, reason), now_ms)
        if state.ending:
            # Parked while compensating: the run keeps the error it is ending with (reported once the
            # compensations are done); the reason for parking goes to whoever is waiting now.
            fx.outcomes.append(replace(_outcome(state, now_ms), error_type=kind, error_message=reason))
        else:
            state.error_type, state.error_message = kind, reason
            self._ended(state, fx, now_ms)
        self.cache.evict(state.run_id)

    @staticmethod
    def _ended(state: st.RunState, fx: Effects, now_ms: int) -> None:
        """Tell waiting clients (and a parent run) how the run stands now that it ended or parked."""
        fx.outcomes.append(_outcome(state, now_ms))
        to_parent = _to_parent(state, now_ms)
        if to_parent is not None:
            fx.inbox.append(to_parent)
        if state.admission_key and state.terminal:  # free the run's admission slot
            _, workflow, key = state.admission_key.split("\x1f", 2)
            body = ev.Release(workflow, key, state.run_id)
            fx.keyed.append(
                (state.admission_key, Event(f"{state.run_id}/release", state.run_id, workflow, now_ms, body))
            )

    @staticmethod
    def _record(state: st.RunState, fx: Effects, body: Body, now_ms: int) -> None:
        seq = state.take_seq()
        state.updated_ms = now_ms
        fx.history.append(
            Event(
                event_id=f"{state.run_id}/{seq}",
                run_id=state.run_id,
                workflow=state.workflow,
                timestamp_ms=now_ms,
                body=body,
                seq=seq,
                workflow_version=state.workflow_version,
            )
        )


def _check_replay(state: st.RunState, inst: WorkflowInstance) -> None:
    for issued in inst.issued[: len(state.steps)]:
        recorded = state.steps[issued.position]
        if recorded.step != issued.step or recorded.kind != issued.kind:
            raise NonDeterminismError(
                f"at position {issued.position} the history has {recorded.kind} {recorded.step!r} but the "
                f"current code issued {issued.kind} {issued.step!r} (workflow code changed under a running "
                "run; deploy the previous code, or guard the change behind a version check)"
            )


def _policy_fields(raw: dict[str, Any]) -> dict[str, Any]:
    raw["non_retryable"] = tuple(raw.get("non_retryable") or ())
    return raw


def _to_parent(state: st.RunState, now_ms: int) -> Event | None:
    """A child's end, as the result of the parent's ``ctx.child`` command."""
    if not state.parent_run_id or not state.terminal:
        return None
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
    return Event(f"{state.run_id}/end", state.parent_run_id, "", now_ms, body)


def _outcome(state: st.RunState, now_ms: int) -> RunOutcome:
    return RunOutcome(
        run_id=state.run_id,
        workflow=state.workflow,
        status=state.status,
        timestamp_ms=now_ms,
        result=state.result,
        error_type=state.error_type,
        error_message=state.error_message,
    )


def timers_of(state: st.RunState) -> set[tuple[int, str]]:
    """The (due_ms, tag) timers a run's state implies; the store keeps an index of them by due time."""
    if state.status not in (st.RUNNING, st.COMPENSATING):
        return set()
    timers: set[tuple[int, str]] = set()
    for s in state.steps:
        if s.status == st.STEP_BACKOFF:
            timers.add((s.due_ms, f"retry:{s.position}"))
        elif s.status == st.STEP_SCHEDULED and s.deadline_ms:
            timers.add((s.deadline_ms, f"timeout:{s.position}:{s.attempt}"))
        elif s.status == st.STEP_WAITING and s.kind == st.KIND_TIMER:
            timers.add((s.deadline_ms, f"timer:{s.position}"))
        elif s.status == st.STEP_WAITING and s.kind == st.KIND_WAIT and s.deadline_ms:
            timers.add((s.deadline_ms, f"wait:{s.position}"))
    if state.deadline_ms and state.status == st.RUNNING:  # compensations run to the end, past the deadline
        timers.add((state.deadline_ms, "run"))
    return timers
