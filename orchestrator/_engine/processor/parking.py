"""Parking a run in the transaction that met a problem it cannot record: the processor's own errors (the
store, encoding) and records over Kafka's size limit (ADR 0010).

A parked run is visible (``runs list --status parked``), its waiting client gets an outcome, and ``runs
resume`` continues it after a fix.
"""

from __future__ import annotations

import logging

from confluent_kafka import Message

from orchestrator._engine.decider import PARK_INTERNAL_ERROR, Decider, Effects, timers_of
from orchestrator._engine.events import Event
from orchestrator._engine.processor.output import Output
from orchestrator._engine.processor.run_states import RunStates
from orchestrator._engine.state import PARKED, encode_state
from orchestrator._engine.store import PartitionStore

log = logging.getLogger("orchestrator.processor")

PARK_RECORD_TOO_LARGE = "record_too_large"
"""Kind of a run parked because what it would record does not fit in a Kafka record."""


class RecordTooLargeError(Exception):
    """Something the processor was about to produce is over the record size limit."""


class Parking:
    def __init__(self, decider: Decider, runs: RunStates, output: Output) -> None:
        self.decider = decider
        self.runs = runs
        self.output = output

    def park(
        self,
        store: PartitionStore,
        run_id: str,
        kind: str,
        reason: str,
        now_ms: int,
        msg: Message | None = None,
        event: Event | None = None,
    ) -> bool:
        """Park the run in this transaction. False if it could not be parked (no such run, already ended or
        parked, or parking failed too); ``msg`` is then dead-lettered.

        With ``event`` (the input that failed), the input is then given to the parked run, which records
        results and signals without running workflow code (what failed is most likely there), and a resume
        replays them: dead-lettering a step result would leave the run waiting forever. Only when that
        raises too is the input dead-lettered. Every attempt starts from the store's last good bytes: the
        failed one may have changed the cached state halfway.
        """
        p = store.partition
        parked = False
        for with_input in (event is not None, False):
            self.runs.forget(run_id)
            try:  # the store and encoding can still raise here: parking must not take the loop down
                state = self.runs.load(store, run_id)
                if state is None or state.terminal or state.status == PARKED:
                    break  # nothing to park: the input goes to the dead letters
                old_timers = timers_of(state)
                fx = self.decider.park(state, kind, reason, now_ms)
                more = Effects()
                if with_input and event is not None:
                    _, more = self.decider.handle(state, event, now_ms)
                    fx.extend(more)
                encoded = encode_state(state)
                records = self.output.records(fx, p)
                too_big = self.output.too_large([(self.output.topics.changelog, encoded, None, p), *records])
                if too_big:
                    raise RecordTooLargeError(too_big)
            except Exception:
                log.exception("parking run %s%s failed", run_id, " with its input" if with_input else "")
                continue
            if with_input and more.dead_letter and msg is not None:
                self.output.dead_letter(msg, "Rejected", more.dead_letter, now_ms)
            self.runs.save(store, state, old_timers, encoded)
            self.output.produce_records(records, fx.history)
            if with_input:
                return True
            parked = True
            break
        self.runs.forget(run_id)
        if msg is not None:
            error_type = "InternalError" if kind == PARK_INTERNAL_ERROR else "RecordTooLarge"
            self.output.dead_letter(msg, error_type, reason, now_ms)
        return parked
