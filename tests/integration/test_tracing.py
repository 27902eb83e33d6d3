"""One run, one trace, on the real broker (ADR 0018): client, processor and worker in this process record
their spans with the SDK's InMemorySpanExporter; the trace context crosses Kafka only in record headers,
and the processor that finishes the run is a new instance restored from the changelog (no context stored).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException
from engine_support import (
    APP_SPEC,
    EngineProcess,
    ProcessorThread,
    WorkerThread,
    child_env,
    history,
    settings,
)
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from opentelemetry.util._once import Once

from orchestrator import App, RetryPolicy, WorkflowContext
from orchestrator._engine import tracing
from orchestrator._engine.events import Event, StepCompleted, StepScheduled, WaitStarted, decode_event
from orchestrator._engine.reader import read_partitions
from orchestrator._engine.records import decode_command
from orchestrator._engine.tracing_ids import RunIds
from orchestrator.topology import inbox_topic, tasks_topic


@pytest.fixture
def exporter() -> Iterator[InMemorySpanExporter]:
    """The process's global TracerProvider, as `tracing_setup` would install it, recording into memory.

    The API lets a process set its provider once; the test resets that private latch (as OpenTelemetry's own
    test base does) so that other tests in this process run without an SDK."""
    memory = InMemorySpanExporter()
    provider = TracerProvider(id_generator=RunIds())
    provider.add_span_processor(SimpleSpanProcessor(memory))
    _install(provider)
    try:
        yield memory
    finally:
        provider.shutdown()
        _install(None)


def _install(provider: TracerProvider | None) -> None:
    trace._TRACER_PROVIDER_SET_ONCE = Once()
    trace._TRACER_PROVIDER = None
    if provider is not None:
        trace.set_tracer_provider(provider)


def _wait_started(app: App, run_id: str, timeout: float = 60.0) -> None:
    """Until the run's history holds its WaitStarted (read from the history topic)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(isinstance(e.body, WaitStarted) for e in history(app).get(run_id, [])):
            return
        time.sleep(0.2)
    raise AssertionError(f"run {run_id} never started its wait")


def _records(app: App, topic: str) -> list[tuple[bytes | None, dict[str, str]]]:
    """(value, headers) of every record of ``topic``."""
    out = []
    for msg in read_partitions(app.settings, topic, list(range(app.settings.partitions))):
        headers = {k: (v or b"").decode() for k, v in (msg.headers() or [])}
        out.append((msg.value(), headers))
    return out


def _parent_of(headers: dict[str, str]) -> tuple[int, int]:
    """(trace id, span id) of a W3C traceparent header."""
    _, trace_hex, span_hex, _ = headers["traceparent"].split("-")
    return int(trace_hex, 16), int(span_hex, 16)


def _ctx(span: ReadableSpan) -> tuple[int, int]:
    assert span.context is not None
    return span.context.trace_id, span.context.span_id


def _attr(span: ReadableSpan, name: str) -> object:
    assert span.attributes is not None
    return span.attributes.get(name)


async def test_a_run_with_steps_a_retry_a_sleep_a_wait_and_a_child_is_one_trace(
    kafka_bootstrap: str, unique_name: str, tmp_path: Path, exporter: InMemorySpanExporter
) -> None:
    app = App(unique_name, settings=settings(kafka_bootstrap))
    failures: list[int] = []

    @app.step
    async def charge(x: int) -> int:
        with trace.get_tracer("user-code").start_as_current_span("payment-api call"):
            return x * 2

    @app.step(retry=RetryPolicy(max_attempts=3, initial_interval="300ms", jitter=0))
    async def flaky(x: int) -> int:
        if not failures:
            failures.append(x)
            raise ConnectionError("card network down")
        return x + 1

    @app.step
    def double(x: int) -> int:  # a plain def: runs on the worker's thread pool
        return x * 2

    @app.workflow
    async def kid(ctx: WorkflowContext, x: int) -> int:
        return await ctx.step(double, x)

    @app.workflow
    async def traced(ctx: WorkflowContext, x: int) -> int:
        a = await ctx.step(charge, x)
        b = await ctx.step(flaky, a)
        await ctx.sleep("300ms")
        await ctx.wait_for_event("approved")
        return await ctx.child(kid, b, run_id=f"{ctx.run_id}-kid")

    run_id, kid_id = "order-1", "order-1-kid"
    caller_tracer = trace.get_tracer("caller")
    first = ProcessorThread(app, tmp_path / "first", "p0")
    worker = WorkerThread(app)
    second: ProcessorThread | None = None
    try:
        async with app.client() as client:
            with caller_tracer.start_as_current_span("http POST /orders") as caller:
                handle = await client.start(traced, 5, run_id=run_id)
            await asyncio.to_thread(_wait_started, app, run_id)
            # Another instance finishes the run: restored from the changelog, nothing about traces stored.
            first.stop()
            second = ProcessorThread(app, tmp_path / "second", "p1")
            await client.signal(run_id, "approved", {"by": "ann"})
            assert await handle.result(timeout=90) == 22
    finally:
        worker.stop()
        if second is not None:
            second.stop()
        else:
            first.stop()

    spans = exporter.get_finished_spans()
    run_trace = tracing.trace_id_of(run_id)
    mine = [s for s in spans if s.context is not None and s.context.trace_id == run_trace]
    by_id = {_ctx(s)[1]: s for s in mine}
    assert len(by_id) == len(mine), "a span id was emitted twice"
    names = sorted(s.name for s in mine)
    assert names == sorted(
        [
            "start traced",
            "run traced",
            "step charge",
            "execute charge",
            "payment-api call",
            "step flaky",
            "step flaky",
            "execute flaky",
            "execute flaky",
            "sleep",
            "wait approved",
            "child kid",
        ]
    )

    # The root: the run, from its creation to its end, with the id derived from its run id.
    (run,) = [s for s in mine if s.name == "run traced"]
    root = tracing.run_span_id(run_id)
    assert _ctx(run) == (run_trace, root) and run.parent is None
    assert _attr(run, "orchestrator.run_id") == run_id and _attr(run, "orchestrator.status") == "completed"
    assert run.start_time is not None and run.end_time is not None
    for span in mine:  # everything of the run lies within its root span, but the start that created it
        if span.name == "start traced":
            assert span.start_time is not None and span.start_time <= run.start_time
            continue
        assert span.start_time is not None and span.end_time is not None
        assert run.start_time <= span.start_time and span.end_time <= run.end_time, span.name

    # The client's start: under the root, linked to the caller's span (which is in a trace of its own).
    (start,) = [s for s in mine if s.name == "start traced"]
    assert start.parent is not None and start.parent.span_id == root and start.kind is SpanKind.PRODUCER
    assert [link.context.span_id for link in start.links] == [caller.get_span_context().span_id]
    assert caller.get_span_context().trace_id != run_trace

    # Step attempts: the processor's span (scheduled -> recorded) under the root, the worker's under it.
    attempts = {
        (_attr(s, "orchestrator.step"), _attr(s, "orchestrator.attempt")): s
        for s in mine
        if s.name.startswith("step ")
    }
    assert set(attempts) == {("charge", 1), ("flaky", 1), ("flaky", 2)}
    for (step, attempt), span in attempts.items():
        position = 0 if step == "charge" else 1
        assert _ctx(span)[1] == tracing.step_span_id(run_id, position, int(str(attempt)))
        assert span.parent is not None and span.parent.span_id == root
        assert (
            _attr(span, "orchestrator.run_id") == run_id and _attr(span, "orchestrator.workflow") == "traced"
        )
    failed, retried = attempts[("flaky", 1)], attempts[("flaky", 2)]
    assert failed.status.status_code is StatusCode.ERROR
    assert _attr(failed, "orchestrator.status") == "failed"
    assert _attr(failed, "error.type") == "ConnectionError"
    assert _attr(failed, "orchestrator.error_message") == "card network down"
    assert (
        _attr(retried, "orchestrator.status") == "completed"
        and retried.status.status_code is StatusCode.UNSET
    )
    # attempt 2 was scheduled after the 300 ms backoff: its span starts then (the time its command's
    # tracestate carried to the worker and back), not when attempt 1 failed
    assert failed.end_time is not None and retried.start_time is not None
    assert retried.start_time - failed.end_time >= 250_000_000

    executions = [s for s in mine if s.name.startswith("execute ")]
    for span in executions:
        assert span.kind is SpanKind.CONSUMER
        step, attempt = _attr(span, "orchestrator.step"), _attr(span, "orchestrator.attempt")
        assert span.parent is not None and span.parent.span_id == _ctx(attempts[(step, attempt)])[1]
    (bad,) = [s for s in executions if s.status.status_code is StatusCode.ERROR]
    assert (_attr(bad, "orchestrator.step"), _attr(bad, "orchestrator.attempt")) == ("flaky", 1)
    assert _attr(bad, "error.type") == "ConnectionError"
    (user,) = [s for s in mine if s.name == "payment-api call"]  # the step's own span nests in the worker's
    (charge_exec,) = [s for s in executions if _attr(s, "orchestrator.step") == "charge"]
    assert user.parent is not None and user.parent.span_id == _ctx(charge_exec)[1]

    # The sleep, the wait (resolved by the second processor) and the child, each under the root.
    (sleep,) = [s for s in mine if s.name == "sleep"]
    (wait,) = [s for s in mine if s.name == "wait approved"]
    (child,) = [s for s in mine if s.name == "child kid"]
    assert _ctx(sleep)[1] == tracing.span_id_of("timer", run_id, 2)
    assert sleep.start_time is not None and sleep.end_time is not None
    assert sleep.end_time - sleep.start_time >= 250_000_000
    assert _ctx(wait)[1] == tracing.span_id_of("wait", run_id, 3)
    assert _attr(wait, "orchestrator.status") == "received"
    assert _ctx(child)[1] == tracing.span_id_of("child", run_id, 4)
    assert _attr(child, "orchestrator.child_run_id") == kid_id
    for span in (sleep, wait, child):
        assert span.parent is not None and span.parent.span_id == root

    # The child run is a trace of its own, linked both ways with the parent's child span.
    assert [(link.context.trace_id, link.context.span_id) for link in child.links] == [
        (tracing.trace_id_of(kid_id), tracing.run_span_id(kid_id))
    ]
    kid_spans = {
        s.name: s
        for s in spans
        if s.context is not None and s.context.trace_id == tracing.trace_id_of(kid_id)
    }
    assert set(kid_spans) == {"run kid", "step double", "execute double"}
    kid_run = kid_spans["run kid"]
    assert _ctx(kid_run)[1] == tracing.run_span_id(kid_id) and kid_run.parent is None
    assert _attr(kid_run, "orchestrator.parent_run_id") == run_id
    assert [(link.context.trace_id, link.context.span_id) for link in kid_run.links] == [
        (run_trace, _ctx(child)[1])
    ]
    assert kid_spans["execute double"].parent is not None
    assert kid_spans["execute double"].parent.span_id == _ctx(kid_spans["step double"])[1]

    # What crossed Kafka: every step command carries its attempt's span and scheduled time ...
    commands = [(decode_command(v), h) for v, h in _records(app, tasks_topic(app.name, "default"))]
    assert len(commands) == 4  # charge, flaky twice, double
    for cmd, headers in commands:
        assert _parent_of(headers) == (
            tracing.trace_id_of(cmd.run_id),
            tracing.step_span_id(cmd.run_id, cmd.position, cmd.attempt),
        )
        assert headers["tracestate"] == f"orchestrator=s:{cmd.scheduled_ms}"
    # ... and attempt 2's span starts at its StepScheduled, the time its command carried there and back
    (rescheduled,) = [
        e for e in history(app)[run_id] if isinstance(e.body, StepScheduled) and e.body.attempt == 2
    ]
    assert retried.start_time == rescheduled.timestamp_ms * 1_000_000
    # ... the worker's reports come from its execution spans, the start from the client's span, the child's
    # start from the parent's child span and its end from the child's run span
    inbox = [(decode_event(v), h) for v, h in _records(app, inbox_topic(app.name))]
    execution_ids = {_ctx(s) for s in spans if s.name.startswith("execute ")}
    reports = [h for e, h in inbox if e.event_id.count("/") >= 3 and "/end" not in e.event_id]
    assert len(reports) == 4 and {_parent_of(h) for h in reports} == execution_ids
    senders = {e.event_id: _parent_of(h) for e, h in inbox if "traceparent" in h}
    assert senders[f"{run_id}/4/start"] == (run_trace, _ctx(child)[1])
    assert senders[f"{kid_id}/end"] == (tracing.trace_id_of(kid_id), tracing.run_span_id(kid_id))
    (client_start,) = [h for e, h in inbox if e.run_id == run_id and e.kind == "StartRun"]
    assert _parent_of(client_start) == _ctx(start)


async def test_an_aborted_batch_emits_nothing_and_its_second_processing_emits_each_span_once(
    kafka_bootstrap: str, unique_name: str, tmp_path: Path, exporter: InMemorySpanExporter
) -> None:
    app = App(unique_name, settings=settings(kafka_bootstrap))

    @app.step
    async def echo(x: int) -> int:
        return x

    @app.workflow
    async def once(ctx: WorkflowContext, x: int) -> int:
        return await ctx.step(echo, x)

    proc = ProcessorThread(app, tmp_path)
    processor = proc.processor
    real_handle, real_commit = processor.run_task.handle_event, processor.transactions.commit
    results: list[str] = []  # run ids of the step results handled (once per processing of the batch)
    failed: list[int] = []

    def handle_event(msg: Any, p: int, event: Event, now_ms: int) -> None:
        if isinstance(event.body, StepCompleted):
            results.append(event.run_id)
        real_handle(msg, p, event, now_ms)

    def commit_or_fail() -> None:
        """The first commit of the batch holding the step's result fails as a broker timeout would: the
        processor aborts the (real) transaction, rewinds and handles the batch again."""
        if results and not failed:
            failed.append(len(results))
            raise KafkaException(KafkaError(KafkaError._TIMED_OUT, "commit timed out (injected by the test)"))
        real_commit()

    processor.run_task.handle_event = handle_event  # type: ignore[method-assign]
    processor.transactions.commit = commit_or_fail  # type: ignore[method-assign]
    worker = WorkerThread(app)
    try:
        async with app.client() as client:
            assert await (await client.start(once, 7, run_id="abort-1")).result(timeout=60) == 7
    finally:
        worker.stop()
        proc.stop()
    assert failed == [1] and results == ["abort-1", "abort-1"]  # the result's batch, handled twice
    assert processor.stats.aborts == 1
    run_trace = tracing.trace_id_of("abort-1")
    processor_spans = [
        s
        for s in exporter.get_finished_spans()
        if _ctx(s)[0] == run_trace and s.name in ("step echo", "run once")
    ]
    assert sorted((s.name, _ctx(s)[1]) for s in processor_spans) == sorted(
        [("step echo", tracing.step_span_id("abort-1", 0, 1)), ("run once", tracing.run_span_id("abort-1"))]
    )


def _console_spans(text: str) -> list[dict[str, Any]]:
    """The spans the SDK's ConsoleSpanExporter printed (indented JSON objects, among log lines)."""
    decoder, out, i = json.JSONDecoder(), [], 0
    while (i := text.find('{\n    "name"', i)) >= 0:
        span, i = decoder.raw_decode(text, i)
        out.append(span)
    return out


async def test_processor_and_worker_processes_export_from_the_otel_variables(
    kafka_bootstrap: str, unique_name: str, tmp_path: Path
) -> None:
    """`orchestrator processor|worker` set the SDK up from OTEL_* alone (here the console exporter), with the
    engine's id generator: the processes' spans make the run's derived trace."""
    env = child_env(unique_name, kafka_bootstrap, tmp_path) | {
        "OTEL_TRACES_EXPORTER": "console",
        "OTEL_BSP_SCHEDULE_DELAY": "200",  # export every 200 ms rather than every 5 s
    }
    logs = {role: tmp_path / f"{role}.log" for role in ("processor", "worker")}
    parts = [
        EngineProcess(
            "processor", APP_SPEC, env, "--state-dir", str(tmp_path / "state"), log=logs["processor"]
        ),
        EngineProcess("worker", APP_SPEC, env, log=logs["worker"]),
    ]
    run_id = "otel-1"
    root = f"0x{tracing.run_span_id(run_id):016x}"
    try:
        for part in parts:
            part.start()
        app = App(unique_name, settings=settings(kafka_bootstrap))
        async with app.client() as client:
            assert await (await client.start("five", 0, run_id=run_id)).result(timeout=120) == 11111
        deadline = time.monotonic() + 30
        while root not in logs["processor"].read_text() and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
    finally:
        for part in parts:
            part.terminate()  # SIGTERM: the processes stop and the SDK flushes what is left at exit
    trace_hex = f"0x{tracing.trace_id_of(run_id):032x}"
    processor_spans = [
        s for s in _console_spans(logs["processor"].read_text()) if s["context"]["trace_id"] == trace_hex
    ]
    worker_spans = [
        s for s in _console_spans(logs["worker"].read_text()) if s["context"]["trace_id"] == trace_hex
    ]
    (run,) = [s for s in processor_spans if s["name"] == "run five"]
    assert run["context"]["span_id"] == root and run["parent_id"] is None
    assert run["resource"]["attributes"]["service.name"] == "orchestrator-processor"
    steps = {
        s["attributes"]["orchestrator.position"]: s for s in processor_spans if s["name"].startswith("step ")
    }
    assert sorted(steps) == [0, 1, 2, 3, 4]
    for position, span in steps.items():
        assert span["context"]["span_id"] == f"0x{tracing.step_span_id(run_id, position, 1):016x}"
        assert span["parent_id"] == root
    executions = sorted(worker_spans, key=lambda s: s["attributes"]["orchestrator.position"])
    assert [s["name"] for s in executions] == [
        "execute s1",
        "execute s2",
        "execute s3",
        "execute s4",
        "execute s5",
    ]
    for position, span in enumerate(executions):
        assert span["parent_id"] == steps[position]["context"]["span_id"]
        assert span["resource"]["attributes"]["service.name"] == "orchestrator-worker"
