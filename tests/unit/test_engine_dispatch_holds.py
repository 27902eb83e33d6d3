"""Early dispatch without a broker (ADR 0025): which records go around the transaction, and the timer holds.

What needs Kafka (acknowledgement before the commit, aborts, SIGKILLed processors and workers) is in
tests/integration/test_early_dispatch.py.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import TopicPartition

from orchestrator import App, Settings
from orchestrator._engine.processor import Processor, ProcessorConfig
from orchestrator._engine.processor.state_manager import DueTimer


class Recording:
    """Stands in for a producer (transactional or the dispatcher): keeps the topics it was given."""

    def __init__(self) -> None:
        self.topics: list[str] = []

    def produce(self, topic: str, *_: Any, **__: Any) -> None:
        self.topics.append(topic)

    def send(self, topic: str, *_: Any, **__: Any) -> None:
        self.topics.append(topic)

    def poll(self, timeout: float = 0) -> int:
        return 0


class Positions:
    """Stands in for the consumer: only ``position``."""

    def __init__(self, at: dict[tuple[str, int], int]) -> None:
        self.at = at

    def close(self) -> None:
        pass

    def position(self, tps: list[TopicPartition]) -> list[TopicPartition]:
        return [
            TopicPartition(tp.topic, tp.partition, self.at.get((tp.topic, tp.partition), -1001)) for tp in tps
        ]


@pytest.fixture
def processor(tmp_path: Path) -> Iterator[Processor]:
    app = App("unit", settings=Settings(bootstrap_servers="127.0.0.1:1", partitions=4))
    proc = Processor(app, ProcessorConfig(instance_id="u0", state_dir=tmp_path))
    proc.transactions.producer = Recording()  # type: ignore[assignment]
    yield proc
    proc._shutdown()


def test_commands_go_to_the_dispatcher_and_everything_else_into_the_transaction(processor: Processor) -> None:
    out = processor.output
    tasks, history = out.tasks_topic("default"), out.topics.history
    dispatcher = Recording()
    out.dispatch = dispatcher  # type: ignore[assignment]
    out.produce_records([(history, b"e", b"r", 0), (tasks, b"c", b"r", -1), (tasks, b"c2", b"r", -1, [])])
    assert dispatcher.topics == [tasks, tasks]
    assert processor.transactions.producer.topics == [history]  # type: ignore[union-attr]

    out.dispatch = None  # the default (no --early-dispatch): commands are records of the transaction
    out.produce_records([(tasks, b"c", b"r", -1)])
    assert processor.transactions.producer.topics == [history, tasks]  # type: ignore[union-attr]


def test_timers_of_a_held_partition_wait_until_its_consumer_has_passed_the_hold(processor: Processor) -> None:
    inbox = processor.topics.inbox
    due: list[DueTimer] = [(inbox, p, f"k{p}".encode(), f"r{p}", "timeout") for p in range(4)]
    processor._timers_held = {(inbox, 0): 7, (inbox, 1): 9, (inbox, 2): 3}
    processor._holds_until = time.monotonic() + 60
    # p0 not there yet, p1 exactly there, p2 has no position yet (just rewound or assigned): p0, p2 held.
    processor._consumer = Positions({(inbox, 0): 5, (inbox, 1): 9})  # type: ignore[assignment]
    assert processor._timers_not_held(due) == [due[1], due[3]]
    assert processor._timers_held == {(inbox, 0): 7, (inbox, 2): 3}
    processor._consumer = Positions({(inbox, 0): 8, (inbox, 2): 3})  # type: ignore[assignment]
    assert processor._timers_not_held(due) == due
    assert processor._timers_held == {}


def test_holds_are_lifted_past_their_deadline_even_without_a_position(processor: Processor) -> None:
    """A partition whose consumer never reports a position (its records all expired) must not keep its
    timers from firing for ever."""
    inbox = processor.topics.inbox
    due: list[DueTimer] = [(inbox, 0, b"k0", "r0", "sleep")]
    processor._timers_held = {(inbox, 0): 7}
    processor._consumer = Positions({})  # type: ignore[assignment]
    processor._holds_until = time.monotonic() + 60
    assert processor._timers_not_held(due) == []
    processor._holds_until = time.monotonic() - 1
    assert processor._timers_not_held(due) == due
    assert processor._timers_held == {}
