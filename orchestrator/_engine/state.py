"""The folded state of one run, as the processor keeps it in its store and changelog.

Mutable on purpose: the processor changes a run's state in place many times per second, and it is written
out (encoded) once per batch. Everything the workflow function observed is in here, so that it can be
re-executed deterministically after eviction or a restart: the steps it issued (with their recorded results)
and the order in which results reached it (`resolutions`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from orchestrator._engine import wire

RUNNING = "running"
COMPENSATING = "compensating"
CANCELLED = "cancelled"
COMPLETED = "completed"
FAILED = "failed"
PARKED = "parked"
TERMINAL = frozenset({COMPLETED, FAILED, CANCELLED})

STEP_SCHEDULED = "scheduled"
STEP_BACKOFF = "backoff"
STEP_COMPLETED = "completed"
STEP_FAILED = "failed"
STEP_WAITING = "waiting"  # a timer or an event wait not yet resolved
STEP_CANCELLED = "cancelled"

KIND_STEP = "step"
KIND_TIMER = "timer"
KIND_WAIT = "wait"
KIND_MARKER = "marker"  # a version marker taken by ctx.patched()
KIND_COMPENSATION = "compensation"  # engine-issued: undoes a completed step (saga)
KIND_CHILD = "child"  # a child run; ``event_key`` holds its run id


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
    status: str
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
    kind: str = KIND_STEP
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
    status: str
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

    def take_seq(self) -> int:
        seq = self.next_seq
        self.next_seq += 1
        return seq


def resume(state: RunState, from_position: int) -> None:
    """Reopen a parked or failed run; with ``from_position``, forget everything from that step on.

    Shared by the processor (``ResumeRun``) and the history fold (``RunResumed``) so both reach the same
    state. Completed steps before ``from_position`` keep their recorded results and never run again.
    """
    if from_position < 0 and state.ending:  # parked while compensating: compensation goes on
        state.status = COMPENSATING
        return
    state.status = RUNNING
    state.error_type = state.error_message = ""
    state.result = None
    state.ending = ""
    if from_position < 0:
        return
    del state.steps[from_position + 1 :]
    state.resolutions = [r for r in state.resolutions if r.position < from_position]
    step = state.steps[from_position]
    step.error_type = step.error_message = ""
    step.result = None


# Encoded steps by their full contents. A step that has not changed since the run's last write (every
# finished step) is found here and spliced in as bytes; bounded by clearing, since misses only cost time.
_STEP_BYTES: dict[tuple[Any, ...], bytes] = {}
_STEP_BYTES_LIMIT = 50_000
_STEP_FIELDS = (
    "position",
    "step",
    "queue",
    "status",
    "attempt",
    "args",
    "result",
    "error_type",
    "error_message",
    "scheduled_ms",
    "due_ms",
    "retry",
    "timeout_ms",
    "kind",
    "event_name",
    "event_key",
    "deadline_ms",
    "started_ms",
    "schedule_to_start_ms",
    "compensate",
)
_ATTEMPT_FIELDS = ("attempt", "started_ms", "finished_ms", "error_type", "message", "worker")


def _step_contents(s: StepRecord) -> tuple[Any, ...]:
    return (
        s.position,
        s.step,
        s.queue,
        s.status,
        s.attempt,
        s.args,
        s.result,
        s.error_type,
        s.error_message,
        s.scheduled_ms,
        s.due_ms,
        s.retry,
        s.timeout_ms,
        s.kind,
        s.event_name,
        s.event_key,
        s.deadline_ms,
        s.started_ms,
        s.schedule_to_start_ms,
        s.compensate,
        tuple(
            (a.attempt, a.started_ms, a.finished_ms, a.error_type, a.message, a.worker) for a in s.attempts
        ),
    )


def _step_record(contents: tuple[Any, ...]) -> dict[str, Any]:
    record = dict(zip(_STEP_FIELDS, contents, strict=False))
    record["attempts"] = [dict(zip(_ATTEMPT_FIELDS, a, strict=True)) for a in contents[-1]]
    return record


def _head_record(state: RunState) -> dict[str, Any]:
    return {
        "run_id": state.run_id,
        "workflow": state.workflow,
        "workflow_version": state.workflow_version,
        "status": state.status,
        "input": state.input,
        "created_ms": state.created_ms,
        "updated_ms": state.updated_ms,
        "next_seq": state.next_seq,
        "result": state.result,
        "error_type": state.error_type,
        "error_message": state.error_message,
    }


def _tail_record(state: RunState) -> dict[str, Any]:
    return {
        "resolutions": [{"position": r.position, "timestamp_ms": r.timestamp_ms} for r in state.resolutions],
        "deadline_ms": state.deadline_ms,
        "ending": state.ending,
        "parent_run_id": state.parent_run_id,
        "parent_position": state.parent_position,
        "admission_key": state.admission_key,
        "signals": [
            {
                "name": g.name,
                "key": g.key,
                "payload": g.payload,
                "timestamp_ms": g.timestamp_ms,
                "source": g.source,
            }
            for g in state.signals
        ],
    }


def state_record(state: RunState) -> dict[str, Any]:
    """The whole state as one Avro record dict (what `encode_state` writes, built the plain way)."""
    return {
        **_head_record(state),
        "steps": [_step_record(_step_contents(s)) for s in state.steps],
        **_tail_record(state),
    }


def encode_state(state: RunState) -> bytes:
    """The state in the wire format; the same bytes as ``wire.encode(RUN_STATE, state_record(state))``."""
    writer = wire.split_writer(wire.RUN_STATE, "steps")
    items = []
    for s in state.steps:
        contents = _step_contents(s)
        data = _STEP_BYTES.get(contents)
        if data is None:
            data = writer.item_bytes(_step_record(contents))
            if len(_STEP_BYTES) >= _STEP_BYTES_LIMIT:
                _STEP_BYTES.clear()
            _STEP_BYTES[contents] = data
        items.append(data)
    return writer.write(_head_record(state), items, _tail_record(state))


def decode_state(data: bytes | None) -> RunState:
    _, rec = wire.decode(data, expected=wire.RUN_STATE)
    steps = [
        StepRecord(
            position=s["position"],
            step=s["step"],
            queue=s["queue"],
            status=s["status"],
            attempt=s["attempt"],
            args=s["args"],
            scheduled_ms=s["scheduled_ms"],
            result=s["result"],
            error_type=s["error_type"],
            error_message=s["error_message"],
            due_ms=s["due_ms"],
            retry=s["retry"],
            timeout_ms=s["timeout_ms"],
            kind=s["kind"],
            event_name=s["event_name"],
            event_key=s["event_key"],
            deadline_ms=s["deadline_ms"],
            started_ms=s["started_ms"],
            schedule_to_start_ms=s["schedule_to_start_ms"],
            compensate=s["compensate"],
            attempts=[AttemptRecord(**a) for a in s["attempts"]],
        )
        for s in rec["steps"]
    ]
    return RunState(
        run_id=rec["run_id"],
        workflow=rec["workflow"],
        status=rec["status"],
        input=rec["input"],
        created_ms=rec["created_ms"],
        updated_ms=rec["updated_ms"],
        workflow_version=rec["workflow_version"],
        next_seq=rec["next_seq"],
        result=rec["result"],
        error_type=rec["error_type"],
        error_message=rec["error_message"],
        steps=steps,
        resolutions=[Resolution(**r) for r in rec["resolutions"]],
        deadline_ms=rec["deadline_ms"],
        signals=[BufferedSignal(**g) for g in rec["signals"]],
        ending=rec["ending"],
        parent_run_id=rec["parent_run_id"],
        parent_position=rec["parent_position"],
        admission_key=rec["admission_key"],
    )
