"""Admission in the keyed stage: idempotency windows, concurrency, rate limits, debounce, priority.

One JSON document per (workflow, admission key) in the keyed store (``a/<workflow>\\x1f<key>``): the runs
holding a slot, the starts waiting (admitted highest effective priority first, FIFO among equals), recent
admission times for the rate limit, and a pending debounced start. Idempotency keys live under
``i/<workflow>\\x1f<idempotency key>`` until their window ends. Admitted starts become ``StartRun``
requests on the inbox, carrying the admission routing key so the run frees its slot when it ends.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from typing import Any

from orchestrator._core.formats import admit_routing as admit_routing  # frozen formats live there
from orchestrator._core.formats import idempotency_routing as idempotency_routing
from orchestrator._engine import events as ev
from orchestrator._engine.events import Event
from orchestrator._engine.records import RunOutcome
from orchestrator._engine.store import PartitionStore, timer_key
from orchestrator.app import App
from orchestrator.durations import to_millis
from orchestrator.flow import Admission


@dataclass
class AdmissionEffects:
    inbox: list[Event] = field(default_factory=list)
    keyed: list[tuple[str, Event]] = field(default_factory=list)
    outcomes: list[RunOutcome] = field(default_factory=list)
    commands: list[tuple[str, str, bytes]] = field(default_factory=list)  # (queue, run id, StepCommand)


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
    def on_request(
        self, store: PartitionStore, event: Event, body: ev.AdmitRequest, now_ms: int
    ) -> AdmissionEffects:
        fx = AdmissionEffects()
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
            store.put(timer_key(due, doc_key.hex(), "debounce"), b"")
            self._save(store, doc_key, doc)
            return fx
        self._enqueue(store, doc_key, doc, admission, body, now_ms, fx)
        return fx

    def on_release(self, store: PartitionStore, body: ev.Release, now_ms: int) -> AdmissionEffects:
        fx = AdmissionEffects()
        admission = self._admission(body.workflow)
        doc_key = self._doc_key(body.workflow, body.key)
        doc = self._load(store, doc_key)
        if body.run_id in doc["running"]:
            doc["running"].remove(body.run_id)
        if admission is not None:
            self._pump(store, doc_key, doc, admission, now_ms, fx)
        self._save(store, doc_key, doc)
        return fx

    def on_timer(self, store: PartitionStore, ident: str, tag: str, now_ms: int) -> AdmissionEffects:
        fx = AdmissionEffects()
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
        fx: AdmissionEffects,
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
        doc["waiting"].append({**_request_json(body, now_ms), "seq": doc["seq"]})
        self._pump(store, doc_key, doc, admission, now_ms, fx)
        self._save(store, doc_key, doc)

    def _pump(
        self,
        store: PartitionStore,
        doc_key: bytes,
        doc: dict[str, Any],
        admission: Admission,
        now_ms: int,
        fx: AdmissionEffects,
    ) -> None:
        per = to_millis(admission.per)
        aging = max(1, to_millis(admission.aging))
        doc["admitted"] = [t for t in doc["admitted"] if t > now_ms - per]
        while doc["waiting"]:
            if admission.concurrency is not None and len(doc["running"]) >= admission.concurrency:
                return
            if admission.rate is not None and len(doc["admitted"]) >= admission.rate:
                due = doc["admitted"][0] + per
                store.put(timer_key(due, doc_key.hex(), "pump"), b"")
                return
            best = max(
                doc["waiting"],
                key=lambda w: (w["priority"] + (now_ms - w["requested_ms"]) / aging, -w["seq"]),
            )
            doc["waiting"].remove(best)
            doc["running"].append(best["run_id"])
            doc["admitted"].append(now_ms)
            self._admit(_request_from_json(best), admit_routing(best["workflow"], best["key"]), now_ms, fx)

    # -- helpers ------------------------------------------------------------------------------------------
    def _admit(self, body: ev.AdmitRequest, routing: str, now_ms: int, fx: AdmissionEffects) -> None:
        """Let the run start, or the step attempt go to its workers."""
        if body.workflow.startswith(STEP_PREFIX):
            run_id = body.run_id.rsplit("/", 2)[0]
            fx.commands.append((body.requested_by, run_id, body.input))  # requested_by holds the queue
        else:
            fx.inbox.append(self._start(body, routing, now_ms))

    @staticmethod
    def _start(body: ev.AdmitRequest, routing: str, now_ms: int) -> Event:
        start = ev.StartRun(body.input, requested_by=body.requested_by or "admission", admission_key=routing)
        return Event(f"admitted/{body.run_id}", body.run_id, body.workflow, now_ms, start)

    @staticmethod
    def _doc_key(workflow: str, key: str) -> bytes:
        return b"a/" + f"{workflow}\x1f{key}".encode()

    @staticmethod
    def _load(store: PartitionStore, key: bytes) -> dict[str, Any]:
        raw = store.get(key)
        if raw:
            doc: dict[str, Any] = json.loads(raw)
            return doc
        return {"running": [], "waiting": [], "admitted": [], "seq": 0}

    @staticmethod
    def _save(store: PartitionStore, key: bytes, doc: dict[str, Any]) -> None:
        store.put(key, json.dumps(doc, sort_keys=True).encode())


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
