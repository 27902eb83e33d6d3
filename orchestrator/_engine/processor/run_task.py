"""The run side of the processor (a Kafka Streams StreamTask over the inbox partitions): an inbox record or
a due timer is folded into its run by the decider, local steps run in place, and the new state, its timers
and everything the run asks of the outside world are written in the open transaction.

The core never raises (it parks the run itself, ADR 0009); what can still fail here comes from outside it,
reading the stored state and encoding records, and parks the run with the input kept (`Parking`).
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace

from confluent_kafka import Message

from orchestrator._engine import metrics, tracing
from orchestrator._engine.decider import PARK_INTERNAL_ERROR, Decider, Effects, timers_of
from orchestrator._engine.events import Event, StartRun, StepCompleted, StepFailed, decode_event
from orchestrator._engine.local_steps import LocalSteps
from orchestrator._engine.partitioning import partition_for
from orchestrator._engine.processor.config import ProcessorStats
from orchestrator._engine.processor.handling_time import LOCAL_STEPS_PER_INPUT, HandlingTime
from orchestrator._engine.processor.output import Output, Record
from orchestrator._engine.processor.parking import PARK_RECORD_TOO_LARGE, Parking
from orchestrator._engine.processor.run_states import RunStates
from orchestrator._engine.processor.state_manager import StateManager
from orchestrator._engine.records import RunOutcome, StepCommand
from orchestrator._engine.state import FAILED, RunState, encode_state
from orchestrator._engine.store import timer_key
from orchestrator.errors import SchemaError

log = logging.getLogger("orchestrator.processor")

LOCAL_QUEUE = "local"
"""The ``queue`` label of local steps' metrics: they run in the processor, on no task queue."""


class RunTask:
    def __init__(
        self,
        decider: Decider,
        runs: RunStates,
        stores: StateManager,
        output: Output,
        local_steps: LocalSteps,
        handling: HandlingTime,
        stats: ProcessorStats,
    ) -> None:
        self.decider = decider
        self.runs = runs
        self.stores = stores
        self.output = output
        self.local_steps = local_steps
        self.handling = handling
        self.stats = stats
        self.parking = Parking(decider, runs, output)
        self.spans = tracing.PendingSpans()  # emitted by the loop once the batch's transaction commits

    # -- inbox records --------------------------------------------------------------------------------------
    def handle(self, msg: Message, now_ms: int) -> None:
        p = msg.partition() or 0
        try:
            event = decode_event(msg.value())
        except SchemaError as exc:
            self.output.dead_letter(msg, "SchemaError", str(exc), now_ms)
            return
        owner = partition_for(event.run_id, self.output.partitions)
        if owner != p:
            self.output.dead_letter(
                msg,
                "WrongPartition",
                f"run {event.run_id!r} belongs on partition {owner}, not {p}: produce inbox records with "
                "the run id as key and Kafka's murmur2 partitioner",
                now_ms,
            )
            return
        self.stats.events += 1
        self.handle_event(msg, p, event, now_ms)

    def handle_event(self, msg: Message, p: int, event: Event, now_ms: int) -> None:
        store = self.stores.run_stores[p]
        try:
            state = self.runs.load(store, event.run_id)
        except Exception as exc:  # the stored bytes do not decode
            log.exception(
                "internal error on %s of run %s; parking the run",
                event.kind,
                event.run_id,
                extra={"run_id": event.run_id, "partition": p},
            )
            self._internal_error(msg, p, event, exc, now_ms)
            return
        old_timers = timers_of(state) if state is not None else set()
        new_state, fx = self.decider.handle(state, event, now_ms)  # never raises
        if new_state is not None:
            self._run_local(new_state, fx)
        changed = new_state is not None and bool(fx.history)  # every state change is recorded as history
        try:
            encoded = encode_state(new_state) if new_state is not None and changed else None
            records = self.output.records(fx, p)
        except Exception as exc:  # encoding is outside the core
            log.exception(
                "internal error on %s of run %s; parking the run",
                event.kind,
                event.run_id,
                extra={"run_id": event.run_id, "partition": p},
            )
            self._internal_error(msg, p, event, exc, now_ms)
            return
        too_big = self.output.too_large([(self.output.topics.changelog, encoded, None, p), *records])
        if too_big:
            self._on_oversize(msg, p, event, too_big, now_ms)
            return
        if fx.dead_letter:
            self.output.dead_letter(msg, "Rejected", fx.dead_letter, now_ms)
        if fx.ignored:
            self.stats.ignored += 1
            log.debug("ignored %s for %s: %s", event.kind, event.run_id, fx.ignored)
        if new_state is not None and encoded is not None:
            self.runs.save(store, new_state, old_timers, encoded)
        else:  # nothing recorded, so nothing may have changed: re-read the store's bytes next time
            self.runs.evict(event.run_id)
        self.output.produce_records(records, fx.history)
        self.spans.note(new_state, fx.history, msg)

    def _internal_error(self, msg: Message, p: int, event: Event, exc: Exception, now_ms: int) -> None:
        """Park the run with ``event`` recorded on it (a step result is not lost), or dead-letter ``msg``."""
        reason = f"internal error handling {event.kind}: {type(exc).__name__}: {exc}"
        store = self.stores.run_stores[p]
        self.parking.park(store, event.run_id, PARK_INTERNAL_ERROR, reason, now_ms, msg, event)

    def _on_oversize(self, msg: Message, p: int, event: Event, problem: str, now_ms: int) -> None:
        """Handling ``event`` would produce a record Kafka refuses: make that the input's outcome.

        A step result becomes a terminal failure of the step (the workflow sees StepFailedError and may
        handle it; its state never holds the result). Anything else parks the run (resumable once the
        limits are raised), or, when there is no run to park (a start), fails the start: the input is
        dead-lettered and a waiting client is told why.
        """
        log.error(
            "%s for run %s: %s",
            event.kind,
            event.run_id,
            problem,
            extra={"run_id": event.run_id, "partition": p},
        )
        self.runs.forget(event.run_id)  # the decider changed it in place; the store has the good bytes
        body = event.body
        hint = (
            f"{problem}. Keep what the run records (input, step arguments and results) smaller, e.g. store "
            "large data elsewhere and pass a reference, or raise the limits"
        )
        if isinstance(body, StepCompleted):
            failure = StepFailed(
                body.position,
                body.attempt,
                "RecordTooLarge",
                hint,
                False,
                body.started_ms,
                body.finished_ms,
                body.worker,
            )
            self.handle_event(msg, p, replace(event, body=failure), now_ms)
            return
        store = self.stores.run_stores[p]
        parked = self.parking.park(store, event.run_id, PARK_RECORD_TOO_LARGE, hint, now_ms)
        self.output.dead_letter(msg, "RecordTooLarge", hint, now_ms)  # the input is in no run: keep it
        if not parked and isinstance(body, StartRun):
            outcome = RunOutcome(event.run_id, event.workflow, FAILED, now_ms, None, "RecordTooLarge", hint)
            self.output.outcome(outcome, p)

    # -- timers ---------------------------------------------------------------------------------------------
    def fire_timer(self, p: int, key: bytes, run_id: str, tag: str, now_ms: int) -> None:
        store = self.stores.run_stores[p]
        try:
            state = self.runs.load(store, run_id)
        except Exception as exc:  # the stored bytes do not decode
            log.exception(
                "internal error firing timer %s of %s; parking the run",
                tag,
                run_id,
                extra={"run_id": run_id, "partition": p},
            )
            self._timer_error(p, key, tag, run_id, exc, now_ms)
            return
        if state is None:
            store.delete(key)
            return
        old_timers = timers_of(state)
        fx = self.decider.fire_timer(state, tag, now_ms)  # never raises
        self._run_local(state, fx)
        try:
            encoded = encode_state(state)
            records: list[Record] = self.output.records(fx, p)
        except Exception as exc:  # encoding is outside the core
            log.exception(
                "internal error firing timer %s of %s; parking the run",
                tag,
                run_id,
                extra={"run_id": run_id, "partition": p},
            )
            self._timer_error(p, key, tag, run_id, exc, now_ms)
            return
        self.stats.timers += 1
        self.output.counts.add(metrics.TIMERS_FIRED, "run")
        too_big = self.output.too_large([(self.output.topics.changelog, encoded, None, p), *records])
        if too_big:
            log.error("timer %s of run %s: %s; parking the run", tag, run_id, too_big)
            self.parking.park(store, run_id, PARK_RECORD_TOO_LARGE, too_big, now_ms)
            store.delete(key)
            return
        self.runs.save(store, state, old_timers, encoded)
        store.delete(key)  # stale or fired: either way it is done (a re-armed timer has a new key)
        for due, t in timers_of(state):
            store.put(timer_key(due, run_id, t), b"")
        self.output.produce_records(records, fx.history)
        self.spans.note(state, fx.history)

    def _timer_error(self, p: int, key: bytes, tag: str, run_id: str, exc: Exception, now_ms: int) -> None:
        """Park the run; the timer is done with (a resumed run re-arms its timers from its state)."""
        reason = f"internal error firing timer {tag}: {type(exc).__name__}: {exc}"
        store = self.stores.run_stores[p]
        self.parking.park(store, run_id, PARK_INTERNAL_ERROR, reason, now_ms)
        store.delete(key)  # a resumed run re-arms its timers from its state

    # -- local steps ----------------------------------------------------------------------------------------
    def _run_local(self, state: RunState, fx: Effects) -> None:
        """Run the local steps among ``fx``'s commands, folding each result in as if a worker had sent it.
        Neither raises: a local attempt's exception is its result, and the core never raises."""
        budget = LOCAL_STEPS_PER_INPUT
        while fx.commands:
            local = [c for _, c in fx.commands if isinstance(c, StepCommand) and self.local_steps.is_local(c)]
            if not local:
                return
            fx.commands = [(q, c) for q, c in fx.commands if not any(c is cmd for cmd in local)]
            for cmd in local:
                if cmd.cancel:
                    continue  # a local attempt is never running when its run is cancelled
                result = self.local_steps.run(cmd)
                self.stats.local_steps += 1
                metrics.observe_attempt(cmd, LOCAL_QUEUE, result.body)
                if budget <= 0 or self.handling.over():
                    fx.inbox.append(result)  # handled in a later batch, like a worker's result
                    continue
                budget -= 1
                _, more = self.decider.handle(state, result, _now_ms())
                fx.extend(more)


def _now_ms() -> int:
    return int(time.time() * 1000)
