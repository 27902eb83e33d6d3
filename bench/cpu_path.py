"""``python -m bench cpu-path``: the engine's own CPU per run, with Kafka and the broker taken out.

End-to-end figures on this 2-core machine move by 20-40 % between identical runs (the broker's JIT, other
tenants), which hides a 10 % change in our code. This drives the same functions the processor and the worker
call for every record (decode the inbox event, load the run's state, decide, encode the state and what it
emits; decode the command, encode the result) for many interleaved runs of the bench app's workflows, in one
process, and reports CPU ms per run: stable to a few percent, so a change to the hot path can be judged.

Tracing (ADR 0018) is on the path as in the processor and the worker: a no-op without an OpenTelemetry SDK;
``--traced`` installs the SDK (with the engine's id generator and an exporter that drops the spans) to
measure what recording the spans costs.

What it leaves out: librdkafka (produce/consume calls, transactions), RocksDB, the worker's event loop. The
store is a dict of encoded states, so a state-cache miss costs a real decode.
"""

from __future__ import annotations

import gc
import statistics
import time
import uuid
from typing import Any

from bench.apps import app
from bench.load import STEPS
from orchestrator._engine import tracing, wire
from orchestrator._engine.decider import Decider, timers_of
from orchestrator._engine.events import Event, StartRun, StepCompleted, decode_event, encode_event
from orchestrator._engine.instance_cache import InstanceCache
from orchestrator._engine.queries.index import summary_of
from orchestrator._engine.records import StepCommand, decode_command, encode_command, encode_outcome
from orchestrator._engine.state import RunState, decode_state, encode_state, state_record
from orchestrator._engine.state_cache import StateCache


class _Path:
    """The processor's per-record work (as in ``processor.run_task.RunTask.handle``) and the worker's."""

    def __init__(self, cache_size: int, baseline: bool) -> None:
        self.decider = Decider(app, InstanceCache(cache_size))
        self.states = StateCache(cache_size)
        self.store: dict[str, bytes] = {}
        # The path as it was before this harness's first fixes: every record decodes its run's state and
        # encodes all of it again with plain Avro. Kept to show what those fixes bought, in one run.
        self.baseline = baseline
        self.encode_state = _plain_encode_state if baseline else encode_state
        self.spans = tracing.PendingSpans()

    def processor(self, raw: bytes, now_ms: int) -> list[bytes]:
        self.spans.begin()  # the processor does this once per transaction, not per record
        event = decode_event(raw)
        state: RunState | None = None if self.baseline else self.states.get(event.run_id)
        if state is None and event.run_id in self.store:
            state = decode_state(self.store[event.run_id])
            self.states.put(state.run_id, state)
        if state is not None:
            timers_of(state)
        new_state, fx = self.decider.handle(state, event, now_ms)
        if new_state is not None and fx.history:
            self.store[new_state.run_id] = self.encode_state(new_state)
            summary_of(new_state)  # as RunStates.save: the run index's summary goes with the state
            timers_of(new_state)
            if new_state.terminal:
                self.states.evict(new_state.run_id)
            else:
                self.states.put(new_state.run_id, new_state)
        for e in fx.history:
            encode_event(e)
        for o in fx.outcomes:
            encode_outcome(o)
        traced = tracing.enabled() if fx.commands or fx.inbox else False  # as processor.output.Output.records
        out = []
        for _, c in fx.commands:
            assert isinstance(c, StepCommand)
            if traced:
                tracing.command_headers(c)
            out.append(encode_command(c))
        self.spans.note(new_state, fx.history)  # as processor.run_task.RunTask.handle_event
        self.spans.committed()
        return out

    @staticmethod
    def worker(raw: bytes, now_ms: int) -> bytes:
        cmd = decode_command(raw)
        x = app.data.decode(cmd.args)[0]
        if tracing.enabled():  # as worker.Worker._execute, then _to_inbox inside the span
            with tracing.worker_span(cmd, _NO_HEADERS) as span:
                result = StepCompleted(cmd.position, cmd.attempt, app.data.encode(x + 1), now_ms, now_ms, "w")
                tracing.end_worker_span(span, result, cmd.scheduled_ms)
                _ = tracing.inject() if tracing.enabled() else None
        else:
            result = StepCompleted(cmd.position, cmd.attempt, app.data.encode(x + 1), now_ms, now_ms, "w")
            _ = tracing.inject() if tracing.enabled() else None
        return encode_event(Event(f"{cmd.idempotency_key}/1/x", cmd.run_id, cmd.workflow, now_ms, result))


class _NoHeaders:
    """The command record of the worker's path: consumed without headers (the span's parent is derived)."""

    @staticmethod
    def headers() -> None:
        return None


_NO_HEADERS = _NoHeaders()


def _install_sdk() -> None:
    """The OpenTelemetry SDK as ``tracing_setup`` installs it, exporting nowhere: what making spans costs."""
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult

    from orchestrator._engine.tracing_ids import RunIds

    class _Drop(SpanExporter):
        def export(self, spans: Any) -> SpanExportResult:
            return SpanExportResult.SUCCESS

    provider = TracerProvider(id_generator=RunIds())
    provider.add_span_processor(SimpleSpanProcessor(_Drop()))
    trace.set_tracer_provider(provider)


def _plain_encode_state(state: RunState) -> bytes:
    return wire.encode(wire.RUN_STATE, state_record(state))


def _one_round(workflow: str, runs: int, in_flight: int, baseline: bool) -> dict[str, float]:
    """``runs`` runs, ``in_flight`` at a time, stepped in waves like a loaded processor sees them."""
    path = _Path(2000, baseline)
    now = int(time.time() * 1000)
    proc_cpu = worker_cpu = 0.0
    started = 0
    while started < runs:
        wave = min(in_flight, runs - started)
        t = time.process_time()
        pending: list[bytes] = []
        for _ in range(wave):
            start = Event(uuid.uuid4().hex, uuid.uuid4().hex, workflow, now, StartRun(app.data.encode(0)))
            pending += path.processor(encode_event(start), now)
        proc_cpu += time.process_time() - t
        started += wave
        while pending:
            t = time.process_time()
            results = [path.worker(c, now) for c in pending]
            worker_cpu += time.process_time() - t
            t = time.process_time()
            pending = [c for r in results for c in path.processor(r, now)]
            proc_cpu += time.process_time() - t
    return {"processor_ms": proc_cpu * 1000 / runs, "worker_ms": worker_cpu * 1000 / runs}


def main(
    runs: int = 3000,
    in_flight: int = 256,
    repeats: int = 5,
    tuned_gc: bool = False,
    baseline: bool = False,
    traced: bool = False,
) -> dict[str, Any]:
    if traced:
        _install_sdk()
    if tuned_gc:  # what the CLI's processor and worker commands do (orchestrator/cli/engine.py _tune_gc)
        gc.collect()
        gc.freeze()
        gc.set_threshold(20_000, 20, 20)
    out: dict[str, Any] = {
        "runs": runs,
        "in_flight": in_flight,
        "repeats": repeats,
        "tuned_gc": tuned_gc,
        "baseline": baseline,
        "traced": traced,
    }
    for workflow in ("one", "five", "twenty"):
        _one_round(workflow, min(runs, 500), in_flight, baseline)  # warm-up
        rounds = [_one_round(workflow, runs, in_flight, baseline) for _ in range(repeats)]
        out[workflow] = {
            k: round(statistics.median(r[k] for r in rounds), 3) for k in ("processor_ms", "worker_ms")
        }
        figures = out[workflow]
        print(
            f"{workflow:7} ({STEPS[workflow]:2} steps): processor {figures['processor_ms']:.3f} ms/run, "
            f"worker {figures['worker_ms']:.3f} ms/run (median of {repeats}, gc "
            f"{'tuned' if tuned_gc else 'default'}{', baseline path' if baseline else ''}"
            f"{', traced' if traced else ''})",
            flush=True,
        )
    return out
