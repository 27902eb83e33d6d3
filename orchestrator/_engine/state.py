"""The run state's wire encoding (the store and the changelog); the state itself is in the pure core.

``orchestrator._core.state`` defines the records and their enums; they are re-exported here so that
``from orchestrator._engine import state as st`` keeps working.

The schema (id 12, run-state-v3: id 7 plus the run's tags; states of id 7 read with no tags) is frozen and
has one step record for every kind of command. In memory each kind has its own record type (``StepRecord``,
``TimerRecord``, ``WaitRecord``, ``ChildRecord``, ``MarkerRecord``); ``_contents_of`` maps each to the
stored step record's fields and ``_DECODE`` maps them back, so the bytes are exactly those written before
the types were split (``tests/unit/test_avro_writer.py``, the property tests' ``encode(decode(bytes)) ==
bytes``). Stored fields a kind does not have hold the constants the engine always wrote there: a timer's
``step`` is ``"sleep"`` and its due time is in ``deadline_ms``; a wait's ``step`` is its event name and its
key is in ``event_key``; a child's run id is in ``event_key``, its input in ``args`` and its end in
``attempts``; a compensation names the position it undoes in ``compensate``; a marker's name is in ``step``.
A detached child is one completed without an attempt.
"""

from __future__ import annotations

from typing import Any

from orchestrator._core.evolve import resume
from orchestrator._core.state import (  # re-exported: the old import path stays valid
    CANCELLED,
    COMPENSATING,
    COMPLETED,
    FAILED,
    KIND_CHILD,
    KIND_COMPENSATION,
    KIND_MARKER,
    KIND_STEP,
    KIND_TIMER,
    KIND_WAIT,
    PARKED,
    PENDING,
    RUN_STATUSES,
    RUNNING,
    STEP_BACKOFF,
    STEP_CANCELLED,
    STEP_COMPLETED,
    STEP_FAILED,
    STEP_KINDS,
    STEP_SCHEDULED,
    STEP_STATUSES,
    STEP_TIMED_OUT,
    STEP_WAITING,
    TERMINAL,
    WORKER_KINDS,
    AttemptRecord,
    BufferedSignal,
    ChildRecord,
    CommandRecord,
    MarkerRecord,
    Resolution,
    RunState,
    RunStatus,
    StepKind,
    StepRecord,
    StepStatus,
    TimerRecord,
    WaitRecord,
    attempts_of,
    buffered_signal,
    result_of,
    signal_matches,
    waiting_step,
)
from orchestrator._engine import wire

__all__ = [
    "CANCELLED",
    "COMPENSATING",
    "COMPLETED",
    "FAILED",
    "KIND_CHILD",
    "KIND_COMPENSATION",
    "KIND_MARKER",
    "KIND_STEP",
    "KIND_TIMER",
    "KIND_WAIT",
    "PARKED",
    "PENDING",
    "RUNNING",
    "RUN_STATUSES",
    "STEP_BACKOFF",
    "STEP_CANCELLED",
    "STEP_COMPLETED",
    "STEP_FAILED",
    "STEP_KINDS",
    "STEP_SCHEDULED",
    "STEP_STATUSES",
    "STEP_TIMED_OUT",
    "STEP_WAITING",
    "TERMINAL",
    "WORKER_KINDS",
    "AttemptRecord",
    "BufferedSignal",
    "ChildRecord",
    "CommandRecord",
    "MarkerRecord",
    "Resolution",
    "RunState",
    "RunStatus",
    "StepKind",
    "StepRecord",
    "StepStatus",
    "TimerRecord",
    "WaitRecord",
    "attempts_of",
    "buffered_signal",
    "decode_state",
    "encode_state",
    "result_of",
    "resume",
    "signal_matches",
    "state_record",
    "step_bytes_used",
    "waiting_step",
]

# Encoded steps by their full contents. A step that has not changed since the run's last write (every
# finished step) is found here and spliced in as bytes. Bounded by memory, not by count: a step holds its
# arguments and result, so 50,000 steps of 100 kB payloads would be gigabytes. Each entry costs about twice
# its encoded size (the key tuple holds the same payloads); cleared when the total passes the budget,
# since misses only cost time.
_STEP_BYTES: dict[tuple[Any, ...], bytes] = {}
_STEP_BYTES_BUDGET = 32 * 1024 * 1024
_step_bytes_used = 0
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


def _attempt_contents(a: AttemptRecord) -> tuple[Any, ...]:
    return (a.attempt, a.started_ms, a.finished_ms, a.error_type, a.message, a.worker)


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
        "",
        "",
        s.deadline_ms,
        s.started_ms,
        s.schedule_to_start_ms,
        str(s.undoes) if s.undoes >= 0 else s.compensate,
        tuple(map(_attempt_contents, s.attempts)),
    )


def _timer_contents(s: TimerRecord) -> tuple[Any, ...]:
    return (s.position, "sleep", "", s.status, 1, b"", None, "", "", s.scheduled_ms, 0, "", 0, KIND_TIMER,
            "", "", s.due_ms, 0, 0, "", ())  # fmt: skip


def _wait_contents(s: WaitRecord) -> tuple[Any, ...]:
    return (s.position, s.event_name, "", s.status, 1, b"", s.result, "", "", s.scheduled_ms, 0, "", 0,
            KIND_WAIT, s.event_name, s.key, s.deadline_ms, 0, 0, "", ())  # fmt: skip


def _child_contents(s: ChildRecord) -> tuple[Any, ...]:
    ended = (_attempt_contents(s.ended),) if s.ended is not None else ()
    return (s.position, s.workflow, "", s.status, 1, s.input, s.result, s.error_type, s.error_message,
            s.scheduled_ms, 0, "", 0, KIND_CHILD, "", s.child_run_id, 0, 0, 0, "", ended)  # fmt: skip


def _marker_contents(s: MarkerRecord) -> tuple[Any, ...]:
    return (s.position, s.name, "", s.status, 1, b"", None, "", "", s.scheduled_ms, 0, "", 0, KIND_MARKER,
            "", "", 0, 0, 0, "", ())  # fmt: skip


_CONTENTS: dict[type[Any], Any] = {
    StepRecord: _step_contents,
    TimerRecord: _timer_contents,
    WaitRecord: _wait_contents,
    ChildRecord: _child_contents,
    MarkerRecord: _marker_contents,
}


def _contents_of(s: CommandRecord) -> tuple[Any, ...]:
    """The stored step record's fields (in ``_STEP_FIELDS`` order, then the attempts) for any command."""
    if type(s) is StepRecord:
        return _step_contents(s)
    contents: tuple[Any, ...] = _CONTENTS[type(s)](s)
    return contents


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
        "tags": state.tags,
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
        "steps": [_step_record(_contents_of(s)) for s in state.steps],
        **_tail_record(state),
    }


def encode_state(state: RunState) -> bytes:
    """The state in the wire format; the same bytes as ``wire.encode(RUN_STATE, state_record(state))``."""
    writer = wire.split_writer(wire.RUN_STATE, "steps")
    items = []
    for s in state.steps:
        contents = _step_contents(s) if type(s) is StepRecord else _contents_of(s)
        data = _STEP_BYTES.get(contents)
        if data is None:
            data = writer.item_bytes(_step_record(contents))
            _remember(contents, data)
        items.append(data)
    return writer.write(_head_record(state), items, _tail_record(state))


def _remember(contents: tuple[Any, ...], data: bytes) -> None:
    global _step_bytes_used
    cost = 2 * len(data)
    if cost > _STEP_BYTES_BUDGET // 8:  # a huge step would evict everything else: encode it each time
        return
    if _step_bytes_used + cost > _STEP_BYTES_BUDGET:
        _STEP_BYTES.clear()
        _step_bytes_used = 0
    _STEP_BYTES[contents] = data
    _step_bytes_used += cost


def step_bytes_used() -> int:
    """Approximate memory held by the encoded-step cache (for tests and metrics)."""
    return _step_bytes_used


def _status(s: dict[str, Any]) -> StepStatus:
    return STEP_STATUSES.get(s["status"]) or StepStatus(s["status"])


def _decode_step(s: dict[str, Any], kind: StepKind) -> StepRecord:
    compensation = kind is KIND_COMPENSATION
    return StepRecord(
        position=s["position"],
        step=s["step"],
        queue=s["queue"],
        status=_status(s),
        attempt=s["attempt"],
        args=s["args"],
        scheduled_ms=s["scheduled_ms"],
        result=s["result"],
        error_type=s["error_type"],
        error_message=s["error_message"],
        due_ms=s["due_ms"],
        retry=s["retry"],
        timeout_ms=s["timeout_ms"],
        kind=kind,
        deadline_ms=s["deadline_ms"],
        started_ms=s["started_ms"],
        schedule_to_start_ms=s["schedule_to_start_ms"],
        compensate="" if compensation else s["compensate"],
        undoes=int(s["compensate"]) if compensation else -1,
        attempts=[AttemptRecord(**a) for a in s["attempts"]],
    )


def _decode_timer(s: dict[str, Any], kind: StepKind) -> TimerRecord:
    return TimerRecord(s["position"], _status(s), s["scheduled_ms"], s["deadline_ms"])


def _decode_wait(s: dict[str, Any], kind: StepKind) -> WaitRecord:
    return WaitRecord(
        s["position"],
        _status(s),
        s["scheduled_ms"],
        s["event_name"],
        s["event_key"],
        s["deadline_ms"],
        s["result"],
    )


def _decode_child(s: dict[str, Any], kind: StepKind) -> ChildRecord:
    status = _status(s)
    attempts = s["attempts"]
    return ChildRecord(
        s["position"],
        status,
        s["scheduled_ms"],
        s["step"],
        s["event_key"],
        s["args"],
        detached=status == STEP_COMPLETED and not attempts,  # completed when started: never waited for
        result=s["result"],
        error_type=s["error_type"],
        error_message=s["error_message"],
        ended=AttemptRecord(**attempts[-1]) if attempts else None,
    )


def _decode_marker(s: dict[str, Any], kind: StepKind) -> MarkerRecord:
    return MarkerRecord(s["position"], s["scheduled_ms"], s["step"])


_DECODE: dict[StepKind, Any] = {
    KIND_STEP: _decode_step,
    KIND_COMPENSATION: _decode_step,
    KIND_TIMER: _decode_timer,
    KIND_WAIT: _decode_wait,
    KIND_CHILD: _decode_child,
    KIND_MARKER: _decode_marker,
}


def _decode_command(s: dict[str, Any]) -> CommandRecord:
    kind = STEP_KINDS.get(s["kind"]) or StepKind(s["kind"])
    record: CommandRecord = _DECODE[kind](s, kind)
    return record


def decode_state(data: bytes | None) -> RunState:
    _, rec = wire.decode(data, expected=wire.RUN_STATE)
    steps = [_decode_command(s) for s in rec["steps"]]
    return RunState(
        run_id=rec["run_id"],
        workflow=rec["workflow"],
        status=RUN_STATUSES.get(rec["status"]) or RunStatus(rec["status"]),
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
        tags=rec["tags"],
    )
