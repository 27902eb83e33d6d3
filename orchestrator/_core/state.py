"""The folded state of one run: what ``evolve`` builds from the run's history, event by event.

Mutable on purpose: ``evolve`` changes a run's state in place many times per second (copying it per
event would cost more than deciding), and the processor writes it out once per batch. Only ``evolve``
changes it (ADR 0009). Everything the workflow function observed is in here, so it can be re-executed
deterministically after eviction or a restart: the steps it issued (with their recorded results) and the
order in which results reached it (``resolutions``).

``RunState.steps`` holds every command the run issued, in position order, each as the record type of its
kind (``StepRecord``, ``TimerRecord``, ``WaitRecord``, ``ChildRecord``, ``MarkerRecord``) on the common
base ``CommandRecord`` (position, kind, status, scheduled_ms, name); ``record_at`` and ``records`` narrow
to one kind. The status and kind enums are ``StrEnum``s whose values are the strings already in stores and
on the changelog. The state's Avro encoding is byte for byte what it was when every kind was one
``StepRecord`` of plain strings (the mapping is ``orchestrator._engine.state``'s).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TypeVar


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
    CHILD = "child"  # a child run


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


class CommandRecord:
    """What every command of a run has, whatever the run waits on: ``RunState.steps[position]``.

    One record type per kind of thing a run waits on, each with only the fields that mean something for
    it: ``StepRecord`` (a step's or a compensation's attempts), ``TimerRecord``, ``WaitRecord``,
    ``ChildRecord``, ``MarkerRecord``. ``name`` is what the workflow issued at the position (the step or
    compensation name, ``"sleep"``, the event name, the child workflow, the marker name): re-execution
    compares it, and it is the ``step`` field of the stored record. Code that needs one kind narrows with
    ``RunState.record_at(position, TimerRecord)`` or ``isinstance``.

    The stored state keeps one Avro step record for every kind (the schema is frozen); the mapping both
    ways is ``orchestrator._engine.state``'s, and the bytes are what they were before these types.
    """

    __slots__ = ()
    position: int
    kind: StepKind
    status: StepStatus
    scheduled_ms: int

    @property
    def name(self) -> str:
        raise NotImplementedError


@dataclass(slots=True)
class StepRecord(CommandRecord):
    """A step (``KIND_STEP``) or a compensation (``KIND_COMPENSATION``) and its sequence of attempts.

    ``compensate`` is, for a step, the name of the step that undoes it (``""``: none); ``undoes`` is, for
    a compensation, the position of the step it undoes (-1 for a step). ``deadline_ms`` is when the
    current attempt times out (0: no limit), ``due_ms`` when a step in backoff is retried.
    """

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
    deadline_ms: int = 0
    started_ms: int = 0
    schedule_to_start_ms: int = 0
    compensate: str = ""
    undoes: int = -1

    @property
    def name(self) -> str:
        return self.step


@dataclass(slots=True)
class TimerRecord(CommandRecord):
    """A durable timer (``ctx.sleep``): waiting until ``due_ms`` (0 once cancelled), then completed."""

    position: int
    status: StepStatus
    scheduled_ms: int
    due_ms: int
    kind: StepKind = field(default=KIND_TIMER, init=False)

    @property
    def name(self) -> str:
        return "sleep"


@dataclass(slots=True)
class WaitRecord(CommandRecord):
    """A wait for an event (``ctx.wait_for_event``) named ``event_name`` with ``key`` (``""``: any key).

    ``deadline_ms`` is when it times out (0: never, or resolved); ``result`` the payload it received.
    """

    position: int
    status: StepStatus
    scheduled_ms: int
    event_name: str
    key: str = ""
    deadline_ms: int = 0
    result: bytes | None = None
    kind: StepKind = field(default=KIND_WAIT, init=False)

    @property
    def name(self) -> str:
        return self.event_name


@dataclass(slots=True)
class ChildRecord(CommandRecord):
    """A child run (``ctx.child``) of ``workflow`` with id ``child_run_id``, started with ``input``.

    A detached child is completed when it starts (the parent does not wait for it). An attached one ends
    with the child: ``result`` or ``error_type``/``error_message``, and ``ended``, the child's run as one
    attempt (started when the child was created, finished when it ended, worker ``child:<id>``).
    """

    position: int
    status: StepStatus
    scheduled_ms: int
    workflow: str
    child_run_id: str
    input: bytes = b""
    detached: bool = False
    result: bytes | None = None
    error_type: str = ""
    error_message: str = ""
    ended: AttemptRecord | None = None
    kind: StepKind = field(default=KIND_CHILD, init=False)

    @property
    def name(self) -> str:
        return self.workflow


@dataclass(slots=True)
class MarkerRecord(CommandRecord):
    """A version marker taken by ``ctx.patched(name)``; completed when recorded."""

    position: int
    scheduled_ms: int
    name: str  # a field here, a property on the other records
    status: StepStatus = field(default=STEP_COMPLETED, init=False)
    kind: StepKind = field(default=KIND_MARKER, init=False)


R = TypeVar("R", bound=CommandRecord)
_WITH_RESULT = (StepRecord, WaitRecord, ChildRecord)


def attempts_of(record: CommandRecord) -> tuple[int, list[AttemptRecord]]:
    """(current attempt number, recorded attempts) of any command, for views: a step's own; a child's end
    as its one attempt; 1 and none for a timer, a wait or a marker."""
    if isinstance(record, StepRecord):
        return record.attempt, record.attempts
    if isinstance(record, ChildRecord):
        return 1, [record.ended] if record.ended is not None else []
    return 1, []


def result_of(record: CommandRecord) -> bytes | None:
    """The encoded value the workflow's await of the command returns: a step's or a child's result, the
    payload a wait received; None for a timer and a marker."""
    if isinstance(record, _WITH_RESULT):
        return record.result
    return None


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
    steps: list[CommandRecord] = field(default_factory=list)
    """Every command the workflow issued (and the engine's compensations), indexed by position."""
    resolutions: list[Resolution] = field(default_factory=list)
    deadline_ms: int = 0
    signals: list[BufferedSignal] = field(default_factory=list)
    ending: str = ""
    parent_run_id: str = ""
    parent_position: int = -1
    admission_key: str = ""
    tags: dict[str, str] = field(default_factory=dict)
    """What the workflow tagged its run with (``ctx.set_tags``): searchable in the run indexes."""

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL

    def step_at(self, position: int) -> CommandRecord | None:
        """The command at ``position``, of any kind, or None."""
        if 0 <= position < len(self.steps):
            return self.steps[position]
        return None

    def record_at(self, position: int, kind: type[R]) -> R | None:
        """The command at ``position`` if it is a ``kind`` (``StepRecord``, ``WaitRecord``, ...), or None."""
        if 0 <= position < len(self.steps):
            record = self.steps[position]
            if isinstance(record, kind):
                return record
        return None

    def records(self, kind: type[R]) -> Iterator[R]:
        """The run's commands that are ``kind``s, in order."""
        for record in self.steps:
            if isinstance(record, kind):
                yield record


def signal_matches(wait_name: str, wait_key: str, name: str, key: str) -> bool:
    """The one rule for which event a wait receives: same name, and same key unless the wait has none."""
    return name == wait_name and (not wait_key or key == wait_key)


def buffered_signal(state: RunState, name: str, key: str) -> int:
    """Index of the first buffered signal a new wait for (``name``, ``key``) takes, or -1."""
    for i, signal in enumerate(state.signals):
        if signal_matches(name, key, signal.name, signal.key):
            return i
    return -1


def waiting_step(state: RunState, name: str, key: str) -> WaitRecord | None:
    """The first open wait that a signal (``name``, ``key``) resolves."""
    for s in state.steps:
        if (
            type(s) is WaitRecord
            and s.status == STEP_WAITING
            and signal_matches(s.event_name, s.key, name, key)
        ):
            return s
    return None
