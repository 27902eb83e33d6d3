"""Unreadable records are classified by what is wrong with them, reported with their coordinates, skipped."""

from __future__ import annotations

import struct

import pytest
from confluent_kafka import Message

from orchestrator._engine import events as ev
from orchestrator._engine import unreadable as ur
from orchestrator._engine import wire
from orchestrator._engine.events import Event, decode_event, encode_event
from orchestrator._engine.records import StepCommand, encode_command
from orchestrator.errors import SchemaError


def _event(seq: int = 0) -> bytes:
    return encode_event(Event(f"r/{seq}", "r", "wf", 1_000 + seq, ev.RunStarted(input=b"{}"), seq=seq))


def _msg(value: bytes | None, offset: int = 7, key: bytes | None = b"r") -> Message:
    return Message(topic="app.history", partition=2, offset=offset, key=key, value=value)


def _reason(value: bytes | None) -> str:
    try:
        decode_event(value)
    except Exception as exc:
        return ur.classify(value, wire.EVENT, exc)[0]
    raise AssertionError("the record decoded")


def _unknown_event_type() -> bytes:
    """An Event whose body branch is one this reader has no class for (a newer engine's event type)."""
    reg = wire.registry()
    body = (
        "orchestrator.v1.StartRun",
        {"input": b"", "requested_by": "", "parent_run_id": "", "parent_position": -1, "admission_key": ""},
    )
    record = {
        "event_id": "r/0",
        "run_id": "r",
        "workflow": "wf",
        "timestamp_ms": 1,
        "body": body,
        "seq": 0,
        "workflow_version": "",
    }
    data = wire.encode(wire.EVENT, record)
    assert reg.names[struct.unpack_from(">bI", data)[1]] == wire.EVENT
    return data


def test_each_kind_of_bad_record_gets_its_own_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    good = _event()
    command = encode_command(StepCommand("r", "wf", 0, "s", 1, b"", "k", 1))
    assert _reason(b"not avro at all") == ur.JUNK
    assert _reason(b"\x00\x00") == ur.JUNK
    assert _reason(None) == ur.JUNK
    assert _reason(b"\x00" + struct.pack(">I", 99_999) + good[5:]) == ur.UNKNOWN_SCHEMA
    assert _reason(good[: len(good) - 4]) == ur.TRUNCATED
    assert _reason(command) == ur.WRONG_TYPE
    assert _reason(good[:5] + b"\xff" * 30) == ur.BAD_AVRO  # a negative string length
    # A body branch the schema has but this reader cannot turn into an event.
    monkeypatch.delitem(ev.BODY_TYPES, "orchestrator.v1.StartRun")
    assert _reason(_unknown_event_type()) == ur.UNKNOWN_EVENT


def test_decoded_reports_bad_records_with_coordinates_and_carries_on() -> None:
    msgs = [_msg(_event(0), 1), _msg(b"junk", 2), _msg(_event(1), 3, key=None), _msg(b"\xff" * 3, 4, b"\xff")]
    skipped = ur.Skipped()
    got = list(ur.decoded(msgs, decode_event, wire.EVENT, skipped))
    assert [(w.offset, e.seq) for w, e in got] == [(1, 0), (3, 1)]
    assert [(u.where.topic, u.where.partition, u.where.offset, u.reason) for u in skipped.records] == [
        ("app.history", 2, 2, ur.JUNK),
        ("app.history", 2, 4, ur.JUNK),
    ]
    assert (
        skipped.keys("app.history") == {"r"} and skipped.keys("other") == set()
    )  # a key that is not text names no run
    assert "app.history[2]@2 (key 'r'): junk bytes" in str(skipped.records[0])
    as_json = skipped.records[1].as_json()
    assert as_json["type"] == "unreadable" and as_json["key"] == "ff" and as_json["offset"] == 4


def test_without_a_callback_the_first_bad_record_raises_with_its_coordinates() -> None:
    msgs = [_msg(_event(0), 1), _msg(b"junk", 2)]
    with pytest.raises(SchemaError, match=r"app.history\[2\]@2 .*junk bytes"):
        list(ur.decoded(msgs, decode_event, wire.EVENT, None))


def test_skipped_echoes_each_record_as_it_is_met() -> None:
    seen: list[int] = []
    skipped = ur.Skipped(echo=lambda u: seen.append(u.where.offset))
    list(ur.decoded([_msg(b"x", 5), _msg(b"y", 6)], decode_event, wire.EVENT, skipped))
    assert seen == [5, 6] and len(skipped) == 2
