"""The folded state of one run: what ``evolve`` builds from the run's history, event by event.

Mutable on purpose: ``evolve`` changes a run's state in place many times per second (copying it per
event would cost more than deciding), and the processor writes it out once per batch. Only ``evolve``
changes it (ADR 0009). Everything the workflow function observed is in here, so it can be re-executed
deterministically after eviction or a restart: the steps it issued (with their recorded results) and the
order in which results reached it (``resolutions``).

The status and kind enums are ``StrEnum``s whose values are the strings already in stores and on the
changelog, so the state's Avro encoding is byte for byte what it was when they were plain strings.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum


class RunStatus(StrEnum):
    RUNNING = "running"
    COMPENSATING = "compensating"  # undoing completed steps (saga) before ending as ``ending`` says
    CANCELLED = "cancelled"
    COMPLETED = "completed"
    FAILED = "failed"
    PARKED = "parked"  # stopped for an operator: non-determinism, unknown workflow, internal error, ...


class StepStatus(StrEnum):
    SCHEDULED = "scheduled"
    BACKOFF = "backoff"  # waiting for its retry timer
    COMPLETED = "completed"
    FAILED = "failed"
    WAITING = "waiting"  # a timer or an event wait not yet resolved
    CANCELLED = "cancelled"
    TIMED_OUT = "timed_out"  # an event wait whose timeout passed


class StepKind(StrEnum):
    STEP = "step"
    TIMER = "timer"
    WAIT = "wait"
    MARKER = "marker"  # a version marker taken by ctx.patched()
    COMPENSATION = "compensation"  # engine-issued: undoes a completed step (saga)
    CHILD = "child"  # a child run; ``event_key`` holds its run id


# Enum members by value: a dict lookup is ~30x cheaper than calling the enum, and decoding a state or
# applying a StepScheduled does it per step.
RUN_STATUSES: dict[str, RunStatus] = {m.value: m for m in RunStatus}
STEP_STATUSES: dict[str, StepStatus] = {m.value: m for m in StepStatus}
STEP_KINDS: dict[str, StepKind] = {m.value: m for m in StepKind}

RUNNING = RunStatus.RUNNING
COMPENSATING = RunStatus.COMPENSATING
CANCELLED = RunStatus.CANCELLED
COMPLETED = RunStatus.COMPLETED
FAILED = RunStatus.FAILED
PARKED = RunStatus.PARKED
TERMINAL = frozenset({COMPLETED, FAILED, CANCELLED})

STEP_SCHEDULED = StepStatus.SCHEDULED
STEP_BACKOFF = StepStatus.BACKOFF
STEP_COMPLETED = StepStatus.COMPLETED
STEP_FAILED = StepStatus.FAILED
STEP_WAITING = StepStatus.WAITING
STEP_CANCELLED = StepStatus.CANCELLED
STEP_TIMED_OUT = StepStatus.TIMED_OUT
PENDING = frozenset({STEP_SCHEDULED, STEP_BACKOFF, STEP_WAITING})
"""Step statuses that a run's end (or the start of its compensation) cancels."""

KIND_STEP = StepKind.STEP
KIND_TIMER = StepKind.TIMER
KIND_WAIT = StepKind.WAIT
KIND_MARKER = StepKind.MARKER
KIND_COMPENSATION = StepKind.COMPENSATION
KIND_CHILD = StepKind.CHILD
WORKER_KINDS = frozenset({KIND_STEP, KIND_COMPENSATION})
"""Kinds of steps a worker (or a local-step runner) executes, and that therefore get step commands."""


@dataclass(slots=True)
class AttemptRecord:
    attempt: int
    started_ms: int
    finished_ms: int
    error_type: str = ""
    message: str = ""
    worker: str = ""


@dataclass(slots=True)
class StepRecord:
    position: int
    step: str
    queue: str
    status: StepStatus
    attempt: int
    args: bytes
    scheduled_ms: int
    result: bytes | None = None
    error_type: str = ""
    error_message: str = ""
    due_ms: int = 0
    retry: str = ""
    timeout_ms: int = 0
    attempts: list[AttemptRecord] = field(default_factory=list)
    kind: StepKind = KIND_STEP
    event_name: str = ""
    event_key: str = ""
    deadline_ms: int = 0
    started_ms: int = 0
    schedule_to_start_ms: int = 0
    compensate: str = ""


@dataclass(slots=True)
class Resolution:
    position: int
    timestamp_ms: int


@dataclass(slots=True)
class BufferedSignal:
    name: str
    key: str
    payload: bytes
    timestamp_ms: int
    source: str = ""


@dataclass(slots=True)
class RunState:
    run_id: str
    workflow: str
    status: RunStatus
    input: bytes
    created_ms: int
    updated_ms: int
    workflow_version: str = ""
    next_seq: int = 0
    result: bytes | None = None
    error_type: str = ""
    error_message: str = ""
    steps: list[StepRecord] = field(default_factory=list)
    resolutions: list[Resolution] = field(default_factory=list)
    deadline_ms: int = 0
    signals: list[BufferedSignal] = field(default_factory=list)
    ending: str = ""
    parent_run_id: str = ""
    parent_position: int = -1
    admission_key: str = ""

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL

    def step_at(self, position: int) -> StepRecord | None:
        if 0 <= position < len(self.steps):
            return self.steps[position]
        return None


def signal_matches(wait_name: str, wait_key: str, name: str, key: str) -> bool:
    """The one rule for which event a wait receives: same name, and same key unless the wait has none."""
    return name == wait_name and (not wait_key or key == wait_key)


def buffered_signal(state: RunState, name: str, key: str) -> int:
    """Index of the first buffered signal a new wait for (``name``, ``key``) takes, or -1."""
    for i, signal in enumerate(state.signals):
        if signal_matches(name, key, signal.name, signal.key):
            return i
    return -1


def waiting_step(state: RunState, name: str, key: str) -> StepRecord | None:
    """The first open wait that a signal (``name``, ``key``) resolves."""
    for s in state.steps:
        if (
            s.kind == KIND_WAIT
            and s.status == STEP_WAITING
            and signal_matches(s.event_name, s.event_key, name, key)
        ):
            return s
    return None
