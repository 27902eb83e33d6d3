"""The worker's handling of one command, with a scripted producer: what is reported, what is never re-run,
and that the command's offset always completes, after its report is delivered and not before."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from confluent_kafka import KafkaError, TopicPartition
from kafka_fakes import TIMED_OUT, FakeProducer

from orchestrator import App, Settings
from orchestrator._engine import worker as worker_module
from orchestrator._engine.events import Event, StepCompleted, decode_event, encode_event
from orchestrator._engine.outbox import Outbox
from orchestrator._engine.records import StepCommand, decode_dead_letter, encode_command
from orchestrator._engine.worker import Worker, WorkerConfig

TASKS = "w.tasks.default"


class Msg:
    """What the worker reads of a consumed record."""

    def __init__(self, value: bytes | None, offset: int, key: bytes | None = b"r1") -> None:
        self._value, self._offset, self._key = value, offset, key

    def topic(self) -> str:
        return TASKS

    def partition(self) -> int:
        return 0

    def offset(self) -> int:
        return self._offset

    def key(self) -> bytes | None:
        return self._key

    def value(self) -> bytes | None:
        return self._value

    def error(self) -> None:
        return None


def _app(runs: list[int]) -> App:
    app = App("w", settings=Settings(bootstrap_servers="unused:1", partitions=4))

    @app.step
    async def pay(x: int) -> int:
        runs.append(x)
        return x + 1

    return app


def _command(offset_step: str = "pay", attempt: int = 1) -> bytes:
    return encode_command(
        StepCommand("r1", "wf", 0, offset_step, attempt, b"[5]", "r1/0/pay", scheduled_ms=1)
    )


class Harness:
    def __init__(self, app: App, *plans: list[Any]) -> None:
        self.worker = Worker(app)
        self.producers: list[FakeProducer] = []
        pending = list(plans)

        def make(on_error: Callable[[KafkaError], None]) -> FakeProducer:
            self.producers.append(FakeProducer(pending.pop(0) if pending else [], on_error))
            return self.producers[-1]

        self.outbox = Outbox(make)
        self.worker._outbox = self.outbox
        self.pool = ThreadPoolExecutor(2)

    async def handle(self, msg: Msg) -> None:
        self.worker._tracker.started(msg.topic(), msg.partition(), msg.offset())
        await self.worker._execute(msg, asyncio.get_running_loop(), self.pool)  # type: ignore[arg-type]

    async def pump_until(self, done: Callable[[], bool]) -> None:
        for _ in range(3000):
            if done():
                return
            await asyncio.to_thread(self.outbox.pump, 0.01)
        raise AssertionError("never got there")

    def committable(self) -> dict[tuple[str, int], int]:
        return self.worker._tracker.committable()

    def sent(self) -> list[tuple[str, bytes]]:
        return [(t, v) for p in self.producers for t, v in zip(p.topics, p.produced, strict=True)]


async def test_a_result_that_times_out_is_produced_again_and_the_step_never_reruns() -> None:
    runs: list[int] = []
    h = Harness(_app(runs), [TIMED_OUT, TIMED_OUT, None])
    await h.handle(Msg(_command(), 7))
    assert h.committable() == {(TASKS, 0): 7}  # held: not committed before delivery
    await h.pump_until(lambda: h.committable() == {(TASKS, 0): 8})
    assert runs == [5]
    results = [decode_event(v) for t, v in h.sent() if t == "w.inbox"]
    assert len(results) == 3 and {e.event_id for e in results} == {results[0].event_id}
    assert isinstance(results[0].body, StepCompleted)


async def test_a_full_local_queue_does_not_lose_the_offset() -> None:
    runs: list[int] = []
    h = Harness(_app(runs), [BufferError("Local: Queue full"), None])
    await h.handle(Msg(_command(), 3))
    await h.pump_until(lambda: h.committable() == {(TASKS, 0): 4})
    assert runs == [5]


async def test_a_command_fetched_again_while_its_result_is_held_joins_it() -> None:
    runs: list[int] = []
    h = Harness(_app(runs), [TIMED_OUT, None])
    await h.handle(Msg(_command(), 7))
    # The partition was lost in an outage and came back: the same command arrives again.
    h.worker._tracker.forget(TASKS, 0)
    await h.handle(Msg(_command(), 7))
    await h.pump_until(lambda: h.committable() == {(TASKS, 0): 8})
    # And once more after the result was delivered.
    h.worker._tracker.forget(TASKS, 0)
    await h.handle(Msg(_command(), 7))
    assert h.committable() == {(TASKS, 0): 8}
    assert runs == [5]


async def test_an_internal_error_dead_letters_the_command_and_completes_its_offset(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    runs: list[int] = []
    h = Harness(_app(runs))

    def broken(event: Event) -> bytes:
        raise ValueError("encoder bug")

    monkeypatch.setattr(worker_module, "encode_event", broken)
    await h.handle(Msg(_command(), 11))
    await h.pump_until(lambda: h.committable() == {(TASKS, 0): 12})
    [(topic, value)] = h.sent()
    letter = decode_dead_letter(value)
    assert topic == "w.dlq"
    assert (letter.error_type, letter.reason) == ("WorkerError", "ValueError: encoder bug")
    assert (letter.source_topic, letter.source_partition, letter.source_offset) == (TASKS, 0, 11)
    assert letter.value == _command()
    # Re-driven after the fix, the command runs (the failed attempt was not remembered as reported).
    monkeypatch.undo()
    await h.handle(Msg(_command(), 12))
    await h.pump_until(lambda: h.committable() == {(TASKS, 0): 13})
    assert runs == [5, 5]


@pytest.mark.parametrize(
    ("value", "error_type", "reason"),
    [
        (b"junk", "SchemaError", "too short"),
        (b"\x00\x00\x00\x03\xe7garbage", "SchemaError", "unknown schema id 999"),
        (
            encode_event(Event("e", "r1", "wf", 1, StepCompleted(0, 1, b"1", 1, 2))),
            "SchemaError",
            "expected a orchestrator.v1.StepCommand record",
        ),
        (_command()[:-4], "SchemaError", "does not match its schema"),
        (_command("no_such_step"), "UnknownStepError", "no step 'no_such_step'"),
    ],
)
async def test_poison_commands_are_dead_lettered_with_the_reason(
    value: bytes, error_type: str, reason: str
) -> None:
    runs: list[int] = []
    h = Harness(_app(runs))
    await h.handle(Msg(value, 4))
    await h.pump_until(lambda: h.committable() == {(TASKS, 0): 5})
    [(topic, sent)] = h.sent()
    letter = decode_dead_letter(sent)
    assert topic == "w.dlq" and letter.error_type == error_type and reason in letter.reason, letter
    assert letter.value == value and letter.component.startswith("worker:")
    assert runs == []


class FakeConsumer:
    def __init__(self) -> None:
        self.closed = False
        self.subscribed: list[str] = []

    def subscribe(self, topics: list[str], **callbacks: Any) -> None:
        self.subscribed = topics

    def close(self) -> None:
        self.closed = True


def test_a_consumer_failing_fatally_is_replaced_until_it_keeps_failing() -> None:
    """After a broker restart librdkafka may fence a static member spuriously: ride it out, but a duplicate
    instance id (fenced again and again) stops the worker with the reason."""
    worker = Worker(_app([]))
    made: list[FakeConsumer] = []

    def make() -> FakeConsumer:
        made.append(FakeConsumer())
        return made[-1]

    worker._make_consumer = make  # type: ignore[method-assign,assignment]
    worker._tracker.started(TASKS, 0, 3)
    fenced = KafkaError(KafkaError.FENCED_INSTANCE_ID, "Broker: Instance fenced", fatal=True)
    current: Any = FakeConsumer()
    for round_ in (1, 2):
        worker._on_consumer_error(fenced)
        old, current = current, worker._replace_consumer(current)
        assert old.closed and current is made[-1] and current.subscribed == worker.topics, round_
        assert worker._tracker.committable() == {}  # its partitions are gone, as if lost
        assert worker._fatal is None and not worker._stop.is_set()
    worker._on_consumer_error(fenced)
    assert worker._replace_consumer(current) is current
    assert worker._stop.is_set() and worker._fatal is not None
    assert "3 times" in worker._fatal and "FENCED_INSTANCE_ID" in worker._fatal


class PollingConsumer:
    """Records pause/resume/seek; ``poll`` hands out the queued messages."""

    def __init__(self, queued: list[Msg]) -> None:
        self.queued = queued
        self.calls: list[tuple[str, list[tuple[str, int, int]]]] = []

    def assignment(self) -> list[TopicPartition]:
        return [TopicPartition(TASKS, 0), TopicPartition(TASKS, 1)]

    def _note(self, what: str, tps: list[TopicPartition]) -> None:
        self.calls.append((what, [(tp.topic, tp.partition, tp.offset) for tp in tps]))

    def pause(self, tps: list[TopicPartition]) -> None:
        self._note("pause", tps)

    def resume(self, tps: list[TopicPartition]) -> None:
        self._note("resume", tps)

    def seek(self, tp: TopicPartition) -> None:
        self._note("seek", [tp])

    def poll(self, timeout: float) -> Msg | None:
        return self.queued.pop(0) if self.queued else None

    def consume(self, n: int, timeout: float) -> list[Msg]:
        out, self.queued = self.queued[:n], self.queued[n:]
        return out


def test_a_busy_worker_polls_paused_and_puts_back_what_comes_anyway() -> None:
    """With every slot busy the consumer is still polled (commit results, rebalances and errors are served,
    the group keeps the worker), but no record is taken: one that arrives is sought back (``buffer=0``, the
    back-pressure before the local queue; the queue is tested in test_worker_local_queue.py)."""
    worker = Worker(_app([]), WorkerConfig(buffer=0))
    consumer = PollingConsumer([Msg(_command(), 9)])
    assert worker._poll(consumer, 0, 0.05) == []  # type: ignore[arg-type]
    paused = [(TASKS, 0, -1001), (TASKS, 1, -1001)]
    assert consumer.calls == [("pause", paused), ("seek", [(TASKS, 0, 9)]), ("pause", [(TASKS, 0, 9)])]
    consumer.queued = [Msg(_command(), 9)]
    got = worker._poll(consumer, 4, 0.05)  # type: ignore[arg-type]
    assert [m.offset() for m in got] == [9]
    assert consumer.calls[-1] == ("resume", paused)
    worker._poll(consumer, 4, 0.05)  # type: ignore[arg-type]
    assert consumer.calls[-1] == ("resume", paused)  # not resumed again: it was not paused
    assert sum(1 for what, _ in consumer.calls if what == "resume") == 1
