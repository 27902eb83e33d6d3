"""Turning a record of a user's topic into engine requests: run starts (triggers), routed events (sources).

Pure: the processor produces what this returns in the transaction that commits the record's offset, so a
redelivered record yields the same requests, which the inbox and the keyed stage deduplicate (run ids
derived from the record or its business key).
"""

from __future__ import annotations

from dataclasses import dataclass

from confluent_kafka import Message

from orchestrator._engine import events as ev
from orchestrator._engine.admission import admit_routing
from orchestrator._engine.decider import routing_key
from orchestrator._engine.events import Event
from orchestrator.app import App
from orchestrator.triggers import extract


@dataclass(frozen=True)
class Routed:
    """One request to produce: to the inbox (``run_id`` placement) or to the keyed topic (``routing``)."""

    event: Event
    routing: str | None = None  # None: inbox, by run id


class SourceError(Exception):
    """A user record that a declared trigger or event source cannot use (the processor dead-letters it)."""


def translate(app: App, msg: Message, now_ms: int) -> list[Routed]:
    topic, partition, offset = msg.topic() or "", msg.partition() or 0, msg.offset() or 0
    origin = f"{topic}/{partition}/{offset}"
    out: list[Routed] = []
    for workflow, triggers in app.triggers.items():
        for trigger in triggers:
            if trigger.topic != topic:
                continue
            try:
                value = trigger.value_format.decode(msg.value())
                if trigger.filter is not None and not trigger.filter(value):
                    continue
                run_id = (
                    str(extract(value, trigger.run_id)) if trigger.run_id else f"{topic}-{partition}-{offset}"
                )
                payload = app.data.encode(trigger.input(value) if trigger.input else value)
            except Exception as exc:
                raise SourceError(
                    f"trigger of {workflow!r} on {topic!r}: {type(exc).__name__}: {exc}"
                ) from exc
            admission = app.workflows[workflow].admission if workflow in app.workflows else None
            if admission is not None:  # flow control: through the admission stage
                key = str(extract(value, admission.key)) if admission.key else ""
                priority = float(admission.priority(value)) if admission.priority else 0.0
                request = ev.AdmitRequest(workflow, run_id, payload, key, priority, "", f"trigger:{origin}")
                event = Event(f"trigger/{origin}/{workflow}", run_id, workflow, now_ms, request)
                out.append(Routed(event, admit_routing(workflow, key)))
                continue
            start = ev.StartRun(payload, requested_by=f"trigger:{origin}")
            out.append(Routed(Event(f"trigger/{origin}/{workflow}", run_id, workflow, now_ms, start)))
    for source in app.event_sources.values():
        if source.topic != topic:
            continue
        try:
            value = source.value_format.decode(msg.value())
            if source.filter is not None and not source.filter(value):
                continue
            key = str(extract(value, source.key))
            payload = app.data.encode(value)
        except Exception as exc:
            raise SourceError(
                f"event source {source.name!r} on {topic!r}: {type(exc).__name__}: {exc}"
            ) from exc
        body = ev.DomainEvent(source.name, key, payload, origin)
        out.append(
            Routed(
                Event(f"event/{origin}/{source.name}", "", "", now_ms, body), routing_key(source.name, key)
            )
        )
    return out
