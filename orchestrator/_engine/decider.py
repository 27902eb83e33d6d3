"""The heart of the engine: (run state, event) -> (new state, effects).

No Kafka, no RocksDB: the processor loop does all I/O around it, and tests drive it directly. User-code
failures become events (a failed run, a parked run), never exceptions out of here. One ``_on_<event>``
method per input.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from typing import Any

from orchestrator._engine import state as st
from orchestrator._engine.events import (
    Body,
    Event,
    RetryScheduled,
    RunCompleted,
    RunFailed,
    RunParked,
    RunStarted,
    StartRun,
    StepCompleted,
    StepFailed,
    StepScheduled,
)
from orchestrator._engine.instance_cache import InstanceCache
from orchestrator._engine.records import RunOutcome, StepCommand
from orchestrator._engine.runtime import WorkflowInstance
from orchestrator.app import App, WorkflowDefinition
from orchestrator.errors import NonDeterminismError, StepFailedError
from orchestrator.retry import RetryPolicy

PARK_NON_DETERMINISM = "non_determinism"
PARK_UNKNOWN_WORKFLOW = "unknown_workflow"
PARK_WORKFLOW_ERROR = "workflow_error"


@dataclass
class Effects:
    """What handling one input produced, to be written in the current transaction."""

    history: list[Event] = field(default_factory=list)
    commands: list[tuple[str, StepCommand]] = field(default_factory=list)  # (queue, command)
    outcomes: list[RunOutcome] = field(default_factory=list)
    ignored: str = ""  # why the input changed nothing (duplicate, stale attempt: normal under at-least-once)
    dead_letter: str = ""  # why the input makes no sense here (unknown run, ...): kept for an operator

    def extend(self, other: Effects) -> None:
        self.history.extend(other.history)
        self.commands.extend(other.commands)
        self.outcomes.extend(other.outcomes)


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
        if isinstance(body, StartRun):
            return self._on_start(state, event, body, now_ms)
        if state is None:
            return None, Effects(dead_letter=f"{event.kind} for unknown run {event.run_id!r}")
        if isinstance(body, StepCompleted | StepFailed):
            return state, self._on_step_result(state, event, body, now_ms)
        return state, Effects(dead_letter=f"{event.kind} is not a request the inbox accepts")

    def fire_timer(self, state: st.RunState, tag: str, now_ms: int) -> Effects:
        kind, _, arg = tag.partition(":")
        if kind == "retry":
            return self._on_retry_due(state, int(arg), now_ms)
        return Effects(ignored=f"unknown timer {tag!r}")

    # -- inputs -------------------------------------------------------------------------------------------
    def _on_start(
        self, state: st.RunState | None, event: Event, body: StartRun, now_ms: int
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
        )
        fx = Effects()
        self._record(state, fx, RunStarted(input=body.input), now_ms)
        if definition is None:
            known = ", ".join(sorted(self.app.workflows)) or "none"
            self._park(
                state,
                fx,
                PARK_UNKNOWN_WORKFLOW,
                f"no workflow named {event.workflow!r} in app {self.app.name!r} (known: {known}); "
                "deploy code that registers it, then resume the run",
                now_ms,
            )
            return state, fx
        try:
            inst = WorkflowInstance(self.app, definition, state.run_id, state.input, state.created_ms)
        except Exception as exc:  # noqa: BLE001 - bad input or a workflow that fails before its first await
            self._fail(state, fx, exc, now_ms)
            return state, fx
        self._advance(state, inst, fx, now_ms)
        return state, fx

    def _on_step_result(
        self, state: st.RunState, event: Event, body: StepCompleted | StepFailed, now_ms: int
    ) -> Effects:
        step = state.step_at(body.position)
        if step is None:
            return Effects(dead_letter=f"result for position {body.position}, which the run never scheduled")
        if step.status != st.STEP_SCHEDULED or step.attempt != body.attempt:
            return Effects(
                ignored=f"stale or duplicate result (step is {step.status}, attempt {step.attempt})"
            )
        if state.status not in (st.RUNNING, st.PARKED):
            return Effects(ignored=f"run is {state.status}")
        fx = Effects()
        attempt = st.AttemptRecord(body.attempt, body.started_ms, body.finished_ms, worker=body.worker)
        step.attempts.append(attempt)
        self._record(state, fx, body, now_ms)
        failure: StepFailedError | None = None
        if isinstance(body, StepCompleted):
            step.status = st.STEP_COMPLETED
            step.result = body.result
        else:
            attempt.error_type, attempt.message = body.error_type, body.message
            policy = self._policy(step)
            if body.retryable and policy.allows_retry(body.attempt, body.error_type):
                step.status = st.STEP_BACKOFF
                step.due_ms = now_ms + policy.delay_ms(body.attempt, self._rng)
                self._record(state, fx, RetryScheduled(step.position, step.attempt + 1, step.due_ms), now_ms)
                return fx
            step.status = st.STEP_FAILED
            step.error_type, step.error_message = body.error_type, body.message
            failure = StepFailedError(step.step, body.error_type, body.message, body.attempt)
        # The result is recorded first, so a run parked while being rebuilt still keeps it for a resume.
        inst = self._instance(state, fx, now_ms) if state.status == st.RUNNING else None
        state.resolutions.append(st.Resolution(step.position, now_ms))
        if inst is not None:
            inst.resolve(step.position, now_ms, step.result, failure)
            self._advance(state, inst, fx, now_ms)
        return fx

    def _on_retry_due(self, state: st.RunState, position: int, now_ms: int) -> Effects:
        step = state.step_at(position)
        if step is None or step.status != st.STEP_BACKOFF or state.status != st.RUNNING:
            return Effects(ignored="retry timer for a step that is no longer waiting")
        fx = Effects()
        step.status = st.STEP_SCHEDULED
        step.attempt += 1
        step.due_ms = 0
        self._schedule(state, step, fx, now_ms)
        return fx

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
            self._park(
                state,
                fx,
                PARK_UNKNOWN_WORKFLOW,
                f"workflow {state.workflow!r} is no longer registered",
                now_ms,
            )
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
        inst = WorkflowInstance(self.app, definition, state.run_id, state.input, state.created_ms)
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
                    f"history has step {missing.step!r} at position {missing.position}, "
                    "but the current code did not issue it"
                )
        except BaseException:
            inst.close()
            raise
        return inst

    def _advance(self, state: st.RunState, inst: WorkflowInstance, fx: Effects, now_ms: int) -> None:
        """Record the steps the workflow issued since last time, and its end if it ended."""
        for issued in inst.issued[len(state.steps) :]:
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
            )
            state.steps.append(step)
            self._schedule(state, step, fx, now_ms)
        if not inst.done and not inst.uses_asyncio_timers:
            self.cache.put(state.run_id, inst)
            return
        try:
            self._end(state, inst, fx, now_ms)
        finally:
            inst.close()  # ended runs free their loop whether or not they were ever cached

    def _end(self, state: st.RunState, inst: WorkflowInstance, fx: Effects, now_ms: int) -> None:
        if inst.uses_asyncio_timers:
            self._park(
                state,
                fx,
                PARK_WORKFLOW_ERROR,
                "workflow awaited an asyncio timer (asyncio.sleep/wait_for); use ctx.sleep for durable time",
                now_ms,
            )
            return
        result, exc = inst.outcome()
        if exc is None:
            try:
                data = self.app.data.encode(result, what=f"result of workflow {state.workflow!r}")
            except Exception as enc_exc:  # noqa: BLE001
                self._fail(state, fx, enc_exc, now_ms)
                return
            state.status = st.COMPLETED
            state.result = data
            self._record(state, fx, RunCompleted(result=data), now_ms)
            fx.outcomes.append(_outcome(state, now_ms))
            self.cache.evict(state.run_id)
        else:
            self._fail(state, fx, exc, now_ms)

    # -- helpers ------------------------------------------------------------------------------------------
    def _schedule(self, state: st.RunState, step: st.StepRecord, fx: Effects, now_ms: int) -> None:
        key = idempotency_key(state.run_id, step.position, step.step)
        self._record(
            state,
            fx,
            StepScheduled(step.position, step.step, step.queue, step.attempt, step.args, key),
            now_ms,
        )
        fx.commands.append(
            (
                step.queue,
                StepCommand(
                    run_id=state.run_id,
                    workflow=state.workflow,
                    position=step.position,
                    step=step.step,
                    attempt=step.attempt,
                    args=step.args,
                    idempotency_key=key,
                    scheduled_ms=now_ms,
                    timeout_ms=step.timeout_ms,
                ),
            )
        )

    def _policy(self, step: st.StepRecord) -> RetryPolicy:
        if step.retry:
            return RetryPolicy(**_policy_fields(json.loads(step.retry)))
        definition = self.app.steps.get(step.step)
        return definition.retry if definition else RetryPolicy(max_attempts=1)

    def _fail(self, state: st.RunState, fx: Effects, exc: BaseException, now_ms: int) -> None:
        error_type = getattr(exc, "error_type", None) or type(exc).__name__
        state.status = st.FAILED
        state.error_type, state.error_message = error_type, str(exc)
        self._record(state, fx, RunFailed(error_type, str(exc)), now_ms)
        fx.outcomes.append(_outcome(state, now_ms))
        self.cache.evict(state.run_id)

    def _park(self, state: st.RunState, fx: Effects, kind: str, reason: str, now_ms: int) -> None:
        state.status = st.PARKED
        state.error_type, state.error_message = kind, reason
        self._record(state, fx, RunParked(kind, reason), now_ms)
        fx.outcomes.append(_outcome(state, now_ms))
        self.cache.evict(state.run_id)

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
        if recorded.step != issued.step:
            raise NonDeterminismError(
                f"at position {issued.position} the history has step {recorded.step!r} but the current "
                f"code issued {issued.step!r} (workflow code changed under a running run; deploy the "
                "previous code, or guard the change behind a version check)"
            )


def _policy_fields(raw: dict[str, Any]) -> dict[str, Any]:
    raw["non_retryable"] = tuple(raw.get("non_retryable") or ())
    return raw


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
    if state.status != st.RUNNING:
        return set()
    return {(s.due_ms, f"retry:{s.position}") for s in state.steps if s.status == st.STEP_BACKOFF}
