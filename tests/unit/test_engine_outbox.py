"""Outbox: a record handed over is produced again until acknowledged, and reported delivered exactly once."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from confluent_kafka import KafkaError, KafkaException
from kafka_fakes import TIMED_OUT, FakeProducer

from orchestrator._engine.outbox import Outbox, Outgoing


def _outbox(*plans: list[Any]) -> tuple[Outbox, list[FakeProducer]]:
    made: list[FakeProducer] = []
    pending = list(plans)

    def make(on_error: Callable[[KafkaError], None]) -> FakeProducer:
        made.append(FakeProducer(pending.pop(0) if pending else [], on_error))
        return made[-1]

    return Outbox(make), made


def _record(delivered: list[str], name: str = "r") -> Outgoing:
    return Outgoing("t", name.encode(), b"k", f"record {name}", on_delivered=lambda: delivered.append(name))


def _pump_until(outbox: Outbox, done: Callable[[], bool], rounds: int = 3000) -> None:
    for _ in range(rounds):
        if done():
            return
        outbox.pump(0.01)
    raise AssertionError("outbox never got there")


def test_a_full_local_queue_holds_the_record_and_produces_it_after_a_poll() -> None:
    outbox, made = _outbox([BufferError("Local: Queue full"), BufferError("Local: Queue full")])
    delivered: list[str] = []
    outbox.send(_record(delivered))  # does not raise
    assert outbox.pending() == 1 and made[0].produced == []
    _pump_until(outbox, lambda: delivered == ["r"])
    assert made[0].produced == [b"r"]
    assert outbox.pending() == 0
    assert outbox.stats.failures["BufferError"] == 2


def test_a_timed_out_delivery_is_produced_again_not_given_up() -> None:
    outbox, made = _outbox([TIMED_OUT, TIMED_OUT, None])
    delivered: list[str] = []
    outbox.send(_record(delivered))
    _pump_until(outbox, lambda: delivered == ["r"])
    assert made[0].produced == [b"r", b"r", b"r"]
    assert outbox.stats.produced_again == 2
    for _ in range(5):
        outbox.pump(0)
    assert delivered == ["r"]


def test_a_late_acknowledgement_of_an_earlier_copy_counts_once() -> None:
    outbox, made = _outbox([TIMED_OUT, None])
    delivered: list[str] = []
    outbox.send(_record(delivered))
    producer = made[0]
    first_callback, _ = producer.reports[0]
    _pump_until(outbox, lambda: delivered == ["r"])
    first_callback(None, None)  # the first copy was written after all, its ack arrives late
    first_callback(TIMED_OUT, None)  # and a stale failure changes nothing either
    assert delivered == ["r"] and outbox.pending() == 0
    for _ in range(5):
        outbox.pump(0)
    assert producer.produced == [b"r", b"r"]


def test_a_refused_produce_is_retried_with_the_same_record() -> None:
    refused = KafkaException(KafkaError(KafkaError._UNKNOWN_TOPIC, "Local: Unknown topic"))
    outbox, made = _outbox([refused, None])
    delivered: list[str] = []
    outbox.send(_record(delivered))
    _pump_until(outbox, lambda: delivered == ["r"])
    assert made[0].produced == [b"r"]


def test_a_fatal_producer_error_replaces_the_producer_and_produces_held_records_again() -> None:
    fatal = KafkaError(KafkaError._FATAL, "Local: Fatal error", fatal=True)
    outbox, made = _outbox([fatal, None], [None, None])
    delivered: list[str] = []
    outbox.send(_record(delivered, "a"))  # its delivery fails fatally
    outbox.send(_record(delivered, "b"))  # acknowledged by the old producer
    _pump_until(outbox, lambda: sorted(delivered) == ["a", "b"])
    assert len(made) == 2 and made[0].purged
    assert made[1].produced == [b"a"]
    assert outbox.stats.producers_replaced == 1


def test_drain_waits_for_held_records_and_says_how_many_are_left() -> None:
    outbox, _ = _outbox([TIMED_OUT] * 1000)
    outbox.send(_record([]))
    assert outbox.drain(0.3) == 1
    ok, _ = _outbox([TIMED_OUT, None])
    ok.send(_record([]))
    assert ok.drain(30) == 0
