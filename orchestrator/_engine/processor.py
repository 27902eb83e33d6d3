"""The processor: consume the inbox, fold each event into its run, emit what follows, exactly once.

One transactional producer per instance (EOS v2): each batch's history events, step commands, outcomes,
dead letters, changelog records and the consumed inbox offsets commit in one Kafka transaction, fenced by
the consumer group generation. The RocksDB stores take the batch only after that commit (see `store`).
Timers (retry backoffs, later sleeps and timeouts) live in the same stores and fire inside the same kind of
transaction, so each fires exactly once.
"""

from __future__ import annotations

import logging
import signal
import socket
import time
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)

from orchestrator import topology
from orchestrator._engine import kafka, limits
from orchestrator._engine.decider import Decider, Effects, timers_of
from orchestrator._engine.events import (
    Event,
    ScheduleRegister,
    StartRun,
    StepCompleted,
    StepFailed,
    decode_event,
    encode_event,
)
from orchestrator._engine.faults import FaultLog, Retrier, Stopping, error_of, is_fatal, is_transient
from orchestrator._engine.instance_cache import InstanceCache
from orchestrator._engine.local_steps import LocalSteps
from orchestrator._engine.partitioning import partition_for
from orchestrator._engine.record_size import first_oversize, record_limit
from orchestrator._engine.records import (
    DeadLetter,
    RunOutcome,
    encode_command,
    encode_dead_letter,
    encode_outcome,
)
from orchestrator._engine.restore import restore
from orchestrator._engine.router import Router, RouterEffects
from orchestrator._engine.sources import SourceError, Translation, translate_each
from orchestrator._engine.state import FAILED, PARKED, RunState, decode_state, encode_state
from orchestrator._engine.state_cache import StateCache
from orchestrator._engine.store import PartitionStore, run_key, timer_key
from orchestrator._topic_admin import TopicAdminError
from orchestrator.app import App
from orchestrator.errors import ProcessorFencedError, SchemaError

log = logging.getLogger("orchestrator.processor")

LOCAL_STEPS_PER_INPUT = 64
"""Local step attempts folded in while handling one input; the result of the next goes through the inbox,
so a workflow looping over local steps makes durable progress and cannot hold a batch forever."""

PARK_RECORD_TOO_LARGE = "record_too_large"
"""Kind of a run parked because what it would record does not fit in a Kafka record."""

PARK_INTERNAL_ERROR = "internal_error"
"""Kind of a run parked because the processor raised while handling one of its inputs or timers."""

BATCH_TIME_SHARE = 0.5
"""Share of the producer's ``transaction.timeout.ms`` a transaction may spend handling its batch (local
steps are what can make that long). Past it, local step results go through the inbox instead of being
folded in, and the inputs not handled yet are left for the next transaction; so a batch of slow local steps
commits in time instead of being aborted by the coordinator and retried forever."""


class RecordTooLargeError(Exception):
    """Something the processor was about to produce is over the record size limit."""


@dataclass(frozen=True)
class ProcessorConfig:
    """Knobs of one processor instance.

    Attributes:
        instance_id: stable name of this instance; its transactional id derives from it, so a restarted
            instance fences its predecessor. Two live instances must have different ids.
        state_dir: where this instance keeps its partition stores.
        max_batch: most inbox records per transaction (the throughput lever).
        batch_linger_ms: once a record is in, wait up to this long for more before the transaction (the
            latency/throughput knob: each transaction costs the broker and this loop a fixed amount, so
            fewer, larger ones leave more CPU for runs, at up to this much added latency per step).
        max_wait_ms: longest idle wait before checking timers again (bounds timer lateness).
        cache_size: live workflow instances, and decoded run states, kept in memory.
        timer_batch: most timers fired per transaction.
    """

    instance_id: str = field(default_factory=socket.gethostname)
    state_dir: Path | None = None
    max_batch: int = 500
    batch_linger_ms: int = 0
    max_wait_ms: int = 100
    cache_size: int = 2000
    timer_batch: int = 500
    consumer_overrides: dict[str, Any] = field(default_factory=dict)
    producer_overrides: dict[str, Any] = field(default_factory=dict)


@dataclass
class ProcessorStats:
    events: int = 0
    timers: int = 0
    transactions: int = 0
    dead_letters: int = 0
    ignored: int = 0
    aborts: int = 0
    restored_records: int = 0
    local_steps: int = 0


class Processor:
    def __init__(self, app: App, config: ProcessorConfig | None = None) -> None:
        self.app = app
        self.config = config or ProcessorConfig()
        s = app.settings
        self.partitions = s.partitions
        self.bootstrap = s.bootstrap_servers
        self.inbox = topology.inbox_topic(app.name)
        self.history = topology.history_topic(app.name)
        self.changelog = topology.changelog_topic(app.name)
        self.outcomes = topology.outcomes_topic(app.name)
        self.dlq = topology.dlq_topic(app.name)
        self.keyed = topology.keyed_topic(app.name)
        self.keyed_changelog = topology.keyed_changelog_topic(app.name)
        self.sources = sorted(app.source_topics)
        self.state_dir = (self.config.state_dir or s.state_dir) / app.name / self.config.instance_id
        self.cache = InstanceCache(self.config.cache_size)
        self.states = StateCache(self.config.cache_size)
        self.decider = Decider(app, self.cache)
        self.router = Router(app)
        self.local_steps = LocalSteps(app, f"processor:{self.config.instance_id}")
        self._task_topics: dict[str, str] = {}
        self.stores: dict[int, PartitionStore] = {}  # run stores, by inbox partition
        self.keyed_stores: dict[int, PartitionStore] = {}  # keyed-stage stores, by keyed partition
        self.stats = ProcessorStats()
        self._running = False
        self._changelog_offsets: dict[tuple[str, int], int] = {}
        self._consumer: Consumer | None = None
        self._fatal: Any = None
        self._producer: Producer | None = None
        self.faults = FaultLog(log)
        self._txn_timeout_s = 10.0  # the producer's transaction.timeout.ms, set in run()
        self._clock = time.monotonic  # replaced by tests
        self._producer_config: dict[str, Any] = {}
        self._record_limit = record_limit({}, [])  # with the topics' own limits once run() has seen them
        self._handling_deadline = float("inf")  # past it, the open transaction takes no more work
        self._retry = Retrier(self.faults, lambda: self._running)

    # -- lifecycle ----------------------------------------------------------------------------------------
    def run(self, install_signal_handlers: bool = True) -> None:
        """Process until `stop()` (or SIGTERM/SIGINT); raises ProcessorFencedError if another took over."""
        if install_signal_handlers:
            signal.signal(signal.SIGTERM, lambda *_: self.stop())
            signal.signal(signal.SIGINT, lambda *_: self.stop())
        self._running = True  # from here on, a stop() ends the retries of a broker that is away
        self._retry.call("topic check", lambda: kafka.ensure_topics(self.app), _admin_retriable)
        topic_configs = self._retry.call("topic check", self._output_topic_configs, _admin_retriable)
        tx_id = f"{self.app.name}.processor.{self.config.instance_id}"
        producer_config = kafka.transactional_producer_config(
            self.app.settings, tx_id, **self.config.producer_overrides
        )
        self._record_limit = record_limit(producer_config, topic_configs)
        # librdkafka fills a batch up to batch.size (1 MB); a topic with a smaller max.message.bytes would
        # reject a batch of small records as too large.
        producer_config.setdefault("batch.size", min(1_000_000, self._record_limit))
        self._txn_timeout_s = int(producer_config["transaction.timeout.ms"]) / 1000
        self._producer_config = producer_config
        producer = self._producer = Producer(producer_config)
        self._retry.call("init_transactions", lambda: producer.init_transactions(60), _not_fatal)
        self._register_schedules()
        self._subscribe()
        log.info("processor %s started (transactional id %s)", self.config.instance_id, tx_id)
        try:
            while self._running:
                self._iteration()
        except Stopping as exc:
            log.warning("%s", exc)
        finally:
            self._shutdown()

    def _output_topic_configs(self) -> list[dict[str, str]]:
        """The configs of the topics this processor writes to (for their max.message.bytes)."""
        from orchestrator import _topic_admin

        names = [self.history, self.changelog, self.outcomes, self.dlq, self.inbox, self.keyed]
        names += [self.keyed_changelog, *(self._tasks_topic(q) for q in sorted(self.app.queues))]
        admin = _topic_admin.admin_client(self.app.settings)
        return [topic.config for topic in _topic_admin.observe(admin, names).values()]

    def _subscribe(self) -> None:
        """A new group consumer, subscribed to every input of this processor."""
        self._fatal = None
        self._consumer = Consumer(
            kafka.consumer_config(
                self.app.settings,
                f"{self.app.name}.processors",
                # Static membership: a restarted instance takes its partitions back at once instead of
                # waiting for its dead predecessor's session to time out.
                **{
                    "group.instance.id": f"processor-{self.config.instance_id}",
                    "error_cb": self._on_client_error,
                    # Range assigns each topic's partitions on its own, so every instance gets its share of
                    # the inbox. cooperative-sticky balances the total count across topics: with two
                    # instances one took all four inbox partitions and the other only the keyed ones
                    # (measured: a second processor added nothing). Co-partitioned inputs need range.
                    "partition.assignment.strategy": "range",
                },
                **self.config.consumer_overrides,
            )
        )
        self._consumer.subscribe(
            [self.inbox, self.keyed, *self.sources],
            on_assign=self._on_assign,
            on_revoke=self._on_revoke,
            on_lost=self._on_revoke,
        )

    def _check_producer_not_fenced(self) -> None:
        """Raise ProcessorFencedError if another instance took this transactional id.

        A transaction that touches a partition makes the coordinator check the producer epoch; it is then
        aborted, so the probe record (a tombstone of a key no store uses) is never visible to the
        read_committed readers of the changelog.
        """
        producer = self._producer
        assert producer is not None
        try:
            self._retry.call("begin_transaction", producer.begin_transaction)
            self._produce(self.changelog, None, b"m/ownership-probe", partition=0)
            producer.flush(self._txn_timeout_s)
        except KafkaException as exc:
            self._fenced_if_fatal(exc)
        self._abort()

    def _resubscribe(self) -> None:
        """Replace a consumer that librdkafka declared dead (fatal), keeping the producer.

        Why not stop: after a broker restart a static member can be told it was "fenced by another consumer
        with the same group.instance.id" when there is no other one (its rejoin raced a request carrying its
        old member id; seen in test_broker_outage). The arbiter of a real duplicate is the transactional
        id: a second live instance with this id fenced our producer when it started, so this instance's
        next transaction fails fatally and it stops then (ProcessorFencedError), before committing anything.
        """
        assert self._consumer is not None
        self._check_producer_not_fenced()
        log.warning(
            "processor %s: its consumer hit a fatal error (%s); replacing the consumer. If another instance "
            "runs with the same id, this one's next transaction is fenced and it stops.",
            self.config.instance_id,
            self._fatal.str() if self._fatal is not None else "?",
        )
        try:
            self._consumer.close()
        except KafkaException:
            log.debug("closing the dead consumer failed", exc_info=True)
        for stores in (self.stores, self.keyed_stores):
            for store in stores.values():
                store.close()
            stores.clear()
        self.cache.clear()
        self.states.clear()
        self._subscribe()

    def stop(self) -> None:
        self._running = False

    def _on_client_error(self, err: Any) -> None:
        """librdkafka's error callback: a fatal consumer error (e.g. fenced static member) is remembered, for
        ``_resubscribe``."""
        if err.fatal() or err.code() == KafkaError._FATAL:
            self._fatal = err

    def _register_schedules(self) -> None:
        """Declare the app's schedules to the keyed stage (idempotent: unchanged schedules are kept)."""
        if not self.app.schedules:
            return
        while True:
            producer = self._producer  # replaced after a fatal error that is not a fence
            assert producer is not None
            try:
                self._retry.call("begin_transaction", producer.begin_transaction)
                for schedule in self.app.schedules.values():
                    body = ScheduleRegister(
                        schedule.workflow, schedule.cron, schedule.timezone, schedule.missed
                    )
                    event = Event(f"schedule/{schedule.workflow}", "", schedule.workflow, _now_ms(), body)
                    self._to_keyed(f"schedule\x1f{schedule.workflow}", event)
                self._retry.call("commit_transaction", partial(producer.commit_transaction, 30))
                self.faults.recovered("registering schedules")
                return
            except KafkaException as exc:
                self._fenced_if_fatal(exc)
                self.faults.fault("registering schedules", exc)
                self._abort()

    def _shutdown(self) -> None:
        try:
            if self._consumer is not None:
                self._consumer.close()
        except KafkaException:
            log.warning("consumer close failed", exc_info=True)
        for stores in (self.stores, self.keyed_stores):
            for store in stores.values():
                store.close()
            stores.clear()
        self.cache.clear()
        self.states.clear()
        self.local_steps.close()
        log.info("processor %s stopped: %s", self.config.instance_id, self.stats)

    # -- rebalance ----------------------------------------------------------------------------------------
    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        targets: list[tuple[PartitionStore, str]] = []
        for tp in partitions:
            if tp.topic == self.inbox:
                store = PartitionStore(self.state_dir / f"p{tp.partition}", tp.partition)
                self.stores[tp.partition] = store
                targets.append((store, self.changelog))
            elif tp.topic == self.keyed:
                store = PartitionStore(self.state_dir / f"k{tp.partition}", tp.partition)
                self.keyed_stores[tp.partition] = store
                targets.append((store, self.keyed_changelog))
        self.stats.restored_records += self._retry.call(
            "restore", lambda: restore(self.app.settings, targets), _not_fatal
        )
        log.info("assigned partitions %s", sorted((tp.topic, tp.partition) for tp in partitions))

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # Called from consume(): no transaction is open, every finished batch is committed.
        for tp in partitions:
            stores = {self.inbox: self.stores, self.keyed: self.keyed_stores}.get(tp.topic)
            store = stores.pop(tp.partition, None) if stores is not None else None
            if store is not None:
                store.close()
        self.cache.clear()
        self.states.clear()
        log.info("revoked partitions %s", sorted((tp.topic, tp.partition) for tp in partitions))

    def _store_sets(self) -> list[tuple[str, str, dict[int, PartitionStore]]]:
        """(input topic, changelog topic, stores) of each kind of partition this instance keeps state for."""
        return [
            (self.inbox, self.changelog, self.stores),
            (self.keyed, self.keyed_changelog, self.keyed_stores),
        ]

    # -- the loop -----------------------------------------------------------------------------------------
    def _iteration(self) -> None:
        assert self._consumer is not None and self._producer is not None
        wait = self.config.max_wait_ms / 1000
        first = self._consumer.poll(wait)
        msgs: list[Message] = []
        if first is not None:
            msgs.append(first)
            if self.config.max_batch > 1:
                msgs.extend(self._consumer.consume(self.config.max_batch - 1, 0))
            if self.config.batch_linger_ms > 0:
                self._linger(msgs)
        msgs = self._without_errors(msgs)
        if self._fatal is not None:
            self._resubscribe()
            return
        now = _now_ms()
        due = self._due_timers(now)
        if not msgs and not due:
            return
        self._transaction(msgs, due, now)

    def _without_errors(self, msgs: list[Message]) -> list[Message]:
        """The records among ``msgs``; consumer errors are logged once per episode (librdkafka reconnects
        and refetches by itself); a fatal one is remembered, for ``_resubscribe``."""
        records: list[Message] = []
        for msg in msgs:
            err = msg.error()
            if err is None:
                records.append(msg)
            elif err.fatal() or err.code() == KafkaError._FATAL:
                self._fatal = err  # the consumer is replaced before anything else (see _resubscribe)
            else:
                self.faults.fault("consume", err.str())
        if records:
            self.faults.recovered("consume")
        return records

    def _linger(self, msgs: list[Message]) -> None:
        """Add records that arrive within ``batch_linger_ms`` of the first, up to ``max_batch``."""
        assert self._consumer is not None
        deadline = time.monotonic() + self.config.batch_linger_ms / 1000
        while len(msgs) < self.config.max_batch:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            msgs.extend(self._consumer.consume(self.config.max_batch - len(msgs), left))

    def _due_timers(self, now_ms: int) -> list[tuple[str, int, bytes, str, str]]:
        due: list[tuple[str, int, bytes, str, str]] = []
        for topic, _, stores in self._store_sets():
            for p, store in stores.items():
                for key, _, ident, tag in store.due_timers(now_ms, self.config.timer_batch):
                    due.append((topic, p, key, ident, tag))
        return due

    def _transaction(
        self, msgs: list[Message], due: list[tuple[str, int, bytes, str, str]], now_ms: int
    ) -> None:
        assert self._consumer is not None and self._producer is not None
        producer = self._producer
        positions: dict[tuple[str, int], int] = {}
        # Past the producer's transaction.timeout.ms the coordinator aborts the transaction anyway: stop
        # retrying send_offsets then, abort, and poll the consumer again (a group that is rebalancing waits
        # for this instance to rejoin, which it cannot do while stuck here).
        give_up_at = time.monotonic() + self._txn_timeout_s
        self._handling_deadline = self._clock() + BATCH_TIME_SHARE * self._txn_timeout_s
        try:
            self._retry.call("begin_transaction", producer.begin_transaction)
            for i, msg in enumerate(msgs):
                if i and self._clock() >= self._handling_deadline:
                    self._leave_for_next_transaction(msgs[i:])
                    due = []  # due timers are found again by the next iteration
                    break
                topic, p = msg.topic() or "", msg.partition() or 0
                if (topic == self.inbox and p not in self.stores) or (
                    topic == self.keyed and p not in self.keyed_stores
                ):
                    continue  # revoked in this very poll
                positions[(topic, p)] = (msg.offset() or 0) + 1
                if topic == self.inbox:
                    self._handle_message(msg, now_ms)
                elif topic == self.keyed:
                    self._handle_keyed(msg, now_ms)
                else:
                    self._handle_source(msg, now_ms)
            for topic, p, key, ident, tag in due:
                if topic == self.inbox and p in self.stores:
                    self._fire_timer(p, key, ident, tag, now_ms)
                elif topic == self.keyed and p in self.keyed_stores:
                    self._fire_keyed_timer(p, key, ident, tag, now_ms)
            self._produce_changelog()
            if positions:
                offsets = [TopicPartition(t, p, off) for (t, p), off in positions.items()]
                group = self._consumer.consumer_group_metadata()
                self._retry.call(
                    "send_offsets_to_transaction",
                    lambda: producer.send_offsets_to_transaction(
                        offsets, group, max(1.0, give_up_at - time.monotonic())
                    ),
                    give_up_at=give_up_at,
                )
            producer.flush(30)
            # A commit that times out ("retry call to resume") is called again until it has an answer, never
            # aborted: it may have reached the coordinator, and an abort then would fail or, worse, leave the
            # stores behind what Kafka committed while the consumer moves on.
            self._retry.call("commit_transaction", lambda: producer.commit_transaction(30))
        except KafkaException as exc:
            self._on_transaction_error(exc)
            return
        except SystemError as exc:
            # A fatal producer error raised while librdkafka was calling a delivery callback surfaces as
            # SystemError with the KafkaException as its cause.
            cause = exc.__cause__ or exc.__context__
            if not isinstance(cause, KafkaException):
                try:  # find out what state the producer is in: a fenced one refuses to abort
                    self._producer.abort_transaction(10)
                except KafkaException as abort_exc:
                    cause = abort_exc
                else:
                    raise
            self._on_transaction_error(cause)
            return
        for topic, changelog, stores in self._store_sets():
            for p, store in stores.items():
                store.commit(positions.get((topic, p)), self._changelog_offsets.pop((changelog, p), None))
        self.stats.transactions += 1
        self.faults.recovered("transaction")

    def _leave_for_next_transaction(self, rest: list[Message]) -> None:
        """Seek back to the first record of ``rest`` in each partition: the next poll returns them again."""
        assert self._consumer is not None
        first: dict[tuple[str, int], int] = {}
        for msg in rest:
            first.setdefault((msg.topic() or "", msg.partition() or 0), msg.offset() or 0)
        for (topic, p), offset in first.items():
            try:
                self._consumer.seek(TopicPartition(topic, p, offset))
            except KafkaException:  # revoked in the last poll: its new owner starts at the committed offset
                log.debug("not seeking %s[%d], no longer assigned", topic, p)
        log.debug("batch handling took its share of the transaction; %d records left for the next", len(rest))

    def _on_transaction_error(self, exc: KafkaException) -> None:
        """Anything short of fatal: abort, forget the batch's writes, rewind and process it again."""
        assert self._consumer is not None and self._producer is not None
        replaced = self._fenced_if_fatal(exc)
        self.faults.fault("transaction", f"aborting it and reprocessing the batch: {exc}")
        err = error_of(exc)
        if err is not None and err.code() == KafkaError.MSG_SIZE_TOO_LARGE:
            # A record passed the size check but Kafka refused it (a topic's limit lowered since start-up,
            # or overhead we did not count). Lowering the limit makes the check catch it on reprocessing,
            # turning it into an outcome (failed step, parked run, dead letter) instead of aborting forever.
            self._record_limit = self._record_limit * 7 // 8
            log.error(
                "Kafka refused a record as too large (%s); record limit lowered to %d bytes. Check the "
                "topics' max.message.bytes against the producer's message.max.bytes.",
                exc,
                self._record_limit,
            )
        self.stats.aborts += 1
        if not replaced:
            self._abort()
        for _, _, stores in self._store_sets():
            for store in stores.values():
                store.discard()
        self._changelog_offsets.clear()
        self.cache.clear()
        self.states.clear()
        if self._fatal is None:  # a dead consumer is replaced instead; the new one starts at the commits
            self._rewind()

    def _fenced_if_fatal(self, exc: KafkaException) -> bool:
        """ProcessorFencedError if another instance took this transactional id; True if the producer hit
        another fatal error and was replaced (its transaction is gone: nothing to abort)."""
        err = error_of(exc)
        if not is_fatal(err):
            return False
        assert err is not None
        if err.code() in (KafkaError._FENCED, KafkaError.PRODUCER_FENCED):
            raise ProcessorFencedError(
                f"processor {self.config.instance_id} was fenced ({exc}); another instance with the same id "
                "owns its partitions now. Stopping."
            ) from exc
        self._renew_producer(exc)
        return True

    def _renew_producer(self, exc: KafkaException) -> None:
        """Replace a producer librdkafka declared dead for a reason other than a fence.

        Seen after a broker restart (test_broker_outage): the coordinator had aborted the transaction that
        was open when the broker died (it outlived transaction.timeout.ms), and the producer's own abort then
        failed with a fatal INVALID_TXN_STATE. No other instance is involved, so this one goes on with a new
        producer under the same transactional id (its init_transactions bumps the epoch), like Kafka
        Streams resetting its producer. A real second instance fences with _FENCED/PRODUCER_FENCED instead.
        """
        log.error(
            "processor %s: fatal producer error that is not a fence (%s); replacing the producer and "
            "reprocessing the batch",
            self.config.instance_id,
            exc,
        )
        old = self._producer
        if old is not None:
            try:
                old.purge()
            except (KafkaException, RuntimeError):
                log.debug("purging the dead producer failed", exc_info=True)
        producer = self._producer = Producer(self._producer_config)
        self._retry.call("init_transactions", lambda: producer.init_transactions(60), _not_fatal)

    def _abort(self) -> None:
        """Abort the open transaction; one that times out ("retry call to resume") is called again."""
        producer = self._producer
        assert producer is not None
        try:
            self._retry.call("abort_transaction", lambda: producer.abort_transaction(30), _abort_retriable)
        except KafkaException as exc:
            if self._fenced_if_fatal(exc):
                return  # the producer was replaced: its transaction is gone
            err = error_of(exc)
            if err is None or err.code() != KafkaError._STATE:
                raise
            # _STATE: no transaction is open (begin_transaction was what failed): nothing to abort.

    def _rewind(self) -> None:
        """Seek back to the committed positions so the aborted batch is consumed again."""
        consumer = self._consumer
        assert consumer is not None
        try:
            committed = self._retry.call(
                "reading committed offsets",
                lambda: consumer.committed(consumer.assignment(), timeout=30),
                _not_fatal,
            )
        except KafkaException as exc:
            # The consumer died: the next iteration replaces it.
            self._fatal = error_of(exc) or KafkaError(KafkaError._FATAL)
            return
        for tp in committed:
            if tp.offset >= 0:
                consumer.seek(TopicPartition(tp.topic, tp.partition, tp.offset))
            else:
                consumer.seek(TopicPartition(tp.topic, tp.partition, OFFSET_BEGINNING))

    # -- per record ---------------------------------------------------------------------------------------
    def _handle_message(self, msg: Message, now_ms: int) -> None:
        p = msg.partition() or 0
        try:
            event = decode_event(msg.value())
        except SchemaError as exc:
            self._dead_letter(msg, "SchemaError", str(exc), now_ms)
            return
        if partition_for(event.run_id, self.partitions) != p:
            self._dead_letter(
                msg,
                "WrongPartition",
                f"run {event.run_id!r} belongs on partition {partition_for(event.run_id, self.partitions)}, "
                f"not {p}: produce inbox records with the run id as key and Kafka's murmur2 partitioner",
                now_ms,
            )
            return
        self.stats.events += 1
        self._handle_event(msg, p, event, now_ms)

    def _handle_event(self, msg: Message, p: int, event: Event, now_ms: int) -> None:
        store = self.stores[p]
        try:
            state = self._load(store, event.run_id)
            old_timers = timers_of(state) if state is not None else set()
            new_state, fx = self.decider.handle(state, event, now_ms)
            if new_state is not None:
                self._run_local(new_state, fx)
        except Exception as exc:
            log.exception("internal error on %s of run %s; parking the run", event.kind, event.run_id)
            reason = f"internal error handling {event.kind}: {type(exc).__name__}: {exc}"
            self._park_run(p, event.run_id, PARK_INTERNAL_ERROR, reason, now_ms, msg, event)
            return
        changed = new_state is not None and bool(fx.history)  # every state change is recorded as history
        encoded = encode_state(new_state) if new_state is not None and changed else None
        records = self._records(p, fx)
        too_big = first_oversize([(self.changelog, encoded, None, p), *records], self._record_limit)
        if too_big:
            self._on_oversize(msg, p, event, too_big, now_ms)
            return
        if fx.dead_letter:
            self._dead_letter(msg, "Rejected", fx.dead_letter, now_ms)
        if fx.ignored:
            self.stats.ignored += 1
            log.debug("ignored %s for %s: %s", event.kind, event.run_id, fx.ignored)
        if new_state is not None and encoded is not None:
            self._save(store, new_state, old_timers, encoded)
        else:  # nothing recorded, so nothing may have changed: re-read the store's bytes next time
            self.states.evict(event.run_id)
        self._produce_records(records)

    def _on_oversize(self, msg: Message, p: int, event: Event, problem: str, now_ms: int) -> None:
        """Handling ``event`` would produce a record Kafka refuses: make that the input's outcome.

        A step result becomes a terminal failure of the step (the workflow sees StepFailedError and may
        handle it; its state never holds the result). Anything else parks the run (resumable once the
        limits are raised), or, when there is no run to park (a start), fails the start: the input is
        dead-lettered and a waiting client is told why.
        """
        log.error("%s for run %s: %s", event.kind, event.run_id, problem)
        self.cache.evict(event.run_id)
        self.states.evict(event.run_id)  # the decider changed it in place; the store has the good bytes
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
            self._handle_event(msg, p, replace(event, body=failure), now_ms)
            return
        parked = self._park_run(p, event.run_id, PARK_RECORD_TOO_LARGE, hint, now_ms)
        self._dead_letter(msg, "RecordTooLarge", hint, now_ms)  # the input is in no run: keep it
        if not parked and isinstance(body, StartRun):
            outcome = RunOutcome(event.run_id, event.workflow, FAILED, now_ms, None, "RecordTooLarge", hint)
            self._produce(self.outcomes, encode_outcome(outcome), event.run_id.encode(), partition=p)

    def _park_run(
        self,
        p: int,
        run_id: str,
        kind: str,
        reason: str,
        now_ms: int,
        msg: Message | None = None,
        event: Event | None = None,
    ) -> bool:
        """Park the run in this transaction, so the problem is visible (``runs list --status parked``), its
        waiting client gets an outcome, and ``runs resume`` continues it after a fix. False if it could not
        be parked (no such run, already ended or parked, or parking failed too); ``msg`` is then
        dead-lettered.

        With ``event`` (the input that failed), the input is then given to the parked run, which records
        results and signals without running workflow code (what failed is most likely there), and a resume
        replays them: dead-lettering a step result would leave the run waiting forever. Only when that
        raises too is the input dead-lettered. Every attempt starts from the store's last good bytes: the
        failed one may have changed the cached state halfway.
        """
        store = self.stores[p]
        parked = False
        for with_input in (event is not None, False):
            self.cache.evict(run_id)
            self.states.evict(run_id)
            try:
                state = self._load(store, run_id)
                if state is None or state.terminal or state.status == PARKED:
                    break  # nothing to park: the input goes to the dead letters
                old_timers = timers_of(state)
                fx = self.decider.park(state, kind, reason, now_ms)
                if with_input and event is not None:
                    _, more = self.decider.handle(state, event, now_ms)
                    fx.extend(more)
                encoded = encode_state(state)
                records = self._records(p, fx)
                too_big = first_oversize([(self.changelog, encoded, None, p), *records], self._record_limit)
                if too_big:
                    raise RecordTooLargeError(too_big)
            except Exception:
                log.exception("parking run %s%s failed", run_id, " with its input" if with_input else "")
                continue
            if with_input and more.dead_letter and msg is not None:
                self._dead_letter(msg, "Rejected", more.dead_letter, now_ms)
            self._save(store, state, old_timers, encoded)
            self._produce_records(records)
            if with_input:
                return True
            parked = True
            break
        self.cache.evict(run_id)
        self.states.evict(run_id)
        if msg is not None:
            self._dead_letter(
                msg, "InternalError" if kind == PARK_INTERNAL_ERROR else "RecordTooLarge", reason, now_ms
            )
        return parked

    def _handle_keyed(self, msg: Message, now_ms: int) -> None:
        """A record of the keyed stage; dead-lettered (its offset committed all the same) when it is not one
        of ours, not a request the stage takes, or the stage fails on it, so it never stops the loop."""
        store = self.keyed_stores[msg.partition() or 0]
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
            records = self._routed_records(fx)
            written = [
                (self.keyed_changelog, store.get(k), k, store.partition)
                for k in store.written_since_savepoint()
            ]
            too_big = first_oversize([*written, *records], self._record_limit)
            if too_big:
                store.rollback()
                error_type, reason = "RecordTooLarge", too_big
            else:
                store.release()
                if fx.ignored:
                    log.debug("keyed stage ignored %s: %s", event.kind, fx.ignored)
                self._produce_records(records)
                if not fx.rejected:
                    return
                error_type, reason = "Rejected", fx.rejected
        self._dead_letter(msg, error_type, reason, now_ms)

    def _handle_source(self, msg: Message, now_ms: int) -> None:
        """A record of a user's topic: the requests its triggers and sources make; dead-lettered (its offset
        committed all the same) when one of them cannot use it, so a poison record never stops the loop."""
        overrides = self.config.producer_overrides
        # Requests travel on through the keyed stage, the inbox and the history: none may refuse them.
        engine_topics = (self.inbox, self.keyed, self.history, self.changelog, self.keyed_changelog)
        # Outside the guard: a broker that cannot say is not the record's fault.
        limit = limits.record_limit(self.app.settings, engine_topics, overrides)
        try:
            result = translate_each(self.app, msg, now_ms, limit)
        except Exception as exc:  # translate guards all user code: this is an engine bug; keep the record
            log.exception("internal error translating %s[%d]@%d", msg.topic(), msg.partition(), msg.offset())
            result = Translation(errors=[SourceError(f"internal error: {type(exc).__name__}: {exc}")])
            error_type = f"InternalError.{type(exc).__name__}"
        else:
            error_type = "SourceError"
        for r in result.routed:
            if r.routing is None:
                self._to_inbox(r.event)
            else:
                self._to_keyed(r.routing, r.event)
        if result.errors:
            self._dead_letter(msg, error_type, result.reason, now_ms)

    def _fire_timer(self, p: int, key: bytes, run_id: str, tag: str, now_ms: int) -> None:
        store = self.stores[p]
        state = self._load(store, run_id)
        if state is None:
            store.delete(key)
            return
        old_timers = timers_of(state)
        try:
            fx = self.decider.fire_timer(state, tag, now_ms)
            self._run_local(state, fx)
        except Exception as exc:
            log.exception("internal error firing timer %s of %s; parking the run", tag, run_id)
            reason = f"internal error firing timer {tag}: {type(exc).__name__}: {exc}"
            self._park_run(p, run_id, PARK_INTERNAL_ERROR, reason, now_ms)
            store.delete(key)  # a resumed run re-arms its timers from its state
            return
        self.stats.timers += 1
        encoded = encode_state(state)
        records = self._records(p, fx)
        too_big = first_oversize([(self.changelog, encoded, None, p), *records], self._record_limit)
        if too_big:
            log.error("timer %s of run %s: %s; parking the run", tag, run_id, too_big)
            self._park_run(p, run_id, PARK_RECORD_TOO_LARGE, too_big, now_ms)
            store.delete(key)
            return
        self._save(store, state, old_timers, encoded)
        store.delete(key)  # stale or fired: either way it is done (a re-armed timer has a new key)
        new_timers = timers_of(state)
        for due, t in new_timers:
            store.put(timer_key(due, run_id, t), b"")
        self._produce_records(records)

    def _fire_keyed_timer(self, p: int, key: bytes, ident: str, tag: str, now_ms: int) -> None:
        store = self.keyed_stores[p]
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
        self._emit_routed(fx)

    def _run_local(self, state: RunState, fx: Effects) -> None:
        """Run the local steps among ``fx``'s commands, folding each result in as if a worker had sent it."""
        budget = LOCAL_STEPS_PER_INPUT
        while fx.commands:
            local = [cmd for _, cmd in fx.commands if self.local_steps.is_local(cmd)]
            if not local:
                return
            fx.commands = [(q, cmd) for q, cmd in fx.commands if not self.local_steps.is_local(cmd)]
            for cmd in local:
                if cmd.cancel:
                    continue  # a local attempt is never running when its run is cancelled
                result = self.local_steps.run(cmd)
                self.stats.local_steps += 1
                if budget <= 0 or self._clock() >= self._handling_deadline:
                    fx.inbox.append(result)  # handled in a later batch, like a worker's result
                    continue
                budget -= 1
                _, more = self.decider.handle(state, result, _now_ms())
                fx.extend(more)

    def _load(self, store: PartitionStore, run_id: str) -> RunState | None:
        state = self.states.get(run_id)
        if state is not None:
            return state
        raw = store.get(run_key(run_id))
        if raw is None:
            return None
        state = decode_state(raw)
        self.states.put(state.run_id, state)
        return state

    def _save(
        self,
        store: PartitionStore,
        state: RunState,
        old_timers: set[tuple[int, str]],
        encoded: bytes | None = None,
    ) -> None:
        store.put(run_key(state.run_id), encode_state(state) if encoded is None else encoded)
        if state.terminal:  # ended runs are rarely touched again: keep room for live ones
            self.states.evict(state.run_id)
        else:
            self.states.put(state.run_id, state)
        new_timers = timers_of(state)
        for due, tag in old_timers - new_timers:
            store.delete(timer_key(due, state.run_id, tag))
        for due, tag in new_timers - old_timers:
            store.put(timer_key(due, state.run_id, tag), b"")

    # -- output -------------------------------------------------------------------------------------------
    def _records(self, p: int, fx: Effects) -> list[tuple[str, bytes, bytes, int]]:
        """(topic, value, key, partition) of everything ``fx`` produces, encoded once: sizes are checked
        before any of it is produced."""
        out: list[tuple[str, bytes, bytes, int]] = []
        for event in fx.history:
            out.append((self.history, encode_event(event), event.run_id.encode(), p))
        for queue, cmd in fx.commands:
            out.append((self._tasks_topic(queue), encode_command(cmd), cmd.run_id.encode(), -1))
        for outcome in fx.outcomes:
            out.append((self.outcomes, encode_outcome(outcome), outcome.run_id.encode(), p))
        for rk, event in fx.keyed:
            out.append((self.keyed, encode_event(event), rk.encode(), partition_for(rk, self.partitions)))
        for event in fx.inbox:
            key = event.run_id.encode()
            out.append((self.inbox, encode_event(event), key, partition_for(event.run_id, self.partitions)))
        return out

    def _produce_records(self, records: list[tuple[str, bytes, bytes, int]]) -> None:
        for topic, value, key, partition in records:
            self._produce(topic, value, key, partition=partition)

    def _emit(self, p: int, fx: Effects) -> None:
        self._produce_records(self._records(p, fx))

    def _routed_records(self, fx: RouterEffects) -> list[tuple[str, bytes, bytes, int]]:
        """What the keyed stage's ``fx`` produces, encoded once (sizes are checked first)."""
        out: list[tuple[str, bytes, bytes, int]] = []
        for event in fx.inbox:
            key = event.run_id.encode()
            out.append((self.inbox, encode_event(event), key, partition_for(event.run_id, self.partitions)))
        for routing, event in fx.keyed:
            out.append(
                (self.keyed, encode_event(event), routing.encode(), partition_for(routing, self.partitions))
            )
        for outcome in fx.outcomes:
            p = partition_for(outcome.run_id, self.partitions)
            out.append((self.outcomes, encode_outcome(outcome), outcome.run_id.encode(), p))
        for queue, run_id, command in fx.commands:  # step attempts the admission stage let through
            out.append((self._tasks_topic(queue), command, run_id.encode(), -1))
        return out

    def _emit_routed(self, fx: RouterEffects) -> None:
        self._produce_records(self._routed_records(fx))

    def _produce(
        self, topic: str, value: bytes | None, key: bytes | None, partition: int = -1, on_delivery: Any = None
    ) -> None:
        """``Producer.produce``, waiting for room when librdkafka's local queue is full (BufferError)."""
        producer = self._producer
        assert producer is not None
        try:
            producer.produce(topic, value, key, partition=partition, on_delivery=on_delivery)
        except BufferError:
            self._retry.call(
                "produce (local queue full)",
                lambda: self._produce_after_poll(topic, value, key, partition, on_delivery),
                lambda exc: isinstance(exc, BufferError),
            )

    def _produce_after_poll(
        self, topic: str, value: bytes | None, key: bytes | None, partition: int, on_delivery: Any
    ) -> None:
        assert self._producer is not None
        self._producer.poll(0.1)  # serves delivery reports, which is what frees the queue
        self._producer.produce(topic, value, key, partition=partition, on_delivery=on_delivery)

    def _tasks_topic(self, queue: str) -> str:
        """Cached: the name is built from the topic templates and checked, ~2 % of the loop's CPU per call."""
        topic = self._task_topics.get(queue)
        if topic is None:
            topic = self._task_topics[queue] = topology.tasks_topic(self.app.name, queue)
        return topic

    def _to_inbox(self, event: Event) -> None:
        assert self._producer is not None
        self._produce(
            self.inbox,
            encode_event(event),
            event.run_id.encode(),
            partition=partition_for(event.run_id, self.partitions),
        )

    def _to_keyed(self, routing: str, event: Event) -> None:
        assert self._producer is not None
        self._produce(
            self.keyed,
            encode_event(event),
            routing.encode(),
            partition=partition_for(routing, self.partitions),
        )

    def _produce_changelog(self) -> None:
        producer = self._producer
        assert producer is not None
        for _, changelog, stores in self._store_sets():
            for p, store in stores.items():
                dirty = store.dirty()
                if not dirty:
                    continue
                last = len(dirty) - 1
                for i, (key, value) in enumerate(dirty.items()):
                    if i == last:
                        self._produce(
                            changelog, value, key, partition=p, on_delivery=self._changelog_delivered
                        )
                    else:
                        self._produce(changelog, value, key, partition=p)

    def _changelog_delivered(self, err: Any, msg: Message) -> None:
        if err is None:
            self._changelog_offsets[(msg.topic() or "", msg.partition() or 0)] = (msg.offset() or 0) + 1

    def _dead_letter(self, msg: Message, error_type: str, reason: str, now_ms: int) -> None:
        assert self._producer is not None
        self.stats.dead_letters += 1
        log.warning(
            "dead-lettered %s[%d]@%d: %s: %s", msg.topic(), msg.partition(), msg.offset(), error_type, reason
        )
        # A letter too large for the DLQ would fail the transaction like the record itself: it then keeps the
        # record's coordinates, not its bytes.
        # One limit for every output (the smallest): a letter is copied whole only where any record would fit.
        dlq_limit = limits.RecordLimit(self._record_limit, "the processor's record limit")
        msg, error_type, reason = limits.dead_letter_copy(msg, error_type, reason, dlq_limit)
        value = msg.value()
        letter = DeadLetter(
            source_topic=msg.topic() or "",
            source_partition=msg.partition() or 0,
            source_offset=msg.offset() or 0,
            key=msg.key(),
            value=value,
            error_type=error_type,
            reason=reason,
            timestamp_ms=now_ms,
            component=f"processor:{self.config.instance_id}",
        )
        self._produce(self.dlq, encode_dead_letter(letter), msg.key())


def _now_ms() -> int:
    return int(time.time() * 1000)


def _not_fatal(exc: BaseException) -> bool:
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


def _admin_retriable(exc: BaseException) -> bool:
    """The topic check failed because the cluster is not reachable or not settled yet."""
    if not isinstance(exc, TopicAdminError | KafkaException):
        return False
    err = error_of(exc)
    return err is None or is_transient(err)


__all__ = ["Event", "Processor", "ProcessorConfig", "ProcessorStats"]
