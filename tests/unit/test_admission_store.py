"""The admission stage's stored records stay small however many starts wait for one key.

Every keyed-store write becomes a keyed-changelog record in the batch's transaction; one over the
producer's or topic's size limit aborts every transaction from then on.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from orchestrator import Admission, App, WorkflowContext
from orchestrator._core.effects import Effects
from orchestrator._engine import events as ev
from orchestrator._engine.admission import AdmissionStage
from orchestrator._engine.events import Event
from orchestrator._engine.store import PartitionStore


@pytest.fixture
def store(tmp_path: Path) -> Iterator[PartitionStore]:
    s = PartitionStore(tmp_path / "k0", 0)
    yield s
    s.close()


def _app(admission: Admission) -> App:
    app = App("shop")

    @app.workflow(admission=admission)
    async def wf(ctx: WorkflowContext, x: object) -> None: ...

    return app


def _request(
    stage: AdmissionStage, store: PartitionStore, n: int, data: bytes, prio: float = 0.0
) -> list[str]:
    key = "" if stage.app.workflows["wf"].admission.key is None else "u1"  # type: ignore[union-attr]
    body = ev.AdmitRequest("wf", f"r{n}", data, key, prio, "", "client")
    fx = stage.on_request(store, Event(f"e{n}", f"r{n}", "wf", 1, body), body, 1_000 + n)
    return _started(fx)


def _started(fx: Effects) -> list[str]:
    return [e.run_id for e in fx.inbox]


def _release(stage: AdmissionStage, store: PartitionStore, run_id: str) -> Effects:
    key = "" if stage.app.workflows["wf"].admission.key is None else "u1"  # type: ignore[union-attr]
    return stage.on_release(store, ev.Release("wf", key, run_id), 2_000)


def test_large_waiting_inputs_are_not_gathered_into_one_record(store: PartitionStore) -> None:
    stage = AdmissionStage(_app(Admission(key="user", concurrency=1)))
    inputs = {f"r{n}": bytes([n]) * 400_000 for n in range(4)}
    for n in range(4):
        _request(stage, store, n, inputs[f"r{n}"])
    largest = max(len(v) for v in store.dirty().values() if v is not None)
    assert largest < 450_000, largest  # one input and a little; it was all of them in one JSON document
    store.commit(None, None)
    for n in range(1, 4):  # FIFO, each with its own input
        fx = _release(stage, store, f"r{n - 1}")
        [start] = fx.inbox
        assert start.run_id == f"r{n}"
        assert isinstance(start.body, ev.StartRun) and start.body.input == inputs[f"r{n}"]
        store.commit(None, None)
    assert _release(stage, store, "r3").inbox == []
    assert [k for k, _ in store.scan(b"w")] == []  # nothing left behind


def test_highest_priority_waits_least(store: PartitionStore) -> None:
    stage = AdmissionStage(_app(Admission(concurrency=1, priority=lambda x: 0, aging="1h")))
    assert _request(stage, store, 0, b"0") == ["r0"]
    for n, prio in [(1, 0.0), (2, 10.0), (3, 0.0), (4, 10.0)]:
        assert _request(stage, store, n, b"%d" % n, prio) == []
    order = []
    running = "r0"
    for _ in range(4):
        [start] = _release(stage, store, running).inbox
        running = start.run_id
        order.append(running)
    assert order == ["r2", "r4", "r1", "r3"]


def test_waiting_starts_stored_the_old_way_are_still_admitted(store: PartitionStore) -> None:
    stage = AdmissionStage(_app(Admission(key="user", concurrency=1)))
    legacy = {
        "running": ["r0"],
        "admitted": [],
        "seq": 1,
        "waiting": [
            {
                "workflow": "wf",
                "run_id": "r1",
                "input": base64.b64encode(b'"old"').decode(),
                "key": "u1",
                "priority": 0.0,
                "requested_by": "client",
                "requested_ms": 500,
                "seq": 1,
            }
        ],
    }
    store.put(b"a/wf\x1fu1", json.dumps(legacy).encode())
    store.commit(None, None)
    [start] = _release(stage, store, "r0").inbox
    assert start.run_id == "r1" and isinstance(start.body, ev.StartRun) and start.body.input == b'"old"'


def test_a_debounced_input_is_stored_as_is_not_base64_in_the_document(store: PartitionStore) -> None:
    stage = AdmissionStage(_app(Admission(key="user", debounce="1s")))
    for n in range(3):
        assert _request(stage, store, n, bytes([n]) * 300_000) == []
    largest = max(len(v) for v in store.dirty().values() if v is not None)
    assert largest < 310_000, largest  # base64 in JSON made it 400,000
    store.commit(None, None)
    doc_key = b"a/wf\x1fu1"
    assert len(list(store.scan(b"t/"))) == 1  # the burst's one debounce timer
    fx = stage.on_timer(store, doc_key.hex(), "debounce", 10_000)
    [start] = fx.inbox
    assert start.run_id == "r2" and isinstance(start.body, ev.StartRun)
    assert start.body.input == bytes([2]) * 300_000  # the last of the burst
    store.commit(None, None)
    assert [k for k, _ in store.scan(b"D")] == []
