"""The Faust integration without a broker: the codec reads the engine's bytes, run ids follow the rules."""

from __future__ import annotations

from types import SimpleNamespace

import faust
import pytest

from orchestrator import App, Settings
from orchestrator._engine.events import Event, RunCompleted, StepCompleted, encode_event
from orchestrator._engine.records import RunOutcome as EngineOutcome
from orchestrator._engine.records import encode_outcome
from orchestrator.errors import OrchestratorError, SchemaError
from orchestrator.integrations.faust import (
    HISTORY_CODEC,
    OUTCOME_CODEC,
    FaustBridge,
    HistoryEvent,
    RunOutcome,
    run_id_of,
)


class Item(faust.Record, serializer="json"):
    sku: str


class Cart(faust.Record, serializer="json"):
    cart_id: str
    items: list[Item]


def test_outcome_bytes_decode_into_a_faust_record() -> None:
    data = encode_outcome(EngineOutcome("r1", "checkout", "completed", 42, b'{"ok": true}'))
    outcome = RunOutcome.loads(data, serializer=OUTCOME_CODEC)
    assert isinstance(outcome, RunOutcome)
    assert (outcome.run_id, outcome.workflow, outcome.status, outcome.timestamp_ms) == (
        "r1",
        "checkout",
        "completed",
        42,
    )
    assert outcome.result == b'{"ok": true}' and outcome.ended


def test_start_acknowledgements_are_not_ends() -> None:
    for status in ("accepted", "duplicate"):
        data = encode_outcome(EngineOutcome("r1", "checkout", status, 1))
        assert not RunOutcome.loads(data, serializer=OUTCOME_CODEC).ended


def test_history_bytes_decode_into_a_faust_record() -> None:
    step = Event("r1/3", "r1", "checkout", 7, StepCompleted(2, 1, b"250", 5, 6, "w1"), seq=3)
    fact = HistoryEvent.loads(encode_event(step), serializer=HISTORY_CODEC)
    assert (fact.event_id, fact.run_id, fact.seq, fact.kind) == ("r1/3", "r1", 3, "StepCompleted")
    assert fact.body == {
        "position": 2,
        "attempt": 1,
        "result": b"250",
        "started_ms": 5,
        "finished_ms": 6,
        "worker": "w1",
    }
    done = HistoryEvent.loads(
        encode_event(Event("r1/4", "r1", "checkout", 8, RunCompleted(b"1"), seq=4)), serializer=HISTORY_CODEC
    )
    assert (done.kind, done.body) == ("RunCompleted", {"result": b"1"})


def test_other_bytes_are_refused_with_the_reason() -> None:
    with pytest.raises(SchemaError, match="magic byte"):
        OUTCOME_CODEC.loads(b"\x01not ours at all")
    history_bytes = encode_event(Event("r1/0", "r1", "w", 1, RunCompleted(b"1"), seq=0))
    with pytest.raises(SchemaError, match=r"expected a orchestrator\.v1\.RunOutcome"):
        OUTCOME_CODEC.loads(history_bytes)


def test_engine_topics_refuse_writes() -> None:
    outcome = RunOutcome(run_id="r", workflow="w", status="completed", timestamp_ms=1)
    with pytest.raises(OrchestratorError, match="outcomes topic is written only by processors"):
        OUTCOME_CODEC.dumps(outcome.asdict())
    with pytest.raises(OrchestratorError, match="history topic is written only by processors"):
        HISTORY_CODEC.dumps({"run_id": "r"})


def test_public_surface_is_pinned() -> None:
    import orchestrator.integrations.faust as integration

    assert integration.__all__ == [
        "ENDED",
        "EVENT_VALUE",
        "HISTORY_CODEC",
        "OUTCOME_CODEC",
        "FaustBridge",
        "HistoryEvent",
        "RunOutcome",
        "run_id_of",
    ]
    assert all(getattr(integration, name) is not None for name in integration.__all__)


def _event(key: object, value: object) -> SimpleNamespace:
    return SimpleNamespace(
        key=key, value=value, message=SimpleNamespace(topic="orders", partition=2, offset=9)
    )


def test_run_id_rules() -> None:
    cart = Cart(cart_id="c-7", items=[Item(sku="a")])
    assert run_id_of(_event(b"k1", cart)) == "k1"  # the key, bytes as UTF-8
    assert run_id_of(_event("k2", cart)) == "k2"
    assert run_id_of(_event(None, cart)) == "orders-2-9"  # keyless: the record's coordinates
    assert run_id_of(_event(b"k1", cart), "cart_id") == "c-7"  # a field beats the key
    assert run_id_of(_event(b"k1", {"order": {"id": 5}}), "order.id") == "5"
    assert run_id_of(_event(b"k1", cart), lambda c: f"cart-{c.cart_id}") == "cart-c-7"


async def test_start_outside_an_agent_needs_a_run_id_and_input() -> None:
    bridge = FaustBridge(faust.App("unit-faust"), App("unit", settings=Settings(bootstrap_servers="x:1")))
    with pytest.raises(OrchestratorError, match="pass run_id"):
        await bridge.start("checkout", {"a": 1})
    with pytest.raises(OrchestratorError, match="pass input"):
        await bridge.start("checkout", run_id="r1")


def test_records_become_plain_input() -> None:
    from orchestrator.integrations.faust import _plain

    cart = Cart(cart_id="c-7", items=[Item(sku="a"), Item(sku="b")])
    assert _plain(cart) == {"cart_id": "c-7", "items": [{"sku": "a"}, {"sku": "b"}]}


def test_bridge_refuses_to_start_without_lz4(monkeypatch: pytest.MonkeyPatch) -> None:
    import orchestrator.integrations.faust as integration

    monkeypatch.setattr(integration, "has_lz4", lambda: False)
    with pytest.raises(OrchestratorError, match="cramjam"):
        FaustBridge(faust.App("unit-faust"), App("unit", settings=Settings(bootstrap_servers="x:1")))


def test_without_the_extra_the_import_error_says_what_to_install() -> None:
    import subprocess
    import sys

    code = (
        "import sys; sys.modules['faust'] = None\n"  # what an install without faust-streaming looks like
        "import orchestrator\n"  # the core never needs it
        "try:\n"
        "    import orchestrator.integrations.faust\n"
        "except ImportError as exc:\n"
        "    print(exc)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "pip install 'kafka-orchestrator[faust]'" in out.stdout
