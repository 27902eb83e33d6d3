"""Admission in the keyed stage: idempotency windows, concurrency, rate limits, debounce, priority.

One JSON document per (workflow, admission key) in the keyed store (``a/<workflow>\\x1f<key>``): the runs
holding a slot, recent admission times for the rate limit, and a pending debounced start (its input apart,
under ``D/...``). Each waiting start has its own two records, ``w/<workflow>\\x1f<key>\\x00<seq BE>``
(JSON: run id, priority, arrival) and ``W/...`` (its input, raw), admitted highest effective priority
first, FIFO among equals. Inputs are kept apart because every store write is a keyed-changelog record: a
document holding every waiting input grew past the records Kafka accepts after a few large starts, and
then every transaction aborted. Idempotency keys live under ``i/<workflow>\\x1f<idempotency key>`` until
their window ends. Admitted starts become ``StartRun`` requests on the inbox, carrying the admission
routing key so the run frees its slot when it ends.
"""

from __future__ import annotations

import base64
import json
import struct
from dataclasses import dataclass
from typing import Any

from orchestrator._core import formats
from orchestrator._core.effects import Effects, EncodedCommand
from orchestrator._core.formats import admit_routing as admit_routing  # frozen formats live there
from orchestrator._core.formats import idempotency_routing as idempotency_routing
from orchestrator._engine import events as ev
from orchestrator._engine.events import Event
from orchestrator._engine.records import RunOutcome
from orchestrator._engine.store import PartitionStore, timer_key
from orchestrator.app import App
from orchestrator.durations import to_millis
from orchestrator.flow import Admission

_SEQ = struct.Struct(">Q")


@dataclass(eq=False)  # compared by identity: two waiting starts are never the same one
class _Waiting:
    """A start waiting for its slot: stored (``key`` set; input read when admitted) or just arrived."""

    meta: dict[str, Any]  # _request_json without the input, plus "seq"
    key: bytes | None = None
    input: bytes | None = None


STEP_PREFIX = "step:"
"""Admission names of steps (``step:<step name>``); workflows use their plain name."""


class AdmissionStage:
    def __init__(self, app: App) -> None:
        self.app = app

    def _admission(self, name: str) -> Admission | None:
        if name.startswith(STEP_PREFIX):
            step = self.app.steps.get(name[len(STEP_PREFIX) :])
            return step.admission if step is not None else None
        workflow = self.app.workflows.get(name)
        return workflow.admission if workflow is not None else None

    # -- requests -----------------------------------------------------------------------------------------
    def on_request(self, store: PartitionStore, event: Event, body: ev.AdmitRequest, now_ms: int) -> Effects:
        fx = Effects()
        if body.workflow.startswith(STEP_PREFIX) and body.requested_by not in self.app.queues:
            # Its command would go to the task topic of that queue: a name that is not a topic's stops the
            # processor, a topic that does not exist aborts every transaction.
            fx.dead_letter = (
                f"step attempt {body.run_id!r} names task queue {body.requested_by!r}, which no step of "
                f"app {self.app.name!r} uses (queues: {', '.join(sorted(self.app.queues))})"
            )
            return fx
        definition = self.app.workflows.get(body.workflow)
        if body.idempotency_key:
            key = b"i/" + f"{body.workflow}\x1f{body.idempotency_key}".encode()
            raw = store.get(key)
            held = json.loads(raw) if raw else None
            if held is not None and held["expires"] > now_ms:
                existing = held["run_id"]
                fx.outcomes.append(
                    RunOutcome(body.run_id, body.workflow, "duplicate", now_ms, json.dumps(existing).encode())
                )
                return fx
            window = definition.idempotency_window_ms if definition else 86_400_000
            store.put(key, json.dumps({"run_id": body.run_id, "expires": now_ms + window}).encode())
            store.put(timer_key(now_ms + window, key.hex(), "idem-expire"), b"")
            fx.outcomes.append(RunOutcome(body.run_id, body.workflow, "accepted", now_ms))
            forward = ev.AdmitRequest(
                body.workflow, body.run_id, body.input, body.key, body.priority, "", body.requested_by
            )
            if definition is not None and definition.admission is not None:
                fx.keyed.append(
                    (
                        admit_routing(body.workflow, body.key),
                        Event(event.event_id, body.run_id, body.workflow, now_ms, forward),
                    )
                )
            else:
                fx.inbox.append(self._start(forward, "", now_ms))
            return fx
        admission = self._admission(body.workflow)
        if admission is None:  # nothing to control (e.g. the declaration was removed): go at once
            self._admit(body, "", now_ms, fx)
            return fx
        doc_key = self._doc_key(body.workflow, body.key)
        doc = self._load(store, doc_key)
        if admission.debounce is not None:
            pending = doc.get("debounce")
            first = pending["first_ms"] if pending else now_ms
            due = now_ms + to_millis(admission.debounce)
            if admission.debounce_max_wait is not None:
                due = min(due, first + to_millis(admission.debounce_max_wait))
            if pending:
                store.delete(timer_key(pending["due_ms"], doc_key.hex(), "debounce"))
            doc["debounce"] = {**_request_json(body, now_ms), "first_ms": first, "due_ms": due}
            del doc["debounce"]["input"]  # kept as is under its own key: base64 in JSON is a third larger
            store.put(_debounced_key(doc_key), body.input)
            store.put(timer_key(due, doc_key.hex(), "debounce"), b"")
            self._save(store, doc_key, doc)
            return fx
        self._enqueue(store, doc_key, doc, admission, body, now_ms, fx)
        return fx

    def on_release(self, store: PartitionStore, body: ev.Release, now_ms: int) -> Effects:
        fx = Effects()
        admission = self._admission(body.workflow)
        doc_key = self._doc_key(body.workflow, body.key)
        doc = self._load(store, doc_key)
        if body.run_id in doc["running"]:
            doc["running"].remove(body.run_id)
        if admission is not None:
            self._pump(store, doc_key, doc, admission, now_ms, fx)
        self._save(store, doc_key, doc)
        return fx

    def on_timer(self, store: PartitionStore, ident: str, tag: str, now_ms: int) -> Effects:
        fx = Effects()
        key = bytes.fromhex(ident)
        if tag == "idem-expire":
            store.delete(key)
            return fx
        workflow = key[2:].decode().split("\x1f", 1)[0]
        admission = self._admission(workflow)
        if admission is None:
            return fx
        doc = self._load(store, key)
        if tag == "debounce" and doc.get("debounce"):
            pending = doc.pop("debounce")
            if pending["due_ms"] <= now_ms:
                if "input" not in pending:  # documents written before kept it inline
                    data = store.get(_debounced_key(key)) or b""
                    store.delete(_debounced_key(key))
                    pending["input"] = base64.b64encode(data).decode()
                request = _request_from_json(pending)
                self._enqueue(store, key, doc, admission, request, now_ms, fx)
                return fx
            doc["debounce"] = pending
        if tag == "pump":
            self._pump(store, key, doc, admission, now_ms, fx)
        self._save(store, key, doc)
        return fx

    # -- the queue ----------------------------------------------------------------------------------------
    def _enqueue(
        self,
        store: PartitionStore,
        doc_key: bytes,
        doc: dict[str, Any],
        admission: Admission,
        body: ev.AdmitRequest,
        now_ms: int,
        fx: Effects,
    ) -> None:
        per = to_millis(admission.per)
        doc["admitted"] = [t for t in doc["admitted"] if t > now_ms - per]
        if (
            admission.rate is not None
            and admission.rate_mode == "drop"
            and len(doc["admitted"]) >= admission.rate
        ):
            reason = f"rate limit of {admission.rate} per {admission.per} for key {body.key!r} reached"
            fx.outcomes.append(
                RunOutcome(body.run_id, body.workflow, "rejected", now_ms, None, "RateLimited", reason)
            )
            self._save(store, doc_key, doc)
            return
        doc["seq"] += 1
        meta = {**_request_json(body, now_ms), "seq": doc["seq"]}
        del meta["input"]
        arrived = _Waiting(meta, input=body.input)
        waiting = [*self._waiting(store, doc_key), arrived]
        self._pump(store, doc_key, doc, admission, now_ms, fx, waiting)
        if any(w is arrived for w in waiting):  # not admitted at once: it waits in the store
            self._put_waiting(store, doc_key, arrived)
        self._save(store, doc_key, doc)

    def _pump(
        self,
        store: PartitionStore,
        doc_key: bytes,
        doc: dict[str, Any],
        admission: Admission,
        now_ms: int,
        fx: Effects,
        waiting: list[_Waiting] | None = None,
    ) -> None:
        """Admit waiting starts while the limits allow; admitted ones are removed from ``waiting``."""
        per = to_millis(admission.per)
        aging = max(1, to_millis(admission.aging))
        doc["admitted"] = [t for t in doc["admitted"] if t > now_ms - per]
        if waiting is None:
            waiting = self._waiting(store, doc_key)
        while waiting:
            if admission.concurrency is not None and len(doc["running"]) >= admission.concurrency:
                return
            if admission.rate is not None and len(doc["admitted"]) >= admission.rate:
                due = doc["admitted"][0] + per
                store.put(timer_key(due, doc_key.hex(), "pump"), b"")
                return
            best = max(
                waiting,
                key=lambda w: (
                    w.meta["priority"] + (now_ms - w.meta["requested_ms"]) / aging,
                    -w.meta["seq"],
                ),
            )
            waiting.remove(best)
            data = best.input
            if best.key is not None:
                data = store.get(_input_key(best.key))
                store.delete(best.key)
                store.delete(_input_key(best.key))
            request = _request_from_json({**best.meta, "input": base64.b64encode(data or b"").decode()})
            doc["running"].append(request.run_id)
            doc["admitted"].append(now_ms)
            self._admit(request, admit_routing(request.workflow, request.key), now_ms, fx)

    @staticmethod
    def _waiting(store: PartitionStore, doc_key: bytes) -> list[_Waiting]:
        """The starts waiting under ``doc_key`` (their inputs stay in the store until admitted)."""
        return [_Waiting(json.loads(v), key=k) for k, v in store.scan_merged(_waiting_prefix(doc_key))]

    @staticmethod
    def _put_waiting(store: PartitionStore, doc_key: bytes, waiting: _Waiting) -> None:
        key = _waiting_prefix(doc_key) + _SEQ.pack(waiting.meta["seq"])
        store.put(key, json.dumps(waiting.meta, sort_keys=True).encode())
        store.put(_input_key(key), waiting.input or b"")

    # -- helpers ------------------------------------------------------------------------------------------
    def _admit(self, body: ev.AdmitRequest, routing: str, now_ms: int, fx: Effects) -> None:
        """Let the run start, or the step attempt go to its workers."""
        if body.workflow.startswith(STEP_PREFIX):
            run_id = body.run_id.rsplit("/", 2)[0]
            fx.commands.append(
                (body.requested_by, EncodedCommand(run_id, body.input))
            )  # requested_by: the queue
        else:
            fx.inbox.append(self._start(body, routing, now_ms))

    @staticmethod
    def _start(body: ev.AdmitRequest, routing: str, now_ms: int) -> Event:
        start = ev.StartRun(body.input, requested_by=body.requested_by or "admission", admission_key=routing)
        return Event(formats.admitted_start_id(body.run_id), body.run_id, body.workflow, now_ms, start)

    @staticmethod
    def _doc_key(workflow: str, key: str) -> bytes:
        return b"a/" + f"{workflow}\x1f{key}".encode()

    @classmethod
    def _load(cls, store: PartitionStore, key: bytes) -> dict[str, Any]:
        raw = store.get(key)
        if not raw:
            return {"running": [], "admitted": [], "seq": 0}
        doc: dict[str, Any] = json.loads(raw)
        # Documents written before waiting starts had records of their own keep them inline: move them
        # out (every caller saves the document afterwards).
        for entry in doc.pop("waiting", []):
            data = base64.b64decode(entry.pop("input"))
            cls._put_waiting(store, key, _Waiting(entry, input=data))
        return doc

    @staticmethod
    def _save(store: PartitionStore, key: bytes, doc: dict[str, Any]) -> None:
        store.put(key, json.dumps(doc, sort_keys=True).encode())


def _waiting_prefix(doc_key: bytes) -> bytes:
    return b"w/" + doc_key[2:] + b"\x00"


def _input_key(waiting_key: bytes) -> bytes:
    return b"W" + waiting_key[1:]


def _debounced_key(doc_key: bytes) -> bytes:
    return b"D" + doc_key[1:]


def _request_json(body: ev.AdmitRequest, now_ms: int) -> dict[str, Any]:
    return {
        "workflow": body.workflow,
        "run_id": body.run_id,
        "input": base64.b64encode(body.input).decode(),
        "key": body.key,
        "priority": body.priority,
        "requested_by": body.requested_by,
        "requested_ms": now_ms,
    }


def _request_from_json(doc: dict[str, Any]) -> ev.AdmitRequest:
    return ev.AdmitRequest(
        doc["workflow"],
        doc["run_id"],
        base64.b64decode(doc["input"]),
        doc["key"],
        doc["priority"],
        "",
        doc["requested_by"],
    )
