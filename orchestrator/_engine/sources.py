"""Turning a record of a user's topic into engine requests: run starts (triggers), routed events (sources).

Pure: the processor produces what this returns in the transaction that commits the record's offset, so a
redelivered record yields the same requests, which the inbox and the keyed stage deduplicate (run ids
derived from the record or its business key).

A user's topic carries whatever its producers wrote, so every step that reads the record or calls the
user's code (value decoding, filter, run id, input mapping, admission key and priority, correlation key,
payload encoding, the size of the engine record) runs inside a guard. A failure becomes a `SourceError`
naming the workflow or source, the step, the field or function, and the record; the processor dead-letters
the record and goes on. Each trigger and source is guarded on its own: one that cannot use a record does
not keep the others on the same topic from using it.
"""

from __future__ import annotations

import inspect
import math
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any, TypeVar

from confluent_kafka import Message

from orchestrator._engine import events as ev
from orchestrator._engine.admission import admit_routing
from orchestrator._engine.decider import routing_key
from orchestrator._engine.events import Event, encode_event
from orchestrator._engine.limits import RecordLimit
from orchestrator.app import App
from orchestrator.triggers import EventSource, KeyExpr, Trigger, extract

T = TypeVar("T")


@dataclass(frozen=True)
class Routed:
    """One request to produce: to the inbox (``run_id`` placement) or to the keyed topic (``routing``)."""

    event: Event
    routing: str | None = None  # None: inbox, by run id


class SourceError(Exception):
    """A user record that a declared trigger or event source cannot use (the processor dead-letters it)."""


@dataclass
class Translation:
    """What one record becomes: the requests to produce, and why a trigger or source could not use it."""

    routed: list[Routed] = field(default_factory=list)
    errors: list[SourceError] = field(default_factory=list)

    @property
    def reason(self) -> str:
        return "; ".join(str(e) for e in self.errors)


@dataclass(frozen=True)
class _Record:
    """The record being translated, and the words that name it in an error."""

    topic: str
    partition: int
    offset: int
    value: bytes | None

    @property
    def origin(self) -> str:
        """Frozen format: part of run ids and event ids derived from the record."""
        return f"{self.topic}/{self.partition}/{self.offset}"

    @property
    def name(self) -> str:
        return f"record {self.topic}[{self.partition}]@{self.offset}"


def translate(app: App, msg: Message, now_ms: int, limit: RecordLimit | None = None) -> list[Routed]:
    """The requests ``msg`` makes of the engine, or `SourceError` (every failure in one message) when a
    trigger or source cannot use it: for callers that stop at such a record (the testing environment)."""
    result = translate_each(app, msg, now_ms, limit)
    if result.errors:
        raise SourceError(result.reason)
    return result.routed


def translate_each(app: App, msg: Message, now_ms: int, limit: RecordLimit | None = None) -> Translation:
    """The requests ``msg`` makes of the engine, and why the triggers or sources that could not use it
    failed (the processor produces the first and dead-letters the record for the second). ``limit``: the
    largest engine record that may be produced (see `limits`); a request over it is refused here rather
    than failing the transaction."""
    record = _Record(msg.topic() or "", msg.partition() or 0, msg.offset() or 0, msg.value())
    out = Translation()
    for workflow, triggers in app.triggers.items():
        for trigger in triggers:
            if trigger.topic == record.topic:
                owner = f"trigger of workflow {workflow!r} on topic {record.topic!r}"
                _collect(out, owner, record, limit, partial(_trigger, app, workflow, trigger, record, now_ms))
    for source in app.event_sources.values():
        if source.topic == record.topic:
            owner = f"event source {source.name!r} on topic {record.topic!r}"
            _collect(out, owner, record, limit, partial(_source, app, source, record, now_ms))
    return out


def _collect(
    out: Translation,
    owner: str,
    record: _Record,
    limit: RecordLimit | None,
    build: Callable[[], Routed | None],
) -> None:
    try:
        routed = build()
        if routed is not None and limit is not None:
            _check_size(routed, limit)
    except _StepError as exc:
        out.errors.append(SourceError(f"{owner}: {exc} ({record.name})"))
        return
    if routed is not None:
        out.routed.append(routed)


class _StepError(Exception):
    """One step of a translation failed; the message says which step and why."""


def _step(what: str, fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)``, with any failure turned into a `_StepError` that names ``what`` was being done."""
    try:
        return fn(*args)
    except _StepError:
        raise
    except Exception as exc:  # user code and user data: anything can come out of them
        raise _StepError(f"{what} failed: {type(exc).__name__}: {str(exc) or '(no message)'}") from exc


def _name(fn: Any) -> str:
    return str(getattr(fn, "__qualname__", None) or repr(fn))


def _expr(expr: KeyExpr) -> str:
    return f"function {_name(expr)}" if callable(expr) else f"field {expr!r}"


# -- triggers and sources ---------------------------------------------------------------------------------
def _trigger(app: App, workflow: str, trigger: Trigger, record: _Record, now_ms: int) -> Routed | None:
    value = _step(
        f"decoding the value as {trigger.value_format.format}", trigger.value_format.decode, record.value
    )
    if trigger.filter is not None and not _predicate(trigger.filter, value):
        return None
    if trigger.run_id is not None:
        run_id = _key(f"run_id ({_expr(trigger.run_id)})", trigger.run_id, value)
    else:
        run_id = f"{record.topic}-{record.partition}-{record.offset}"
    data = (
        _step(f"input mapping (function {_name(trigger.input)})", trigger.input, value)
        if trigger.input
        else value
    )
    payload = _step("encoding the workflow input", app.data.encode, data, "workflow input")
    event_id = f"trigger/{record.origin}/{workflow}"
    definition = app.workflows.get(workflow)
    admission = definition.admission if definition is not None else None
    if admission is None:
        start = ev.StartRun(payload, requested_by=f"trigger:{record.origin}")
        return Routed(Event(event_id, run_id, workflow, now_ms, start))
    # Flow control goes through the admission stage. Key and priority are functions of the workflow's
    # input, as for a start by the client (`Admission` says so).
    key = _key(f"admission key ({_expr(admission.key)})", admission.key, data) if admission.key else ""
    priority = _priority(admission.priority, data) if admission.priority else 0.0
    request = ev.AdmitRequest(workflow, run_id, payload, key, priority, "", f"trigger:{record.origin}")
    return Routed(Event(event_id, run_id, workflow, now_ms, request), admit_routing(workflow, key))


def _source(app: App, source: EventSource, record: _Record, now_ms: int) -> Routed | None:
    value = _step(
        f"decoding the value as {source.value_format.format}", source.value_format.decode, record.value
    )
    if source.filter is not None and not _predicate(source.filter, value):
        return None
    key = _key(f"correlation key ({_expr(source.key)})", source.key, value)
    payload = _step("encoding the event payload", app.data.encode, value, "event payload")
    body = ev.DomainEvent(source.name, key, payload, record.origin)
    event = Event(f"event/{record.origin}/{source.name}", "", "", now_ms, body)
    return Routed(event, routing_key(source.name, key))


# -- checked user code ------------------------------------------------------------------------------------
def _predicate(fn: Callable[[Any], Any], value: Any) -> bool:
    what = f"filter (function {_name(fn)})"
    result = _step(what, fn, value)
    if inspect.isawaitable(result):
        if inspect.iscoroutine(result):
            result.close()  # never awaited: close it so Python does not warn about it later
        raise _StepError(f"{what} returned an awaitable: filters are called synchronously, use a plain def")
    return bool(result)


def _key(what: str, expr: KeyExpr, value: Any) -> str:
    """A key (run id, admission key, correlation key): a non-empty string, an integer or a UUID.

    Anything else is refused: ``str(None)`` would put every record without the field into one run called
    "None", and a float or a dict has no stable text.
    """
    raw = _step(what, extract, value, expr)
    if isinstance(raw, str) and raw:
        return raw
    if isinstance(raw, int | uuid.UUID) and not isinstance(raw, bool):
        return str(raw)
    found = "an empty string" if raw == "" else _describe(raw)
    raise _StepError(f"{what} gave {found}; a key must be a non-empty string, an integer or a UUID")


def _priority(fn: Callable[[Any], Any], value: Any) -> float:
    what = f"admission priority (function {_name(fn)})"
    raw = _step(what, fn, value)
    if isinstance(raw, int | float) and not isinstance(raw, bool) and math.isfinite(raw):
        return float(raw)
    raise _StepError(f"{what} gave {_describe(raw)}; a priority must be a finite number")


def _describe(value: Any) -> str:
    if value is None:
        return "null (no value)"
    text = repr(value)
    return f"{type(value).__name__} {text[:60]}{'...' if len(text) > 60 else ''}"


def _check_size(routed: Routed, limit: RecordLimit) -> None:
    """Refuse a request whose engine record would be over ``limit``: produced, it would fail the
    transaction and the processor would meet this record again after every abort."""
    key = routed.routing if routed.routing is not None else routed.event.run_id
    size = len(encode_event(routed.event))
    if not limit.fits(len(key.encode()), size):
        raise _StepError(
            f"the engine record it makes is {size} bytes, over the limit of {limit.describe()}; keep "
            "large data out of the record (pass a reference), for a trigger map the value to what the "
            "workflow needs with Trigger(input=...), or raise the limit on the engine's topics and producer"
        )
