"""The processor's per-record handling without a broker: a recording producer and real stores in a temp dir.

What needs Kafka itself (transactions, outages, the client's wait) is in tests/integration.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Message, TopicPartition

from orchestrator import App, Settings, WorkflowContext
from orchestrator._engine import events as ev
from orchestrator._engine.limits import RECORD_OVERHEAD_BYTES, RecordLimit
from orchestrator._engine.processor import Processor, ProcessorConfig
from orchestrator._engine.records import decode_dead_letter
from orchestrator._engine.store import PartitionStore


class RecordingProducer:
    """Stands in for the transactional producer: keeps what would have been produced."""

    def __init__(self) -> None:
        self.records: list[tuple[str, bytes | None, bytes | None]] = []

    def produce(self, topic: str, value: bytes | None = None, key: bytes | None = None, **_: Any) -> None:
        self.records.append((topic, key, value))

    def poll(self, timeout: float = 0) -> int:
        return 0

    def to(self, topic: str) -> list[bytes | None]:
        return [value for t, _, value in self.records if t == topic]


@pytest.fixture
def app() -> App:
    return App("unit", settings=Settings(bootstrap_servers="127.0.0.1:1", partitions=1))


@pytest.fixture
def processor(app: App, tmp_path: Path) -> Iterator[Processor]:
    proc = Processor(app, ProcessorConfig(instance_id="u0", state_dir=tmp_path))
    proc.transactions.producer = RecordingProducer()  # type: ignore[assignment]
    proc.stores.run_stores[0] = PartitionStore(tmp_path / "p0", 0)
    proc.stores.keyed_stores[0] = PartitionStore(tmp_path / "k0", 0)
    yield proc
    proc._shutdown()


def _produced(proc: Processor) -> RecordingProducer:
    producer = proc.transactions.producer
    assert isinstance(producer, RecordingProducer)
    return producer


def test_keyed_record_that_raises_midway_leaves_none_of_its_writes(
    processor: Processor, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = processor.stores.keyed_stores[0]
    store.put(b"e/earlier", b"from an earlier record of the batch")

    def half_done(store: PartitionStore, event: ev.Event, now_ms: int) -> Any:
        store.put(b"e/half", b"written before the bug")
        store.delete(b"e/earlier")
        raise RuntimeError("router bug")

    monkeypatch.setattr(processor.router, "handle", half_done)
    body = ev.DomainEvent("approved", "k1", b"{}", "test")
    value = ev.encode_event(ev.Event("d1", "", "", 1, body))
    msg = Message(topic=processor.topics.keyed, partition=0, offset=7, key=b"approved\x1fk1", value=value)

    processor.keyed_task.handle(msg, 1_000)

    assert store.dirty() == {b"e/earlier": b"from an earlier record of the batch"}
    (letter,) = [decode_dead_letter(v) for v in _produced(processor).to(processor.topics.dlq)]
    assert letter.error_type == "InternalError.RuntimeError" and letter.source_offset == 7


class FakeConsumer:
    """Enough of a group consumer for ``Processor._transaction``: records seeks."""

    def __init__(self) -> None:
        self.seeks: list[tuple[str, int, int]] = []

    def consumer_group_metadata(self) -> object:
        return object()

    def seek(self, tp: Any) -> None:
        self.seeks.append((tp.topic, tp.partition, tp.offset))

    def close(self) -> None: ...


class TransactionalRecorder(RecordingProducer):
    def __init__(self) -> None:
        super().__init__()
        self.offsets: list[list[tuple[str, int, int]]] = []

    def begin_transaction(self) -> None: ...

    def send_offsets_to_transaction(self, offsets: Any, group: Any, timeout: float) -> None:
        self.offsets.append([(tp.topic, tp.partition, tp.offset) for tp in offsets])

    def flush(self, timeout: float = 0) -> int:
        return 0

    def commit_transaction(self, timeout: float = 0) -> None: ...


class FakeClock:
    """The processor's monotonic clock; local steps move it, so no test depends on real time."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_local_steps_stop_taking_the_transaction_past_its_time_share(app: App, processor: Processor) -> None:
    from orchestrator._engine.processor import handling_time

    clock = FakeClock()
    share = handling_time.BATCH_TIME_SHARE * processor.transactions.timeout_s

    @app.step(local=True)
    def slow(x: int) -> int:
        clock.now += share * 0.3  # each attempt takes 30 % of the batch's share of the transaction
        return x + 1

    @app.workflow
    async def chain(ctx: WorkflowContext, x: int) -> int:
        for _ in range(10):
            x = await ctx.step(slow, x)
        return x

    processor.handling.clock = clock
    processor._consumer = FakeConsumer()  # type: ignore[assignment]
    processor.transactions.producer = producer = TransactionalRecorder()  # type: ignore[assignment]
    msgs = []
    for i in range(3):
        start = ev.Event(f"r{i}/start", f"r{i}", "chain", 1, ev.StartRun(input=app.data.encode(0)))
        msgs.append(
            Message(
                topic=processor.topics.inbox,
                partition=0,
                offset=10 + i,
                key=b"r",
                value=ev.encode_event(start),
            )
        )

    processor._transaction(msgs, [], 1_000)

    # r0 folded three results in (90 % of the share); the fourth attempt ran past it, so its result goes
    # through the inbox. r1 and r2 are left for the next transaction: the consumer is sent back to r1 and
    # only r0's offset is committed.
    inbox = [ev.decode_event(v) for v in producer.to(processor.topics.inbox)]
    assert [(e.run_id, e.body) for e in inbox if isinstance(e.body, ev.StepCompleted)] == [
        ("r0", inbox[0].body)
    ]
    assert isinstance(inbox[0].body, ev.StepCompleted) and inbox[0].body.position == 3
    assert processor._consumer.seeks == [(processor.topics.inbox, 0, 11)]  # type: ignore[union-attr]
    assert producer.offsets == [[(processor.topics.inbox, 0, 11)]]
    history = [ev.decode_event(v) for v in producer.to(processor.topics.history)]
    assert [e.body.position for e in history if isinstance(e.body, ev.StepCompleted)] == [0, 1, 2]
    assert {e.run_id for e in history} == {"r0"}


def _inbox_msg(proc: Processor, event: ev.Event, offset: int) -> Message:
    return Message(
        topic=proc.topics.inbox,
        partition=0,
        offset=offset,
        key=event.run_id.encode(),
        value=ev.encode_event(event),
    )


def _limit(room: int) -> RecordLimit:
    """A record limit leaving ``room`` bytes for key and value."""
    return RecordLimit(room + RECORD_OVERHEAD_BYTES, "max.message.bytes of topic unit.history")


def test_oversize_start_is_dead_lettered_and_its_client_told(app: App, processor: Processor) -> None:
    from orchestrator._engine.records import decode_outcome

    @app.workflow
    async def takes(ctx: WorkflowContext, text: str) -> str:
        return text

    processor.output.record_limit = _limit(2_000)
    start = ev.Event("big/start", "big", "takes", 1, ev.StartRun(input=app.data.encode("x" * 3_000)))
    processor.run_task.handle(_inbox_msg(processor, start, 5), 1_000)

    produced = _produced(processor)
    assert produced.to(processor.topics.history) == [] and processor.stores.run_stores[0].dirty() == {}
    (letter,) = [decode_dead_letter(v) for v in produced.to(processor.topics.dlq)]
    # too large for the DLQ as well: the letter keeps where the record is, not its bytes
    assert letter.error_type == "RecordTooLarge.RecordNotCopied" and letter.value is None
    (outcome,) = [decode_outcome(v) for v in produced.to(processor.topics.outcomes)]
    assert (outcome.status, outcome.error_type) == ("failed", "RecordTooLarge")
    assert "max.message.bytes" in outcome.error_message


def test_oversize_signal_parks_the_run_and_keeps_the_signal_as_a_dead_letter(
    app: App, processor: Processor
) -> None:
    from orchestrator._engine.state import decode_state
    from orchestrator._engine.store import run_key

    @app.workflow
    async def waits(ctx: WorkflowContext) -> str:
        got = await ctx.wait_for_event("go", key="k")
        return str(got)

    processor.output.record_limit = _limit(4_000)
    start = ev.Event("w/start", "w", "waits", 1, ev.StartRun(input=app.data.encode(None)))
    processor.run_task.handle(_inbox_msg(processor, start, 1), 1_000)
    signal = ev.Event("w/sig", "w", "waits", 2, ev.Signal("go", "k", app.data.encode("y" * 3_000)))
    processor.run_task.handle(_inbox_msg(processor, signal, 2), 1_001)

    state = decode_state(processor.stores.run_stores[0].get(run_key("w")))
    assert (state.status, state.error_type) == ("parked", "record_too_large")
    (letter,) = [decode_dead_letter(v) for v in _produced(processor).to(processor.topics.dlq)]
    assert letter.error_type == "RecordTooLarge" and letter.source_offset == 2


class ScriptedProducer(TransactionalRecorder):
    """A transactional producer whose abort/commit fail as scripted, one exception per call."""

    def __init__(self, aborts: list[Exception] | None = None, commits: list[Exception] | None = None) -> None:
        super().__init__()
        self.aborts, self.commits = list(aborts or []), list(commits or [])
        self.calls: list[str] = []

    def init_transactions(self, timeout: float) -> None:
        self.calls.append("init")

    def abort_transaction(self, timeout: float = 0) -> None:
        self.calls.append("abort")
        if self.aborts:
            raise self.aborts.pop(0)

    def commit_transaction(self, timeout: float = 0) -> None:
        self.calls.append("commit")
        if self.commits:
            raise self.commits.pop(0)

    def purge(self) -> None: ...


class RewindingConsumer(FakeConsumer):
    def assignment(self) -> list[Any]:
        return []

    def committed(self, partitions: Any, timeout: float = 0) -> list[Any]:
        return []


def _kafka_error(code: int, **flags: bool) -> Exception:
    from confluent_kafka import KafkaError, KafkaException

    return KafkaException(KafkaError(code, "scripted", **flags))


def _ready(processor: Processor, producer: ScriptedProducer) -> None:
    processor.transactions.producer = producer  # type: ignore[assignment]
    processor._consumer = RewindingConsumer()  # type: ignore[assignment]
    processor._running = True
    processor._retry.sleep = lambda _: None


def test_commit_and_abort_that_time_out_are_called_again(processor: Processor) -> None:
    from confluent_kafka import KafkaError

    timed_out = _kafka_error(KafkaError._TIMED_OUT, retriable=True)
    producer = ScriptedProducer(
        commits=[timed_out, timed_out, _kafka_error(KafkaError._MSG_TIMED_OUT, txn_requires_abort=True)],
        aborts=[timed_out, timed_out],  # "retry call to resume": the observed failure of issue 12
    )
    _ready(processor, producer)
    processor.stores.run_stores[0].put(b"r/x", b"uncommitted")

    processor._transaction([], [(processor.topics.inbox, 0, b"t/none", "gone", "retry:0")], 1_000)

    assert producer.calls == ["commit", "commit", "commit", "abort", "abort", "abort"]
    assert processor.stores.run_stores[0].dirty() == {}  # the aborted batch's writes are gone
    assert processor.stats.aborts == 1


def test_fatal_producer_error_that_is_not_a_fence_replaces_the_producer(
    processor: Processor, monkeypatch: pytest.MonkeyPatch
) -> None:
    from confluent_kafka import KafkaError

    from orchestrator._engine.processor import transactions as transactions_module

    invalid_state = _kafka_error(KafkaError.INVALID_TXN_STATE, fatal=True)
    old = ScriptedProducer(
        commits=[_kafka_error(KafkaError._TIMED_OUT, retriable=True)], aborts=[invalid_state]
    )
    new = ScriptedProducer()
    monkeypatch.setattr(transactions_module, "Producer", lambda config: new)
    _ready(processor, old)
    # The commit times out, is called again and then needs an abort, which fails fatally (the coordinator
    # had aborted the transaction while the broker was away).
    old.commits.append(_kafka_error(KafkaError._MSG_TIMED_OUT, txn_requires_abort=True))

    processor._transaction([], [(processor.topics.inbox, 0, b"t/none", "gone", "retry:0")], 1_000)

    assert processor.transactions.producer is new and new.calls == ["init"]


def test_a_fenced_producer_stops_the_processor(processor: Processor) -> None:
    from confluent_kafka import KafkaError

    from orchestrator import ProcessorFencedError

    _ready(processor, ScriptedProducer(commits=[_kafka_error(KafkaError._FENCED, fatal=True)]))
    with pytest.raises(ProcessorFencedError, match="fenced"):
        processor._transaction([], [(processor.topics.inbox, 0, b"t/none", "gone", "retry:0")], 1_000)


def test_internal_error_firing_a_timer_parks_the_run_and_resume_re_arms_it(
    app: App, processor: Processor, monkeypatch: pytest.MonkeyPatch
) -> None:
    from orchestrator._engine.processor import run_task as run_task_module
    from orchestrator._engine.state import decode_state
    from orchestrator._engine.store import TIMER_PREFIX, run_key

    @app.workflow
    async def naps(ctx: WorkflowContext) -> str:
        await ctx.sleep("1s")
        return "awake"

    start = ev.Event("n/start", "n", "naps", 1, ev.StartRun(input=app.data.encode(None)))
    processor.run_task.handle(_inbox_msg(processor, start, 1), 1_000)
    store = processor.stores.run_stores[0]
    store.commit(2, None)
    ((key, _, run_id, tag),) = store.due_timers(10_000, 10)

    def broken(*args: Any) -> Any:
        raise RuntimeError("timer bug")

    # The core never raises (it parks runs itself); what can still fail is outside it, e.g. encoding.
    monkeypatch.setattr(run_task_module, "encode_state", broken)
    processor.run_task.fire_timer(0, key, run_id, tag, 5_000)

    state = decode_state(store.get(run_key("n")))
    assert (state.status, state.error_type) == ("parked", "internal_error")
    assert "timer bug" in state.error_message
    assert [k for k, v in store.scan_merged(TIMER_PREFIX)] == []  # a parked run has no timers
    monkeypatch.undo()
    resume = ev.Event("n/resume", "n", "naps", 6, ev.ResumeRun("fixed"))
    processor.run_task.handle(_inbox_msg(processor, resume, 2), 6_000)
    assert len(store.scan_merged(TIMER_PREFIX)) == 1  # the resumed run re-armed its sleep


def test_admitted_step_attempts_are_produced_as_the_keyed_stage_got_them(processor: Processor) -> None:
    from orchestrator._core.effects import Effects, EncodedCommand

    fx = Effects(commands=[("default", EncodedCommand("r1", b"the command, in wire form"))])
    topic = processor.output.tasks_topic("default")
    assert processor.output.records(fx) == [(topic, b"the command, in wire form", b"r1", -1)]


class StuckProducer(ScriptedProducer):
    """A producer whose send_offsets_to_transaction blocks until released (librdkafka#5456/#5511)."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()

    def begin_transaction(self) -> None:
        self.calls.append("begin")

    def send_offsets_to_transaction(self, offsets: Any, group: Any, timeout: float) -> None:
        self.calls.append("send_offsets")
        self.release.wait()


class CommittedConsumer(FakeConsumer):
    def assignment(self) -> list[Any]:
        return [TopicPartition("unit.inbox", 0)]

    def committed(self, partitions: Any, timeout: float = 0) -> list[Any]:
        return [TopicPartition(tp.topic, tp.partition, 10) for tp in partitions]


def test_a_producer_stuck_in_send_offsets_is_replaced_and_the_batch_processed_again(
    app: App, processor: Processor, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Seen in test_worker_faults: after a broker restart the first transaction sat in send_offsets for
    minutes; the processor must give up on that producer, not wait for ever."""
    from orchestrator._engine.processor import transactions as transactions_module

    @app.workflow
    async def noop(ctx: WorkflowContext, x: int) -> int:
        return x

    stuck, new = StuckProducer(), ScriptedProducer()
    monkeypatch.setattr(transactions_module, "Producer", lambda config: new)
    monkeypatch.setattr(transactions_module, "STUCK_CALL_GRACE_S", 0.05)
    _ready(processor, stuck)
    processor._consumer = CommittedConsumer()  # type: ignore[assignment]
    processor.transactions.timeout_s = 0.1  # send_offsets gets its minimum timeout, 1 s
    start = ev.Event("r/start", "r", "noop", 1, ev.StartRun(input=app.data.encode(1)))
    msg = _inbox_msg(processor, start, 10)
    try:
        processor._transaction([msg], [], 1_000)  # returns although send_offsets never does
    finally:
        stuck.release.set()

    assert processor.transactions.producer is new and new.calls == ["init"]
    # Nothing else is asked of the stuck producer's transaction (an abort would be a conflicting call).
    assert "abort" not in stuck.calls and "commit" not in stuck.calls
    assert processor.stats.aborts == 1 and processor.stats.transactions == 0
    assert processor.stores.run_stores[0].dirty() == {}  # the batch's writes are discarded ...
    assert processor._consumer.seeks == [("unit.inbox", 0, 10)]  # type: ignore[union-attr]

    processor._transaction([msg], [], 1_000)  # ... and it is processed again with the new producer

    assert new.offsets == [[("unit.inbox", 0, 11)]] and new.calls[-1] == "commit"
    assert processor.stats.transactions == 1


def test_a_fence_of_a_transaction_older_than_its_timeout_renews_the_producer(
    processor: Processor, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The coordinator aborts a transaction that outlives transaction.timeout.ms (a broker outage in the
    middle of one) and bumps the epoch: the next call fails as fenced, with no other instance around (seen
    in test_broker_outage). A fresh transaction fenced is a real duplicate: test_a_fenced_producer_stops."""
    from confluent_kafka import KafkaError

    from orchestrator._engine.processor import transactions as transactions_module

    fenced = _kafka_error(KafkaError._FENCED, fatal=True)
    old, new = ScriptedProducer(aborts=[fenced]), ScriptedProducer()
    monkeypatch.setattr(transactions_module, "Producer", lambda config: new)
    _ready(processor, old)
    processor.transactions.timeout_s = 0.0  # every transaction is already older than its timeout
    old.commits.append(_kafka_error(KafkaError._MSG_TIMED_OUT, txn_requires_abort=True))

    processor._transaction([], [(processor.topics.inbox, 0, b"t/none", "gone", "retry:0")], 1_000)

    assert processor.transactions.producer is new and new.calls == ["init"]


def test_a_denied_schedule_registration_stops_with_an_access_error(processor: Processor) -> None:
    # Retrying cannot grant an ACL: without the check, start-up retries writing the keyed topic forever.
    from confluent_kafka import KafkaError

    from orchestrator import App
    from orchestrator._engine.access import KafkaAccessError

    async def tick(ctx: WorkflowContext) -> None: ...

    processor.app.workflow(tick, schedule="* * * * *")
    assert isinstance(processor.app, App) and processor.app.schedules
    denied = _kafka_error(KafkaError.TOPIC_AUTHORIZATION_FAILED)
    producer = ScriptedProducer(commits=[denied])
    _ready(processor, producer)

    with pytest.raises(KafkaAccessError, match="denied"):
        processor._register_schedules()
    assert producer.calls == ["commit", "abort"]
