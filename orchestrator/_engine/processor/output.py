"""Everything the processor produces goes through here (Kafka Streams' RecordCollector): effects encoded
once, sized against the one record limit before any of them is produced, dead letters, and produce calls
that wait for room when librdkafka's local queue is full.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from confluent_kafka import Message

from orchestrator import topology
from orchestrator._core.effects import Effects, EncodedCommand
from orchestrator._engine import limits, metrics, tracing
from orchestrator._engine.events import Event, encode_event
from orchestrator._engine.faults import Retrier
from orchestrator._engine.limits import RecordLimit, first_oversize
from orchestrator._engine.partitioning import partition_for
from orchestrator._engine.processor.config import ProcessorStats, ProcessorTopics
from orchestrator._engine.processor.dispatch import EarlyDispatch
from orchestrator._engine.processor.transactions import Transactions
from orchestrator._engine.records import (
    DeadLetter,
    RunOutcome,
    encode_command,
    encode_dead_letter,
    encode_outcome,
)

log = logging.getLogger("orchestrator.processor")

Record = (
    tuple[str, bytes | None, bytes | None, int] | tuple[str, bytes | None, bytes | None, int, tracing.Headers]
)
"""(topic, value, key, partition[, headers]) of one record to produce; partition -1: the producer's
partitioner. Headers: the W3C trace context of step commands and inbox records, when tracing is on."""


class Output:
    def __init__(
        self,
        app_name: str,
        topics: ProcessorTopics,
        partitions: int,
        transactions: Transactions,
        retry: Retrier,
        stats: ProcessorStats,
        component: str,
    ) -> None:
        self.app_name = app_name
        self.topics = topics
        self.partitions = partitions
        self.transactions = transactions
        self.stats = stats
        self.component = component  # who dead letters name as their writer
        # The producer's default until the processor has learnt its topics' own limits at start.
        self.record_limit = RecordLimit(limits.PRODUCER_DEFAULT_MAX_BYTES, "message.max.bytes (default)")
        self._retry = retry
        self._task_topics: dict[str, str] = {}
        self._task_topic_names: set[str] = set()
        # Step commands go out before the commit when set (ADR 0025); None: inside the transaction.
        self.dispatch: EarlyDispatch | None = None
        self.counts = metrics.BatchCounts()  # the processor's: published only if the transaction commits

    # -- effects --------------------------------------------------------------------------------------------
    def records(self, fx: Effects, p: int | None = None) -> list[Record]:
        """Everything ``fx`` produces, encoded once: sizes are checked before any of it is produced. ``p``:
        the inbox partition of the run ``fx`` is about (its history and outcomes go to the same partition);
        without it (the keyed stage), each run's own."""
        out: list[Record] = []
        n, topics = self.partitions, self.topics
        traced = tracing.enabled() if fx.commands or fx.inbox else False
        for event in fx.history:
            rp = partition_for(event.run_id, n) if p is None else p
            out.append((topics.history, encode_event(event), event.run_id.encode(), rp))
        for queue, cmd in fx.commands:
            if isinstance(cmd, EncodedCommand):
                out.append((self.tasks_topic(queue), cmd.value, cmd.run_id.encode(), -1))
            elif traced and not cmd.cancel and (headers := tracing.command_headers(cmd)):
                out.append((self.tasks_topic(queue), encode_command(cmd), cmd.run_id.encode(), -1, headers))
            else:  # no SDK, a cancel, or tracing failed (`tracing.command_headers` gives [] and logs it)
                out.append((self.tasks_topic(queue), encode_command(cmd), cmd.run_id.encode(), -1))
        for outcome in fx.outcomes:
            rp = partition_for(outcome.run_id, n) if p is None else p
            out.append((topics.outcomes, encode_outcome(outcome), outcome.run_id.encode(), rp))
        for rk, event in fx.keyed:
            out.append((topics.keyed, encode_event(event), rk.encode(), partition_for(rk, n)))
        for event in fx.inbox:
            key = event.run_id.encode()
            rp = partition_for(event.run_id, n)
            inbox_headers = tracing.inbox_headers(event) if traced else None
            if inbox_headers:
                out.append((topics.inbox, encode_event(event), key, rp, inbox_headers))
            else:
                out.append((topics.inbox, encode_event(event), key, rp))
        return out

    def too_large(self, records: list[Record]) -> str:
        """Why one of ``records`` is over the record limit, or "" when all fit."""
        return first_oversize(records, self.record_limit)  # headers (trace context) are not counted

    def produce_records(self, records: list[Record], history: Sequence[Event] = ()) -> None:
        """Produce ``records``; ``history``, the events among them, are counted (runs started, ended)."""
        if history:
            self.counts.history(history)
        dispatch, commands = self.dispatch, self._task_topic_names
        for record in records:
            if dispatch is not None and record[0] in commands:
                dispatch.send(record[0], record[1], record[2], record[4] if len(record) == 5 else None)
            elif len(record) == 4:
                self.produce(record[0], record[1], record[2], partition=record[3])
            else:
                self.produce(record[0], record[1], record[2], partition=record[3], headers=record[4])

    def tasks_topic(self, queue: str) -> str:
        """Cached: the name is built from the topic templates and checked, ~2 % of the loop's CPU per call."""
        topic = self._task_topics.get(queue)
        if topic is None:
            topic = self._task_topics[queue] = topology.tasks_topic(self.app_name, queue)
            self._task_topic_names.add(topic)
        return topic

    # -- single records -------------------------------------------------------------------------------------
    def to_inbox(self, event: Event) -> None:
        key = event.run_id.encode()
        self.produce(
            self.topics.inbox, encode_event(event), key, partition_for(event.run_id, self.partitions)
        )

    def to_keyed(self, routing: str, event: Event) -> None:
        key = routing.encode()
        self.produce(self.topics.keyed, encode_event(event), key, partition_for(routing, self.partitions))

    def outcome(self, outcome: RunOutcome, p: int) -> None:
        self.produce(self.topics.outcomes, encode_outcome(outcome), outcome.run_id.encode(), p)

    def dead_letter(self, msg: Message, error_type: str, reason: str, now_ms: int) -> None:
        """Keep ``msg`` in the DLQ with why; its offset commits all the same, so it never stops the loop."""
        self.stats.dead_letters += 1
        self.counts.add(metrics.DEAD_LETTERS, "processor", error_type)
        log.warning(
            "dead-lettered %s[%d]@%d: %s: %s",
            msg.topic(),
            msg.partition(),
            msg.offset(),
            error_type,
            reason,
            extra={"topic": msg.topic(), "partition": msg.partition(), "offset": msg.offset()},
        )
        # A letter too large for the DLQ would fail the transaction like the record itself: it then keeps the
        # record's coordinates, not its bytes. One limit for every output (the smallest): a letter is copied
        # whole only where any record would fit.
        msg, error_type, reason = limits.dead_letter_copy(msg, error_type, reason, self.record_limit)
        letter = DeadLetter(
            source_topic=msg.topic() or "",
            source_partition=msg.partition() or 0,
            source_offset=msg.offset() or 0,
            key=msg.key(),
            value=msg.value(),
            error_type=error_type,
            reason=reason,
            timestamp_ms=now_ms,
            component=self.component,
        )
        self.produce(self.topics.dlq, encode_dead_letter(letter), msg.key())

    def produce(
        self,
        topic: str,
        value: bytes | None,
        key: bytes | None,
        partition: int = -1,
        on_delivery: Any = None,
        headers: tracing.Headers | None = None,
    ) -> None:
        """``Producer.produce``, waiting for room when librdkafka's local queue is full (BufferError)."""
        producer = self.transactions.current()
        try:
            producer.produce(topic, value, key, partition=partition, on_delivery=on_delivery, headers=headers)
        except BufferError:
            self._retry.call(
                "produce (local queue full)",
                lambda: self._produce_after_poll(topic, value, key, partition, on_delivery, headers),
                lambda exc: isinstance(exc, BufferError),
            )

    def _produce_after_poll(
        self,
        topic: str,
        value: bytes | None,
        key: bytes | None,
        partition: int,
        on_delivery: Any,
        headers: tracing.Headers | None = None,
    ) -> None:
        producer = self.transactions.current()
        producer.poll(0.1)  # serves delivery reports, which is what frees the queue
        producer.produce(topic, value, key, partition=partition, on_delivery=on_delivery, headers=headers)
