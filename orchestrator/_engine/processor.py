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
from dataclasses import dataclass, field
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
from orchestrator._engine import kafka
from orchestrator._engine.decider import Decider, Effects, timers_of
from orchestrator._engine.events import Event, ScheduleRegister, decode_event, encode_event
from orchestrator._engine.instance_cache import InstanceCache
from orchestrator._engine.limits import dead_letter_copy, record_limit
from orchestrator._engine.local_steps import LocalSteps
from orchestrator._engine.partitioning import partition_for
from orchestrator._engine.records import DeadLetter, encode_command, encode_dead_letter, encode_outcome
from orchestrator._engine.restore import restore
from orchestrator._engine.router import Router, RouterEffects
from orchestrator._engine.sources import SourceError, Translation, translate_each
from orchestrator._engine.state import RunState, decode_state, encode_state
from orchestrator._engine.state_cache import StateCache
from orchestrator._engine.store import PartitionStore, run_key, timer_key
from orchestrator.app import App
from orchestrator.errors import ProcessorFencedError, SchemaError

log = logging.getLogger("orchestrator.processor")

LOCAL_STEPS_PER_INPUT = 64
"""Local step attempts folded in while handling one input; the result of the next goes through the inbox,
so a workflow looping over local steps makes durable progress and cannot hold a batch forever."""


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

    # -- lifecycle ----------------------------------------------------------------------------------------
    def run(self, install_signal_handlers: bool = True) -> None:
        """Process until `stop()` (or SIGTERM/SIGINT); raises ProcessorFencedError if another took over."""
        if install_signal_handlers:
            signal.signal(signal.SIGTERM, lambda *_: self.stop())
            signal.signal(signal.SIGINT, lambda *_: self.stop())
        kafka.ensure_topics(self.app)
        tx_id = f"{self.app.name}.processor.{self.config.instance_id}"
        self._producer = Producer(
            kafka.transactional_producer_config(self.bootstrap, tx_id, **self.config.producer_overrides)
        )
        self._producer.init_transactions(60)
        self._register_schedules()
        self._consumer = Consumer(
            kafka.consumer_config(
                self.bootstrap,
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
        self._running = True
        log.info("processor %s started (transactional id %s)", self.config.instance_id, tx_id)
        try:
            while self._running:
                self._iteration()
        finally:
            self._shutdown()

    def stop(self) -> None:
        self._running = False

    def _on_client_error(self, err: Any) -> None:
        """librdkafka's error callback: a fatal consumer error (e.g. fenced static member) stops the loop."""
        if err.fatal() or err.code() == KafkaError._FATAL:
            self._fatal = err

    def _register_schedules(self) -> None:
        """Declare the app's schedules to the keyed stage (idempotent: unchanged schedules are kept)."""
        if not self.app.schedules:
            return
        assert self._producer is not None
        self._producer.begin_transaction()
        for schedule in self.app.schedules.values():
            body = ScheduleRegister(schedule.workflow, schedule.cron, schedule.timezone, schedule.missed)
            event = Event(f"schedule/{schedule.workflow}", "", schedule.workflow, _now_ms(), body)
            self._to_keyed(f"schedule\x1f{schedule.workflow}", event)
        self._producer.commit_transaction(30)

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
        self.stats.restored_records += restore(self.bootstrap, targets)
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
        if self._fatal is not None:
            raise ProcessorFencedError(
                f"processor {self.config.instance_id}: fatal consumer error ({self._fatal.str()}); another "
                "instance with the same id took its place. Stopping."
            )
        for msg in msgs:
            err = msg.error()
            if err is not None and (err.fatal() or err.code() == KafkaError._FATAL):
                raise ProcessorFencedError(
                    f"processor {self.config.instance_id}: fatal consumer error ({err.str()}); another "
                    "instance with the same id took its place. Stopping."
                )
        now = _now_ms()
        due = self._due_timers(now)
        if not msgs and not due:
            return
        self._transaction(msgs, due, now)

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
        producer.begin_transaction()
        try:
            for msg in msgs:
                if msg.error() is not None:
                    log.warning("consumer error: %s", msg.error())
                    continue
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
                producer.send_offsets_to_transaction(offsets, self._consumer.consumer_group_metadata(), 30)
            producer.flush(30)
            producer.commit_transaction(30)
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

    def _on_transaction_error(self, exc: KafkaException) -> None:
        assert self._consumer is not None and self._producer is not None
        if kafka.is_fatal(exc):
            raise ProcessorFencedError(
                f"processor {self.config.instance_id} was fenced or hit a fatal producer error ({exc}); "
                "another instance owns its partitions now. Stopping."
            ) from exc
        log.warning("transaction aborted, will reprocess the batch: %s", exc)
        self.stats.aborts += 1
        try:
            self._producer.abort_transaction(30)
        except KafkaException as abort_exc:
            if kafka.is_fatal(abort_exc):
                raise ProcessorFencedError(str(abort_exc)) from abort_exc
            raise
        for _, _, stores in self._store_sets():
            for store in stores.values():
                store.discard()
        self._changelog_offsets.clear()
        self.cache.clear()
        self.states.clear()
        self._rewind()

    def _rewind(self) -> None:
        """Seek back to the committed positions so the aborted batch is consumed again."""
        assert self._consumer is not None
        for tp in self._consumer.committed(self._consumer.assignment(), timeout=30):
            if tp.offset >= 0:
                self._consumer.seek(TopicPartition(tp.topic, tp.partition, tp.offset))
            else:
                self._consumer.seek(TopicPartition(tp.topic, tp.partition, OFFSET_BEGINNING))

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
        store = self.stores[p]
        try:
            state = self._load(store, event.run_id)
            old_timers = timers_of(state) if state is not None else set()
            new_state, fx = self.decider.handle(state, event, now_ms)
            if new_state is not None:
                self._run_local(new_state, fx)
        except Exception as exc:
            log.exception("internal error on %s", event.kind)
            self.cache.evict(event.run_id)
            self.states.evict(event.run_id)  # it may be half-changed: the store has its last good bytes
            self._dead_letter(msg, f"InternalError.{type(exc).__name__}", str(exc), now_ms)
            return
        if fx.dead_letter:
            self._dead_letter(msg, "Rejected", fx.dead_letter, now_ms)
        if fx.ignored:
            self.stats.ignored += 1
            log.debug("ignored %s for %s: %s", event.kind, event.run_id, fx.ignored)
        if new_state is not None and fx.history:  # every state change is recorded as history
            self._save(store, new_state, old_timers)
        else:  # nothing recorded, so nothing may have changed: re-read the store's bytes next time
            self.states.evict(event.run_id)
        self._emit(p, fx)

    def _handle_keyed(self, msg: Message, now_ms: int) -> None:
        """A record of the keyed stage; dead-lettered (its offset committed all the same) when it is not one
        of ours, not a request the stage takes, or the stage fails on it, so it never stops the loop."""
        store = self.keyed_stores[msg.partition() or 0]
        try:
            event = decode_event(msg.value())
            fx = self.router.handle(store, event, now_ms)
        except SchemaError as exc:
            error_type, reason = "SchemaError", str(exc)
        except Exception as exc:
            log.exception("internal error in the keyed stage")
            error_type, reason = f"InternalError.{type(exc).__name__}", str(exc)
        else:
            if fx.ignored:
                log.debug("keyed stage ignored %s: %s", event.kind, fx.ignored)
            self._emit_routed(fx)
            if not fx.rejected:
                return
            error_type, reason = "Rejected", fx.rejected
        dlq_limit = record_limit(self.bootstrap, (self.dlq,), self.config.producer_overrides)
        letter, error_type, reason = dead_letter_copy(msg, error_type, reason, dlq_limit)
        self._dead_letter(letter, error_type, reason, now_ms)

    def _handle_source(self, msg: Message, now_ms: int) -> None:
        """A record of a user's topic: the requests its triggers and sources make; dead-lettered (its offset
        committed all the same) when one of them cannot use it, so a poison record never stops the loop."""
        overrides = self.config.producer_overrides
        # Requests travel on through the keyed stage, the inbox and the history: none may refuse them.
        engine_topics = (self.inbox, self.keyed, self.history, self.changelog, self.keyed_changelog)
        limit = record_limit(self.bootstrap, engine_topics, overrides)  # outside: not the record's fault
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
            dlq_limit = record_limit(self.bootstrap, (self.dlq,), overrides)
            letter, error_type, reason = dead_letter_copy(msg, error_type, result.reason, dlq_limit)
            self._dead_letter(letter, error_type, reason, now_ms)

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
        except Exception:
            log.exception("internal error firing timer %s of %s; dropping the timer", tag, run_id)
            self.cache.evict(run_id)
            self.states.evict(run_id)
            store.delete(key)
            return
        self.stats.timers += 1
        self._save(store, state, old_timers)
        store.delete(key)  # stale or fired: either way it is done (a re-armed timer has a new key)
        new_timers = timers_of(state)
        for due, t in new_timers:
            store.put(timer_key(due, run_id, t), b"")
        self._emit(p, fx)

    def _fire_keyed_timer(self, p: int, key: bytes, ident: str, tag: str, now_ms: int) -> None:
        store = self.keyed_stores[p]
        store.delete(key)
        try:
            fx = self.router.fire_timer(store, ident, tag, now_ms)
        except Exception:
            log.exception("internal error firing keyed timer %s; dropping it", tag)
            return
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
                if budget <= 0:
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

    def _save(self, store: PartitionStore, state: RunState, old_timers: set[tuple[int, str]]) -> None:
        store.put(run_key(state.run_id), encode_state(state))
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
    def _emit(self, p: int, fx: Effects) -> None:
        producer = self._producer
        assert producer is not None
        for event in fx.history:
            producer.produce(self.history, encode_event(event), event.run_id.encode(), partition=p)
        for queue, cmd in fx.commands:
            producer.produce(self._tasks_topic(queue), encode_command(cmd), cmd.run_id.encode())
        for outcome in fx.outcomes:
            producer.produce(self.outcomes, encode_outcome(outcome), outcome.run_id.encode(), partition=p)
        for rk, event in fx.keyed:
            self._to_keyed(rk, event)
        for event in fx.inbox:
            self._to_inbox(event)

    def _emit_routed(self, fx: RouterEffects) -> None:
        assert self._producer is not None
        for event in fx.inbox:
            self._to_inbox(event)
        for routing, event in fx.keyed:
            self._to_keyed(routing, event)
        for outcome in fx.outcomes:
            p = partition_for(outcome.run_id, self.partitions)
            self._producer.produce(
                self.outcomes, encode_outcome(outcome), outcome.run_id.encode(), partition=p
            )
        for queue, run_id, command in fx.commands:  # step attempts the admission stage let through
            self._producer.produce(self._tasks_topic(queue), command, run_id.encode())

    def _tasks_topic(self, queue: str) -> str:
        """Cached: the name is built from the topic templates and checked, ~2 % of the loop's CPU per call."""
        topic = self._task_topics.get(queue)
        if topic is None:
            topic = self._task_topics[queue] = topology.tasks_topic(self.app.name, queue)
        return topic

    def _to_inbox(self, event: Event) -> None:
        assert self._producer is not None
        self._producer.produce(
            self.inbox,
            encode_event(event),
            event.run_id.encode(),
            partition=partition_for(event.run_id, self.partitions),
        )

    def _to_keyed(self, routing: str, event: Event) -> None:
        assert self._producer is not None
        self._producer.produce(
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
                        producer.produce(
                            changelog, value, key, partition=p, on_delivery=self._changelog_delivered
                        )
                    else:
                        producer.produce(changelog, value, key, partition=p)

    def _changelog_delivered(self, err: Any, msg: Message) -> None:
        if err is None:
            self._changelog_offsets[(msg.topic() or "", msg.partition() or 0)] = (msg.offset() or 0) + 1

    def _dead_letter(self, msg: Message, error_type: str, reason: str, now_ms: int) -> None:
        assert self._producer is not None
        self.stats.dead_letters += 1
        log.warning(
            "dead-lettered %s[%d]@%d: %s: %s", msg.topic(), msg.partition(), msg.offset(), error_type, reason
        )
        letter = DeadLetter(
            source_topic=msg.topic() or "",
            source_partition=msg.partition() or 0,
            source_offset=msg.offset() or 0,
            key=msg.key(),
            value=msg.value(),
            error_type=error_type,
            reason=reason,
            timestamp_ms=now_ms,
            component=f"processor:{self.config.instance_id}",
        )
        self._producer.produce(self.dlq, encode_dead_letter(letter), msg.key())


def _now_ms() -> int:
    return int(time.time() * 1000)


__all__ = ["Event", "Processor", "ProcessorConfig", "ProcessorStats"]
