"""The keyed stage's side of the processor (a StreamTask over the keyed topic's partitions): a record or a
due timer goes to the router (waits, domain events, schedules, admission) against its partition's store.

A record the stage cannot take, or fails on, is dead-lettered with none of its store writes (a savepoint
around each), its offset committed all the same, so it never stops the loop (ADR 0011).
"""

from __future__ import annotations

import logging

from confluent_kafka import Message

from orchestrator._engine import metrics
from orchestrator._engine.events import decode_event
from orchestrator._engine.processor.config import ProcessorStats
from orchestrator._engine.processor.output import Output, Record
from orchestrator._engine.processor.state_manager import StateManager
from orchestrator._engine.router import Router
from orchestrator.errors import SchemaError

log = logging.getLogger("orchestrator.processor")


class KeyedTask:
    def __init__(self, router: Router, stores: StateManager, output: Output, stats: ProcessorStats) -> None:
        self.router = router
        self.stores = stores
        self.output = output
        self.stats = stats

    def handle(self, msg: Message, now_ms: int) -> None:
        store = self.stores.keyed_stores[msg.partition() or 0]
        store.savepoint()  # a record that raises midway leaves none of its writes behind
        try:
            event = decode_event(msg.value())
            fx = self.router.handle(store, event, now_ms)
        except SchemaError as exc:
            store.rollback()
            error_type, reason = "SchemaError", str(exc)
        except Exception as exc:
            store.rollback()
            log.exception("internal error in the keyed stage")
            error_type, reason = f"InternalError.{type(exc).__name__}", str(exc)
        else:
            records = self.output.records(fx)
            changelog = self.output.topics.keyed_changelog
            written: list[Record] = [
                (changelog, store.get(k), k, store.partition) for k in store.written_since_savepoint()
            ]
            too_big = self.output.too_large([*written, *records])
            if too_big:
                store.rollback()
                error_type, reason = "RecordTooLarge", too_big
            else:
                store.release()
                if fx.ignored:
                    log.debug("keyed stage ignored %s: %s", event.kind, fx.ignored)
                self.output.produce_records(records, fx.history)
                if not fx.dead_letter:
                    return
                error_type, reason = "Rejected", fx.dead_letter
        self.output.dead_letter(msg, error_type, reason, now_ms)

    def fire_timer(self, p: int, key: bytes, ident: str, tag: str, now_ms: int) -> None:
        store = self.stores.keyed_stores[p]
        store.delete(key)
        store.savepoint()
        try:
            fx = self.router.fire_timer(store, ident, tag, now_ms)
        except Exception:
            store.rollback()
            log.exception("internal error firing keyed timer %s; dropping it", tag)
            return
        store.release()
        self.stats.timers += 1
        self.output.counts.add(metrics.TIMERS_FIRED, "keyed")
        self.output.produce_records(self.output.records(fx), fx.history)
