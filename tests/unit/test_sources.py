"""`sources.translate`: every way a user's record can be unusable becomes a reason, never an exception."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from confluent_kafka import Message

from orchestrator import Admission, App, Trigger, WorkflowContext
from orchestrator._engine import events as ev
from orchestrator._engine.admission import admit_routing
from orchestrator._engine.decider import routing_key
from orchestrator._engine.limits import RECORD_OVERHEAD_BYTES, RecordLimit, dead_letter_copy
from orchestrator._engine.sources import SourceError, Translation, translate, translate_each
from orchestrator.triggers import ValueFormat, extract

TOPIC = "orders"


def _msg(value: bytes | None, offset: int = 7, key: bytes | None = b"k") -> Message:
    return Message(topic=TOPIC, partition=2, offset=offset, key=key, value=value)


def _json(value: Any) -> bytes:
    return json.dumps(value).encode()


def _app(**trigger: Any) -> App:
    app = App("shop")

    @app.workflow(trigger=Trigger(TOPIC, **trigger))
    async def on_order(ctx: WorkflowContext, order: Any) -> None: ...

    return app


def _admitted_app(admission: Admission, **trigger: Any) -> App:
    app = App("shop")

    @app.workflow(trigger=Trigger(TOPIC, **trigger), admission=admission)
    async def on_order(ctx: WorkflowContext, order: Any) -> None: ...

    return app


def _only_error(result: Translation) -> str:
    assert result.routed == [], result.routed
    assert len(result.errors) == 1, result.errors
    return result.reason


def test_good_record_starts_a_run_named_by_its_field() -> None:
    result = translate_each(_app(run_id="order_id"), _msg(_json({"order_id": "o-1"})), 5)
    assert result.errors == []
    [routed] = result.routed
    assert routed.routing is None
    assert (routed.event.run_id, routed.event.workflow) == ("o-1", "on_order")
    assert isinstance(routed.event.body, ev.StartRun)
    assert json.loads(routed.event.body.input) == {"order_id": "o-1"}


def test_default_run_id_is_topic_partition_offset() -> None:
    [routed] = translate_each(_app(), _msg(_json({"x": 1})), 5).routed
    assert routed.event.run_id == "orders-2-7"


def test_missing_admission_key_names_workflow_field_and_record() -> None:
    app = _admitted_app(Admission(key="user_id", concurrency=2), run_id="order_id")
    reason = _only_error(translate_each(app, _msg(_json({"order_id": "o-2", "amount": 3})), 5))
    assert "trigger of workflow 'on_order' on topic 'orders'" in reason
    assert "admission key (field 'user_id')" in reason
    assert "its fields: amount, order_id" in reason
    assert "record orders[2]@7" in reason


def test_admission_key_and_priority_come_from_the_workflow_input() -> None:
    app = _admitted_app(
        Admission(key="user", priority=lambda job: job["prio"]),
        run_id="id",
        input=lambda v: {"user": v["who"], "prio": v["p"]},
    )
    [routed] = translate_each(app, _msg(_json({"id": "r1", "who": "ann", "p": 3})), 5).routed
    assert routed.routing == admit_routing("on_order", "ann")
    assert isinstance(routed.event.body, ev.AdmitRequest)
    assert (routed.event.body.key, routed.event.body.priority) == ("ann", 3.0)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (b"\xff\x00not json", "decoding the value as json failed: ValueError: the value is not JSON"),
        (None, "no value (a tombstone)"),
        (_json([1, 2]), "the value is a list, not an object with a field 'order_id'"),
        (_json({"order_id": None}), "gave null (no value)"),
        (_json({"order_id": 1.5}), "gave float 1.5; a key must be a non-empty string, an integer or a UUID"),
        (_json({"order_id": ""}), "gave an empty string"),
        (_json({"order_id": True}), "gave bool True"),
        (_json({"order_id": {"a": 1}}), "gave dict"),
    ],
)
def test_unusable_values_and_run_ids_become_reasons(value: bytes | None, expected: str) -> None:
    reason = _only_error(translate_each(_app(run_id="order_id"), _msg(value), 5))
    assert expected in reason
    assert "record orders[2]@7" in reason


def test_integer_run_id_is_its_text() -> None:
    [routed] = translate_each(_app(run_id="n"), _msg(_json({"n": 42})), 5).routed
    assert routed.event.run_id == "42"


def _boom(value: Any) -> Any:
    raise RuntimeError("user code broke")


@pytest.mark.parametrize(
    ("trigger", "expected"),
    [
        ({"filter": _boom}, "filter (function _boom) failed: RuntimeError: user code broke"),
        ({"run_id": _boom}, "run_id (function _boom) failed: RuntimeError: user code broke"),
        ({"input": _boom}, "input mapping (function _boom) failed: RuntimeError: user code broke"),
        ({"input": lambda v: object()}, "encoding the workflow input failed: PayloadError"),
    ],
)
def test_user_functions_that_raise_become_reasons(trigger: dict[str, Any], expected: str) -> None:
    reason = _only_error(translate_each(_app(**trigger), _msg(_json({"a": 1})), 5))
    assert expected in reason


def test_async_filter_is_refused_not_treated_as_true() -> None:
    async def is_placed(value: Any) -> bool:
        return False

    reason = _only_error(translate_each(_app(filter=is_placed), _msg(_json({"a": 1})), 5))
    assert "returned an awaitable" in reason


def test_falsy_filter_skips_without_error() -> None:
    app = _app(filter=lambda v: v["kind"] == "placed")
    assert translate_each(app, _msg(_json({"kind": "x"})), 5) == Translation()


@pytest.mark.parametrize(
    ("priority", "expected"),
    [
        (lambda v: v["prio"], "gave str 'urgent'; a priority must be a finite number"),
        (lambda v: math.nan, "gave float nan"),
        (_boom, "admission priority (function _boom) failed: RuntimeError"),
    ],
)
def test_bad_priorities_become_reasons(priority: Any, expected: str) -> None:
    app = _admitted_app(Admission(priority=priority))
    reason = _only_error(translate_each(app, _msg(_json({"prio": "urgent"})), 5))
    assert expected in reason


def test_key_function_that_raises_on_the_wrong_type() -> None:
    app = _admitted_app(Admission(key=lambda v: v["user_id"] + 1))
    reason = _only_error(translate_each(app, _msg(_json({"user_id": "u1"})), 5))
    assert "admission key (function " in reason and "TypeError" in reason


def test_one_broken_trigger_does_not_hide_the_record_from_the_others() -> None:
    app = App("shop")
    app.event_source("placed", topic=TOPIC, key="order_id")

    @app.workflow(trigger=Trigger(TOPIC, run_id="missing"))
    async def broken(ctx: WorkflowContext, order: Any) -> None: ...

    @app.workflow(trigger=Trigger(TOPIC, run_id="order_id"))
    async def fine(ctx: WorkflowContext, order: Any) -> None: ...

    result = translate_each(app, _msg(_json({"order_id": "o-9"})), 5)
    assert [r.event.workflow for r in result.routed] == ["fine", ""]
    assert result.routed[1].routing == routing_key("placed", "o-9")
    assert len(result.errors) == 1 and "workflow 'broken'" in result.reason


def test_event_source_without_its_correlation_key() -> None:
    app = App("shop")
    app.event_source("approval", topic=TOPIC, key="order.id")
    reason = _only_error(translate_each(app, _msg(_json({"order": {"by": "ann"}})), 5))
    assert "event source 'approval' on topic 'orders'" in reason
    assert "correlation key (field 'order.id')" in reason and "field 'order' has no 'id'" in reason


def test_avro_value_that_does_not_match_the_schema() -> None:
    schema = {"type": "record", "name": "O", "fields": [{"name": "id", "type": "string"}]}
    app = _app(run_id="id", value_format=ValueFormat("avro", schema))
    reason = _only_error(translate_each(app, _msg(b"\x00\x00\x00\x00\x01\x7f"), 5))
    assert "decoding the value as avro failed" in reason and "declared Avro schema" in reason


def test_engine_record_over_the_limit_is_refused_with_the_sizes() -> None:
    value = _json({"order_id": "o-1", "blob": "x" * 5000})
    limit = RecordLimit(4000 + RECORD_OVERHEAD_BYTES, "max.message.bytes of topic shop.inbox")
    reason = _only_error(translate_each(_app(run_id="order_id"), _msg(value), 5, limit))
    assert "over the limit of 4256 bytes (max.message.bytes of topic shop.inbox" in reason
    assert translate_each(_app(run_id="order_id"), _msg(value), 5, RecordLimit(10_000, "x")).errors == []


def test_dead_letter_copy_keeps_the_record_when_it_fits() -> None:
    msg = _msg(b"v" * 100)
    assert dead_letter_copy(msg, "SourceError", "why", RecordLimit(10_000, "x")) == (
        msg,
        "SourceError",
        "why",
    )


def test_dead_letter_copy_leaves_out_a_value_the_dlq_cannot_hold() -> None:
    letter, error_type, reason = dead_letter_copy(
        _msg(b"v" * 5000), "SourceError", "why", RecordLimit(4000, "dlq")
    )
    assert error_type == "SourceError.RecordNotCopied"
    assert (letter.topic(), letter.partition(), letter.offset()) == (TOPIC, 2, 7)
    assert letter.value() is None and letter.key() is None
    assert reason.startswith("why. ") and "read them from orders[2]@7" in reason


@pytest.mark.parametrize(
    ("value", "path", "message"),
    [
        ({"a": 1}, "b", "field 'b' not found: the value has no 'b' (its fields: a)"),
        ({"a": {"b": 1}}, "a.c", "field 'a.c' not found: field 'a' has no 'c' (its fields: b)"),
        ({"a": "text"}, "a.upper", "field 'a' is a str, not an object with a field 'upper'"),
        (None, "x", "the value is null"),
    ],
)
def test_extract_says_what_is_missing(value: Any, path: str, message: str) -> None:
    with pytest.raises(KeyError) as info:
        extract(value, path)
    assert message in info.value.args[0]


def test_translate_raises_one_source_error_for_callers_that_stop_at_the_record() -> None:
    app = _app(run_id="order_id")
    [routed] = translate(app, _msg(_json({"order_id": "o-1"})), 5)
    assert routed.event.run_id == "o-1"
    with pytest.raises(SourceError, match=r"run_id \(field 'order_id'\) failed: .* \(record orders\[2\]@7\)"):
        translate(app, _msg(_json({"id": "o-1"})), 5)


def test_uuid_key_from_a_function_is_its_text() -> None:
    import uuid

    ident = uuid.UUID(int=7)
    [routed] = translate_each(_app(run_id=lambda v: ident), _msg(_json({})), 5).routed
    assert routed.event.run_id == str(ident)
