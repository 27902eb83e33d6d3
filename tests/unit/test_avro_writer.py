"""The compiled Avro writers write exactly fastavro's bytes, for every schema, branch and edge value."""

from __future__ import annotations

import dataclasses
import io
import random
import typing
from typing import Any

import fastavro
import pytest

from orchestrator._engine import wire
from orchestrator._engine.avro_writer import compile_encoder, compile_writer, zigzag
from orchestrator._engine.events import BODY_TYPES, Event, encode_event, event_record
from orchestrator._engine.records import (
    DeadLetter,
    RunOutcome,
    StepCommand,
    encode_command,
    encode_dead_letter,
    encode_outcome,
)
from orchestrator._engine.state import RunState, StepRecord, encode_state, state_record

_INTS = [0, 1, -1, 63, 64, -64, -65, 127, 128, 300, -300, 2**31 - 1, -(2**31)]
_LONGS = [*_INTS, 1_763_870_000_000, -1_763_870_000_000, 2**62, -(2**62), 2**63 - 1, -(2**63)]
_STRINGS = ["", "a", "run-1/7", "é日本語🙂", "x" * 200]
_BYTES = [b"", b"\x00", b'{"x": 4}', bytes(range(256)) * 3]


class _Obj:
    """An attribute bag named like the record it stands for (branches are picked by class name)."""


def _obj(name: str, fields: dict[str, Any]) -> Any:
    cls = type(name.rsplit(".", 1)[-1], (_Obj,), {})
    obj = cls()
    obj.__dict__.update(fields)
    return obj


class _Gen:
    """Random values of a schema, as dicts (fastavro's form) and as attribute objects (ours)."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.named: dict[str, Any] = {}

    def value(self, t: Any, ns: str) -> tuple[Any, Any]:
        rng = self.rng
        if isinstance(t, list):
            if "null" in t and len(t) == 2:
                if rng.random() < 0.4:
                    return None, None
                return self.value(t[1 - t.index("null")], ns)
            branch = rng.choice(t)
            schema = branch if isinstance(branch, dict) else self.named[_full(branch, ns)]
            full = _full(schema["name"], schema.get("namespace", ns))
            as_dict, as_obj = self.value(schema, ns)
            return (full, as_dict), as_obj
        if isinstance(t, str):
            simple = {
                "null": lambda: None,
                "boolean": lambda: rng.random() < 0.5,
                "int": lambda: rng.choice(_INTS),
                "long": lambda: rng.choice(_LONGS),
                "double": lambda: rng.choice([0.0, -1.5, 3.25, 1e300]),
                "float": lambda: rng.choice([0.0, -1.5, 3.25]),
                "string": lambda: rng.choice(_STRINGS),
                "bytes": lambda: rng.choice(_BYTES),
            }
            if t in simple:
                v = simple[t]()
                return v, v
            return self.value(self.named[_full(t, ns)], ns)
        kind = t["type"]
        if kind == "record":
            full = _full(t["name"], t.get("namespace", ns))
            self.named[full] = t
            inner = full.rsplit(".", 1)[0]
            pairs = {f["name"]: self.value(f["type"], inner) for f in t["fields"]}
            return {k: v[0] for k, v in pairs.items()}, _obj(full, {k: v[1] for k, v in pairs.items()})
        if kind == "array":
            items = [self.value(t["items"], ns) for _ in range(rng.choice([0, 1, 3]))]
            return [i[0] for i in items], [i[1] for i in items]
        if kind == "map":
            keys = rng.sample(_STRINGS, rng.choice([0, 1, 3]))
            values = {k: self.value(t["values"], ns) for k in keys}
            return {k: v[0] for k, v in values.items()}, {k: v[1] for k, v in values.items()}
        if kind == "enum":
            self.named[_full(t["name"], t.get("namespace", ns))] = t
            v = rng.choice(t["symbols"])
            return v, v
        return self.value(kind, ns)


def _full(name: str, ns: str) -> str:
    return name if "." in name or not ns else f"{ns}.{name}"


def _fastavro(schema: Any, record: Any) -> bytes:
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, fastavro.parse_schema(schema, named_schemas={}), record)
    return buf.getvalue()


@pytest.mark.parametrize("sid", sorted(wire.registry().raw))
def test_random_records_of_every_schema_match_fastavro(sid: int) -> None:
    raw = wire.registry().raw[sid]
    by_dict = compile_writer(raw, attrs=False)
    by_attr = compile_writer(raw, attrs=True)
    rng = random.Random(sid)
    for _ in range(400):
        gen = _Gen(rng)
        as_dict, as_obj = gen.value(raw, raw.get("namespace", ""))
        expected = _fastavro(raw, as_dict)
        out_d, out_a = bytearray(), bytearray()
        by_dict(out_d, as_dict)
        by_attr(out_a, as_obj)
        assert bytes(out_d) == expected
        assert bytes(out_a) == expected


def test_every_event_body_type_encodes_like_fastavro() -> None:
    rng = random.Random(1)
    samples: dict[Any, list[Any]] = {
        int: _INTS,
        str: _STRINGS,
        bytes: _BYTES,
        bool: [True, False],
        float: [0.0, -2.5, 7.0],
        bytes | None: [*_BYTES, None],
        dict[str, str]: [{}, {"customer": "c-42"}, {"a": "", "é日本語🙂": "x" * 200}],
    }
    for cls in BODY_TYPES.values():
        hints = typing.get_type_hints(cls)
        for _ in range(20):
            body = cls(**{f.name: rng.choice(samples[hints[f.name]]) for f in dataclasses.fields(cls)})
            event = Event("e/1", "r", "wf", rng.choice(_LONGS), body, seq=rng.choice(_INTS))
            assert encode_event(event) == wire.encode(wire.EVENT, event_record(event)), cls.__name__


def test_records_and_state_encode_like_fastavro() -> None:
    cmd = StepCommand("r", "wf", 3, "charge", 2, b"[1]", "r/3/charge", 1_763_870_000_000, 500, True, False, 0)
    assert encode_command(cmd) == wire.encode(wire.STEP_COMMAND, dataclasses.asdict(cmd))
    for result in (None, b"", b'"ok"'):
        outcome = RunOutcome("r", "wf", "completed", 1_763_870_000_000, result, "", "")
        assert encode_outcome(outcome) == wire.encode(wire.RUN_OUTCOME, dataclasses.asdict(outcome))
    letter = DeadLetter("t", 1, 2, None, b"\x00bad", "SchemaError", "no", 3, "processor:p0")
    assert encode_dead_letter(letter) == wire.encode(wire.DEAD_LETTER, dataclasses.asdict(letter))
    state = RunState(run_id="r", workflow="wf", status="running", input=b"[1]", created_ms=1, updated_ms=2)
    for i in range(4):
        step = StepRecord(i, f"s{i}", "default", "completed", 1, b"[2]", 5, result=b"3" if i % 2 else None)
        state.steps.append(step)
    assert encode_state(state) == wire.encode(wire.RUN_STATE, state_record(state))


def test_zigzag_matches_avro_longs() -> None:
    for n in _LONGS:
        buf = io.BytesIO()
        fastavro.schemaless_writer(buf, "long", n)
        assert zigzag(n) == buf.getvalue()


def test_unsupported_types_fail_at_compile_time() -> None:
    fixed = {"type": "fixed", "name": "F", "size": 4}
    schema = {"type": "record", "name": "M", "fields": [{"name": "m", "type": fixed}]}
    with pytest.raises(ValueError, match="not supported"):
        compile_encoder(schema, attrs=False)
