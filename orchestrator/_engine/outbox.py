"""Records a worker owes Kafka (step results, dead letters): held and produced again until acknowledged.

Why: a step's result is the only proof that the step ran. If librdkafka hands a record back undelivered
(``message.timeout.ms`` ran out while the broker was down, the local queue was full, the idempotent
producer hit a fatal error), running the step again to get a new result would do paid work twice. So the
outbox keeps every record until the broker acknowledges it, and produces it again for as long as that
takes. Only then does the record's ``on_delivered`` run (once), which is what lets the worker commit the
command's offset.

Producing again after a timeout may write a record twice: the first copy may have reached the broker
without its acknowledgement reaching us, and the idempotent producer only dedupes retries of one produce
call. That is harmless for what we send: the processor keeps one result per step attempt.

Threads: `send` is called from the worker's event loop, `pump` from the one thread that polls the producer
(delivery callbacks run inside its poll). The lock is never held while polling.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import KafkaError, KafkaException

from orchestrator._engine import metrics
from orchestrator._engine.access import DENIED_CODES

log = logging.getLogger("orchestrator.worker")

MAX_BACKOFF_S = 5.0
"""Longest wait before producing a record again after an immediate failure (the first is 0.1 s)."""

ProducerFactory = Callable[[Callable[[KafkaError], None]], Any]
"""Makes a producer given the error callback to wire into it (a `confluent_kafka.Producer` in production)."""


@dataclass(frozen=True)
class Outgoing:
    """One record to deliver. ``partition`` -1 lets the producer's partitioner choose."""

    topic: str
    value: bytes
    key: bytes | None
    what: str
    """For logs: what the record is, e.g. "result of s1 for run r7 (attempt 1)"."""
    partition: int = -1
    on_delivered: Callable[[], None] | None = None
    headers: list[tuple[str, str | bytes | None]] | None = None
    """Record headers (the W3C trace context of a step's report), or None."""


@dataclass
class _Held:
    out: Outgoing
    token: int = 0  # which produce call of this record is the live one
    failures: int = 0


@dataclass
class OutboxStats:
    delivered: int = 0
    produced_again: int = 0
    producers_replaced: int = 0
    failures: dict[str, int] = field(default_factory=dict)


class Outbox:
    def __init__(self, make_producer: ProducerFactory) -> None:
        self._make_producer = make_producer
        self._lock = threading.Lock()
        self._held: dict[int, _Held] = {}
        self._due: list[tuple[float, int]] = []  # (monotonic time, record id): produce again then
        self._ids = itertools.count()
        self._fatal: KafkaError | None = None
        self.denied: KafkaError | None = None
        """Set when Kafka's ACLs refused a record: the owner stops and says which (ADR 0021); the record
        stays held meanwhile, as for any failure."""
        self._episode = metrics.CountedEpisode(
            log, "results cannot be delivered to Kafka", "worker", "deliver results"
        )
        self.stats = OutboxStats()
        self._producer = make_producer(self._on_error)

    def pending(self) -> int:
        """Records not acknowledged yet."""
        with self._lock:
            return len(self._held)

    def send(self, out: Outgoing) -> None:
        """Hand ``out`` over; never raises. It is produced now, or again later until acknowledged."""
        with self._lock:
            rid = next(self._ids)
            self._held[rid] = _Held(out)
            metrics.OUTBOX_HELD.inc()
            self._produce_locked(rid)

    def pump(self, timeout: float) -> None:
        """Serve delivery callbacks, replace a producer that hit a fatal error, produce due records again."""
        self._producer.poll(timeout)
        if self._fatal is not None:
            self._replace_producer()
        now = time.monotonic()
        with self._lock:
            while self._due and self._due[0][0] <= now:
                _, rid = heapq.heappop(self._due)
                if rid in self._held:
                    self.stats.produced_again += 1
                    metrics.OUTBOX_PRODUCED_AGAIN.inc()
                    self._produce_locked(rid)

    def drain(self, timeout: float) -> int:
        """Pump until every record is acknowledged or ``timeout`` s passed; the number still held."""
        deadline = time.monotonic() + timeout
        while self.pending() and time.monotonic() < deadline:
            self.pump(0.05)
        return self.pending()

    # -- inside the lock ----------------------------------------------------------------------------------
    def _produce_locked(self, rid: int) -> None:
        held = self._held[rid]
        held.token += 1
        token, out = held.token, held.out
        try:
            self._producer.produce(
                out.topic,
                out.value,
                out.key,
                partition=out.partition,
                on_delivery=lambda err, _msg: self._on_delivery(rid, token, err),
                headers=out.headers,
            )
        except BufferError:
            # librdkafka's local queue is full (broker slow or down): the next pump polls, which frees room.
            self._note_failure_locked(held, "BufferError: the producer's local queue is full")
            heapq.heappush(self._due, (time.monotonic(), rid))
        except KafkaException as exc:
            err = exc.args[0] if exc.args else None
            if isinstance(err, KafkaError) and err.fatal():
                self._fatal = err
            self._retry_later_locked(rid, held, str(exc))
        except Exception as exc:  # noqa: BLE001 - an unexpected refusal must not lose the record either
            self._retry_later_locked(rid, held, f"{type(exc).__name__}: {exc}")

    def _retry_later_locked(self, rid: int, held: _Held, reason: str) -> None:
        held.failures += 1
        self._note_failure_locked(held, reason)
        backoff = min(MAX_BACKOFF_S, 0.1 * 2 ** min(held.failures - 1, 10))
        heapq.heappush(self._due, (time.monotonic() + backoff, rid))

    def _note_failure_locked(self, held: _Held, reason: str) -> None:
        kind = reason.split(":", 1)[0]
        self.stats.failures[kind] = self.stats.failures.get(kind, 0) + 1
        self._episode.failed(f"{held.out.what} not delivered: {reason}; held, to be produced again")

    # -- producer callbacks (poll thread) -----------------------------------------------------------------
    def _on_delivery(self, rid: int, token: int, err: KafkaError | None) -> None:
        with self._lock:
            held = self._held.get(rid)
            if held is None:
                return  # an earlier copy was acknowledged already
            if err is not None:
                if token == held.token:  # a stale copy's failure says nothing about the live one
                    if err.fatal():
                        self._fatal = err
                    if err.code() in DENIED_CODES:
                        self.denied = err
                    self._retry_later_locked(rid, held, f"{err.name()}: {err.str()}")
                return
            del self._held[rid]
            metrics.OUTBOX_HELD.dec()
            self.stats.delivered += 1
            callback = held.out.on_delivered
        self._episode.recovered()
        if callback is not None:
            callback()

    def _on_error(self, err: KafkaError) -> None:
        if err.fatal():
            self._fatal = err
        else:
            self._episode.failed(f"producer: {err.str()}")

    def _replace_producer(self) -> None:
        """A fatal error leaves the producer unusable: a new one produces every held record again."""
        with self._lock:
            reason, self._fatal = self._fatal, None
            old, self._producer = self._producer, self._make_producer(self._on_error)
            self.stats.producers_replaced += 1
            metrics.CLIENT_REPLACEMENTS.labels("worker", "producer").inc()
            now = time.monotonic()
            for rid in self._held:
                heapq.heappush(self._due, (now, rid))
            count = len(self._held)
        log.error("producer failed fatally (%s); replaced, producing %d held record(s) again", reason, count)
        try:
            old.purge()
            old.poll(0)  # callbacks of the old copies: failures are stale, acknowledgements still count
        except Exception:  # the old producer is being dropped anyway
            log.debug("purging the failed producer", exc_info=True)
