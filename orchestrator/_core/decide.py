"""The decider: (run state, input) -> events. The heart of the engine, and it never raises.

No Kafka, no RocksDB: the processor loop does all I/O around it, and tests drive it directly. Each input
(``handle``) or due timer (``fire_timer``) is turned into history events; ``_record`` applies each one
through ``evolve`` (the only code that changes a run's state) and derives what it asks of the outside
world through ``Commands.derive`` (step commands, outcomes, keyed and inbox requests). Anything that goes
wrong inside, whether user code, a non-determinism, a bad input or a bug of ours, becomes an event (the
run is parked with the reason), never an exception out of here.
"""

from __future__ import annotations

import json
import random
import traceback
from collections.abc import Callable
from typing import Any

from orchestrator._core import events as ev
from orchestrator._core import formats as fm
from orchestrator._core import state as st
from orchestrator._core.commands import Commands, outcome_of, stopped_by
from orchestrator._core.effects import Effects, StepCommand
from orchestrator._core.events import Body, Event
from orchestrator._core.evolve import evolve
from orchestrator._core.instance_cache import InstanceCache
from orchestrator._core.runtime import IssuedStep, WorkflowInstance
from orchestrator._core.tags import tags_error
from orchestrator.app import App, WorkflowDefinition
from orchestrator.errors import NonDeterminismError, StepFailedError
from orchestrator.retry import RetryPolicy

PARK_NON_DETERMINISM = "non_determinism"
PARK_UNKNOWN_WORKFLOW = "unknown_workflow"
PARK_WORKFLOW_ERROR = "workflow_error"
PARK_COMPENSATION_FAILED = "compensation_failed"
PARK_INTERNAL_ERROR = "internal_error"


def _no_encoder(cmd: StepCommand) -> bytes:
    raise RuntimeError(
        f"step {cmd.step!r} has an admission limit, but this Decider was built without encode_command; "
        "use orchestrator._engine.decider.Decider, which encodes commands in the wire format"
    )


class Decider:
    """Decides the events of one input at a time; one instance per processor (not thread-safe)."""

    def __init__(
        self,
        app: App,
        cache: InstanceCache | None = None,
        rng: random.Random | None = None,
        *,
        encode_command: Callable[[StepCommand], bytes] | None = None,
    ) -> None:
        self.app = app
        self.cache = cache if cache is not None else InstanceCache()
        self._rng = rng or random.Random()
        self._commands = Commands(app, encode_command or _no_encoder)
        self._current: st.RunState | None = None  # the run being decided, once it exists (error guard)

    # -- entry points -------------------------------------------------------------------------------------
    def handle(
        self, state: st.RunState | None, event: Event, now_ms: int
    ) -> tuple[st.RunState | None, Effects]:
        fx = Effects()
        self._current = state
        try:
            self._handle(state, event, fx, now_ms)
        except Exception as exc:  # noqa: BLE001 - deciding never raises: the error becomes an event
            self._internal_error(fx, exc, f"handling {event.kind}", now_ms)
        return self._current, fx

    def fire_timer(self, state: st.RunState, tag: str, now_ms: int) -> Effects:
        fx = Effects()
        self._current = state
        try:
            self._fire(state, tag, fx, now_ms)
        except Exception as exc:  # noqa: BLE001 - deciding never raises: the error becomes an event
            self._internal_error(fx, exc, f"firing timer {tag!r}", now_ms)
        return fx

    def park(self, state: st.RunState, kind: str, reason: str, now_ms: int) -> Effects:
        """Park ``state``'s run for an operator (``kind``: why, ``reason``: what to do about it).

        For errors the processor meets outside ``handle``; an ended run stays ended.
        """
        fx = Effects()
        if state.terminal:
            fx.ignored = f"park ({kind}) of a {state.status} run"
            return fx
        self._current = state
        try:
            self._park(state, fx, kind, reason, now_ms)
        except Exception as exc:  # noqa: BLE001
            fx.dead_letter = f"parking run {state.run_id!r} failed: {type(exc).__name__}: {exc}"
        return fx

    def _internal_error(self, fx: Effects, exc: Exception, doing: str, now_ms: int) -> None:
        """A bug (ours or an unexpected input) while deciding: park the run with where it happened.

        Events recorded before the error stay: each was applied to the state, so state and history agree.
        """
        state = self._current
        frame = traceback.extract_tb(exc.__traceback__)[-1] if exc.__traceback__ else None
        where = f" at {frame.filename}:{frame.lineno}" if frame else ""
        reason = (
            f"internal error {doing}: {type(exc).__name__}: {exc}{where}; the run is parked so nothing is "
            "lost: report it, deploy a fix, then resume the run"
        )
        if state is None or state.terminal:
            fx.dead_letter = reason
            return
        try:
            self.cache.evict(state.run_id)
            self._park(state, fx, PARK_INTERNAL_ERROR, reason, now_ms)
        except Exception as again:  # noqa: BLE001 - recording the park itself failed: keep the input
            fx.dead_letter = f"{reason} (parking failed too: {type(again).__name__}: {again})"

    def _handle(self, state: st.RunState | None, event: Event, fx: Effects, now_ms: int) -> None:
        body = event.body
        if isinstance(body, ev.StartRun):
            self._on_start(state, event, body, fx, now_ms)
        elif state is None:
            fx.dead_letter = f"{event.kind} for unknown run {event.run_id!r}"
        elif isinstance(body, ev.StepCompleted | ev.StepFailed):
            self._on_step_result(state, body, fx, now_ms)
        elif isinstance(body, ev.StepStarted):
            self._on_step_started(state, body, fx, now_ms)
        elif isinstance(body, ev.Signal):
            self._on_signal(state, body, fx, now_ms)
        elif isinstance(body, ev.CancelRun):
            self._on_cancel(state, body, fx, now_ms)
        elif isinstance(body, ev.ResumeRun):
            self._on_resume(state, body, fx, now_ms)
        else:
            fx.dead_letter = f"{event.kind} is not a request the inbox accepts"

    def _fire(self, state: st.RunState, tag: str, fx: Effects, now_ms: int) -> None:
        kind, arg = fm.parse_tag(tag)
        if state.status not in (st.RUNNING, st.COMPENSATING):
            fx.ignored = f"timer {tag} of a {state.status} run"
        elif kind == "retry":
            self._on_retry_due(state, int(arg), fx, now_ms)
        elif kind == "timer":
            self._on_timer(state, int(arg), fx, now_ms)
        elif kind == "wait":
            self._on_wait_timeout(state, int(arg), fx, now_ms)
        elif kind == "timeout":
            position, _, attempt = arg.partition(":")
            self._on_step_timeout(state, int(position), int(attempt), fx, now_ms)
        elif tag == fm.RUN_TIMER:
            self._on_run_timeout(state, fx, now_ms)
        else:
            fx.ignored = f"unknown timer {tag!r}"

    # -- recording ----------------------------------------------------------------------------------------
    def _record(self, state: st.RunState, fx: Effects, body: Body, now_ms: int) -> st.RunState:
        """Append ``body`` to the run's history, apply it (``evolve``), and derive what it asks for."""
        seq = state.next_seq
        event = Event(
            fm.event_id(state.run_id, seq),
            state.run_id,
            state.workflow,
            now_ms,
            body,
            seq,
            state.workflow_version,
        )
        stopped = stopped_by(state, body)
        evolve(state, event)
        fx.history.append(event)
        self._commands.derive(fx, event, state, stopped)
        return state

    def _record_start(
        self, run_id: str, workflow: str, version: str, fx: Effects, body: ev.RunStarted, now_ms: int
    ) -> st.RunState:
        event = Event(fm.event_id(run_id, 0), run_id, workflow, now_ms, body, 0, version)
        state = evolve(None, event)
        fx.history.append(event)
        self._current = state
        return state

    # -- inputs -------------------------------------------------------------------------------------------
    def _on_start(
        self, state: st.RunState | None, event: Event, body: ev.StartRun, fx: Effects, now_ms: int
    ) -> None:
        if state is not None:
            fx.ignored = "duplicate start"
            if state.terminal or state.status == st.PARKED:
                fx.outcomes.append(outcome_of(state, now_ms))  # a reply: the second caller learns the end
            return
        definition = self.app.workflows.get(event.workflow)
        deadline = now_ms + definition.timeout_ms if definition is not None and definition.timeout_ms else 0
        started = ev.RunStarted(
            body.input, deadline, body.parent_run_id, body.parent_position, body.admission_key
        )
        version = definition.version if definition is not None else ""
        state = self._record_start(event.run_id, event.workflow, version, fx, started, now_ms)
        if definition is None:
            known = ", ".join(sorted(self.app.workflows)) or "none"
            reason = (
                f"no workflow named {event.workflow!r} in app {self.app.name!r} (known: {known}); "
                "deploy code that registers it, then resume the run"
            )
            self._park(state, fx, PARK_UNKNOWN_WORKFLOW, reason, now_ms)
            return
        try:
            inst = WorkflowInstance(self.app, definition, state.run_id, state.input, state.created_ms)
        except Exception as exc:  # noqa: BLE001 - bad input or a workflow that fails before its first await
            self._fail(state, fx, exc, now_ms)
            return
        self._advance(state, inst, fx, now_ms)

    def _on_step_result(
        self, state: st.RunState, body: ev.StepCompleted | ev.StepFailed, fx: Effects, now_ms: int
    ) -> None:
        step = state.step_at(body.position)
        if isinstance(step, st.StepRecord):
            attempt = step.attempt
        elif isinstance(step, st.ChildRecord):
            attempt = 1  # a child's end is its one attempt
        else:
            fx.dead_letter = f"result for position {body.position}, which the run never scheduled"
            return
        if state.status not in (st.RUNNING, st.PARKED, st.COMPENSATING):
            fx.ignored = f"run is {state.status}"
            return
        if step.status != st.STEP_SCHEDULED or attempt != body.attempt:
            fx.ignored = f"stale or duplicate result (step is {step.status}, attempt {attempt})"
            return
        self._record(state, fx, body, now_ms)
        if isinstance(step, st.ChildRecord):  # a child is never retried: its failure reaches the workflow
            failure = _failure_of(step) if isinstance(body, ev.StepFailed) else None
            self._deliver(state, step.position, fx, now_ms, failure)
        elif isinstance(body, ev.StepFailed):
            self._attempt_failed(state, step, body.error_type, body.retryable, fx, now_ms)
        elif step.kind != st.KIND_COMPENSATION:
            self._deliver(state, step.position, fx, now_ms)
        elif state.status == st.COMPENSATING:
            self._next_compensation(state, fx, now_ms)

    def _on_step_started(self, state: st.RunState, body: ev.StepStarted, fx: Effects, now_ms: int) -> None:
        step = state.record_at(body.position, st.StepRecord)
        # Recorded whenever that attempt still runs: while the run runs, compensates (a compensation's
        # command asks for the report too) or is parked (its steps keep running and its timers re-arm on
        # resume), so the start-to-close limit always counts from the start, not from the scheduling.
        if step is None or step.status != st.STEP_SCHEDULED or step.attempt != body.attempt:
            fx.ignored = "start report of an attempt that is no longer running"
        elif state.status not in (st.RUNNING, st.COMPENSATING, st.PARKED):
            fx.ignored = f"run is {state.status}"
        else:
            self._record(state, fx, body, now_ms)

    def _on_signal(self, state: st.RunState, body: ev.Signal, fx: Effects, now_ms: int) -> None:
        if state.status not in (st.RUNNING, st.PARKED):
            fx.ignored = f"signal {body.name!r} for a {state.status} run"
            return
        waiting = st.waiting_step(state, body.name, body.key)
        position = waiting.position if waiting is not None else -1  # -1: kept until the workflow waits
        self._record(
            state, fx, ev.EventReceived(position, body.name, body.key, body.payload, body.source), now_ms
        )
        if waiting is not None:
            self._deliver(state, position, fx, now_ms)

    def _on_cancel(self, state: st.RunState, body: ev.CancelRun, fx: Effects, now_ms: int) -> None:
        if state.terminal:
            fx.ignored = f"cancel of a {state.status} run"
            fx.outcomes.append(outcome_of(state, now_ms))  # a reply: the caller learns how it ended
            return
        if state.status == st.COMPENSATING:
            fx.ignored = "cancel of a run that is already compensating"
            return
        self.cache.evict(state.run_id)
        if not self._begin_compensation(state, fx, st.CANCELLED, "Cancelled", body.reason, now_ms):
            self._record(state, fx, ev.RunCancelled(body.reason), now_ms)

    def _on_resume(self, state: st.RunState, body: ev.ResumeRun, fx: Effects, now_ms: int) -> None:
        """Reopen a parked or failed run (ADR 0009, "Resuming a run").

        A run that goes back to running gets a fresh deadline (now plus its workflow's timeout), recorded
        in ``RunResumed``: the old one may have passed (that may be why it failed), and a resumed run
        must get to run. A run parked while compensating goes on compensating; its deadline is moot.
        """
        if state.status == st.PARKED and body.from_position < 0 and state.ending:
            self._record(state, fx, ev.RunResumed(body.reason, -1, -1), now_ms)  # back to compensating
            for comp in list(state.records(st.StepRecord)):
                if comp.kind == st.KIND_COMPENSATION and comp.status == st.STEP_FAILED:
                    self._schedule(state, fx, comp, comp.attempt + 1, now_ms)
            return
        if state.status == st.PARKED and body.from_position < 0:
            self._record(
                state, fx, ev.RunResumed(body.reason, -1, self._fresh_deadline(state, now_ms)), now_ms
            )
            self.cache.evict(state.run_id)
            inst = self._instance(state, fx, now_ms, fresh=0)  # parks again if the code still diverges
            if inst is not None:
                self._advance(state, inst, fx, now_ms)
            return
        if state.status != st.FAILED:
            fx.ignored = f"resume of a {state.status} run (only parked or failed runs resume)"
            return
        position, refusal = _rerun_point(state, body.from_position)
        if refusal:
            fx.dead_letter = refusal
            return
        resumed = ev.RunResumed(body.reason, position, self._fresh_deadline(state, now_ms))
        self._record(state, fx, resumed, now_ms)
        self.cache.evict(state.run_id)
        step = state.record_at(position, st.StepRecord)
        assert step is not None  # _rerun_point only picks steps
        self._schedule(state, fx, step, step.attempt + 1, now_ms)

    def _fresh_deadline(self, state: st.RunState, now_ms: int) -> int:
        """The deadline of a run resumed at ``now_ms``: its workflow's timeout from now (0: none); -1 (keep
        it) when the workflow is not registered, since such a run parks again at once."""
        definition = self.app.workflows.get(state.workflow)
        if definition is None:
            return -1
        return now_ms + definition.timeout_ms if definition.timeout_ms else 0

    # -- timers -------------------------------------------------------------------------------------------
    def _on_retry_due(self, state: st.RunState, position: int, fx: Effects, now_ms: int) -> None:
        step = state.record_at(position, st.StepRecord)
        if step is None or step.status != st.STEP_BACKOFF:
            fx.ignored = "retry timer for a step that is no longer waiting"
            return
        self._schedule(state, fx, step, step.attempt + 1, now_ms)

    def _on_timer(self, state: st.RunState, position: int, fx: Effects, now_ms: int) -> None:
        step = state.record_at(position, st.TimerRecord)
        if step is None or step.status != st.STEP_WAITING:
            fx.ignored = "timer already fired"
            return
        self._record(state, fx, ev.TimerFired(position), now_ms)
        self._deliver(state, position, fx, now_ms)

    def _on_wait_timeout(self, state: st.RunState, position: int, fx: Effects, now_ms: int) -> None:
        step = state.record_at(position, st.WaitRecord)
        if step is None or step.status != st.STEP_WAITING:
            fx.ignored = "wait already resolved"
            return
        self._record(state, fx, ev.WaitTimedOut(position), now_ms)
        self._deliver(state, position, fx, now_ms)

    def _on_step_timeout(
        self, state: st.RunState, position: int, attempt: int, fx: Effects, now_ms: int
    ) -> None:
        step = state.record_at(position, st.StepRecord)
        if step is None or step.status != st.STEP_SCHEDULED or step.attempt != attempt:
            fx.ignored = "timeout of an attempt that already ended"
            return
        which = "schedule_to_start" if not step.started_ms and step.schedule_to_start_ms else "start_to_close"
        self._record(state, fx, ev.StepTimedOut(position, attempt, which), now_ms)
        self._attempt_failed(state, step, "StepTimeout", True, fx, now_ms)

    def _on_run_timeout(self, state: st.RunState, fx: Effects, now_ms: int) -> None:
        if state.status != st.RUNNING:  # compensating: the deadline already fired and started it
            fx.ignored = f"run deadline of a {state.status} run"
            return
        if not state.deadline_ms or now_ms < state.deadline_ms:
            fx.ignored = "run deadline moved"
            return
        self.cache.evict(state.run_id)
        definition = self.app.workflows.get(state.workflow)
        limit = definition.timeout_ms if definition is not None and definition.timeout_ms else 0
        # A resumed run's deadline counts from its resume, so the limit is the workflow's, not the span.
        message = f"run exceeded its timeout of {limit or state.deadline_ms - state.created_ms} ms"
        if not self._begin_compensation(state, fx, st.FAILED, "RunTimeout", message, now_ms):
            self._fail_with(state, fx, "RunTimeout", message, now_ms)

    # -- shared transitions -------------------------------------------------------------------------------
    def _attempt_failed(
        self,
        state: st.RunState,
        step: st.StepRecord,
        error_type: str,
        retryable: bool,
        fx: Effects,
        now_ms: int,
    ) -> None:
        """A failed attempt (already recorded): retry it, or let the failure reach the workflow."""
        policy = self._policy(step)
        if retryable and policy.allows_retry(step.attempt, error_type):
            due = now_ms + policy.delay_ms(step.attempt, self._rng)
            self._record(state, fx, ev.RetryScheduled(step.position, step.attempt + 1, due), now_ms)
            return
        if step.kind == st.KIND_COMPENSATION:
            reason = (
                f"compensation {step.step!r} (undoing position {step.undoes}) failed after "
                f"{step.attempt} attempt(s): {step.error_type}: {step.error_message}; fix it, then resume "
                "the run to go on compensating"
            )
            self._park(state, fx, PARK_COMPENSATION_FAILED, reason, now_ms)
            return
        self._deliver(state, step.position, fx, now_ms, _failure_of(step))

    def _deliver(
        self,
        state: st.RunState,
        position: int,
        fx: Effects,
        now_ms: int,
        failure: StepFailedError | None = None,
    ) -> None:
        """The outcome of command ``position`` is recorded (its resolution is the last one): feed it to the
        workflow and record what follows. Recorded first, so a run parked during re-execution keeps it."""
        if state.status != st.RUNNING:
            return
        inst = self._instance(state, fx, now_ms, fresh=1)
        if inst is not None:
            inst.resolve(position, now_ms, st.result_of(state.steps[position]), failure)
            self._advance(state, inst, fx, now_ms)

    def _schedule(
        self, state: st.RunState, fx: Effects, s: st.StepRecord | IssuedStep, attempt: int, now_ms: int
    ) -> None:
        body = ev.StepScheduled(
            s.position,
            s.step,
            s.queue,
            attempt,
            s.args,
            fm.idempotency_key(state.run_id, s.position, s.step),
            s.retry,
            s.timeout_ms,
            s.schedule_to_start_ms,
            s.kind,
            s.compensate if isinstance(s, IssuedStep) or s.undoes < 0 else str(s.undoes),
        )
        self._record(state, fx, body, now_ms)

    def _policy(self, step: st.StepRecord) -> RetryPolicy:
        if step.retry:
            return RetryPolicy(**_policy_fields(json.loads(step.retry)))
        definition = self.app.steps.get(step.step)
        return definition.retry if definition else RetryPolicy(max_attempts=1)

    def _fail(self, state: st.RunState, fx: Effects, exc: BaseException, now_ms: int) -> None:
        error_type = getattr(exc, "error_type", None) or type(exc).__name__
        self.cache.evict(state.run_id)
        if not self._begin_compensation(state, fx, st.FAILED, error_type, str(exc), now_ms):
            self._fail_with(state, fx, error_type, str(exc), now_ms)

    def _fail_with(self, state: st.RunState, fx: Effects, error_type: str, message: str, now_ms: int) -> None:
        self._record(state, fx, ev.RunFailed(error_type, message), now_ms)
        self.cache.evict(state.run_id)

    def _park(self, state: st.RunState, fx: Effects, kind: str, reason: str, now_ms: int) -> None:
        self._record(state, fx, ev.RunParked(kind, reason), now_ms)
        self.cache.evict(state.run_id)

    # -- sagas --------------------------------------------------------------------------------------------
    @staticmethod
    def _to_compensate(state: st.RunState) -> list[st.StepRecord]:
        """Completed steps with a compensation not yet run, newest first."""
        steps = list(state.records(st.StepRecord))
        done = {s.undoes for s in steps if s.kind == st.KIND_COMPENSATION}
        return [
            s
            for s in reversed(steps)
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
        self._record(state, fx, ev.CompensationStarted(ending, error_type, message), now_ms)
        self._next_compensation(state, fx, now_ms)
        return True

    def _next_compensation(self, state: st.RunState, fx: Effects, now_ms: int) -> None:
        todo = self._to_compensate(state)
        if not todo:
            if state.ending == st.CANCELLED:
                self._record(state, fx, ev.RunCancelled(state.error_message), now_ms)
                self.cache.evict(state.run_id)
            else:
                self._fail_with(state, fx, state.error_type, state.error_message, now_ms)
            return
        original = todo[0]
        definition = self.app.steps.get(original.compensate)
        compensation = IssuedStep(
            position=len(state.steps),
            step=original.compensate,
            args=original.args,
            queue=definition.queue if definition else original.queue,
            timeout_ms=definition.timeout_ms if definition else 0,
            schedule_to_start_ms=definition.schedule_to_start_ms if definition else 0,
            retry="",
            kind=st.KIND_COMPENSATION,
            compensate=str(original.position),
        )
        self._schedule(state, fx, compensation, 1, now_ms)

    # -- workflow execution -------------------------------------------------------------------------------
    def _instance(self, state: st.RunState, fx: Effects, now_ms: int, fresh: int) -> WorkflowInstance | None:
        """The live instance of ``state``'s run, re-executed from its record when not cached.

        The instance has seen every resolution but the last ``fresh`` (just recorded, for the caller to
        feed). A workflow that cannot be re-executed parks the run and gives None.
        """
        seen = len(state.resolutions) - fresh
        inst = self.cache.get(state.run_id)
        if inst is not None and inst.applied == seen and len(inst.issued) == len(state.steps):
            return inst
        if inst is not None:
            self.cache.evict(state.run_id)
        definition = self.app.workflows.get(state.workflow)
        if definition is None:
            reason = f"workflow {state.workflow!r} is no longer registered"
            self._park(state, fx, PARK_UNKNOWN_WORKFLOW, reason, now_ms)
            return None
        try:
            inst = self._replay(state, definition, seen)
        except NonDeterminismError as exc:
            self._park(state, fx, PARK_NON_DETERMINISM, str(exc), now_ms)
            return None
        except Exception as exc:  # noqa: BLE001 - user code raising differently on replay is also divergence
            reason = f"re-execution raised {type(exc).__name__}: {exc}"
            self._park(state, fx, PARK_NON_DETERMINISM, reason, now_ms)
            return None
        self.cache.put(state.run_id, inst)
        return inst

    def _replay(
        self, state: st.RunState, definition: WorkflowDefinition, resolutions: int | None = None
    ) -> WorkflowInstance:
        """Re-execute the workflow against its record (the first ``resolutions`` results, default all);
        NonDeterminismError at the first divergence."""
        recorded: list[tuple[str, str]] = [(s.kind, s.name) for s in state.steps]
        inst = WorkflowInstance(self.app, definition, state.run_id, state.input, state.created_ms, recorded)
        try:
            checked = _check_replay(state, inst, 0)
            for res in state.resolutions[:resolutions]:
                step = state.steps[res.position]
                failure = _failure_of(step) if step.status == st.STEP_FAILED else None
                inst.resolve(res.position, res.timestamp_ms, st.result_of(step), failure)
                checked = _check_replay(state, inst, checked)
            if len(inst.issued) < len(state.steps):
                missing = state.steps[len(inst.issued)]
                raise NonDeterminismError(
                    f"history has {missing.kind} {missing.name!r} at position {missing.position}, "
                    "but the current code did not issue it"
                )
        except BaseException:
            inst.close()
            raise
        return inst

    def _advance(self, state: st.RunState, inst: WorkflowInstance, fx: Effects, now_ms: int) -> None:
        """Record the commands the workflow issued since last time, and its end if it ended."""
        while True:
            if not self._record_tags(state, inst, fx, now_ms):
                return
            ready = [self._issue(state, issued, fx, now_ms) for issued in inst.issued[len(state.steps) :]]
            ready_positions = [p for p in ready if p is not None]
            if not ready_positions:
                break
            for (
                position
            ) in ready_positions:  # waits satisfied by signals that came earlier, detached children
                inst.resolve(position, now_ms, st.result_of(state.steps[position]), None)
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

    def _record_tags(self, state: st.RunState, inst: WorkflowInstance, fx: Effects, now_ms: int) -> bool:
        """Record the tags the workflow set since last time (``TagsSet``); False when it parked the run.

        Tags are not positional commands: what is recorded is the difference between the tags the
        instance has set so far and the run's recorded tags, so a re-executed instance (which sets the
        same tags again) records nothing, and no history is rejected as divergent over a tag.
        """
        if inst.tags_error:
            self.cache.evict(state.run_id)
            inst.close()
            self._park(state, fx, PARK_WORKFLOW_ERROR, inst.tags_error, now_ms)
            return False
        changed = {k: v for k, v in inst.tags.items() if state.tags.get(k) != v}
        # The instance checked only its own tags; the run's recorded ones can hold keys this code no
        # longer sets (renamed across deploys), so the limit is checked again on the merged result.
        merged_error = tags_error(state.tags, changed) if changed else ""
        if merged_error:
            self.cache.evict(state.run_id)
            inst.close()
            self._park(state, fx, PARK_WORKFLOW_ERROR, merged_error, now_ms)
            return False
        if changed:
            self._record(state, fx, ev.TagsSet(changed), now_ms)
        return True

    def _issue(self, state: st.RunState, issued: IssuedStep, fx: Effects, now_ms: int) -> int | None:
        """Record one new command; returns its position when it is already resolved."""
        kind = issued.kind
        position = issued.position
        if kind == st.KIND_STEP:
            self._schedule(state, fx, issued, 1, now_ms)
            return None
        if kind == st.KIND_CHILD:
            started = ev.ChildStarted(position, issued.step, issued.key, issued.args, issued.detach)
            self._record(state, fx, started, now_ms)
            return position if issued.detach else None
        if kind == st.KIND_MARKER:
            self._record(state, fx, ev.MarkerRecorded(position, issued.step), now_ms)
            return None
        if kind == st.KIND_TIMER:
            self._record(state, fx, ev.TimerStarted(position, issued.due_ms), now_ms)
            return None
        wait = ev.WaitStarted(position, issued.step, issued.key, issued.due_ms, issued.lookback_ms)
        self._record(state, fx, wait, now_ms)
        index = st.buffered_signal(state, issued.step, issued.key)
        if index < 0:
            return None  # waits (subscribed in the keyed stage when it has a key)
        signal = state.signals[index]
        taken = ev.EventReceived(position, signal.name, signal.key, signal.payload, signal.source, index)
        self._record(state, fx, taken, now_ms)
        return position

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
        self.cache.evict(state.run_id)
        self._record(state, fx, ev.RunCompleted(result=data), now_ms)  # cancels steps it did not await


def _check_replay(state: st.RunState, inst: WorkflowInstance, checked: int) -> int:
    """Check the commands issued since the last check against the history; returns how many are checked.

    The first ``checked`` recorded positions were already compared: an issued command never changes (the
    list only grows), so each is compared once, as it appears, and re-executing a run costs time linear
    in its history. Checking the whole prefix after every resolution made a run that sleeps n times cost
    O(n^3) over its life (it is re-executed at every wake). NonDeterminismError at the first difference.
    """
    upto = min(len(inst.issued), len(state.steps))
    for issued in inst.issued[checked:upto]:
        recorded = state.steps[issued.position]
        if recorded.name != issued.step or recorded.kind != issued.kind:
            raise NonDeterminismError(
                f"at position {issued.position} the history has {recorded.kind} {recorded.name!r} but the "
                f"current code issued {issued.kind} {issued.step!r} (workflow code changed under a running "
                "run; deploy the previous code, or guard the change behind a version check)"
            )
    return max(checked, upto)


def _rerun_point(state: st.RunState, requested: int) -> tuple[int, str]:
    """(position, "") to re-run a failed run from, or (-1, why not).

    ``requested`` -1 picks the earliest command the failure stopped: a failed step, or one the run's end
    cancelled (a run that timed out has no failed step). A re-run keeps every command before its position
    with its recorded outcome, so it is refused when one of them was cancelled (the re-executed workflow
    would wait for it forever) or undone by its compensation (the run would go on as if the undone work
    still held). Re-running from the earliest undone step redoes it and all that followed.
    """
    commands = [s for s in state.steps if s.kind != st.KIND_COMPENSATION]
    position = requested
    if position < 0:
        stopped = [s.position for s in commands if s.status in (st.STEP_FAILED, st.STEP_CANCELLED)]
        if not stopped:
            return -1, "re-run of a run with no failed or cancelled step: name the step position"
        position = stopped[0]
    step = state.step_at(position)
    if step is None or step.kind != st.KIND_STEP:
        what = f"its {step.kind} {step.name!r}" if step is not None else "not a command of the run"
        return -1, (
            f"re-run from position {position} refused: it is {what}, and a re-run restarts a step; "
            "name the position of a step before it"
        )
    undone = sorted(s.undoes for s in state.records(st.StepRecord) if s.kind == st.KIND_COMPENSATION)
    if undone and undone[0] < position:
        return -1, (
            f"re-run from position {position} refused: the compensations of the steps at positions "
            f"{', '.join(map(str, undone))} ran, and the run would go on as if their work still held. Re-run "
            f"from position {undone[0]} or earlier to do that work again (each step under its original "
            "idempotency key), or start a new run"
        )
    cancelled = [s.position for s in commands if s.position < position and s.status == st.STEP_CANCELLED]
    if cancelled:
        return -1, (
            f"re-run from position {position} refused: the command(s) at position(s) "
            f"{', '.join(map(str, cancelled))} before it were cancelled when the run ended, and the "
            "re-executed workflow would wait for them forever; re-run from position "
            f"{cancelled[0]} or earlier"
        )
    return position, ""


def _failure_of(step: st.CommandRecord) -> StepFailedError:
    """The error a failed step or child raises in the workflow."""
    if isinstance(step, st.StepRecord):
        return StepFailedError(step.step, step.error_type, step.error_message, step.attempt)
    if isinstance(step, st.ChildRecord):
        return StepFailedError(step.workflow, step.error_type, step.error_message, 1)
    raise TypeError(f"a {step.kind} does not fail")


def _policy_fields(raw: dict[str, Any]) -> dict[str, Any]:
    raw["non_retryable"] = tuple(raw.get("non_retryable") or ())
    return raw


def timers_of(state: st.RunState) -> set[tuple[int, str]]:
    """The (due_ms, tag) timers a run's state implies; the store keeps an index of them by due time."""
    if state.status not in (st.RUNNING, st.COMPENSATING):
        return set()
    timers: set[tuple[int, str]] = set()
    for s in state.steps:
        status = s.status
        if status == st.STEP_COMPLETED:  # most of a long run's commands: nothing to arm
            continue
        if isinstance(s, st.StepRecord):
            if status == st.STEP_BACKOFF:
                timers.add((s.due_ms, fm.retry_tag(s.position)))
            elif status == st.STEP_SCHEDULED and s.deadline_ms:
                timers.add((s.deadline_ms, fm.timeout_tag(s.position, s.attempt)))
        elif status != st.STEP_WAITING:
            continue
        elif isinstance(s, st.TimerRecord):
            timers.add((s.due_ms, fm.timer_tag(s.position)))
        elif isinstance(s, st.WaitRecord) and s.deadline_ms:
            timers.add((s.deadline_ms, fm.wait_tag(s.position)))
    if state.deadline_ms and state.status == st.RUNNING:  # compensations run to the end, past the deadline
        timers.add((state.deadline_ms, fm.RUN_TIMER))
    return timers
