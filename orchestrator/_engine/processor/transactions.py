"""The processor's transactional producer (Kafka Streams' StreamsProducer): its transactions, riding out
broker faults (ADR 0010), and what a fatal error means: a fence stops the instance, anything else replaces
the producer under the same transactional id.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Producer, TopicPartition

from orchestrator._engine import metrics
from orchestrator._engine.bounded_call import BoundedCaller, CallStuckError
from orchestrator._engine.faults import Retrier, error_of, is_fatal
from orchestrator.errors import ProcessorFencedError

log = logging.getLogger("orchestrator.processor")

STUCK_CALL_GRACE_S = 5.0
"""How long past its own timeout ``send_offsets_to_transaction`` may take before the producer is taken for
wedged and replaced (librdkafka can block in that call for ever after a broker restart: `bounded_call`)."""


class Transactions:
    """One transactional producer per instance (EOS v2); ``producer`` is None until `start`."""

    def __init__(self, instance_id: str, retry: Retrier) -> None:
        self.instance_id = instance_id
        self.producer: Producer | None = None
        self.timeout_s = 10.0  # the producer's transaction.timeout.ms, set by start()
        self._retry = retry
        self._config: dict[str, Any] = {}
        self._began = float("inf")  # monotonic start of the open transaction (none yet)
        self._offsets_caller = BoundedCaller("orchestrator-send-offsets")

    def start(self, config: dict[str, Any]) -> None:
        """Create the producer and fence any predecessor with this transactional id (init_transactions)."""
        self._config = config
        self.timeout_s = int(config["transaction.timeout.ms"]) / 1000
        self._init(Producer(config))

    def _init(self, producer: Producer) -> None:
        self.producer = producer
        self._retry.call("init_transactions", lambda: producer.init_transactions(60), not_fatal)

    def current(self) -> Producer:
        """The live producer (it is replaced after a fatal error that is not a fence)."""
        assert self.producer is not None
        return self.producer

    def begin(self) -> None:
        self._retry.call("begin_transaction", self.current().begin_transaction)
        self._began = time.monotonic()

    def close(self) -> None:
        self._offsets_caller.close()

    def send_offsets(self, offsets: list[TopicPartition], group: Any, give_up_at: float) -> None:
        """Retried only until ``give_up_at`` (the transaction's age limit): the coordinator aborts it by
        then, and a group that is rebalancing waits for this instance, which cannot rejoin while stuck."""
        producer = self.current()
        self._retry.call(
            "send_offsets_to_transaction",
            lambda: self._send_offsets(producer, offsets, group, max(1.0, give_up_at - time.monotonic())),
            give_up_at=give_up_at,
        )

    def _send_offsets(
        self, producer: Producer, offsets: list[TopicPartition], group: Any, timeout: float
    ) -> None:
        """``send_offsets_to_transaction``, waited for at most ``timeout`` + `STUCK_CALL_GRACE_S`.

        Why: librdkafka 2.16 can block in it for ever, ignoring the timeout (librdkafka#5456, #5511). Seen in
        test_worker_faults (debug=eos,broker): when the broker died the producer re-bootstrapped and
        decommissioned its broker handle, but its group-coordinator cache kept that dead handle; after the
        outage the TxnOffsetCommit waited for it to connect, which it never does. The first transaction
        after the outage sat in this call for minutes, nothing logged, and every run waited. A call that
        does not return in time raises CallStuckError: the producer is replaced (`replace_stuck`), which
        aborts the open transaction, and the batch is processed again.
        """
        self._offsets_caller.call(
            lambda: producer.send_offsets_to_transaction(offsets, group, timeout),
            timeout + STUCK_CALL_GRACE_S,
            "send_offsets_to_transaction",
        )

    def replace_stuck(self, exc: CallStuckError) -> None:
        """The stuck call holds the producer's transaction API (an abort would only be refused as a
        conflicting call): a new producer with the same transactional id aborts the open transaction."""
        self._renew(exc, "producer stuck in a transaction call")

    def commit(self) -> None:
        """Flush, then commit. A commit that times out ("retry call to resume") is called again until it has
        an answer, never aborted: it may have reached the coordinator, and an abort then would fail or,
        worse, leave the stores behind what Kafka committed while the consumer moves on."""
        producer = self.current()
        producer.flush(30)
        self._retry.call("commit_transaction", lambda: producer.commit_transaction(30))

    def abort(self) -> None:
        """Abort the open transaction; one that times out ("retry call to resume") is called again."""
        producer = self.current()
        try:
            self._retry.call("abort_transaction", lambda: producer.abort_transaction(30), _abort_retriable)
        except KafkaException as exc:
            if self.fenced_if_fatal(exc):
                return  # the producer was replaced: its transaction is gone
            err = error_of(exc)
            if err is None or err.code() != KafkaError._STATE:
                raise
            # _STATE: no transaction is open (begin_transaction was what failed): nothing to abort.

    def fenced_if_fatal(self, exc: KafkaException) -> bool:
        """ProcessorFencedError if another instance took this transactional id; True if the producer hit
        another fatal error and was replaced (its transaction is gone: nothing to abort)."""
        err = error_of(exc)
        if not is_fatal(err):
            return False
        assert err is not None
        if err.code() in (KafkaError._FENCED, KafkaError.PRODUCER_FENCED) and not self._outlived_timeout():
            raise ProcessorFencedError(
                f"processor {self.instance_id} was fenced ({exc}); another instance with the same id "
                "owns its partitions now. Stopping."
            ) from exc
        self._renew(exc)
        return True

    def _outlived_timeout(self) -> bool:
        """Whether the open transaction began more than ``transaction.timeout.ms`` ago.

        Why: the coordinator aborts a transaction that outlives its timeout (a broker outage in the middle of
        one does that) and bumps the producer epoch, so the producer's next call fails exactly as if a newer
        instance had fenced it (_FENCED). Seen in test_broker_outage: after a 30 s outage the abort failed
        with "fenced by a newer instance" although no other instance ran. A real second instance fences a
        fresh transaction; a transaction this old was fenced by its own timeout, and the instance goes on
        with a new producer (like Kafka Streams after a TaskMigrated). A real duplicate still stops at its
        next, fresh transaction.
        """
        return time.monotonic() - self._began >= self.timeout_s

    def _renew(self, exc: Exception, problem: str = "fatal producer error that is not a fence") -> None:
        """Replace a producer librdkafka declared dead for a reason other than a fence.

        Seen after a broker restart (test_broker_outage): the coordinator had aborted the transaction that
        was open when the broker died (it outlived transaction.timeout.ms), and the producer's own abort then
        failed with a fatal INVALID_TXN_STATE. No other instance is involved, so this one goes on with a new
        producer under the same transactional id (its init_transactions bumps the epoch), like Kafka
        Streams resetting its producer. A real second instance fences with _FENCED/PRODUCER_FENCED instead.
        Also used for a producer stuck in ``send_offsets_to_transaction``: the stuck call keeps its thread
        and the old producer; the new producer's ``init_transactions`` aborts the open transaction.
        """
        log.error(
            "processor %s: %s (%s); replacing the producer and reprocessing the batch",
            self.instance_id,
            problem,
            exc,
        )
        metrics.CLIENT_REPLACEMENTS.labels("processor", "producer").inc()
        old = self.producer
        if old is not None:
            try:
                old.purge()
            except (KafkaException, RuntimeError):
                log.debug("purging the dead producer failed", exc_info=True)
        self._init(Producer(self._config))


def not_fatal(exc: BaseException) -> bool:
    """Retry condition of calls that change nothing (start-up, restore, reading offsets): any Kafka error
    short of a fatal one may be a broker that is restarting."""
    return isinstance(exc, KafkaException) and not is_fatal(error_of(exc))


def _abort_retriable(exc: BaseException) -> bool:
    err = error_of(exc)
    return (
        isinstance(exc, KafkaException)
        and not is_fatal(err)
        and (err is None or err.code() != KafkaError._STATE)
    )
