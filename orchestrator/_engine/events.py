"""Event records and their wire encoding.

The records themselves live in the pure core (``orchestrator._core.events``) and are re-exported here,
so ``from orchestrator._engine.events import ...`` keeps working; this module adds what needs the schema
registry: encoding to and decoding from the Confluent wire format.
"""

from __future__ import annotations

from orchestrator._core.events import (  # re-exported: the old import path stays valid
    BODY_TYPES,
    AdmitRequest,
    Body,
    CancelRun,
    ChildStarted,
    CompensationStarted,
    DomainEvent,
    Event,
    EventReceived,
    MarkerRecorded,
    Release,
    ResumeRun,
    RetryScheduled,
    RunCancelled,
    RunCompleted,
    RunFailed,
    RunParked,
    RunResumed,
    RunStarted,
    SchedulePause,
    ScheduleRegister,
    Signal,
    StartRun,
    StepCompleted,
    StepFailed,
    StepScheduled,
    StepStarted,
    StepTimedOut,
    Subscribe,
    TagsSet,
    TimerFired,
    TimerStarted,
    Unsubscribe,
    WaitStarted,
    WaitTimedOut,
    event_record,
    to_record,
)
from orchestrator._engine import wire

__all__ = [
    "BODY_TYPES",
    "AdmitRequest",
    "Body",
    "CancelRun",
    "ChildStarted",
    "CompensationStarted",
    "DomainEvent",
    "Event",
    "EventReceived",
    "MarkerRecorded",
    "Release",
    "ResumeRun",
    "RetryScheduled",
    "RunCancelled",
    "RunCompleted",
    "RunFailed",
    "RunParked",
    "RunResumed",
    "RunStarted",
    "SchedulePause",
    "ScheduleRegister",
    "Signal",
    "StartRun",
    "StepCompleted",
    "StepFailed",
    "StepScheduled",
    "StepStarted",
    "StepTimedOut",
    "Subscribe",
    "TagsSet",
    "TimerFired",
    "TimerStarted",
    "Unsubscribe",
    "WaitStarted",
    "WaitTimedOut",
    "decode_event",
    "encode_event",
    "event_record",
    "to_record",
]


def encode_event(event: Event) -> bytes:
    return wire.encoder(wire.EVENT)(event)


def decode_event(data: bytes | None) -> Event:
    """Decode an Event; raises SchemaError for anything that is not one."""
    _, rec = wire.decode(data, expected=wire.EVENT)
    body_name, body = rec["body"]
    cls = BODY_TYPES.get(body_name)
    if cls is None:  # a branch added by a newer writer whose schema we still resolved
        from orchestrator.errors import SchemaError

        raise SchemaError(f"unknown event type {body_name!r}; upgrade this reader")
    return Event(
        event_id=rec["event_id"],
        run_id=rec["run_id"],
        workflow=rec["workflow"],
        timestamp_ms=rec["timestamp_ms"],
        body=cls(**body),
        seq=rec["seq"],
        workflow_version=rec["workflow_version"],
    )
