"""Confluent wire format: magic byte 0, 4-byte big-endian schema id, Avro body."""

from __future__ import annotations

import io
import json
import struct
from pathlib import Path
from typing import Any

import fastavro
import pytest

from orchestrator._engine import wire
from orchestrator._engine.events import Event, StepCompleted, encode_event
from orchestrator.errors import SchemaError

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"

SAMPLES: dict[str, dict[str, Any]] = {
    wire.EVENT: {
        "event_id": "r1/0",
        "run_id": "r1",
        "workflow": "wf",
        "workflow_version": "v3",
        "seq": 0,
        "timestamp_ms": 1_700_000_000_000,
        "body": (
            "orchestrator.v1.StepCompleted",
            {
                "position": 2,
                "attempt": 1,
                "result": b"42",
                "started_ms": 1,
                "finished_ms": 2,
                "worker": "w-1",
            },
        ),
    },
    wire.STEP_COMMAND: {
        "run_id": "r1",
        "workflow": "wf",
        "position": 3,
        "step": "charge",
        "attempt": 2,
        "args": b"[1]",
        "idempotency_key": "r1/3/charge",
        "scheduled_ms": 5,
        "timeout_ms": 30_000,
        "report_start": True,
        "cancel": False,
        "schedule_to_start_ms": 0,
    },
    wire.RUN_STATE: {
        "run_id": "r1",
        "workflow": "wf",
        "workflow_version": "",
        "status": "running",
        "input": b"{}",
        "created_ms": 1,
        "updated_ms": 2,
        "next_seq": 4,
        "result": None,
        "error_type": "",
        "error_message": "",
        "steps": [
            {
                "position": 0,
                "kind": "step",
                "step": "a",
                "queue": "default",
                "status": "completed",
                "attempt": 1,
                "args": b"[]",
                "result": b"1",
                "error_type": "",
                "error_message": "",
                "scheduled_ms": 1,
                "due_ms": 0,
                "retry": "",
                "timeout_ms": 0,
                "attempts": [
                    {
                        "attempt": 1,
                        "started_ms": 1,
                        "finished_ms": 2,
                        "error_type": "",
                        "message": "",
                        "worker": "w",
                    }
                ],
                "event_name": "",
                "event_key": "",
                "deadline_ms": 0,
                "started_ms": 1,
                "schedule_to_start_ms": 0,
                "compensate": "",
            }
        ],
        "resolutions": [{"position": 0, "timestamp_ms": 2}],
        "deadline_ms": 0,
        "ending": "",
        "parent_run_id": "",
        "parent_position": -1,
        "admission_key": "",
        "tags": {"customer": "c-42"},
        "signals": [
            {"name": "approve", "key": "o1", "payload": b"{}", "timestamp_ms": 3, "source": "client"}
        ],
    },
    wire.RUN_OUTCOME: {
        "run_id": "r1",
        "workflow": "wf",
        "status": "completed",
        "result": b"7",
        "error_type": "",
        "error_message": "",
        "timestamp_ms": 9,
    },
    wire.DEAD_LETTER: {
        "source_topic": "app.inbox",
        "source_partition": 3,
        "source_offset": 12345678901,
        "key": None,
        "value": b"\x01\x02",
        "error_type": "SchemaError",
        "reason": "bad",
        "timestamp_ms": 7,
        "component": "processor:p1",
    },
}


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_round_trip_each_schema(name: str) -> None:
    data = wire.encode(name, SAMPLES[name])
    got_name, record = wire.decode(data)
    assert got_name == name
    assert record == SAMPLES[name]
    assert wire.decode(data, expected=name) == (name, record)


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_header_is_magic_zero_and_big_endian_current_id(name: str) -> None:
    data = wire.encode(name, SAMPLES[name])
    assert data[0] == 0
    sid = struct.unpack(">I", data[1:5])[0]
    assert sid == wire.registry().current[name]
    assert data[1:5] == sid.to_bytes(4, "big")


def test_frozen_ids_keep_their_names() -> None:
    reg = wire.registry()
    frozen = {
        1: wire.EVENT,
        2: wire.STEP_COMMAND,
        3: wire.RUN_STATE,
        4: wire.RUN_OUTCOME,
        5: wire.DEAD_LETTER,
    }
    for sid, name in frozen.items():
        assert reg.names[sid] == name
    for name, sid in reg.current.items():  # current may move to a newer id, never to another name
        assert reg.names[sid] == name


@pytest.mark.parametrize("data", [None, b"", b"\x00", b"\x00\x00\x00\x00"])
def test_too_short_raises_schema_error(data: bytes | None) -> None:
    with pytest.raises(SchemaError, match="too short"):
        wire.decode(data)


def test_bad_magic_byte_raises_schema_error() -> None:
    data = bytearray(wire.encode(wire.RUN_OUTCOME, SAMPLES[wire.RUN_OUTCOME]))
    data[0] = 1
    with pytest.raises(SchemaError, match="magic"):
        wire.decode(bytes(data))


def test_plain_json_is_not_ours() -> None:
    with pytest.raises(SchemaError):
        wire.decode(b'{"run_id": "r1"}')


def test_unknown_schema_id_says_upgrade() -> None:
    data = b"\x00" + struct.pack(">I", 999_999) + b"\x00"
    with pytest.raises(SchemaError, match=r"unknown schema id 999999.*upgrade"):
        wire.decode(data)


def test_wrong_expected_type_raises_schema_error() -> None:
    data = wire.encode(wire.RUN_OUTCOME, SAMPLES[wire.RUN_OUTCOME])
    with pytest.raises(SchemaError, match=r"expected a orchestrator.v1.Event record, got .*RunOutcome"):
        wire.decode(data, expected=wire.EVENT)


@pytest.mark.parametrize(
    "body",
    [
        b"",  # header only
        b"\xff" * 20,  # varints that never end / absurd lengths
        b"\x10abc",  # a string length longer than the data
        b"\x02",  # truncated
    ],
)
@pytest.mark.parametrize("name", [wire.EVENT, wire.STEP_COMMAND, wire.RUN_STATE])
def test_garbage_body_raises_schema_error(name: str, body: bytes) -> None:
    header = b"\x00" + struct.pack(">I", wire.registry().current[name])
    with pytest.raises(SchemaError, match="does not match its schema"):
        wire.decode(header + body)


def test_truncated_real_record_raises_schema_error() -> None:
    data = wire.encode(wire.STEP_COMMAND, SAMPLES[wire.STEP_COMMAND])
    for cut in range(5, len(data) - 1):
        with pytest.raises(SchemaError):
            wire.decode(data[:cut])


def test_encode_rejects_records_that_do_not_fit_the_schema() -> None:
    with pytest.raises((ValueError, TypeError)):
        wire.encode(wire.RUN_OUTCOME, {"run_id": "r1"})


# -- standard tools can read our topics with the .avsc files alone -------------------------------------------
def _plain_read(data: bytes) -> tuple[str, Any]:
    """Decode with nothing but schemas/ and fastavro, as kcat or a Java consumer would."""
    registry = json.loads((SCHEMAS / "registry.json").read_text())
    magic, sid = struct.unpack(">bI", data[:5])
    assert magic == 0
    entry = registry["schemas"][str(sid)]
    schema = fastavro.parse_schema(json.loads((SCHEMAS / entry["file"]).read_text()), named_schemas={})
    return entry["name"], fastavro.schemaless_reader(io.BytesIO(data[5:]), schema, None)


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_fastavro_reads_our_bytes_with_only_the_avsc(name: str) -> None:
    got_name, record = _plain_read(wire.encode(name, SAMPLES[name]))
    assert got_name == name
    expected = dict(SAMPLES[name])
    if name == wire.EVENT:  # without return_record_name, fastavro gives the union branch's record only
        expected["body"] = expected["body"][1]
    assert record == expected


def test_fastavro_reads_an_encoded_event() -> None:
    event = Event("e", "r", "wf", 5, StepCompleted(1, 2, b"x", 3, 4, "w"), seq=7, workflow_version="v")
    name, record = _plain_read(encode_event(event))
    assert name == wire.EVENT
    assert record["run_id"] == "r"
    assert record["seq"] == 7
    assert record["body"] == {
        "position": 1,
        "attempt": 2,
        "result": b"x",
        "started_ms": 3,
        "finished_ms": 4,
        "worker": "w",
    }


def test_records_written_by_plain_fastavro_decode() -> None:
    """The reverse direction: a non-orchestrator producer writing with the .avsc is understood."""
    registry = json.loads((SCHEMAS / "registry.json").read_text())
    sid = registry["current"][wire.RUN_OUTCOME]
    schema = fastavro.parse_schema(
        json.loads((SCHEMAS / registry["schemas"][str(sid)]["file"]).read_text()), named_schemas={}
    )
    buf = io.BytesIO()
    buf.write(b"\x00" + struct.pack(">I", sid))
    fastavro.schemaless_writer(buf, schema, SAMPLES[wire.RUN_OUTCOME])
    assert wire.decode(buf.getvalue(), expected=wire.RUN_OUTCOME)[1] == SAMPLES[wire.RUN_OUTCOME]
