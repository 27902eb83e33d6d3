"""The standby thread's bookkeeping (ADR 0024, review fixes), driven with fake messages and a fake
consumer: what a batch with errors does to the stores, that every failure rewinds each replica to its
store's own offset, that the Kafka calls come before the bookkeeping that mirrors them, that the lock is
never held across an open, and that unused directories go."""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from confluent_kafka import OFFSET_BEGINNING, ConsumerGroupState, KafkaError, KafkaException, TopicPartition

from orchestrator._engine.processor.config import ProcessorTopics
from orchestrator._engine.processor.standby import (
    APPLY_CHUNK,
    APPLY_FAULT,
    KEYED,
    RUN,
    Standbys,
)
from orchestrator._engine.restore import clear_if_cold
from orchestrator._engine.store import META_CHANGELOG_OFFSET, META_WRITTEN_MS, PartitionStore
from orchestrator.settings import Settings

_TOPICS = ProcessorTopics("in", "hist", "cl", "out", "dlq", "keyed", "keyed-cl", ())


class FakeMessage:
    """The few ``confluent_kafka.Message`` methods ``Standbys._apply`` reads."""

    def __init__(
        self,
        topic: str,
        offset: int = 0,
        key: bytes | None = None,
        value: bytes | None = None,
        error: int = 0,
    ) -> None:
        self._topic, self._offset, self._key, self._value = topic, offset, key, value
        self._error = KafkaError(error) if error else None

    def error(self) -> KafkaError | None:
        return self._error

    def topic(self) -> str:
        return self._topic

    def partition(self) -> int:
        return 0

    def offset(self) -> int:
        return self._offset

    def key(self) -> bytes | None:
        return self._key

    def value(self) -> bytes | None:
        return self._value


def rows(topic: str, first: int, last: int) -> list[Any]:
    return [FakeMessage(topic, o, f"r/{o}".encode(), b"v") for o in range(first, last)]


class FakeConsumer:
    """Hands out scripted batches; records assignments; can be told to fail a call once."""

    def __init__(self, batches: list[list[Any]] | None = None, fail: set[str] | None = None) -> None:
        self.batches = list(batches or [])
        self.fail = set(fail or ())
        self.assigned: list[TopicPartition] = []
        self.unassigned: list[TopicPartition] = []
        self.closed = False

    def _maybe_fail(self, call: str) -> None:
        if call in self.fail:
            self.fail.discard(call)
            raise KafkaException(KafkaError(KafkaError._TRANSPORT))

    def incremental_assign(self, tps: list[TopicPartition]) -> None:
        self._maybe_fail("assign")
        self.assigned.extend(tps)

    def incremental_unassign(self, tps: list[TopicPartition]) -> None:
        self._maybe_fail("unassign")
        self.unassigned.extend(tps)

    def consume(self, n: int, timeout: float) -> list[Any]:
        return self.batches.pop(0) if self.batches else []

    def close(self) -> None:
        self.closed = True


def _standbys(tmp_path: Path, consumers: list[FakeConsumer], **kwargs: Any) -> Standbys:
    supply: Iterator[FakeConsumer] = iter(consumers)
    standbys = Standbys(
        Settings(partitions=2),
        _TOPICS,
        tmp_path,
        "a",
        1,
        "g",
        describe=lambda: None,
        new_consumer=lambda: next(supply),
        delete_retention_ms=lambda topic: None,
        **kwargs,
    )
    standbys._next_refresh = math.inf  # no group to describe here
    standbys._next_lag = math.inf
    return standbys


def _assigned(consumer: FakeConsumer) -> dict[tuple[str, int], int]:
    return {(tp.topic, tp.partition): tp.offset for tp in consumer.assigned}


def test_a_reset_partition_drops_the_rows_fetched_before_it_in_the_same_batch(tmp_path: Path) -> None:
    """1a: rows for a key collected earlier in the batch belong to the store it had; applied to the
    rebuilt store they would move its offset past records it never got (a recreated topic's first ones)."""
    warm = PartitionStore(tmp_path / "p0", 0)
    warm.restore_batch([(b"r/old", b"v")], 5)
    warm.close()
    first = FakeConsumer([[], [*rows("cl", 5, 8), FakeMessage("cl", error=KafkaError._AUTO_OFFSET_RESET)]])
    standbys = _standbys(tmp_path, [first])
    standbys._wanted = {(RUN, 0)}
    standbys._once()
    assert _assigned(first) == {("cl", 0): 5}
    standbys._once()  # the batch: three rows, then the reset
    store = standbys._replicas[(RUN, 0)].store
    assert dict(store.scan(b"r/")) == {}  # neither the old content nor the batch's rows
    assert store.meta_offset(META_CHANGELOG_OFFSET) is None
    assert standbys.applied == 0
    standbys._once()  # reassigned from the beginning
    assert first.assigned[-1].offset == OFFSET_BEGINNING and first.unassigned[-1].topic == "cl"
    assert standbys.positions() == {(RUN, 0): 0}
    standbys.close()


def test_an_error_on_one_changelog_keeps_the_others_rows_and_rewinds_every_replica(tmp_path: Path) -> None:
    """1b: a non-transient error on one partition (a missing ACL on one changelog) must not discard the
    other partition's rows, and afterwards both are fetched again from their stores' own offsets."""
    denied = FakeMessage("keyed-cl", error=KafkaError.TOPIC_AUTHORIZATION_FAILED)
    first = FakeConsumer([[], [*rows("cl", 0, 2), denied, *rows("cl", 2, 3)]])
    second = FakeConsumer()
    standbys = _standbys(tmp_path, [first, second])
    standbys._wanted = {(RUN, 0), (KEYED, 0)}
    standbys._once()  # assigns both
    standbys._once()  # the batch with the error
    assert standbys.faults() == [APPLY_FAULT]
    assert first.closed
    run_store = standbys._replicas[(RUN, 0)].store
    assert [k for k, _ in run_store.scan(b"r/")] == [b"r/0", b"r/1", b"r/2"]
    assert run_store.meta_offset(META_CHANGELOG_OFFSET) == 3
    standbys._once()  # a new consumer, assigned each store's offset
    assert _assigned(second) == {("cl", 0): 3, ("keyed-cl", 0): OFFSET_BEGINNING}
    standbys.close()


def test_a_failed_apply_never_lets_the_next_batch_run_the_offset_ahead_of_the_content(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """1b: ``restore_batch`` failing must not leave the consumer past the failed rows: the next batch
    would be applied on top and META_CHANGELOG_OFFSET would claim rows the store never got."""
    first = FakeConsumer([[], rows("cl", 0, 3), rows("cl", 3, 5)])
    second = FakeConsumer([rows("cl", 0, 5)])
    standbys = _standbys(tmp_path, [first, second])
    standbys._wanted = {(RUN, 0)}
    standbys._once()
    store = standbys._replicas[(RUN, 0)].store
    real = store.restore_batch
    calls = iter([False])

    def flaky(records: list[tuple[bytes, bytes | None]], next_offset: int) -> None:
        if next(calls, True) is False:
            raise OSError("disk full")
        real(records, next_offset)

    monkeypatch.setattr(store, "restore_batch", flaky)
    for _ in range(4):
        standbys._once()
    assert store.meta_offset(META_CHANGELOG_OFFSET) == 5
    assert len(list(store.scan(b"r/"))) == 5
    assert _assigned(second) == {("cl", 0): OFFSET_BEGINNING}
    standbys.close()


@pytest.mark.parametrize("call", ["assign", "unassign"])
def test_a_failed_assign_or_unassign_leaves_no_store_stranded(tmp_path: Path, call: str) -> None:
    """1c: bookkeeping changes only after the Kafka call: a store whose assign failed is assigned again
    (by the next consumer), and one dropped while its unassign failed is not left half-gone."""
    first = FakeConsumer(fail={"assign"} if call == "assign" else set())
    second = FakeConsumer()
    standbys = _standbys(tmp_path, [first, second])
    standbys._wanted = {(RUN, 0), (RUN, 1)}
    standbys._once()
    if call == "assign":
        assert standbys.faults() == [APPLY_FAULT] and first.closed
        assert standbys.positions() == {(RUN, 0): None, (RUN, 1): None}
        standbys._once()
        assert _assigned(second) == {("cl", 0): OFFSET_BEGINNING, ("cl", 1): OFFSET_BEGINNING}
        assert standbys.positions() == {(RUN, 0): 0, (RUN, 1): 0}
    else:
        first.fail.add("unassign")
        standbys._wanted = {(RUN, 0)}
        standbys._once()
        assert standbys.faults() == [APPLY_FAULT] and first.closed
        standbys._once()
        assert _assigned(second) == {("cl", 0): OFFSET_BEGINNING}  # the kept one, on the new consumer
        assert standbys._unassign == set()
        assert standbys.positions() == {(RUN, 0): 0}
    standbys.close()


def test_release_waits_for_an_open_without_the_lock_held_across_it(tmp_path: Path) -> None:
    """2: an open (which may rebuild a store's indexes) runs outside the lock, so the rebalance callback's
    ``release`` is not stalled by it behind the lock; it waits for that one open, and the store the
    thread opened for a partition now active is closed again (the active store can open the directory)."""
    standbys = _standbys(tmp_path, [FakeConsumer()])
    standbys._consumer = FakeConsumer()
    standbys._wanted = {(RUN, 0)}
    opening, go_on = threading.Event(), threading.Event()
    real_open = standbys._open

    def slow_open(key: tuple[str, int]) -> PartitionStore:
        opening.set()
        assert go_on.wait(10)
        return real_open(key)

    standbys._open = slow_open  # type: ignore[method-assign]
    reconciling = threading.Thread(target=standbys._reconcile)
    reconciling.start()
    assert opening.wait(10)
    assert standbys._lock.acquire(timeout=1)  # not held while the store opens
    standbys._lock.release()
    releasing = threading.Thread(target=standbys.release, args=([(RUN, 0)],))
    releasing.start()
    releasing.join(0.3)
    assert releasing.is_alive()  # waits for the open of that very store
    go_on.set()
    releasing.join(10)
    reconciling.join(10)
    assert not releasing.is_alive() and not reconciling.is_alive()
    assert standbys.positions() == {}
    PartitionStore(tmp_path / "p0", 0).close()  # the directory is free: the standby's store was closed
    standbys.close()


def test_apply_takes_the_lock_one_chunk_at_a_time(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """2: a fetched batch is applied in chunks, each a write batch of its own with its offset, so a
    ``release`` waits for one chunk at most."""
    consumer = FakeConsumer([[], rows("cl", 0, 2 * APPLY_CHUNK + 10)])
    standbys = _standbys(tmp_path, [consumer])
    standbys._wanted = {(RUN, 0)}
    standbys._once()
    store = standbys._replicas[(RUN, 0)].store
    offsets: list[int] = []
    real = store.restore_batch

    def spy(records: list[tuple[bytes, bytes | None]], next_offset: int) -> None:
        assert standbys._lock.locked()
        offsets.append(next_offset)
        real(records, next_offset)

    monkeypatch.setattr(store, "restore_batch", spy)
    standbys._once()
    assert offsets == [APPLY_CHUNK, 2 * APPLY_CHUNK, 2 * APPLY_CHUNK + 10]
    standbys.close()


def test_close_stops_adoption_and_leaves_no_store_open(tmp_path: Path) -> None:
    """2: on shutdown the processor's consumer revokes everything as it closes; adopting then would open
    every store just to close it again. After close, adopt does nothing and nothing stays open."""
    standbys = _standbys(tmp_path, [FakeConsumer()])
    standbys._wanted = {(RUN, 1)}
    standbys._once()
    standbys.close()
    standbys.adopt([(RUN, 0), (KEYED, 0)])
    assert standbys._wanted == {(RUN, 1)}
    standbys._consumer = FakeConsumer()
    standbys._reconcile()  # a thread that did not stop in time opens nothing
    assert standbys.positions() == {}
    for name in ("p0", "p1"):
        PartitionStore(tmp_path / name, 0).close()


def test_a_persistent_apply_error_is_one_episode_despite_successful_refreshes(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """3: describing the group and applying are separate fault episodes; a refresh that works does not
    close the apply episode (which then logged its start again every 5 s)."""
    denied = [FakeMessage("cl", error=KafkaError.TOPIC_AUTHORIZATION_FAILED)]
    consumers = [FakeConsumer([denied]) for _ in range(3)]
    standbys = _standbys(tmp_path, consumers)
    member = SimpleNamespace(group_instance_id="processor-a", assignment=None)
    standbys._describe = lambda: SimpleNamespace(state=ConsumerGroupState.STABLE, members=[member])
    standbys._stop.set()  # no 1 s pause after each failure
    with caplog.at_level(logging.WARNING, "orchestrator.processor.standby"):
        for _ in range(6):
            standbys._refresh_now.set()
            standbys._once()
    assert standbys.described == 6
    assert standbys.faults() == [APPLY_FAULT]
    starts = [r for r in caplog.records if "failed, retrying" in r.getMessage()]
    assert len(starts) == 1
    assert not [r for r in caplog.records if "succeeded again" in r.getMessage()]
    standbys.close()
    assert standbys._admin is None


def test_unused_directories_are_deleted_after_the_delay(tmp_path: Path) -> None:
    """1e: a store directory neither active nor standby here is deleted once unused for the delay."""
    for name in ("p0", "p1", "k0", "k1"):
        PartitionStore(tmp_path / name, 0).close()
    (tmp_path / "other").mkdir()
    kept = _standbys(tmp_path, [FakeConsumer()], cleanup_delay_s=3600)
    kept._cleanup()
    assert sorted(d.name for d in tmp_path.iterdir()) == ["k0", "k1", "other", "p0", "p1"]
    standbys = _standbys(tmp_path, [FakeConsumer()], cleanup_delay_s=0)
    standbys._wanted = {(RUN, 1)}
    standbys._once()  # p1 is a standby
    standbys.release([(KEYED, 0)])  # k0 is active
    standbys._cleanup()
    assert sorted(d.name for d in tmp_path.iterdir()) == ["k0", "other", "p1"]
    assert standbys.cleaned == 2
    standbys.close()


def test_a_store_last_written_longer_ago_than_delete_retention_is_cleared(tmp_path: Path) -> None:
    """1e: compaction drops tombstones after ``delete.retention.ms`` without moving the low watermark, so
    a store idle for longer may lack deletes its tail no longer holds: it starts again from empty."""
    store = PartitionStore(tmp_path / "p0", 0)
    store.restore_batch([(b"r/x", b"v")], 7)
    written = store.meta_offset(META_WRITTEN_MS)
    assert written is not None
    assert not clear_if_cold(store, "cl", 60_000, now_ms=written + 60_000)
    assert store.get(b"r/x") == b"v"
    assert clear_if_cold(store, "cl", 60_000, now_ms=written + 60_001)
    assert store.get(b"r/x") is None and store.meta_offset(META_CHANGELOG_OFFSET) is None
    store.restore_batch([(b"r/y", b"v")], 1)
    assert not clear_if_cold(store, "cl", None, now_ms=written + 86_400_000 - 1)  # Kafka's default
    store.close()


def test_a_cold_standby_is_cleared_when_it_opens(tmp_path: Path) -> None:
    """1e: the standby's own open checks the age too (a directory left from an earlier run)."""
    store = PartitionStore(tmp_path / "p0", 0)
    store.restore_batch([(b"r/x", b"v")], 3)
    store.close()
    consumer = FakeConsumer()
    standbys = _standbys(tmp_path, [consumer])
    standbys._retention = lambda topic: -1  # any age is too old
    standbys._learn_retentions()
    standbys._wanted = {(RUN, 0)}
    standbys._once()
    assert _assigned(consumer) == {("cl", 0): OFFSET_BEGINNING}
    assert standbys._replicas[(RUN, 0)].store.get(b"r/x") is None
    standbys.close()
