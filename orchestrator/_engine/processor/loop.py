"""The processor's loop (Kafka Streams' StreamThread): consume the inbox, the keyed topic and the users'
topics, hand each record of a batch to its task, fire due timers, and commit it all in one transaction.

One transactional producer per instance (EOS v2): each batch's history events, step commands, outcomes,
dead letters, changelog records and the consumed offsets commit in one Kafka transaction, fenced by the
consumer group generation. The RocksDB stores take the batch only after that commit (see `state_manager`).
Timers (retry backoffs, later sleeps and timeouts) live in the same stores and fire inside the same kind of
transaction, so each fires exactly once. A failed transaction is aborted, its writes discarded and its
batch consumed again (ADR 0010); rebalances open, restore and close stores.
"""

from __future__ import annotations

import logging
import signal
import time
from functools import partial
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, Message, TopicPartition

from orchestrator._core import formats
from orchestrator._engine import access, kafka, limits, metrics
from orchestrator._engine.bounded_call import CallStuckError
from orchestrator._engine.decider import Decider
from orchestrator._engine.events import Event, ScheduleRegister
from orchestrator._engine.faults import Retrier, Stopping, error_of, is_transient
from orchestrator._engine.local_steps import LocalSteps
from orchestrator._engine.processor.config import ProcessorConfig, ProcessorStats, ProcessorTopics
from orchestrator._engine.processor.dispatch import EarlyDispatch
from orchestrator._engine.processor.handling_time import HandlingTime
from orchestrator._engine.processor.http_api import QueryServer
from orchestrator._engine.processor.keyed_task import KeyedTask
from orchestrator._engine.processor.output import Output
from orchestrator._engine.processor.run_states import RunStates
from orchestrator._engine.processor.run_task import RunTask
from orchestrator._engine.processor.source_task import SourceTask
from orchestrator._engine.processor.standby import Standbys
from orchestrator._engine.processor.state_manager import DueTimer, StateManager
from orchestrator._engine.processor.transactions import Transactions, not_fatal
from orchestrator._engine.queries import registry
from orchestrator._engine.router import Router
from orchestrator._engine.store import PartitionStore
from orchestrator._topic_admin import TopicAdminError
from orchestrator.app import App

log = logging.getLogger("orchestrator.processor")

TIMER_HOLD_MAX_S = 60.0
"""Longest a partition's timers are held for early dispatch (ADR 0025) when its consumer never reports the
position to pass (a partition whose records all expired reports none): liveness over the corner case."""

REWIND_TIMEOUT_S = 30.0
"""Longest wait for the committed offsets when rewinding after an abort; past it the consumer is replaced."""


class Processor:
    def __init__(self, app: App, config: ProcessorConfig | None = None) -> None:
        self.app = app
        self.config = config or ProcessorConfig()
        s = app.settings
        self.partitions = s.partitions
        self.bootstrap = s.bootstrap_servers
        self.topics = ProcessorTopics.of(app)
        self.stats = ProcessorStats()
        self.faults = metrics.CountedFaultLog(log, "processor")
        self.metrics = metrics.ProcessorMetrics()
        self._lag = metrics.ConsumerLag("processor")
        self._running = False
        self._retry = Retrier(self.faults, lambda: self._running)
        self._consumer: Consumer | None = None
        self._fatal: Any = None
        self.transactions = Transactions(self.config.instance_id, self._retry)
        component = f"processor:{self.config.instance_id}"
        self.output = Output(
            app.name, self.topics, self.partitions, self.transactions, self._retry, self.stats, component
        )
        self.output.counts = self.metrics.batch
        state_dir = (self.config.state_dir or s.state_dir) / app.name / self.config.instance_id
        self.stores = StateManager(state_dir, self.topics, self.app.settings, self._retry)
        if self.config.standby_replicas > 0:
            self.stores.standbys = Standbys(
                s,
                self.topics,
                state_dir,
                self.config.instance_id,
                self.config.standby_replicas,
                f"{app.name}.processors",
                cleanup_delay_s=self.config.state_cleanup_delay_s,
            )
        self.runs = RunStates(self.config.cache_size)
        self.decider = Decider(app, self.runs.instances)
        self.router = Router(app)
        self.local_steps = LocalSteps(app, component)
        self.handling = HandlingTime()
        self.run_task = RunTask(
            self.decider, self.runs, self.stores, self.output, self.local_steps, self.handling, self.stats
        )
        self.keyed_task = KeyedTask(self.router, self.stores, self.output, self.stats)
        self.source_task = SourceTask(app, self.output)
        self.http: QueryServer | None = None
        self._ready = False  # assigned partitions restored, processing (GET /ready)
        # (input topic, partition) -> offset this consumer must pass before the partition's timers fire
        # again: what an aborted batch or a dead predecessor may have handled with commands sent early
        # (ADR 0025). Handling those inputs again before any timer decides the same attempts again.
        self._timers_held: dict[tuple[str, int], int] = {}
        self._holds_until = 0.0  # monotonic: past it, every hold is lifted (TIMER_HOLD_MAX_S)

    # -- lifecycle ------------------------------------------------------------------------------------------
    def run(self, install_signal_handlers: bool = True) -> None:
        """Process until `stop()` (or SIGTERM/SIGINT); raises ProcessorFencedError if another took over."""
        if install_signal_handlers:
            signal.signal(signal.SIGTERM, lambda *_: self.stop())
            signal.signal(signal.SIGINT, lambda *_: self.stop())
        self._running = True  # from here on, a stop() ends the retries of a broker that is away
        check = partial(kafka.ensure_topics, self.app, component="processor")
        self._retry.call("topic check", check, _admin_retriable)
        tx_id = f"{self.app.name}.processor.{self.config.instance_id}"
        producer_config = kafka.transactional_producer_config(
            self.app.settings, tx_id, **self.config.producer_overrides
        )
        # The one record limit (limits.py), learnt once: the smallest of the producer's and its topics'.
        learn = partial(limits.record_limit, self.app.settings, self._output_topics(), producer_config)
        self.output.record_limit = self._retry.call("topic check", learn, _admin_retriable)
        # librdkafka fills a batch up to batch.size (1 MB); a topic with a smaller max.message.bytes would
        # reject a batch of small records as too large.
        producer_config.setdefault("batch.size", min(1_000_000, self.output.record_limit.room))
        try:
            self.transactions.start(producer_config)
        except KafkaException as exc:  # a denied transactional id is fatal: say which ACL (ADR 0021)
            raise access.denied(self.app.settings, exc, "processor") or exc from None
        if self.config.early_dispatch:
            overrides = {k: v for k, v in self.config.producer_overrides.items() if "transaction" not in k}
            overrides.setdefault("batch.size", producer_config["batch.size"])  # same reason as above
            self.output.dispatch = EarlyDispatch(self.app.settings, overrides)
        self._register_schedules()
        self._start_http()
        self._subscribe()
        if self.stores.standbys is not None:
            self.stores.standbys.start()
        log.info("processor %s started (transactional id %s)", self.config.instance_id, tx_id)
        try:
            while self._running:
                self._iteration()
        except Stopping as exc:
            log.warning("%s", exc)
        finally:
            self._shutdown()

    def stop(self) -> None:
        self._running = False

    # -- run queries over HTTP (ADR 0016) --------------------------------------------------------------------
    def _start_http(self) -> None:
        if self.config.http_port is None or self.http is not None:
            return
        self.http = QueryServer(self.config.http_host, self.config.http_port, self._queryable, self.ready)
        self.http.start()
        host = self.config.advertised_host or registry.default_host(self.app.settings)
        url = f"http://{host}:{self.http.port}"
        self._retry.call(
            "publishing the query endpoint",
            partial(registry.publish, self.app.settings, self.app.name, self.config.instance_id, url),
            _admin_retriable,
        )

    def _queryable(self) -> dict[int, PartitionStore]:
        """The run stores queries may read: none while a rebalance opens and restores them (a store being
        restored is incomplete; its partitions are reported missing until the loop runs again). Copied
        before ``_ready`` is read: a rebalance clears ``_ready`` before it opens a store."""
        stores = dict(self.stores.run_stores)
        return stores if self._ready else {}

    def ready(self) -> bool:
        """Assigned partitions restored and the loop processing (what GET /ready answers)."""
        return self._running and self._ready

    def _output_topics(self) -> tuple[str, ...]:
        """The topics this processor writes to: its record limit is the smallest of theirs."""
        t = self.topics
        names = (t.history, t.changelog, t.outcomes, t.dlq, t.inbox, t.keyed, t.keyed_changelog)
        return (*names, *(self.output.tasks_topic(q) for q in sorted(self.app.queues)))

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
            [self.topics.inbox, self.topics.keyed, *self.topics.sources],
            on_assign=self._on_assign,
            on_revoke=self._on_revoke,
            on_lost=self._on_revoke,
        )

    def _on_client_error(self, err: Any) -> None:
        """librdkafka's error callback: a fatal consumer error (e.g. fenced static member) is remembered, for
        ``_resubscribe``."""
        if err.fatal() or err.code() == KafkaError._FATAL:
            self._fatal = err

    def _check_producer_not_fenced(self) -> None:
        """Raise ProcessorFencedError if another instance took this transactional id.

        A transaction that touches a partition makes the coordinator check the producer epoch; it is then
        aborted, so the probe record (a tombstone of a key no store uses) is never visible to the
        read_committed readers of the changelog.
        """
        try:
            self.transactions.begin()
            self.output.produce(self.topics.changelog, None, b"m/ownership-probe", partition=0)
            self.transactions.current().flush(self.transactions.timeout_s)
        except KafkaException as exc:
            self.transactions.fenced_if_fatal(exc)
        self.transactions.abort()

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
        self.stores.close(keep_warm=True)
        self.runs.clear()
        metrics.CLIENT_REPLACEMENTS.labels("processor", "consumer").inc()
        self._lag.forget()
        self._subscribe()

    def _register_schedules(self) -> None:
        """Declare the app's schedules to the keyed stage (idempotent: unchanged schedules are kept)."""
        if not self.app.schedules:
            return
        while True:
            try:
                self.transactions.begin()
                for schedule in self.app.schedules.values():
                    body = ScheduleRegister(
                        schedule.workflow, schedule.cron, schedule.timezone, schedule.missed
                    )
                    event_id = formats.schedule_register_id(schedule.workflow)
                    event = Event(event_id, "", schedule.workflow, _now_ms(), body)
                    self.output.to_keyed(formats.schedule_routing(schedule.workflow), event)
                producer = self.transactions.current()  # replaced after a fatal error that is not a fence
                self._retry.call("commit_transaction", partial(producer.commit_transaction, 30))
                self.faults.recovered("registering schedules")
                return
            except KafkaException as exc:
                self.transactions.fenced_if_fatal(exc)
                self.faults.fault("registering schedules", exc)
                self.transactions.abort()
                doing = f"registering schedules on {self.topics.keyed}"
                refused = access.denied(self.app.settings, exc, "processor", doing)
                if refused is not None:  # a missing ACL: retrying cannot help (ADR 0021)
                    raise refused from exc

    def _shutdown(self) -> None:
        if self.stores.standbys is not None:
            # First: closing the consumer revokes every partition, and a standby adopting those stores
            # would open each one only for this close to shut it again (ADR 0024).
            self.stores.standbys.close()
        try:
            if self._consumer is not None:
                self._consumer.close()
        except KafkaException:
            log.warning("consumer close failed", exc_info=True)
        self._ready = False
        if self.http is not None:
            self.http.stop()
            self.http = None
        self.stores.close()
        self.runs.clear()
        self.local_steps.close()
        self.transactions.close()
        if self.output.dispatch is not None:
            self.output.dispatch.close()
        log.info("processor %s stopped: %s", self.config.instance_id, self.stats)

    # -- rebalance ------------------------------------------------------------------------------------------
    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._ready = False  # until the restore below is done and the loop runs again
        t0 = time.monotonic()
        restored = self.stores.assign(partitions)
        elapsed = time.monotonic() - t0
        self.stats.restored_records += restored
        self._hold_timers_after_assign(consumer, partitions)
        self.metrics.restored(restored, elapsed)
        done = self.stores.last_restore
        log.info(
            "assigned partitions %s: restored %d changelog records into %d stores in %.2fs (%d of them warm)",
            sorted((tp.topic, tp.partition) for tp in partitions),
            restored,
            done.stores,
            elapsed,
            done.warm,
        )
        if self.stores.standbys is not None:
            self.stores.standbys.request_refresh()  # the owners changed: choose the standbys again

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # Called from consume(): no transaction is open, every finished batch is committed.
        self.stores.revoke(partitions)
        self.runs.clear()
        for tp in partitions:
            self._timers_held.pop((tp.topic, tp.partition), None)
        log.info("revoked partitions %s", sorted((tp.topic, tp.partition) for tp in partitions))

    # -- the loop -------------------------------------------------------------------------------------------
    def _iteration(self) -> None:
        assert self._consumer is not None
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
            self._ready = False
            self._resubscribe()
            return
        if not self._ready and self._consumer.assignment():
            self._ready = True  # the poll that assigned partitions restored them before returning
        now = _now_ms()
        if self.metrics.due_for_refresh():
            self._refresh_metrics(now)
        due = self.stores.due_timers(now, self.config.timer_batch)
        if due and self._timers_held:
            due = self._timers_not_held(due)
        if not msgs and not due:
            # An idle processor commits nothing, and only poll/flush hand over the producer's queued
            # librdkafka log lines (ADR 0022): a broker lost while idle must not be heard of only later.
            self.transactions.current().poll(0)
            if self.output.dispatch is not None:
                self.output.dispatch.poll()
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
            elif refused := access.denied(
                self.app.settings, KafkaException(err), "processor", self._consuming()
            ):
                raise refused  # an ACL is missing: retrying cannot help (ADR 0021)
            else:
                self.faults.fault("consume", err.str())
        if records:
            self.faults.recovered("consume")
        return records

    def _consuming(self) -> str:
        inputs = ", ".join([self.topics.inbox, self.topics.keyed, *self.topics.sources])
        return f"consuming {inputs} in group {self.app.name}.processors"

    def _linger(self, msgs: list[Message]) -> None:
        """Add records that arrive within ``batch_linger_ms`` of the first, up to ``max_batch``."""
        assert self._consumer is not None
        deadline = time.monotonic() + self.config.batch_linger_ms / 1000
        while len(msgs) < self.config.max_batch:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            msgs.extend(self._consumer.consume(self.config.max_batch - len(msgs), left))

    def _transaction(self, msgs: list[Message], due: list[DueTimer], now_ms: int) -> None:
        assert self._consumer is not None
        txn, topics = self.transactions, self.topics
        positions: dict[tuple[str, int], int] = {}
        # Past the producer's transaction.timeout.ms the coordinator aborts the transaction anyway: stop
        # retrying send_offsets then, abort, and poll the consumer again (a group that is rebalancing waits
        # for this instance to rejoin, which it cannot do while stuck here).
        began = time.monotonic()
        give_up_at = began + txn.timeout_s
        handled = len(msgs)
        self.handling.start(txn.timeout_s)
        self.run_task.spans.begin()
        try:
            txn.begin()
            for i, msg in enumerate(msgs):
                if i and self.handling.over():
                    self._leave_for_next_transaction(msgs[i:])
                    handled = i
                    due = []  # due timers are found again by the next iteration
                    break
                topic, p = msg.topic() or "", msg.partition() or 0
                if not self.stores.owns(topic, p):
                    continue  # revoked in this very poll
                positions[(topic, p)] = (msg.offset() or 0) + 1
                if topic == topics.inbox:
                    self.run_task.handle(msg, now_ms)
                elif topic == topics.keyed:
                    self.keyed_task.handle(msg, now_ms)
                else:
                    self.source_task.handle(msg, now_ms)
            for topic, p, key, ident, tag in due:
                if not self.stores.owns(topic, p):
                    continue
                if topic == topics.inbox:
                    self.run_task.fire_timer(p, key, ident, tag, now_ms)
                elif topic == topics.keyed:
                    self.keyed_task.fire_timer(p, key, ident, tag, now_ms)
            if self.output.dispatch is not None:  # the batch's commands, ahead of everything below
                self.output.dispatch.release()
            self.stores.produce_changelog(self.output)
            if positions:
                offsets = [TopicPartition(t, p, off) for (t, p), off in positions.items()]
                txn.send_offsets(offsets, self._consumer.consumer_group_metadata(), give_up_at)
            if self.output.dispatch is not None:  # every command this batch sent is on the log before
                self.output.dispatch.confirm(max(1.0, give_up_at - time.monotonic()))  # it commits
            txn.commit()
        except (KafkaException, CallStuckError) as exc:
            self._on_transaction_error(exc, positions)
            return
        except SystemError as exc:
            # A fatal producer error raised while librdkafka was calling a delivery callback surfaces as
            # SystemError with the KafkaException as its cause.
            cause = exc.__cause__ or exc.__context__
            if not isinstance(cause, KafkaException):
                try:  # find out what state the producer is in: a fenced one refuses to abort
                    txn.current().abort_transaction(10)
                except KafkaException as abort_exc:
                    cause = abort_exc
                else:
                    raise
            self._on_transaction_error(cause, positions)
            return
        self.stores.commit(positions)
        self.metrics.committed(handled, time.monotonic() - began)
        self.run_task.spans.committed()  # only now: an aborted batch's spans are derived again, not emitted
        self.stats.transactions += 1
        self.faults.recovered("transaction")

    def _refresh_metrics(self, now_ms: int) -> None:
        """Sample lag, timers and store sizes (`metrics.REFRESH_S` apart), between transactions: this
        thread owns the consumer and the stores, which the scrape thread must not touch."""
        assert self._consumer is not None
        if self._lag.refresh(self._consumer):
            self.faults.recovered_if_quiet("consume")  # an idle app gets no record to close it
        stores = [("run", p, s) for p, s in self.stores.run_stores.items()]
        stores += [("keyed", p, s) for p, s in self.stores.keyed_stores.items()]
        self.metrics.refresh_stores(stores, now_ms)

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

    def _on_transaction_error(
        self, exc: KafkaException | CallStuckError, positions: dict[tuple[str, int], int]
    ) -> None:
        """Anything short of fatal: abort, forget the batch's writes, rewind and process it again."""
        if self.output.dispatch is not None:  # its commands may be out: its inputs come before any timer
            self.output.dispatch.discard()
            for tp, offset in positions.items():
                self._timers_held[tp] = max(offset, self._timers_held.get(tp, 0))
                self._holds_until = time.monotonic() + TIMER_HOLD_MAX_S
        if isinstance(exc, CallStuckError):
            self.transactions.replace_stuck(exc)
            replaced = True
        else:
            replaced = self.transactions.fenced_if_fatal(exc)
        self.faults.fault("transaction", f"aborting it and reprocessing the batch: {exc}")
        err = error_of(exc)
        if err is not None and err.code() == KafkaError.MSG_SIZE_TOO_LARGE:
            # A record passed the size check but Kafka refused it (a topic's limit lowered since start-up,
            # or overhead we did not count). Lowering the limit makes the check catch it on reprocessing,
            # turning it into an outcome (failed step, parked run, dead letter) instead of aborting forever.
            self.output.record_limit = self.output.record_limit.lowered()
            log.error(
                "Kafka refused a record as too large (%s); record limit lowered to %d bytes. Check the "
                "topics' max.message.bytes against the producer's message.max.bytes.",
                exc,
                self.output.record_limit.max_bytes,
            )
        self.stats.aborts += 1
        self.metrics.aborted()
        self.run_task.spans.aborted()
        if not replaced:
            self.transactions.abort()
        self.stores.discard()
        self.runs.clear()
        if isinstance(exc, KafkaException):  # a missing ACL: reprocessing would be denied again (ADR 0021)
            doing = f"writing a transaction to {', '.join(self._output_topics())}"
            refused = access.denied(self.app.settings, exc, "processor", doing)
            if refused is not None:
                raise refused
        if self._fatal is None:  # a dead consumer is replaced instead; the new one starts at the commits
            self._rewind()

    def _hold_timers_after_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Hold the timers of newly assigned stateful partitions until their end offsets as of now.

        Why: the previous owner (this instance before an abort or a crash, or another one) may have handled
        records past the committed offsets and sent their commands early (ADR 0025). Those records are
        handled again before any of the partition's timers, as they were then, so the same attempts are
        decided. Records after the end offset were never handled by anyone.
        """
        if self.output.dispatch is None:
            return
        stateful = (self.topics.inbox, self.topics.keyed)
        for tp in partitions:
            if tp.topic not in stateful:
                continue
            query = partial(consumer.get_watermark_offsets, tp, timeout=10, cached=False)
            _, high = self._retry.call("reading end offsets", query, not_fatal)
            if high > 0:
                self._timers_held[(tp.topic, tp.partition)] = high
                self._holds_until = time.monotonic() + TIMER_HOLD_MAX_S

    def _timers_not_held(self, due: list[DueTimer]) -> list[DueTimer]:
        """``due`` without the timers of partitions still held; holds whose offset is passed are lifted."""
        assert self._consumer is not None
        if time.monotonic() > self._holds_until:
            log.warning(
                "timers held for early dispatch released after %.0f s: %s",
                TIMER_HOLD_MAX_S,
                self._timers_held,
            )
            self._timers_held.clear()
            return due
        held = [TopicPartition(t, p) for (t, p) in self._timers_held]
        try:
            positions = self._consumer.position(held)
        except KafkaException:  # not assigned any more (revoked in this poll): its hold goes with it
            positions = []
        for tp in positions:
            if tp.offset >= 0 and tp.offset >= self._timers_held.get((tp.topic, tp.partition), 0):
                del self._timers_held[(tp.topic, tp.partition)]
        if not self._timers_held:
            return due
        return [timer for timer in due if (timer[0], timer[1]) not in self._timers_held]

    def _rewind(self) -> None:
        """Seek back to the committed positions so the aborted batch is consumed again."""
        consumer = self._consumer
        assert consumer is not None
        try:
            # Bounded: after a broker restart librdkafka (2.16) can keep a dead group-coordinator handle and
            # time this call out for ever (seen in test_broker_outage: 150 s and counting, librdkafka#5511).
            # A new consumer starts at the committed offsets anyway, which is all a rewind is for.
            committed = self._retry.call(
                "reading committed offsets",
                lambda: consumer.committed(consumer.assignment(), timeout=REWIND_TIMEOUT_S),
                not_fatal,
                give_up_at=time.monotonic() + REWIND_TIMEOUT_S,
            )
        except KafkaException as exc:
            # The consumer died or cannot reach its coordinator: the next iteration replaces it.
            self._fatal = error_of(exc) or KafkaError(KafkaError._FATAL)
            return
        for tp in committed:
            if tp.offset >= 0:
                consumer.seek(TopicPartition(tp.topic, tp.partition, tp.offset))
            else:
                consumer.seek(TopicPartition(tp.topic, tp.partition, OFFSET_BEGINNING))


def _now_ms() -> int:
    return int(time.time() * 1000)


def _admin_retriable(exc: BaseException) -> bool:
    """The topic check failed because the cluster is not reachable or not settled yet."""
    if not isinstance(exc, TopicAdminError | KafkaException):
        return False
    err = error_of(exc)
    return err is None or is_transient(err)
