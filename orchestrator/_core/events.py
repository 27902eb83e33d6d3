"""Event records: frozen dataclasses mirroring the current ``schemas/event-v*.avsc``.

The envelope (`Event`) says which run and where in its history; the body says what happened. Inbox requests
(`StartRun`, worker results) and history facts share the envelope so that an accepted request is copied to the
history without re-encoding its payload. Encoding lives in ``orchestrator._engine.events``.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from functools import cache
from typing import Any, TypeAlias

_NS = "orchestrator.v1."


@dataclass(frozen=True, slots=True)
class StartRun:
    input: bytes
    requested_by: str = ""
    parent_run_id: str = ""
    parent_position: int = -1
    admission_key: str = ""


@dataclass(frozen=True, slots=True)
class RunStarted:
    input: bytes
    deadline_ms: int = 0
    parent_run_id: str = ""
    parent_position: int = -1
    admission_key: str = ""


@dataclass(frozen=True, slots=True)
class StepScheduled:
    position: int
    step: str
    queue: str
    attempt: int
    args: bytes
    idempotency_key: str
    retry: str = ""
    timeout_ms: int = 0
    schedule_to_start_ms: int = 0
    kind: str = "step"
    compensate: str = ""


@dataclass(frozen=True, slots=True)
class StepCompleted:
    position: int
    attempt: int
    result: bytes
    started_ms: int
    finished_ms: int
    worker: str = ""


@dataclass(frozen=True, slots=True)
class StepFailed:
    position: int
    attempt: int
    error_type: str
    message: str
    retryable: bool
    started_ms: int
    finished_ms: int
    worker: str = ""
    traceback: str = ""
    """The user's exception, formatted and bounded (``orchestrator._engine.tracebacks``); since event-v6.
    History only: folding ignores it, so the run's state does not grow with it."""


@dataclass(frozen=True, slots=True)
class RetryScheduled:
    position: int
    attempt: int
    due_ms: int


@dataclass(frozen=True, slots=True)
class RunCompleted:
    result: bytes


@dataclass(frozen=True, slots=True)
class RunFailed:
    error_type: str
    message: str


@dataclass(frozen=True, slots=True)
class RunParked:
    kind: str
    reason: str


@dataclass(frozen=True, slots=True)
class StepStarted:
    position: int
    attempt: int
    started_ms: int
    worker: str = ""


@dataclass(frozen=True, slots=True)
class StepTimedOut:
    position: int
    attempt: int
    timeout: str  # "start_to_close" | "schedule_to_start"


@dataclass(frozen=True, slots=True)
class TimerStarted:
    position: int
    due_ms: int


@dataclass(frozen=True, slots=True)
class TimerFired:
    position: int


@dataclass(frozen=True, slots=True)
class WaitStarted:
    position: int
    event_name: str
    key: str
    deadline_ms: int
    lookback_ms: int


@dataclass(frozen=True, slots=True)
class Signal:
    name: str
    key: str
    payload: bytes
    source: str = ""


@dataclass(frozen=True, slots=True)
class EventReceived:
    """An event reached the run: for the wait at ``position``, or buffered (``position`` -1).

    ``buffered`` says whether the delivery consumed a buffered copy: its index in the run's buffered
    signals, -1 when the event came live. Histories written before event-v3 read as -2 (not recorded);
    ``evolve`` then infers it as the engine of that time did.
    """

    position: int
    event_name: str
    key: str
    payload: bytes
    source: str = ""
    buffered: int = -1


@dataclass(frozen=True, slots=True)
class WaitTimedOut:
    position: int


@dataclass(frozen=True, slots=True)
class CancelRun:
    reason: str
    requested_by: str = ""


@dataclass(frozen=True, slots=True)
class RunCancelled:
    reason: str


@dataclass(frozen=True, slots=True)
class DomainEvent:
    event_name: str
    key: str
    payload: bytes
    source: str = ""


@dataclass(frozen=True, slots=True)
class Subscribe:
    event_name: str
    key: str
    run_id: str
    position: int
    lookback_ms: int


@dataclass(frozen=True, slots=True)
class Unsubscribe:
    event_name: str
    key: str
    run_id: str
    position: int


@dataclass(frozen=True, slots=True)
class ScheduleRegister:
    workflow: str
    cron: str
    timezone: str
    missed: str


@dataclass(frozen=True, slots=True)
class SchedulePause:
    workflow: str
    paused: bool


@dataclass(frozen=True, slots=True)
class MarkerRecorded:
    position: int
    name: str


@dataclass(frozen=True, slots=True)
class ResumeRun:
    reason: str
    from_position: int = -1


@dataclass(frozen=True, slots=True)
class RunResumed:
    """An operator reopened a parked or failed run; ``from_position`` >= 0 re-runs from that step.

    ``deadline_ms`` is the run's deadline from here on: a resume restarts the run's clock (now plus the
    workflow's timeout, 0 for none), so a run that timed out, or waited parked past its deadline, gets
    to run. -1 leaves the deadline as it was: records written before event-v4 read so, which is what the
    engine of that time did, and a resume into compensation (which ignores the deadline) writes it.
    """

    reason: str
    from_position: int = -1
    deadline_ms: int = -1


@dataclass(frozen=True, slots=True)
class CompensationStarted:
    ending: str
    error_type: str
    message: str


@dataclass(frozen=True, slots=True)
class ChildStarted:
    position: int
    workflow: str
    child_run_id: str
    input: bytes
    detached: bool = False


@dataclass(frozen=True, slots=True)
class TagsSet:
    """The workflow set tags on its run (``ctx.set_tags``): merged into the run's tags (event-v5)."""

    tags: dict[str, str]


@dataclass(frozen=True, slots=True)
class AdmitRequest:
    workflow: str
    run_id: str
    input: bytes
    key: str = ""
    priority: float = 0.0
    idempotency_key: str = ""
    requested_by: str = ""


@dataclass(frozen=True, slots=True)
class Release:
    workflow: str
    key: str
    run_id: str


Body: TypeAlias = (
    StartRun
    | RunStarted
    | StepScheduled
    | StepCompleted
    | StepFailed
    | RetryScheduled
    | RunCompleted
    | RunFailed
    | RunParked
    | StepStarted
    | StepTimedOut
    | TimerStarted
    | TimerFired
    | WaitStarted
    | Signal
    | EventReceived
    | WaitTimedOut
    | CancelRun
    | RunCancelled
    | DomainEvent
    | Subscribe
    | Unsubscribe
    | ScheduleRegister
    | SchedulePause
    | MarkerRecorded
    | ResumeRun
    | RunResumed
    | CompensationStarted
    | ChildStarted
    | AdmitRequest
    | Release
    | TagsSet
)
BODY_TYPES: dict[str, type[Any]] = {
    _NS + cls.__name__: cls
    for cls in (
        StartRun,
        RunStarted,
        StepScheduled,
        StepCompleted,
        StepFailed,
        RetryScheduled,
        RunCompleted,
        RunFailed,
        RunParked,
        StepStarted,
        StepTimedOut,
        TimerStarted,
        TimerFired,
        WaitStarted,
        Signal,
        EventReceived,
        WaitTimedOut,
        CancelRun,
        RunCancelled,
        DomainEvent,
        Subscribe,
        Unsubscribe,
        ScheduleRegister,
        SchedulePause,
        MarkerRecorded,
        ResumeRun,
        RunResumed,
        CompensationStarted,
        ChildStarted,
        AdmitRequest,
        Release,
        TagsSet,
    )
}


@dataclass(frozen=True, slots=True)
class Event:
    event_id: str
    run_id: str
    workflow: str
    timestamp_ms: int
    body: Body
    seq: int = -1
    workflow_version: str = ""

    @property
    def kind(self) -> str:
        return type(self.body).__name__


@cache
def _field_names(cls: Any) -> tuple[str, ...]:
    return tuple(f.name for f in fields(cls))


def _to_dict(obj: Any) -> dict[str, Any]:
    cls: Any = type(obj)
    return {name: getattr(obj, name) for name in _field_names(cls)}


def event_record(event: Event) -> dict[str, Any]:
    """The event as the Avro record dict of the Event schema (the body as a named union branch)."""
    return {
        "event_id": event.event_id,
        "run_id": event.run_id,
        "workflow": event.workflow,
        "workflow_version": event.workflow_version,
        "seq": event.seq,
        "timestamp_ms": event.timestamp_ms,
        "body": (_NS + type(event.body).__name__, _to_dict(event.body)),
    }


def to_record(obj: Any) -> dict[str, Any]:
    """Plain dict of a frozen record dataclass, for Avro writing and JSON output."""
    return _to_dict(obj)
