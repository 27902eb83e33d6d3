"""The fault taxonomy and the retry loop the processor wraps every Kafka call in."""

from __future__ import annotations

import logging

import pytest
from confluent_kafka import KafkaError, KafkaException

from orchestrator._engine.faults import FaultLog, Retrier, Stopping, error_of, is_fatal, is_transient


def _exc(code: int, *, fatal: bool = False, retriable: bool = False, abort: bool = False) -> KafkaException:
    err = KafkaError(code, "boom", fatal=fatal, retriable=retriable, txn_requires_abort=abort)
    return KafkaException(err)


def test_taxonomy_follows_librdkafka_flags() -> None:
    timed_out = error_of(_exc(KafkaError._TIMED_OUT, retriable=True))
    assert is_transient(timed_out) and not is_fatal(timed_out)
    fenced = error_of(_exc(KafkaError._FENCED, fatal=True))
    assert is_fatal(fenced) and not is_transient(fenced)
    needs_abort = error_of(_exc(KafkaError._MSG_TIMED_OUT, retriable=True, abort=True))
    assert not is_transient(needs_abort), "an abortable error is aborted, never called again"
    # A coordinator that moved is transient even when the call does not set retriable().
    assert is_transient(error_of(_exc(KafkaError.NOT_COORDINATOR)))
    assert not is_transient(error_of(_exc(KafkaError.MSG_SIZE_TOO_LARGE)))
    # An epoch bumped by the coordinator (a transaction that timed out during an outage) is not a fence.
    assert not is_fatal(error_of(_exc(KafkaError.INVALID_PRODUCER_EPOCH, abort=True)))


def test_error_of_follows_the_cause_chain() -> None:
    inner = _exc(KafkaError._TRANSPORT)
    try:
        try:
            raise inner
        except KafkaException as exc:
            raise RuntimeError("wrapped") from exc
    except RuntimeError as outer:
        err = error_of(outer)
    assert err is not None and err.code() == KafkaError._TRANSPORT
    assert error_of(RuntimeError("no kafka here")) is None


def test_retrier_calls_again_until_success_and_logs_each_episode_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    results = iter([_exc(KafkaError._TIMED_OUT, retriable=True)] * 5 + [None])

    def commit() -> str:
        exc = next(results)
        if exc is not None:
            raise exc
        return "committed"

    sleeps: list[float] = []
    retry = Retrier(FaultLog(logging.getLogger("t")), lambda: True, sleep=sleeps.append, max_backoff=0.4)
    with caplog.at_level(logging.WARNING, "t"):
        assert retry.call("commit_transaction", commit) == "committed"
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2, lines  # one when the fault started, one when it ended: not one per retry
    assert "commit_transaction failed" in lines[0]
    assert "after 5 failed attempts" in lines[1]
    assert sleeps == [0.05, 0.1, 0.2, 0.4, 0.4]  # capped backoff


def test_retrier_raises_what_it_may_not_retry() -> None:
    retry = Retrier(FaultLog(logging.getLogger("t")), lambda: True, sleep=lambda _: None)
    calls = []

    def fenced() -> None:
        calls.append(1)
        raise _exc(KafkaError._FENCED, fatal=True)

    with pytest.raises(KafkaException):
        retry.call("abort_transaction", fenced)
    assert calls == [1]


def test_retrier_gives_up_when_the_processor_stops() -> None:
    running = iter([True, True, False])
    retry = Retrier(FaultLog(logging.getLogger("t")), lambda: next(running), sleep=lambda _: None)

    def down() -> None:
        raise _exc(KafkaError._TRANSPORT)

    with pytest.raises(Stopping, match="init_transactions"):
        retry.call("init_transactions", down)
