"""Step commands sent to the workers before the transaction that records them commits (ADR 0025).

Why: with commands written inside the processor's transaction, a worker (``read_committed``) sees a command
only after the commit, so every worker step paid a whole transaction (3-8 ms on the development broker)
before it could start. Here a batch's commands go out through a separate idempotent, non-transactional
producer once the batch is handled, so a worker runs the step while the transaction commits. Off by default
(``ProcessorConfig.early_dispatch``): measured, it did not lower latency on a busy machine and cost CPU per
run at high load (BENCHMARKS.md, issue 15).

Why it is safe:

- A command is acknowledged by the broker before the transaction that records its attempt commits
  (`EarlyDispatch.confirm` is called just before the commit and fails the transaction otherwise): a step is
  never left scheduled with no command on the log.
- Attempt ids are deterministic (run id, position, attempt). A transaction that aborts, or a processor that
  dies before its commit, is followed by the same inputs handled again on the same committed state, which
  decides the same attempts and sends the same commands again; the worker's ledger (`step_ledger`) joins a
  command for an attempt it has run or is running instead of running it again.
- A result reaches the processor through the inbox, after the inputs that scheduled its attempt (same run,
  same partition, produced later), so it is handled only once those inputs are handled again: its attempt is
  then scheduled in the state it is checked against. What could reorder a run's inputs between two handlings
  is a timer firing in between; the loop holds a partition's timers until it has consumed past what an aborted
  batch (or a predecessor that died) may have handled (`loop.Processor._timers_held`).
- Nothing the outside world may only see after a commit goes this way: history, outcomes, child starts,
  timers and the stores stay in the transaction.

The task topics are no longer written inside transactions, so a worker (``read_committed``) is never held
behind a processor's open transaction on them either (the LSO of a partition written both ways).
"""

from __future__ import annotations

import logging
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from orchestrator._engine import kafka, metrics
from orchestrator._engine.faults import is_fatal
from orchestrator._engine.tracing import Headers
from orchestrator.settings import Settings

log = logging.getLogger("orchestrator.processor")


class EarlyDispatch:
    """The processor's producer of step commands, outside its transactions."""

    def __init__(self, settings: Settings, overrides: dict[str, Any]) -> None:
        # Idempotent (the engine's default producer settings): a retried send never reorders or duplicates
        # commands of one producer. linger.ms 0: a command is what a worker waits for.
        self._config = kafka.producer_config(settings, **{"linger.ms": 0} | overrides)
        self._producer: Producer = kafka.new_producer(self._config)
        self._failed: KafkaError | None = None
        self._pending: list[tuple[str, bytes | None, bytes | None, Headers | None]] = []
        self.sent = 0

    def send(
        self, topic: str, value: bytes | None, key: bytes | None, headers: Headers | None = None
    ) -> None:
        """Keep one command of the batch being handled; `release` sends the batch's commands together."""
        self._pending.append((topic, value, key, headers))

    def release(self) -> None:
        """Send the commands of the batch handled so far, in one burst, ahead of its commit.

        Why not each as it is decided: measured (BENCHMARKS.md, issue 15), commands sent one by one with
        ``linger.ms`` 0 went out one record per request and reached the worker one fetch each: +44 % broker
        CPU and +43 % worker CPU per 5-step run, and 256 callers completed nothing in the window. Sent
        together after the batch is handled, they share requests and fetches, as they did inside the
        transaction; at low load a batch is one record, so nothing waits.
        """
        for topic, value, key, headers in self._pending:
            while True:
                try:
                    self._producer.produce(topic, value, key, on_delivery=self._delivered, headers=headers)
                    break
                except BufferError:  # the local queue is full: serve delivery reports to make room
                    self._producer.poll(0.1)
        self.sent += len(self._pending)
        self._pending.clear()
        self._producer.poll(0)  # serve the delivery reports that are in

    def discard(self) -> None:
        """The batch is handled again (its transaction failed before its commands were released)."""
        self._pending.clear()

    def _delivered(self, err: KafkaError | None, msg: Message) -> None:
        if err is not None and self._failed is None:
            self._failed = err

    def confirm(self, timeout_s: float) -> None:
        """Wait until the broker has every command sent so far; raise KafkaException if one was not taken.

        Called right before the transaction that records these commands commits: the caller aborts it on an
        exception, and the batch is handled (and its commands sent) again.
        """
        self.release()
        left = self._producer.flush(timeout_s)
        failed, self._failed = self._failed, None
        if failed is None and left:
            failed = KafkaError(KafkaError._TIMED_OUT, f"{left} step command(s) not acknowledged in time")
        if failed is None:
            return
        if is_fatal(failed):  # an idempotent producer that lost its sequence: start a new one
            log.error("step command producer failed fatally (%s); replacing it", failed)
            metrics.CLIENT_REPLACEMENTS.labels("processor", "dispatch-producer").inc()
            self._producer.purge()
            self._producer = kafka.new_producer(self._config)
        # Never fatal to the caller: this producer's trouble is not the transactional producer's (a fatal
        # code here would be taken for a fence of the processor), and the batch is simply handled again.
        raise KafkaException(KafkaError(failed.code(), f"step commands not delivered: {failed.str()}"))

    def poll(self) -> None:
        """Serve delivery reports (and hand over librdkafka's log lines) while the processor is idle."""
        self._producer.poll(0)

    def close(self, timeout_s: float = 5.0) -> None:
        self._producer.flush(timeout_s)
