"""One record type per kind of command, stored as the one frozen Avro step record (issue 12).

Each stored record below is written field by field as the engine wrote it before the types were split (one
``StepRecord`` for every kind); decoding must give the typed record, and encoding it again the same bytes.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from orchestrator._core import events as ev
from orchestrator._core import state as st
from orchestrator._core.evolve import FoldError, evolve, fold
from orchestrator._engine import wire
from orchestrator._engine.state import decode_state, encode_state, state_record


def _stored(position: int, kind: str, step: str, status: str, **fields: Any) -> dict[str, Any]:
    """A stored step record: what the old generic ``StepRecord`` held for a command of ``kind``."""
    record: dict[str, Any] = {
        "position": position,
        "step": step,
        "queue": "",
        "status": status,
        "attempt": 1,
        "args": b"",
        "result": None,
        "error_type": "",
        "error_message": "",
        "scheduled_ms": 1_000 + position,
        "due_ms": 0,
        "retry": "",
        "timeout_ms": 0,
        "kind": kind,
        "event_name": "",
        "event_key": "",
        "deadline_ms": 0,
        "started_ms": 0,
        "schedule_to_start_ms": 0,
        "compensate": "",
        "attempts": [],
    }
    record.update(fields)
    return record


def _attempt(n: int, error_type: str = "", message: str = "", worker: str = "w1") -> dict[str, Any]:
    return {
        "attempt": n,
        "started_ms": 10 * n,
        "finished_ms": 10 * n + 5,
        "error_type": error_type,
        "message": message,
        "worker": worker,
    }


STORED: list[tuple[dict[str, Any], st.CommandRecord]] = [
    (
        _stored(
            0,
            "step",
            "charge",
            "completed",
            queue="pay",
            args=b"[1]",
            result=b'"c-1"',
            compensate="refund",
            attempts=[_attempt(1)],
        ),
        st.StepRecord(
            0,
            "charge",
            "pay",
            st.STEP_COMPLETED,
            1,
            b"[1]",
            1_000,
            b'"c-1"',
            compensate="refund",
            attempts=[st.AttemptRecord(1, 10, 15, worker="w1")],
        ),
    ),
    (
        _stored(
            1,
            "step",
            "ship",
            "backoff",
            queue="default",
            attempt=2,
            due_ms=9_000,
            retry='{"max_attempts": 3}',
            timeout_ms=500,
            schedule_to_start_ms=200,
            attempts=[_attempt(1, "ConnectionError", "reset")],
        ),
        st.StepRecord(
            1,
            "ship",
            "default",
            st.STEP_BACKOFF,
            2,
            b"",
            1_001,
            due_ms=9_000,
            retry='{"max_attempts": 3}',
            timeout_ms=500,
            schedule_to_start_ms=200,
            attempts=[st.AttemptRecord(1, 10, 15, "ConnectionError", "reset", "w1")],
        ),
    ),
    (
        _stored(2, "step", "notify", "scheduled", deadline_ms=4_000, started_ms=3_000, timeout_ms=1_000),
        st.StepRecord(
            2,
            "notify",
            "",
            st.STEP_SCHEDULED,
            1,
            b"",
            1_002,
            deadline_ms=4_000,
            started_ms=3_000,
            timeout_ms=1_000,
        ),
    ),
    (
        _stored(3, "compensation", "refund", "scheduled", queue="pay", args=b"[1]", compensate="0"),
        st.StepRecord(
            3, "refund", "pay", st.STEP_SCHEDULED, 1, b"[1]", 1_003, kind=st.KIND_COMPENSATION, undoes=0
        ),
    ),
    (
        _stored(4, "timer", "sleep", "waiting", deadline_ms=86_400_000),
        st.TimerRecord(4, st.STEP_WAITING, 1_004, 86_400_000),
    ),
    (
        _stored(5, "timer", "sleep", "completed", deadline_ms=5_000),
        st.TimerRecord(5, st.STEP_COMPLETED, 1_005, 5_000),
    ),
    (_stored(6, "timer", "sleep", "cancelled"), st.TimerRecord(6, st.STEP_CANCELLED, 1_006, 0)),
    (
        _stored(7, "wait", "approved", "waiting", event_name="approved", event_key="o-1", deadline_ms=7_000),
        st.WaitRecord(7, st.STEP_WAITING, 1_007, "approved", "o-1", 7_000),
    ),
    (
        _stored(8, "wait", "approved", "completed", event_name="approved", result=b'{"by": "ann"}'),
        st.WaitRecord(8, st.STEP_COMPLETED, 1_008, "approved", "", 0, b'{"by": "ann"}'),
    ),
    (
        _stored(9, "wait", "paid", "timed_out", event_name="paid", event_key="k", deadline_ms=9_000),
        st.WaitRecord(9, st.STEP_TIMED_OUT, 1_009, "paid", "k", 9_000),
    ),
    (
        _stored(10, "child", "ship_order", "scheduled", args=b"[2]", event_key="r/child/10"),
        st.ChildRecord(10, st.STEP_SCHEDULED, 1_010, "ship_order", "r/child/10", b"[2]"),
    ),
    (
        _stored(
            11,
            "child",
            "ship_order",
            "completed",
            args=b"[2]",
            event_key="c11",
            result=b"7",
            attempts=[_attempt(1, worker="child:c11")],
        ),
        st.ChildRecord(
            11,
            st.STEP_COMPLETED,
            1_011,
            "ship_order",
            "c11",
            b"[2]",
            result=b"7",
            ended=st.AttemptRecord(1, 10, 15, worker="child:c11"),
        ),
    ),
    (
        _stored(
            12,
            "child",
            "ship_order",
            "failed",
            event_key="c12",
            error_type="TerminalError",
            error_message="no",
            attempts=[_attempt(1, "TerminalError", "no", "child:c12")],
        ),
        st.ChildRecord(
            12,
            st.STEP_FAILED,
            1_012,
            "ship_order",
            "c12",
            error_type="TerminalError",
            error_message="no",
            ended=st.AttemptRecord(1, 10, 15, "TerminalError", "no", "child:c12"),
        ),
    ),
    (
        _stored(13, "child", "audit", "completed", args=b"[]", event_key="c13"),
        st.ChildRecord(13, st.STEP_COMPLETED, 1_013, "audit", "c13", b"[]", detached=True),
    ),
    (
        _stored(14, "child", "audit", "cancelled", event_key="c14"),
        st.ChildRecord(14, st.STEP_CANCELLED, 1_014, "audit", "c14"),
    ),
    (_stored(15, "marker", "new-pricing", "completed"), st.MarkerRecord(15, 1_015, "new-pricing")),
]


def _state(steps: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "run_id": "r",
        "workflow": "wf",
        "workflow_version": "",
        "status": "running",
        "input": b"[]",
        "created_ms": 1,
        "updated_ms": 2,
        "next_seq": 3,
        "result": None,
        "error_type": "",
        "error_message": "",
        "steps": steps,
        "resolutions": [],
        "deadline_ms": 0,
        "ending": "",
        "parent_run_id": "",
        "parent_position": -1,
        "admission_key": "",
        "signals": [],
    }


@pytest.mark.parametrize(
    ("stored", "typed"), STORED, ids=lambda x: str(x.get("kind", "")) if isinstance(x, dict) else ""
)
def test_each_kind_decodes_to_its_record_and_encodes_to_the_same_bytes(
    stored: dict[str, Any], typed: st.CommandRecord
) -> None:
    stored, typed = {**stored, "position": 0}, dataclasses.replace(typed, position=0)  # type: ignore[type-var]
    data = wire.encode(wire.RUN_STATE, _state([stored]))
    decoded = decode_state(data)
    assert decoded.steps == [typed]
    assert type(decoded.steps[0].kind) is st.StepKind and type(decoded.steps[0].status) is st.StepStatus
    assert encode_state(decoded) == data
    assert encode_state(decoded) == data  # spliced from the step cache
    assert state_record(decoded)["steps"] == [stored]


def test_a_state_of_every_kind_keeps_its_order_and_bytes() -> None:
    data = wire.encode(wire.RUN_STATE, _state([stored for stored, _ in STORED]))
    decoded = decode_state(data)
    assert decoded.steps == [typed for _, typed in STORED]
    assert [s.position for s in decoded.steps] == list(range(len(STORED)))
    assert encode_state(decoded) == data


def test_typed_accessors() -> None:
    state = decode_state(wire.encode(wire.RUN_STATE, _state([stored for stored, _ in STORED])))
    timer = state.record_at(4, st.TimerRecord)
    assert timer is not None and timer.due_ms == 86_400_000 and timer.name == "sleep"
    assert state.record_at(4, st.StepRecord) is None and state.record_at(99, st.TimerRecord) is None
    assert [c.child_run_id for c in state.records(st.ChildRecord)] == [
        "r/child/10",
        "c11",
        "c12",
        "c13",
        "c14",
    ]
    assert [s.name for s in state.steps[7:10]] == ["approved", "approved", "paid"]
    assert st.result_of(state.steps[8]) == b'{"by": "ann"}' and st.result_of(state.steps[4]) is None
    assert st.attempts_of(state.steps[11]) == (1, [st.AttemptRecord(1, 10, 15, worker="child:c11")])
    assert st.attempts_of(state.steps[15]) == (1, [])
    marker = state.steps[15]
    assert isinstance(marker, st.MarkerRecord) and (marker.name, marker.kind, marker.status) == (
        "new-pricing",
        st.KIND_MARKER,
        st.STEP_COMPLETED,
    )


def _history(*bodies: Any) -> list[Any]:
    from orchestrator._core.events import Event

    return [Event(f"r/{i}", "r", "wf", 1_000 + i, body, i) for i, body in enumerate(bodies)]


@pytest.mark.parametrize(
    "wrong",
    [
        lambda: ev.StepCompleted(0, 1, b"1", 1, 2, "w"),  # a worker's result for a timer
        lambda: ev.TimerFired(1),  # a timer firing at a wait
        lambda: ev.RetryScheduled(2, 2, 9_000),  # a retry of a child
        lambda: ev.EventReceived(0, "approved", "", b"{}", ""),  # an event delivered to a timer
        lambda: ev.StepStarted(2, 1, 1_500, "w"),  # a start report for a child
        lambda: ev.StepScheduled(3, "sleep", "", 1, b"", "r/3/sleep", "", 0, 0, "timer", ""),
    ],
)
def test_evolve_refuses_an_event_aimed_at_another_kind_and_changes_nothing(wrong: Any) -> None:
    history = _history(
        ev.RunStarted(b"[]"),
        ev.TimerStarted(0, 5_000),
        ev.WaitStarted(1, "approved", "k", 0, 0),
        ev.ChildStarted(2, "ship", "r/child/2", b"[]", False),
    )
    state = fold(history)
    assert state is not None
    before = encode_state(state)
    [event] = _history(*([None] * len(history)), wrong())[len(history) :]
    with pytest.raises(FoldError):
        evolve(state, event)
    assert encode_state(state) == before
