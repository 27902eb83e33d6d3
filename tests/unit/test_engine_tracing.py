"""Traces (ADR 0018) without a broker: the derived ids, the W3C headers, which spans a handled input ends, and
that the processor's spans leave only when their batch commits. The broker-side trace of a whole run is
tests/integration/test_tracing.py."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import pytest
from core_driver import Driver, no_leaked_workflow_loops  # noqa: F401 - an autouse fixture
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from opentelemetry.util._once import Once

from orchestrator import App, RetryPolicy, Settings, WorkflowContext
from orchestrator._engine import events as ev
from orchestrator._engine import tracing, tracing_setup
from orchestrator._engine.records import StepCommand
from orchestrator._engine.tracing_ids import RunIds


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    """A global SDK TracerProvider (with the engine's id generator) recording into memory, for one test.

    The API lets a process set its provider once; tests reset that private latch (as OpenTelemetry's own
    test base does) so that every other test runs with no provider, as a process without the SDK would."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider(id_generator=RunIds())
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    _install(provider)
    try:
        yield exporter
    finally:
        provider.shutdown()
        _install(None)


def _install(provider: trace.TracerProvider | None) -> None:
    trace._TRACER_PROVIDER_SET_ONCE = Once()
    trace._TRACER_PROVIDER = None
    if provider is not None:
        trace.set_tracer_provider(provider)


def _cmd(**kw: Any) -> StepCommand:
    fields: dict[str, Any] = dict(
        run_id="order-7",
        workflow="fulfil",
        position=2,
        step="charge",
        attempt=3,
        args=b"",
        idempotency_key="order-7/2/charge",
        scheduled_ms=1_700_000_000_123,
    )
    return StepCommand(**(fields | kw))


# -- ids ----------------------------------------------------------------------------------------------------
def test_ids_are_a_frozen_function_of_the_run() -> None:
    # Pinned: a change splits the traces of every run open across an upgrade (the module's frozen format).
    assert f"{tracing.trace_id_of('order-7'):032x}" == "da13f4f7b00376bf3a49c1e0e26c96ac"
    assert f"{tracing.run_span_id('order-7'):016x}" == "fe98eee4a9163cbb"
    assert f"{tracing.step_span_id('order-7', 2, 3):016x}" == "7490a51add9daa7a"
    assert tracing.trace_id_of("order-7") != tracing.trace_id_of("order-8")
    ids = {
        tracing.run_span_id("r"),
        tracing.step_span_id("r", 0, 1),
        tracing.step_span_id("r", 0, 2),
        tracing.step_span_id("r", 1, 1),
        tracing.span_id_of("timer", "r", 0),
        tracing.span_id_of("wait", "r", 0),
        tracing.span_id_of("child", "r", 0),
    }
    assert len(ids) == 7  # every kind, position and attempt has a span of its own
    # "r1" + position 11 and "r11" + position 1 must not collide: the parts are separated
    assert tracing.step_span_id("r1", 11, 1) != tracing.step_span_id("r11", 1, 1)


# -- headers ------------------------------------------------------------------------------------------------
def test_a_step_command_carries_its_attempt_span_and_scheduled_time_as_w3c_headers() -> None:
    cmd = _cmd()
    headers = dict(tracing.command_headers(cmd))
    trace_hex = f"{tracing.trace_id_of('order-7'):032x}"
    span_hex = f"{tracing.step_span_id('order-7', 2, 3):016x}"
    assert headers["traceparent"] == f"00-{trace_hex}-{span_hex}-01".encode()
    assert headers["tracestate"] == b"orchestrator=s:1700000000123"
    # as confluent-kafka hands them back: a list of (str, bytes)
    got = tracing.extract(list(headers.items()))
    assert got is not None and got.is_remote
    assert (got.trace_id, got.span_id) == (
        tracing.trace_id_of("order-7"),
        tracing.step_span_id("order-7", 2, 3),
    )
    assert tracing.scheduled_ms_of(got) == 1_700_000_000_123


def test_headers_without_a_valid_context_give_none() -> None:
    assert tracing.extract(None) is None
    assert tracing.extract([]) is None
    assert tracing.extract([("traceparent", b"not-a-traceparent")]) is None
    assert tracing.extract([("other", None)]) is None
    no_state = tracing.extract(tracing.inject(tracing.run_context("r")))
    assert no_state is not None and tracing.scheduled_ms_of(no_state) is None


def test_inject_without_a_current_span_writes_nothing() -> None:
    assert tracing.inject() == []


def test_inbox_records_come_from_the_sending_runs_span() -> None:
    start = ev.Event("p/1/start", "kid", "child_wf", 1, ev.StartRun(b"", "parent:p", "p", 1))
    ctx = tracing.inbox_context(start)
    assert ctx is not None
    assert (ctx.trace_id, ctx.span_id) == (tracing.trace_id_of("p"), tracing.span_id_of("child", "p", 1))
    end = ev.Event("kid/end", "p", "", 2, ev.StepCompleted(1, 1, b"1", 1, 2, "child:kid"))
    ctx = tracing.inbox_context(end)
    assert ctx is not None and (ctx.trace_id, ctx.span_id) == (
        tracing.trace_id_of("kid"),
        tracing.run_span_id("kid"),
    )
    cancel = ev.Event("p/1/cancel", "kid", "", 3, ev.CancelRun("parent ended", "parent:p"))
    ctx = tracing.inbox_context(cancel)
    assert ctx is not None and ctx.span_id == tracing.run_span_id("p")
    assert tracing.inbox_context(ev.Event("x", "r", "", 1, ev.StartRun(b"", "client"))) is None


# -- spans of a run, from the core's own events -------------------------------------------------------------
app = App("tr", settings=Settings(bootstrap_servers="127.0.0.1:1", partitions=1))


@app.step(retry=RetryPolicy(max_attempts=3, initial_interval="1s", jitter=0))
async def charge(x: int) -> int:
    return x


@app.workflow
async def flow(ctx: WorkflowContext, x: int) -> int:
    got = await ctx.step(charge, x)
    await ctx.sleep("10s")
    await ctx.wait_for_event("approved")
    return got


_made: list[Driver] = []


def _driver(run_id: str) -> Driver:
    d = Driver(app, "flow", run_id=run_id)
    _made.append(d)
    return d


@pytest.fixture(autouse=True)
def _close_drivers() -> Iterator[None]:
    yield
    while _made:
        _made.pop().close()


def _drive() -> tuple[Driver, list[tracing.SpanRecord]]:
    d = _driver("r-1")
    out: list[tracing.SpanRecord] = []

    def keep(fx: Any, scheduled: tuple[int, int, int] | None = None) -> None:
        assert d.state is not None
        out.extend(tracing.spans_of(d.state, fx.history, scheduled))

    keep(d.start(5, now=1_000))
    keep(d.fail(0, now=1_100))  # attempt 1 fails: retried in 1 s
    keep(d.fire("retry:0", 2_100))  # attempt 2 scheduled at 2 100
    keep(d.complete(0, now=2_300, value=5), (0, 2, 2_100))  # the report's headers said: scheduled at 2 100
    keep(d.fire("timer:1", 12_300))
    keep(d.signal("approved", now=12_400))
    return d, out


def test_spans_of_a_run_follow_its_events() -> None:
    d, out = _drive()
    assert d.status == "completed"
    by_name = {(s.name, s.attributes.get("orchestrator.attempt")): s for s in out}
    root = tracing.run_span_id("r-1")

    first = by_name[("step charge", 1)]
    assert (first.start_ms, first.end_ms) == (1_000, 1_100)  # scheduled with the run's start, failed at 1 100
    assert first.error == ("ConnectionError", "boom")
    assert first.attributes["orchestrator.status"] == "failed"
    assert first.attributes["orchestrator.retryable"] is True
    assert first.span_id == tracing.step_span_id("r-1", 0, 1) and first.parent_span_id == root

    second = by_name[("step charge", 2)]
    assert (second.start_ms, second.end_ms) == (2_100, 2_300)  # from the scheduled time the header carried
    assert second.error is None and second.attributes["orchestrator.status"] == "completed"
    assert second.attributes["orchestrator.queue_ms"] == 2_295 - 2_100  # the worker started at now - 5

    sleep = by_name[("sleep", None)]
    assert (sleep.start_ms, sleep.end_ms, sleep.parent_span_id) == (2_300, 12_300, root)
    wait = by_name[("wait approved", None)]
    assert (wait.start_ms, wait.end_ms) == (12_300, 12_400)
    assert wait.attributes["orchestrator.status"] == "received"

    run = by_name[("run flow", None)]
    assert run.parent_span_id is None and run.span_id == root
    assert (run.start_ms, run.end_ms) == (1_000, 12_400)
    assert run.attributes["orchestrator.status"] == "completed" and run.error is None
    assert len(out) == 5


def test_a_retried_attempt_without_headers_starts_when_it_started() -> None:
    d = _driver("r-2")
    d.start(5, now=1_000)
    d.fail(0, now=1_100)
    d.fire("retry:0", 2_100)
    fx = d.complete(0, now=2_300, value=5)
    assert d.state is not None
    (span,) = tracing.spans_of(d.state, fx.history)
    assert span.start_ms == 2_295  # the worker's start: no queue time without the scheduled time


# -- emission -----------------------------------------------------------------------------------------------
def test_pending_spans_leave_only_when_the_batch_commits(spans: InMemorySpanExporter) -> None:
    d = _driver("r-3")
    pending = tracing.PendingSpans()

    def batch(commit: bool) -> None:
        pending.begin()
        d.start(5, now=1_000)
        fx = d.fail(0, now=1_100)
        pending.note(d.state, fx.history)
        pending.committed() if commit else pending.aborted()

    batch(commit=False)  # aborted: nothing leaves
    assert spans.get_finished_spans() == ()
    d = _driver("r-3")  # the batch handled again from the committed (empty) state
    batch(commit=True)
    (span,) = spans.get_finished_spans()
    ctx = span.get_span_context()
    assert ctx is not None
    assert (ctx.trace_id, ctx.span_id) == (tracing.trace_id_of("r-3"), tracing.step_span_id("r-3", 0, 1))
    assert span.parent is not None and span.parent.span_id == tracing.run_span_id("r-3")
    assert (span.start_time, span.end_time) == (1_000 * 10**6, 1_100 * 10**6)
    assert span.status.status_code is StatusCode.ERROR
    assert span.attributes is not None and span.attributes["error.type"] == "ConnectionError"


def test_pending_spans_compute_nothing_without_an_sdk() -> None:
    pending = tracing.PendingSpans()
    pending.begin()
    assert not pending.on
    d = _driver("r-4")
    pending.note(d.state, d.start(5, now=1_000).history)
    assert pending.spans == []


def test_the_run_span_is_a_root_with_the_derived_trace_id(spans: InMemorySpanExporter) -> None:
    _, out = _drive()
    with trace.get_tracer("test").start_as_current_span("unrelated current span"):
        for record in out:
            tracing.emit(record)  # a current span of the caller must not become the root's parent
    finished = {s.name: s for s in spans.get_finished_spans()}
    run = finished["run flow"]
    assert run.parent is None
    assert run.context is not None
    assert (run.context.trace_id, run.context.span_id) == (
        tracing.trace_id_of("r-1"),
        tracing.run_span_id("r-1"),
    )
    traces = {
        s.context.trace_id
        for s in spans.get_finished_spans()
        if s.context and s.name != "unrelated current span"
    }
    assert traces == {tracing.trace_id_of("r-1")}


def test_a_provider_without_the_engines_id_generator_is_warned_about(
    caplog: pytest.LogCaptureFixture,
) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()  # random ids
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    _install(provider)
    tracing._warned = False
    try:
        _, out = _drive()
        with caplog.at_level(logging.WARNING, "orchestrator.tracing"):
            tracing.emit(out[-1])
        assert "id generator" in caplog.text
    finally:
        provider.shutdown()
        _install(None)


# -- the worker's and the client's spans --------------------------------------------------------------------
class _Msg:
    def __init__(self, headers: list[tuple[str, bytes]] | None) -> None:
        self._headers = headers

    def headers(self) -> list[tuple[str, bytes]] | None:
        return self._headers


def test_the_worker_span_is_a_child_of_the_attempt_span_with_or_without_headers(
    spans: InMemorySpanExporter,
) -> None:
    cmd = _cmd()
    with tracing.worker_span(cmd, _Msg(tracing.command_headers(cmd))) as span:
        assert span is not None
        body = ev.StepFailed(2, 3, "ValueError", "bad", False, 1_700_000_000_200, 1_700_000_000_300, "w-9")
        tracing.end_worker_span(span, body, cmd.scheduled_ms)
        reported = dict(tracing.inject())  # what the worker's report carries: its span, the same tracestate
    with tracing.worker_span(cmd, _Msg(None)):
        pass
    with_headers, derived = spans.get_finished_spans()
    for s in (with_headers, derived):
        assert s.parent is not None and s.parent.span_id == tracing.step_span_id("order-7", 2, 3)
        assert s.context is not None and s.context.trace_id == tracing.trace_id_of("order-7")
        assert s.kind is SpanKind.CONSUMER and s.name == "execute charge"
    assert with_headers.status.status_code is StatusCode.ERROR
    assert with_headers.attributes is not None
    assert with_headers.attributes["orchestrator.queue_ms"] == 77
    assert with_headers.attributes["error.type"] == "ValueError"
    assert reported["tracestate"] == b"orchestrator=s:1700000000123"
    assert with_headers.context is not None
    assert reported["traceparent"].decode().split("-")[2] == f"{with_headers.context.span_id:016x}"


class _BrokenPropagator:
    """A propagator that fails: tracing's trouble, which must never change what a record comes to."""

    def inject(self, *args: Any, **kwargs: Any) -> None:
        raise RuntimeError("propagator broke")

    def extract(self, *args: Any, **kwargs: Any) -> None:
        raise RuntimeError("propagator broke")


def test_header_building_that_fails_gives_records_without_headers(
    spans: InMemorySpanExporter, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # Inside the run task's encode try, an exception here would have parked the run (or, unguarded in the
    # keyed stage, stopped the processor): the records must come out the same, only without headers.
    from orchestrator._core.effects import Effects
    from orchestrator._engine.processor.config import ProcessorTopics
    from orchestrator._engine.processor.output import Output

    monkeypatch.setattr(tracing, "_PROPAGATOR", _BrokenPropagator())
    monkeypatch.setattr(tracing, "_failures_logged", False)
    child = ev.Event(
        "c-1/start", "c-1", "sub", 1, ev.StartRun(input=b"", parent_run_id="p-1", parent_position=4)
    )
    app = App("unit-trace", settings=Settings(bootstrap_servers="127.0.0.1:1", partitions=1))
    output = Output(app.name, ProcessorTopics.of(app), 1, None, None, None, "processor")  # type: ignore[arg-type]
    fx = Effects(commands=[("default", _cmd())], inbox=[child])
    with caplog.at_level(logging.DEBUG, logger="orchestrator.tracing"):
        records = output.records(fx, 0)
        assert tracing.command_headers(_cmd()) == []
        assert tracing.inject() == []
    assert [len(r) for r in records] == [4, 4]  # both produced, neither with headers
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "propagator broke" in (warnings[0].exc_text or "")  # logged once


def test_a_worker_span_that_cannot_start_leaves_the_attempt_to_run_as_it_would(
    spans: InMemorySpanExporter, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken_tracer() -> trace.Tracer:
        raise RuntimeError("tracer broke")

    monkeypatch.setattr(tracing, "tracer", broken_tracer)
    monkeypatch.setattr(tracing, "_failures_logged", False)
    cmd = _cmd()
    ran = []
    with tracing.worker_span(cmd, _Msg(None)) as span:
        ran.append(True)
        body = ev.StepCompleted(2, 3, b"", 1_700_000_000_200, 1_700_000_000_300, "w-9")
        tracing.end_worker_span(span, body, cmd.scheduled_ms)
    assert ran and not span.is_recording()
    with pytest.raises(ValueError, match="the step's own"), tracing.worker_span(cmd, _Msg(None)):
        raise ValueError("the step's own error")  # the body's exceptions pass through untouched
    assert spans.get_finished_spans() == ()


def test_a_span_that_fails_to_end_does_not_fail_the_attempt(
    spans: InMemorySpanExporter, monkeypatch: pytest.MonkeyPatch
) -> None:
    from opentelemetry.sdk.trace import Span

    def broken_end(self: Span, end_time: int | None = None) -> None:
        raise RuntimeError("end broke")

    def broken_set(self: Span, key: str, value: Any) -> None:
        raise RuntimeError("set_attribute broke")

    monkeypatch.setattr(Span, "end", broken_end)
    monkeypatch.setattr(Span, "set_attribute", broken_set)
    cmd = _cmd()
    with tracing.worker_span(cmd, _Msg(None)) as span:
        body = ev.StepCompleted(2, 3, b"", 1_700_000_000_200, 1_700_000_000_300, "w-9")
        tracing.end_worker_span(span, body, cmd.scheduled_ms)


class _CountingProvider(TracerProvider):
    """Counts `get_tracer` calls: the SDK's rewrites warning filters and takes locks, too much per span."""

    def __init__(self) -> None:
        super().__init__(id_generator=RunIds())
        self.tracers = 0

    def get_tracer(self, *args: Any, **kwargs: Any) -> trace.Tracer:
        self.tracers += 1
        return super().get_tracer(*args, **kwargs)


def test_the_tracer_is_made_once_per_global_provider() -> None:
    first, second = _CountingProvider(), _CountingProvider()
    try:
        _install(first)
        made = tracing.tracer()
        assert tracing.tracer() is made and tracing.tracer() is made
        assert first.tracers == 1
        _install(second)  # a new global provider (tests, a re-configured process): its own tracer
        assert tracing.tracer() is not made and tracing.tracer() is tracing.tracer()
        assert second.tracers == 1
    finally:
        first.shutdown()
        second.shutdown()
        _install(None)


def test_enabled_follows_the_global_provider() -> None:
    assert not tracing.enabled()  # no provider: the worker and processor compute nothing
    provider = TracerProvider(id_generator=RunIds())
    _install(provider)
    try:
        assert tracing.enabled()
    finally:
        provider.shutdown()
        _install(None)
    assert not tracing.enabled()
    _install(trace.NoOpTracerProvider())  # what OTEL_SDK_DISABLED gives a process
    try:
        assert not tracing.enabled()
    finally:
        _install(None)


def test_the_client_start_span_is_in_the_runs_trace_and_links_the_caller(spans: InMemorySpanExporter) -> None:
    caller_span = trace.get_tracer("test").start_as_current_span("caller")
    with caller_span as caller, tracing.client_start_span("order-7", "fulfil", "shop.inbox"):
        headers = dict(tracing.inject())
    start = next(s for s in spans.get_finished_spans() if s.name == "start fulfil")
    assert start.context is not None and start.context.trace_id == tracing.trace_id_of("order-7")
    assert start.parent is not None and start.parent.span_id == tracing.run_span_id("order-7")
    assert [link.context.span_id for link in start.links] == [caller.get_span_context().span_id]
    assert start.kind is SpanKind.PRODUCER
    assert headers["traceparent"].decode().split("-")[2] == f"{start.context.span_id:016x}"


# -- setting the SDK up from the environment -----------------------------------------------------------------
@pytest.mark.parametrize(
    ("env", "wanted"),
    [
        ({}, False),
        ({"OTEL_TRACES_EXPORTER": "otlp"}, True),
        ({"OTEL_TRACES_EXPORTER": "none"}, False),
        ({"OTEL_TRACES_EXPORTER": "console,otlp"}, True),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://tempo:4318"}, True),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://tempo:4318/v1/traces"}, True),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://tempo:4318", "OTEL_TRACES_EXPORTER": "none"}, False),
        ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_SDK_DISABLED": "true"}, False),
    ],
)
def test_traces_are_wanted_only_when_the_otel_variables_ask(env: dict[str, str], wanted: bool) -> None:
    assert tracing_setup.wanted(env) is wanted


def test_configure_from_env_installs_a_provider_with_the_engines_ids(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "console")
    monkeypatch.delenv("OTEL_SERVICE_NAME", raising=False)
    _install(None)
    try:
        assert tracing_setup.configure_from_env("orchestrator-worker")
        provider = trace.get_tracer_provider()
        assert isinstance(provider, TracerProvider)
        assert isinstance(provider.id_generator, RunIds)
        assert provider.resource.attributes["service.name"] == "orchestrator-worker"
        assert tracing.enabled()
    finally:
        provider.shutdown()
        _install(None)
    assert not tracing.enabled()
