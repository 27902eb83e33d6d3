"""Events, run state and the other records survive their Avro encoding unchanged."""

from __future__ import annotations

import dataclasses

import pytest

from orchestrator._engine import events as ev
from orchestrator._engine import wire
from orchestrator._engine.events import (
    BODY_TYPES,
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
    decode_event,
    encode_event,
    to_record,
)
from orchestrator._engine.records import (
    DeadLetter,
    RunOutcome,
    StepCommand,
    decode_command,
    decode_dead_letter,
    decode_outcome,
    encode_command,
    encode_dead_letter,
    encode_outcome,
)
from orchestrator._engine.state import (
    AttemptRecord,
    BufferedSignal,
    Resolution,
    RunState,
    StepRecord,
    decode_state,
    encode_state,
    state_record,
)
from orchestrator.errors import SchemaError

BODIES = [
    StartRun(input=b'{"a": 1}', requested_by="client"),
    StartRun(input=b""),
    RunStarted(input=b"\x00\xff"),
    StepScheduled(
        position=3, step="charge", queue="payments", attempt=2, args=b"[1]", idempotency_key="r/3/c"
    ),
    StepCompleted(position=3, attempt=2, result=b"true", started_ms=10, finished_ms=20, worker="w-1"),
    StepCompleted(position=0, attempt=1, result=b"", started_ms=0, finished_ms=0),
    StepFailed(3, 1, "ValueError", "boom é", True, 10, 20, "w-2"),
    StepFailed(3, 3, "TerminalError", "", False, 10, 20),
    StepFailed(3, 2, "KeyError", "'k'", True, 10, 20, "w-2", "Traceback (most recent call last):\n"),
    RetryScheduled(position=3, attempt=2, due_ms=2**45),
    RunCompleted(result=b"42"),
    RunFailed(error_type="StepFailedError", message="step 'x' failed"),
    RunParked(kind="non_determinism", reason="at position 1 ..."),
    ev.StepStarted(position=1, attempt=1, started_ms=5, worker="w"),
    ev.StepTimedOut(position=1, attempt=1, timeout="start_to_close"),
    ev.TimerStarted(position=2, due_ms=2**40),
    ev.TimerFired(position=2),
    ev.WaitStarted(position=3, event_name="approved", key="o-1", deadline_ms=0, lookback_ms=60_000),
    ev.Signal(name="approved", key="o-1", payload=b"{}", source="client"),
    ev.EventReceived(position=3, event_name="approved", key="o-1", payload=b"{}", source="t/0/5"),
    ev.WaitTimedOut(position=3),
    ev.CancelRun(reason="customer asked", requested_by="cli"),
    ev.RunCancelled(reason="customer asked"),
    ev.DomainEvent(event_name="approved", key="o-1", payload=b"{}", source="approvals/0/7"),
    ev.Subscribe(event_name="approved", key="o-1", run_id="r", position=3, lookback_ms=0),
    ev.Unsubscribe(event_name="approved", key="o-1", run_id="r", position=3),
    ev.ScheduleRegister(workflow="report", cron="0 9 * * MON", timezone="Europe/Paris", missed="skip"),
    ev.SchedulePause(workflow="report", paused=True),
    ev.MarkerRecorded(position=2, name="new-pricing"),
    ev.ResumeRun(reason="fixed the bug", from_position=3),
    ev.RunResumed(reason="fixed the bug", from_position=3),
    ev.CompensationStarted(ending="failed", error_type="StepFailedError", message="step 'ship' failed"),
    ev.ChildStarted(position=4, workflow="ship", child_run_id="r/4", input=b"{}", detached=False),
    ev.AdmitRequest(workflow="w", run_id="r", input=b"{}", key="u1", priority=2.0, idempotency_key="k"),
    ev.Release(workflow="w", key="u1", run_id="r"),
    ev.TagsSet(tags={"customer": "c-42", "plan": "pro"}),
]


def test_every_body_type_is_sampled() -> None:
    assert {type(b) for b in BODIES} == set(BODY_TYPES.values())


def test_body_types_match_the_schema_branches() -> None:
    schema = wire.registry().by_id[wire.registry().current[wire.EVENT]]
    body_field = next(f for f in schema["fields"] if f["name"] == "body")
    assert {b["name"] for b in body_field["type"]} == set(BODY_TYPES)
    for branch in body_field["type"]:
        cls = BODY_TYPES[branch["name"]]
        assert [f["name"] for f in branch["fields"]] == [f.name for f in dataclasses.fields(cls)]


@pytest.mark.parametrize("body", BODIES, ids=lambda b: type(b).__name__)
def test_event_round_trip(body: object) -> None:
    event = Event(
        event_id="run-1/4",
        run_id="run-1",
        workflow="checkout",
        timestamp_ms=1_700_000_000_123,
        body=body,  # type: ignore[arg-type]
        seq=4,
        workflow_version="2024-06",
    )
    decoded = decode_event(encode_event(event))
    assert decoded == event
    assert type(decoded.body) is type(body)
    assert decoded.kind == type(body).__name__


def test_event_defaults_round_trip() -> None:
    event = Event("e", "r", "wf", 1, StartRun(b"x"))
    decoded = decode_event(encode_event(event))
    assert decoded.seq == -1
    assert decoded.workflow_version == ""
    assert decoded == event


def test_events_are_frozen() -> None:
    event = Event("e", "r", "wf", 1, RunStarted(b""))
    with pytest.raises(dataclasses.FrozenInstanceError):
        event.run_id = "other"  # type: ignore[misc]
    assert dataclasses.replace(event, seq=3).seq == 3


def test_decode_event_refuses_other_records() -> None:
    outcome = encode_outcome(RunOutcome("r", "wf", "completed", 1))
    with pytest.raises(SchemaError, match=r"expected a orchestrator\.v1\.Event"):
        decode_event(outcome)
    with pytest.raises(SchemaError):
        decode_event(None)
    with pytest.raises(SchemaError):
        decode_event(b"garbage!")


def test_to_record_is_field_order_dict() -> None:
    cmd = StepCommand("r", "wf", 1, "s", 1, b"[]", "r/1/s", 5)
    assert to_record(cmd) == {
        "run_id": "r",
        "workflow": "wf",
        "position": 1,
        "step": "s",
        "attempt": 1,
        "args": b"[]",
        "idempotency_key": "r/1/s",
        "scheduled_ms": 5,
        "timeout_ms": 0,
        "report_start": False,
        "cancel": False,
        "schedule_to_start_ms": 0,
    }


# -- run state -----------------------------------------------------------------------------------------------
def _state() -> RunState:
    return RunState(
        run_id="run-7",
        workflow="checkout",
        status="running",
        input=b'{"cart": [1, 2]}',
        created_ms=1000,
        updated_ms=5000,
        workflow_version="v2",
        next_seq=11,
        steps=[
            StepRecord(
                position=0,
                step="reserve",
                queue="default",
                status="completed",
                attempt=1,
                args=b"[1]",
                scheduled_ms=1000,
                result=b'"ok"',
                attempts=[AttemptRecord(1, 1001, 1002, worker="w1")],
            ),
            StepRecord(
                position=1,
                step="charge",
                queue="payments",
                status="backoff",
                attempt=2,
                args=b"[2]",
                scheduled_ms=1003,
                due_ms=9000,
                retry='{"max_attempts": 5}',
                timeout_ms=30_000,
                attempts=[
                    AttemptRecord(1, 1004, 1005, "TimeoutError", "slow", "w1"),
                    AttemptRecord(2, 2004, 2005, "ConnectionError", "reset", "w2"),
                ],
            ),
            StepRecord(
                position=2,
                step="notify",
                queue="default",
                status="failed",
                attempt=1,
                args=b"[]",
                scheduled_ms=1003,
                error_type="TerminalError",
                error_message="no address",
                attempts=[AttemptRecord(1, 1010, 1011, "TerminalError", "no address", "")],
            ),
        ],
        resolutions=[Resolution(0, 1002), Resolution(2, 1011)],
    )


def test_run_state_round_trip() -> None:
    state = _state()
    assert decode_state(encode_state(state)) == state


def test_terminal_run_state_round_trip() -> None:
    state = _state()
    state.status, state.result = "completed", b"123"
    decoded = decode_state(encode_state(state))
    assert decoded == state
    assert decoded.terminal
    state.status, state.result, state.error_type, state.error_message = "failed", None, "X", "y"
    assert decode_state(encode_state(state)) == state


def test_empty_run_state_round_trip() -> None:
    state = RunState("r", "wf", "running", b"", 0, 0)
    decoded = decode_state(encode_state(state))
    assert decoded == state
    assert decoded.steps == [] and decoded.resolutions == []
    assert not decoded.terminal


def _many_steps_state() -> RunState:
    state = _state()
    state.signals = [BufferedSignal("approved", "k", b"{}", 77, "crm")]
    state.steps += [
        StepRecord(i, f"s{i}", "default", "completed", 1, b"[]", 10 * i, b"1") for i in range(3, 200)
    ]
    return state


@pytest.mark.parametrize(
    "state",
    [_state(), RunState("r", "wf", "running", b"", 0, 0), _many_steps_state()],
    ids=["steps", "empty", "200-steps-and-signals"],
)
def test_encode_state_writes_exactly_what_plain_avro_writes(state: RunState) -> None:
    # The spliced encoding (cached step bytes) must be byte-identical to encoding the record in one go.
    assert encode_state(state) == wire.encode(wire.RUN_STATE, state_record(state))
    assert encode_state(state) == wire.encode(wire.RUN_STATE, state_record(state))  # from the step cache


def test_encode_state_sees_steps_changed_in_place() -> None:
    state = _state()
    decode_state(encode_state(state))
    step = state.steps[1]
    step.status, step.attempt = "completed", 3
    step.attempts.append(AttemptRecord(3, 3004, 3005, worker="w3"))
    step.result = b"42"
    assert decode_state(encode_state(state)) == state
    step.attempts[0].message = "changed"
    assert decode_state(encode_state(state)) == state


def test_run_state_helpers() -> None:
    state = _state()
    step = state.step_at(1)
    assert step is not None and step.step == "charge"
    assert state.step_at(3) is None
    assert state.step_at(-1) is None
    assert state.next_seq == 11  # numbered by evolve (the seq of the last event + 1), not by the state
    for status, terminal in [("running", False), ("parked", False), ("completed", True), ("failed", True)]:
        state.status = status
        assert state.terminal is terminal


def test_decode_state_refuses_an_event() -> None:
    with pytest.raises(SchemaError):
        decode_state(encode_event(Event("e", "r", "wf", 1, RunStarted(b""))))


# -- other records -------------------------------------------------------------------------------------------
def test_step_command_round_trip() -> None:
    cmd = StepCommand("r", "wf", 2, "charge", 3, b"[1, 2]", "r/2/charge", 99, timeout_ms=5000)
    assert decode_command(encode_command(cmd)) == cmd


@pytest.mark.parametrize(
    "outcome",
    [
        RunOutcome("r", "wf", "completed", 5, result=b"1"),
        RunOutcome("r", "wf", "failed", 5, error_type="ValueError", error_message="bad"),
        RunOutcome("r", "wf", "parked", 5, result=None, error_type="non_determinism", error_message="x"),
    ],
)
def test_run_outcome_round_trip(outcome: RunOutcome) -> None:
    assert decode_outcome(encode_outcome(outcome)) == outcome


@pytest.mark.parametrize(("key", "value"), [(b"r1", b"\x00\x01"), (None, None), (b"", b"")])
def test_dead_letter_round_trip(key: bytes | None, value: bytes | None) -> None:
    letter = DeadLetter("app.inbox", 3, 2**40, key, value, "SchemaError", "why", 7, "processor:p")
    assert decode_dead_letter(encode_dead_letter(letter)) == letter


def test_record_decoders_check_the_type() -> None:
    cmd = encode_command(StepCommand("r", "wf", 0, "s", 1, b"", "k", 0))
    with pytest.raises(SchemaError):
        decode_outcome(cmd)
    with pytest.raises(SchemaError):
        decode_dead_letter(cmd)
    with pytest.raises(SchemaError):
        decode_command(encode_outcome(RunOutcome("r", "wf", "completed", 1)))
