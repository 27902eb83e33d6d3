"""OpenTelemetry traces of runs (ADR 0018), on opentelemetry-api alone: without an SDK every call is a no-op.

A run's trace cannot be stored (run state and events are not ours to extend), so it is derived: the trace
id and the root "run" span id are hashes of the run id, and every span the processor emits has an id that
is a hash of what it is about (run, position, attempt). Whoever handles a run (the client that starts it,
any processor instance after any restart or redeploy, the worker running its step, a timer firing three
days later) finds the same trace without reading anything. A batch processed again after an abort derives
the same ids, and the processor emits its spans only once the batch's transaction has committed.

Frozen format (changing it splits the traces of runs open across the upgrade): ids are the leading bytes
of ``sha256("orchestrator-trace" US kind US run_id [US position [US attempt]])`` (US = ``\\x1f``), big
endian; 16 bytes for the trace id (kind ``trace``), 8 bytes for span ids (kinds ``run``, ``step``,
``timer``, ``wait``, ``child``). A zero id (invalid in W3C) would be replaced by 1.

Setting a span's id is not part of the OpenTelemetry API: the SDK asks its ``IdGenerator``. The ids to use
next are put in `pending_ids`, which the generator ``orchestrator._engine.tracing_ids.RunIds`` reads (a
TracerProvider made elsewhere must be given that generator; `emit` warns once if it was not).

Context crosses Kafka as W3C ``traceparent``/``tracestate`` headers, written and read by the API's
``TraceContextTextMapPropagator``: on the client's start, on step commands (the step attempt's span, and
the attempt's scheduled time as the ``orchestrator`` tracestate entry, so the processor can start the
attempt's span at its scheduling), on a worker's reports (the worker's span), and on the inbox records
one run sends another (a child's start, a child's end). Headers only carry context between processes: the
processor's own spans never depend on them (only the scheduled time of a retried attempt, see
`spans_of`), so a record without them (an older writer, an admitted step) loses nothing else.
"""

from __future__ import annotations

import contextvars
import hashlib
import logging
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.propagators.textmap import Getter, Setter
from opentelemetry.trace import Link, NonRecordingSpan, SpanContext, SpanKind, TraceFlags, TraceState
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.trace.status import Status, StatusCode

from orchestrator._core import events as ev
from orchestrator._core import state as st
from orchestrator._core.effects import StepCommand
from orchestrator._core.events import Event

log = logging.getLogger("orchestrator.tracing")

TRACER_NAME = "orchestrator"
STATE_KEY = "orchestrator"
"""The tracestate entry a step command carries: ``s:<scheduled ms>`` of the attempt."""

Headers = list[tuple[str, str | bytes | None]]
"""Kafka record headers as confluent-kafka takes and gives them."""

_SEP = "\x1f"
_PROPAGATOR = TraceContextTextMapPropagator()
_SAMPLED = TraceFlags(TraceFlags.SAMPLED)


# -- ids (frozen format) ------------------------------------------------------------------------------------
def _digest(kind: str, run_id: str, *parts: int) -> bytes:
    text = _SEP.join(("orchestrator-trace", kind, run_id, *(str(p) for p in parts)))
    return hashlib.sha256(text.encode()).digest()


def trace_id_of(run_id: str) -> int:
    """The trace id of ``run_id``'s trace."""
    return int.from_bytes(_digest("trace", run_id)[:16], "big") or 1


def span_id_of(kind: str, run_id: str, *parts: int) -> int:
    """The id of the span of ``kind`` (``run``, ``step``, ``timer``, ``wait``, ``child``) of a run."""
    return int.from_bytes(_digest(kind, run_id, *parts)[:8], "big") or 1


def run_span_id(run_id: str) -> int:
    return span_id_of("run", run_id)


def step_span_id(run_id: str, position: int, attempt: int) -> int:
    """One attempt of the step at ``position``: the processor's span from scheduled to recorded."""
    return span_id_of("step", run_id, position, attempt)


def context_of(run_id: str, span_id: int, trace_state: TraceState | None = None) -> SpanContext:
    """A remote span context in ``run_id``'s trace: the parent (or link) of a span emitted elsewhere."""
    return SpanContext(trace_id_of(run_id), span_id, True, _SAMPLED, trace_state)


def run_context(run_id: str) -> SpanContext:
    """The root span of ``run_id``'s trace (emitted when the run ends)."""
    return context_of(run_id, run_span_id(run_id))


def step_context(cmd: StepCommand) -> SpanContext:
    """The span of the attempt ``cmd`` orders, carrying the attempt's scheduled time in its tracestate."""
    state = TraceState([(STATE_KEY, f"s:{cmd.scheduled_ms}")])
    return context_of(cmd.run_id, step_span_id(cmd.run_id, cmd.position, cmd.attempt), state)


# -- is anyone listening? -----------------------------------------------------------------------------------
_UNKNOWN = object()
_PROVIDER_FROM_ENV = "OTEL_PYTHON_TRACER_PROVIDER" in os.environ
_NO_SDK = (trace.ProxyTracerProvider, trace.NoOpTracerProvider)


def enabled() -> bool:
    """Whether a real TracerProvider (an SDK) is installed; without one nothing is computed at all.

    Reads the API's global provider directly: ``trace.get_tracer_provider()`` looks the environment up on
    every call while none is set, and a missing key in ``os.environ`` raises and catches a KeyError inside,
    which measured 2-8 µs a call, paid per step on the no-op path. Falls back to it if the API changes.
    """
    provider = getattr(trace, "_TRACER_PROVIDER", _UNKNOWN)
    if provider is None and not _PROVIDER_FROM_ENV:
        return False
    if provider is None or provider is _UNKNOWN:
        provider = trace.get_tracer_provider()
    return not isinstance(provider, _NO_SDK)


_tracer: tuple[object, trace.Tracer] | None = None  # (the global provider it came from, its tracer)


def tracer() -> trace.Tracer:
    """The engine's tracer from the current global provider, made once per provider.

    Why cached: the SDK's ``get_tracer`` rewrites the warning filters and takes locks on every call, which
    this would otherwise pay per span and per step attempt. Keyed on the provider's identity, so a provider
    installed later (tests, a process that configures tracing after import) gets a tracer of its own.
    """
    global _tracer
    provider = getattr(trace, "_TRACER_PROVIDER", None)  # read directly, as `enabled` does
    if provider is None:
        provider = trace.get_tracer_provider()
    cached = _tracer
    if cached is not None and cached[0] is provider:
        return cached[1]
    made = trace.get_tracer(TRACER_NAME, tracer_provider=provider)  # type: ignore[arg-type]
    _tracer = (provider, made)
    return made


# -- tracing never changes an outcome -----------------------------------------------------------------------
_failures_logged = False


def _failed(what: str) -> None:
    """(In an ``except``.) Tracing's own trouble (a broken propagator, SDK or exporter) must never park a
    run, dead-letter a record, stop the processor or fail a step attempt: the caller goes on without headers
    or span. Logged as a warning once per process (it would repeat per record), at debug after that."""
    global _failures_logged
    if _failures_logged:
        log.debug("tracing: %s failed", what, exc_info=True)
        return
    _failures_logged = True
    log.warning("tracing: %s failed; going on without it (logged once)", what, exc_info=True)


# -- headers ------------------------------------------------------------------------------------------------
class _HeaderSetter(Setter[Headers]):
    def set(self, carrier: Headers, key: str, value: str) -> None:
        carrier.append((key, value.encode()))


class _HeaderGetter(Getter[Sequence[tuple[str, Any]]]):
    def get(self, carrier: Sequence[tuple[str, Any]], key: str) -> list[str] | None:
        found = [_text(v) for k, v in carrier if k.lower() == key]
        return found or None

    def keys(self, carrier: Sequence[tuple[str, Any]]) -> list[str]:
        return [k for k, _ in carrier]


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return "" if value is None else str(value)


_SETTER = _HeaderSetter()
_GETTER = _HeaderGetter()


def inject(span_context: SpanContext | None = None) -> Headers:
    """W3C headers for ``span_context``, or for the current span when None; [] when there is none."""
    headers: Headers = []
    try:
        ctx = None if span_context is None else trace.set_span_in_context(NonRecordingSpan(span_context))
        _PROPAGATOR.inject(headers, context=ctx, setter=_SETTER)
    except Exception:  # noqa: BLE001 - logged by _failed: tracing never changes an outcome
        _failed("writing trace headers")
        return []
    return headers


def extract(headers: Sequence[tuple[str, Any]] | None) -> SpanContext | None:
    """The span context ``headers`` carry, or None."""
    if not headers:
        return None
    try:
        span_context = trace.get_current_span(_PROPAGATOR.extract(headers, getter=_GETTER)).get_span_context()
    except Exception:  # noqa: BLE001 - logged by _failed: tracing never changes an outcome
        _failed("reading trace headers")
        return None
    return span_context if span_context.is_valid else None


def command_headers(cmd: StepCommand) -> Headers:
    try:
        span_context = step_context(cmd)
    except Exception:  # noqa: BLE001 - logged by _failed: tracing never changes an outcome
        _failed("deriving a step command's span")
        return []
    return inject(span_context)


def scheduled_ms_of(span_context: SpanContext | None) -> int | None:
    """The scheduled time a step command's tracestate carried (and a worker's report carries back)."""
    if span_context is None:
        return None
    value = span_context.trace_state.get(STATE_KEY, "")
    if value.startswith("s:") and value[2:].isdigit():
        return int(value[2:])
    return None


def inbox_context(event: Event) -> SpanContext | None:
    """The span one run's request to another comes from: a child's start comes from the parent's child span,
    a child's end from the child's run span, a parent's cancel from the parent's run span."""
    body = event.body
    if isinstance(body, ev.StartRun) and body.parent_run_id:
        return context_of(body.parent_run_id, span_id_of("child", body.parent_run_id, body.parent_position))
    if isinstance(body, ev.StepCompleted | ev.StepFailed) and body.worker.startswith("child:"):
        return run_context(body.worker.removeprefix("child:"))
    if isinstance(body, ev.CancelRun | ev.StartRun) and body.requested_by.startswith("parent:"):
        return run_context(body.requested_by.removeprefix("parent:"))
    return None


def inbox_headers(event: Event) -> Headers | None:
    try:
        span_context = inbox_context(event)
    except Exception:  # noqa: BLE001 - logged by _failed: tracing never changes an outcome
        _failed("deriving an inbox record's span")
        return None
    return inject(span_context) if span_context is not None else None


# -- setting span ids ---------------------------------------------------------------------------------------
pending_ids: contextvars.ContextVar[tuple[int, int] | None] = contextvars.ContextVar(
    "orchestrator_pending_span_ids", default=None
)
"""(trace id, span id) the next span started in this context must have; read by the SDK's IdGenerator."""

_warned = False


@dataclass(frozen=True, slots=True)
class SpanRecord:
    """A span the processor emits once its batch commits: everything it needs, computed while handling."""

    name: str
    run_id: str
    span_id: int
    start_ms: int
    end_ms: int
    attributes: dict[str, str | int | bool]
    parent_span_id: int | None = None  # None: the run's root span
    error: tuple[str, str] | None = None  # (type, message)
    links: tuple[SpanContext, ...] = ()
    kind: SpanKind = SpanKind.INTERNAL


def emit(record: SpanRecord) -> None:
    """Start and end ``record``'s span with its derived ids and its recorded times."""
    global _warned
    trace_id = trace_id_of(record.run_id)
    ctx: Context | None = None
    if record.parent_span_id is not None:
        parent = context_of(record.run_id, record.parent_span_id)
        ctx = trace.set_span_in_context(NonRecordingSpan(parent))
    else:
        ctx = Context()  # a root: no current span of the caller may become its parent
    token = pending_ids.set((trace_id, record.span_id))
    try:
        span = tracer().start_span(
            record.name,
            context=ctx,
            kind=record.kind,
            attributes=record.attributes,
            links=[Link(c) for c in record.links],
            start_time=record.start_ms * 1_000_000,
        )
    finally:
        pending_ids.reset(token)
    got = span.get_span_context()
    if got.is_valid and (got.trace_id, got.span_id) != (trace_id, record.span_id) and not _warned:
        _warned = True
        log.warning(
            "spans do not get the ids derived from their run ids, so a run's spans are not one trace: give "
            "the TracerProvider orchestrator's id generator (orchestrator._engine.tracing_ids.RunIds), or "
            "let the processor set it up from the OTEL_* variables"
        )
    if record.error is not None:
        error_type, message = record.error
        span.set_status(Status(StatusCode.ERROR, f"{error_type}: {message}"))
    span.end(end_time=max(record.end_ms, record.start_ms) * 1_000_000)


# -- which spans a handled input ends -----------------------------------------------------------------------
def _base(state: st.RunState) -> dict[str, str | int | bool]:
    return {"orchestrator.run_id": state.run_id, "orchestrator.workflow": state.workflow}


def _error_attrs(attrs: dict[str, str | int | bool], error_type: str, message: str) -> None:
    attrs["error.type"] = error_type
    attrs["orchestrator.error_message"] = message


def spans_of(
    state: st.RunState, history: Sequence[Event], scheduled: tuple[int, int, int] | None = None
) -> list[SpanRecord]:
    """The spans that the events in ``history`` (just recorded, ``state`` is the run after them) end.

    ``scheduled``: (position, attempt, scheduled ms) the input's headers said, for a worker's report. A
    retried attempt's scheduled time is not in the run state (only the first attempt's is); without the
    header (a local step, a timed-out attempt) its span starts when the attempt started instead.
    """
    out: list[SpanRecord] = []
    run_id = state.run_id
    root = run_span_id(run_id)
    for event in history:
        body = event.body
        ts = event.timestamp_ms
        if isinstance(body, ev.StepCompleted | ev.StepFailed | ev.StepTimedOut):
            record = state.step_at(body.position)
            if isinstance(record, st.StepRecord):
                out.append(_attempt_span(state, record, body, ts, scheduled))
            elif isinstance(record, st.ChildRecord):
                out.append(_child_span(state, record, body, ts))
        elif isinstance(body, ev.TimerFired):
            timer = state.record_at(body.position, st.TimerRecord)
            if timer is not None:
                attrs = _base(state) | {"orchestrator.position": body.position}
                attrs["orchestrator.due_ms"] = timer.due_ms
                span_id = span_id_of("timer", run_id, body.position)
                out.append(SpanRecord("sleep", run_id, span_id, timer.scheduled_ms, ts, attrs, root))
        elif isinstance(body, ev.EventReceived | ev.WaitTimedOut) and body.position >= 0:
            wait = state.record_at(body.position, st.WaitRecord)
            if wait is not None:
                attrs = _base(state) | {
                    "orchestrator.position": body.position,
                    "orchestrator.event_name": wait.event_name,
                    "orchestrator.event_key": wait.key,
                    "orchestrator.status": "received" if isinstance(body, ev.EventReceived) else "timed_out",
                }
                span_id = span_id_of("wait", run_id, body.position)
                name = f"wait {wait.event_name}"
                out.append(SpanRecord(name, run_id, span_id, wait.scheduled_ms, ts, attrs, root))
        elif isinstance(body, ev.RunCompleted | ev.RunFailed | ev.RunCancelled):
            out.append(_run_span(state, ts))
    return out


def _attempt_span(
    state: st.RunState,
    step: st.StepRecord,
    body: ev.StepCompleted | ev.StepFailed | ev.StepTimedOut,
    ts: int,
    scheduled: tuple[int, int, int] | None,
) -> SpanRecord:
    attempt = next((a for a in step.attempts if a.attempt == body.attempt), None)
    attrs = _base(state) | {
        "orchestrator.step": step.step,
        "orchestrator.queue": step.queue,
        "orchestrator.position": step.position,
        "orchestrator.attempt": body.attempt,
        "orchestrator.step_kind": str(step.kind),
    }
    if scheduled is not None and scheduled[:2] == (body.position, body.attempt):
        start = scheduled[2]
    elif body.attempt == 1:
        start = step.scheduled_ms
    else:
        start = attempt.started_ms if attempt is not None and attempt.started_ms else ts
    if attempt is not None:
        attrs["orchestrator.worker"] = attempt.worker
        if attempt.started_ms:
            attrs["orchestrator.started_ms"] = attempt.started_ms
            attrs["orchestrator.queue_ms"] = max(0, attempt.started_ms - start)
    error: tuple[str, str] | None = None
    if isinstance(body, ev.StepCompleted):
        attrs["orchestrator.status"] = "completed"
    else:
        status = "timed_out" if isinstance(body, ev.StepTimedOut) else "failed"
        attrs["orchestrator.status"] = status
        error_type = attempt.error_type if attempt is not None else "StepTimeout"
        message = attempt.message if attempt is not None else ""
        if isinstance(body, ev.StepFailed):
            error_type, message = body.error_type, body.message
            attrs["orchestrator.retryable"] = body.retryable
        _error_attrs(attrs, error_type, message)
        error = (error_type, message)
    span_id = step_span_id(state.run_id, step.position, body.attempt)
    root = run_span_id(state.run_id)
    return SpanRecord(f"step {step.step}", state.run_id, span_id, start, ts, attrs, root, error)


def _child_span(
    state: st.RunState,
    child: st.ChildRecord,
    body: ev.StepCompleted | ev.StepFailed | ev.StepTimedOut,
    ts: int,
) -> SpanRecord:
    """The parent's span of a child run: from the child's start to its end; the child's own trace is linked
    (a child is a run, with a trace of its own: ADR 0018)."""
    attrs = _base(state) | {
        "orchestrator.position": child.position,
        "orchestrator.child_run_id": child.child_run_id,
        "orchestrator.child_workflow": child.workflow,
        "orchestrator.status": "completed" if isinstance(body, ev.StepCompleted) else "failed",
    }
    error = None
    if isinstance(body, ev.StepFailed):
        _error_attrs(attrs, body.error_type, body.message)
        error = (body.error_type, body.message)
    span_id = span_id_of("child", state.run_id, child.position)
    links = (run_context(child.child_run_id),)
    root = run_span_id(state.run_id)
    name = f"child {child.workflow}"
    return SpanRecord(name, state.run_id, span_id, child.scheduled_ms, ts, attrs, root, error, links)


def _run_span(state: st.RunState, ts: int) -> SpanRecord:
    """The root span, emitted when the run ends, starting at the run's creation."""
    attrs = _base(state) | {"orchestrator.status": str(state.status)}
    if state.workflow_version:
        attrs["orchestrator.workflow_version"] = state.workflow_version
    error = None
    if state.status != st.COMPLETED:
        _error_attrs(attrs, state.error_type, state.error_message)
    if state.status == st.FAILED:  # a cancelled run did what it was asked: no error status
        error = (state.error_type, state.error_message)
    links: tuple[SpanContext, ...] = ()
    if state.parent_run_id:
        attrs["orchestrator.parent_run_id"] = state.parent_run_id
        parent_child_span = span_id_of("child", state.parent_run_id, state.parent_position)
        links = (context_of(state.parent_run_id, parent_child_span),)
    span_id = run_span_id(state.run_id)
    return SpanRecord(
        f"run {state.workflow}", state.run_id, span_id, state.created_ms, ts, attrs, None, error, links
    )


@dataclass
class PendingSpans:
    """Spans of the open transaction's batch: emitted when it commits, dropped when it aborts (a batch
    handled again derives the same spans, so each is emitted once per commit)."""

    spans: list[SpanRecord] = field(default_factory=list)
    on: bool = False

    def begin(self) -> None:
        """A new batch: checks once whether anyone listens (without an SDK, `note` does nothing)."""
        self.spans.clear()
        self.on = enabled()

    def note(self, state: st.RunState | None, history: Sequence[Event], msg: Any = None) -> None:
        """The spans ``history`` ends; ``msg``: the input record, whose headers may carry its attempt's
        scheduled time."""
        if not self.on or state is None or not history:
            return
        try:
            self.spans.extend(spans_of(state, history, _scheduled_of(history, msg)))
        except Exception:  # tracing must never fail a batch
            log.debug("tracing: spans of run %s not derived", state.run_id, exc_info=True)

    def committed(self) -> None:
        spans, self.spans = self.spans, []
        for record in spans:
            try:
                emit(record)
            except Exception:  # an exporter's trouble is not the processor's
                log.debug("tracing: span %s not emitted", record.name, exc_info=True)

    def aborted(self) -> None:
        self.spans.clear()


def _scheduled_of(history: Sequence[Event], msg: Any) -> tuple[int, int, int] | None:
    first = history[0].body if history else None
    if msg is None or not isinstance(first, ev.StepCompleted | ev.StepFailed):
        return None
    scheduled = scheduled_ms_of(extract(msg.headers()))
    return None if scheduled is None else (first.position, first.attempt, scheduled)


# -- the worker's and the client's spans ---------------------------------------------------------------------
@contextmanager
def worker_span(cmd: StepCommand, msg: Any) -> Iterator[trace.Span]:
    """The current span while a worker runs ``cmd`` (so the step's own spans nest in it): a child of the
    attempt's span, from the headers of ``msg`` (the command's record) or derived from the command when it
    has none. Callers enter it only when `enabled`. If tracing fails, the attempt runs in no span."""
    try:
        parent = extract(msg.headers()) or step_context(cmd)
        ctx = trace.set_span_in_context(NonRecordingSpan(parent))
        attrs: dict[str, str | int | bool] = {
            "orchestrator.run_id": cmd.run_id,
            "orchestrator.workflow": cmd.workflow,
            "orchestrator.step": cmd.step,
            "orchestrator.position": cmd.position,
            "orchestrator.attempt": cmd.attempt,
            "orchestrator.queue_ms": 0,
        }
        span = tracer().start_span(
            f"execute {cmd.step}", context=ctx, kind=SpanKind.CONSUMER, attributes=attrs
        )
    except Exception:  # noqa: BLE001 - logged by _failed: tracing never changes an outcome
        _failed("starting a worker span")
        span = trace.INVALID_SPAN
    with _current(span, record_exception=False):
        yield span


@contextmanager
def _current(span: trace.Span, record_exception: bool = True) -> Iterator[None]:
    """``span`` as the current span while the body runs, then ended; the body's exceptions pass through
    (marking the span an error), the span's own (ending, exporting) are `_failed`."""
    try:
        with trace.use_span(span, record_exception=record_exception):
            yield
    finally:
        try:
            span.end()
        except Exception:  # noqa: BLE001 - logged by _failed: tracing never changes an outcome
            _failed("ending a span")


def end_worker_span(span: trace.Span, body: ev.StepCompleted | ev.StepFailed, scheduled_ms: int) -> None:
    """What the attempt came to, on the worker's span."""
    try:
        _end_worker_span(span, body, scheduled_ms)
    except Exception:  # noqa: BLE001 - logged by _failed: tracing never changes an outcome
        _failed("recording an attempt's outcome on its span")


def _end_worker_span(span: trace.Span, body: ev.StepCompleted | ev.StepFailed, scheduled_ms: int) -> None:
    if not span.is_recording():
        return
    span.set_attribute("orchestrator.worker", body.worker)
    span.set_attribute("orchestrator.queue_ms", max(0, body.started_ms - scheduled_ms))
    if isinstance(body, ev.StepFailed):
        span.set_attribute("orchestrator.status", "failed")
        span.set_attribute("error.type", body.error_type)
        span.set_attribute("orchestrator.error_message", body.message)
        span.set_attribute("orchestrator.retryable", body.retryable)
        span.set_status(Status(StatusCode.ERROR, f"{body.error_type}: {body.message}"))
    else:
        span.set_attribute("orchestrator.status", "completed")


@contextmanager
def client_start_span(run_id: str, workflow: str, topic: str) -> Iterator[None]:
    """The client's ``start``: a span in the run's trace (under its root), linked to the caller's span."""
    try:
        caller = trace.get_current_span().get_span_context()
        links = [Link(caller)] if caller.is_valid else []
        ctx = trace.set_span_in_context(NonRecordingSpan(run_context(run_id)))
        attrs: dict[str, str | int | bool] = {
            "orchestrator.run_id": run_id,
            "orchestrator.workflow": workflow,
            "messaging.system": "kafka",
            "messaging.destination.name": topic,
        }
        span = tracer().start_span(
            f"start {workflow}", context=ctx, kind=SpanKind.PRODUCER, attributes=attrs, links=links
        )
    except Exception:  # noqa: BLE001 - logged by _failed: tracing never changes an outcome
        _failed("starting the client's start span")
        span = trace.INVALID_SPAN
    with _current(span):
        yield
