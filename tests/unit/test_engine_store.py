"""PartitionStore on a real RocksDB (rocksdict) in a temp dir."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from orchestrator._engine.store import (
    META_CHANGELOG_OFFSET,
    META_INBOX_OFFSET,
    RUN_PREFIX,
    TIMER_PREFIX,
    PartitionStore,
    parse_timer_key,
    run_key,
    timer_key,
)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[PartitionStore]:
    s = PartitionStore(tmp_path / "p0", 0)
    yield s
    s.close()


def test_key_layout_is_frozen() -> None:
    assert run_key("run-1") == b"r/run-1"
    assert timer_key(1, "run-1", "retry:0") == b"t/\x00\x00\x00\x00\x00\x00\x00\x01run-1\x00retry:0"
    assert timer_key(-5, "r", "x") == timer_key(0, "r", "x")  # clamped, never a huge unsigned value


def test_timer_key_parses_back() -> None:
    for due, run, tag in [(0, "r", "retry:0"), (2**40 + 3, "run-é", "retry:12"), (5, "a/b", "")]:
        assert parse_timer_key(timer_key(due, run, tag)) == (due, run, tag)


def test_timer_keys_sort_by_due_time() -> None:
    keys = [timer_key(d, r, "retry:0") for d, r in [(300, "a"), (2, "z"), (256, "m"), (2**33, "b"), (1, "y")]]
    assert [parse_timer_key(k)[0] for k in sorted(keys)] == [1, 2, 256, 300, 2**33]


def test_overlay_reads_its_own_writes(store: PartitionStore) -> None:
    assert store.get(b"r/a") is None
    store.put(b"r/a", b"1")
    assert store.get(b"r/a") == b"1"
    store.put(b"r/a", b"2")
    assert store.get(b"r/a") == b"2"
    assert store.dirty() == {b"r/a": b"2"}
    store.commit(None, None)
    store.delete(b"r/a")
    assert store.get(b"r/a") is None  # a tombstone in the overlay hides the committed value
    assert store.dirty() == {b"r/a": None}


def test_discard_drops_the_batch(store: PartitionStore) -> None:
    store.put(b"r/a", b"committed")
    store.commit(1, 1)
    store.put(b"r/a", b"uncommitted")
    store.put(b"r/b", b"new")
    store.delete(b"r/a")
    store.discard()
    assert store.dirty() == {}
    assert store.get(b"r/a") == b"committed"
    assert store.get(b"r/b") is None
    assert store.meta_offset(META_INBOX_OFFSET) == 1


def test_nothing_reaches_rocksdb_before_commit(tmp_path: Path) -> None:
    s = PartitionStore(tmp_path / "p", 0)
    s.put(b"r/a", b"1")
    s.close()  # a crash before the Kafka commit
    s = PartitionStore(tmp_path / "p", 0)
    assert s.get(b"r/a") is None
    assert s.meta_offset(META_INBOX_OFFSET) is None
    s.close()


def test_commit_writes_data_and_offsets_together(store: PartitionStore) -> None:
    store.put(b"r/a", b"1")
    store.put(timer_key(5, "a", "retry:0"), b"")
    store.commit(inbox_offset=42, changelog_offset=7)
    assert store.dirty() == {}
    assert store.get(b"r/a") == b"1"
    assert store.meta_offset(META_INBOX_OFFSET) == 42
    assert store.meta_offset(META_CHANGELOG_OFFSET) == 7
    store.delete(b"r/a")
    store.commit(inbox_offset=43, changelog_offset=None)  # a batch with no changelog record
    assert store.get(b"r/a") is None
    assert store.meta_offset(META_INBOX_OFFSET) == 43
    assert store.meta_offset(META_CHANGELOG_OFFSET) == 7


def test_meta_offsets_are_not_runs_or_timers(store: PartitionStore) -> None:
    store.put(run_key("a"), b"x")
    store.commit(10, 20)
    assert store.count(RUN_PREFIX) == 1
    assert store.count(TIMER_PREFIX) == 0


def test_due_timers_returns_only_due_ones_in_order(store: PartitionStore) -> None:
    for due, run in [(500, "c"), (100, "a"), (100, "b"), (1_000, "d"), (2**40, "e")]:
        store.put(timer_key(due, run, "retry:0"), b"")
    store.put(run_key("a"), b"state")  # other prefixes are not timers
    store.commit(None, None)
    assert [(d, r) for _, d, r, _ in store.due_timers(99, 10)] == []
    assert [(d, r) for _, d, r, _ in store.due_timers(100, 10)] == [(100, "a"), (100, "b")]
    due = store.due_timers(999, 10)
    assert [(d, r, t) for _, d, r, t in due] == [
        (100, "a", "retry:0"),
        (100, "b", "retry:0"),
        (500, "c", "retry:0"),
    ]
    assert due[0][0] == timer_key(100, "a", "retry:0")
    assert len(store.due_timers(2**41, 10)) == 5
    assert [r for _, _, r, _ in store.due_timers(2**41, 2)] == ["a", "b"]  # limit
    assert store.next_timer_due() == 100


def test_fired_timers_go_away(store: PartitionStore) -> None:
    key = timer_key(100, "a", "retry:0")
    store.put(key, b"")
    store.commit(None, None)
    store.delete(key)
    store.commit(None, None)
    assert store.due_timers(10**12, 10) == []
    assert store.next_timer_due() is None


def test_scan_is_by_prefix(store: PartitionStore) -> None:
    for name in ("a", "b", "c"):
        store.put(run_key(name), name.encode())
    store.put(timer_key(1, "a", "t"), b"")
    store.commit(None, None)
    assert [k for k, _ in store.scan(RUN_PREFIX)] == [b"r/a", b"r/b", b"r/c"]
    assert [v for _, v in store.scan(RUN_PREFIX, start=b"r/b")] == [b"b", b"c"]
    assert store.count(TIMER_PREFIX) == 1
    assert store.count(b"x/") == 0


def test_restore_batch(store: PartitionStore) -> None:
    store.put(run_key("gone"), b"old")
    store.commit(None, None)
    store.restore_batch([(run_key("a"), b"1"), (run_key("b"), b"2"), (run_key("gone"), None)], 17)
    assert store.get(run_key("a")) == b"1"
    assert store.get(run_key("b")) == b"2"
    assert store.get(run_key("gone")) is None
    assert store.meta_offset(META_CHANGELOG_OFFSET) == 17
    store.restore_batch([(run_key("a"), b"1b")], 18)  # later records win
    assert store.get(run_key("a")) == b"1b"
    assert store.meta_offset(META_CHANGELOG_OFFSET) == 18


def test_reopen_keeps_committed_data(tmp_path: Path) -> None:
    path = tmp_path / "p3"
    s = PartitionStore(path, 3)
    s.put(run_key("a"), b"state")
    s.put(timer_key(9, "a", "retry:1"), b"")
    s.commit(100, 200)
    s.close()
    s = PartitionStore(path, 3)
    try:
        assert s.partition == 3
        assert s.get(run_key("a")) == b"state"
        assert s.meta_offset(META_INBOX_OFFSET) == 100
        assert s.meta_offset(META_CHANGELOG_OFFSET) == 200
        assert [(d, r, t) for _, d, r, t in s.due_timers(10, 10)] == [(9, "a", "retry:1")]
    finally:
        s.close()


def test_destroy_removes_the_directory(tmp_path: Path) -> None:
    path = tmp_path / "p"
    s = PartitionStore(path, 0)
    s.put(b"r/a", b"1")
    s.commit(1, 1)
    s.close()
    PartitionStore.destroy(path)
    assert not path.exists()
    PartitionStore.destroy(path)  # missing is fine
    s = PartitionStore(path, 0)
    assert s.get(b"r/a") is None
    s.close()


def test_rollback_undoes_only_the_writes_after_the_savepoint(store: PartitionStore) -> None:
    store.put(b"r/committed", b"c")
    store.commit(1, 1)
    store.put(b"r/a", b"before")  # an earlier record of the same batch: must survive the rollback
    store.savepoint()
    store.put(b"r/a", b"after")
    store.put(b"r/new", b"x")
    store.delete(b"r/committed")
    assert sorted(store.written_since_savepoint()) == [b"r/a", b"r/committed", b"r/new"]
    store.rollback()
    assert store.dirty() == {b"r/a": b"before"}
    assert store.get(b"r/committed") == b"c"
    assert store.get(b"r/new") is None
    assert store.written_since_savepoint() == []


def test_release_keeps_the_writes_after_the_savepoint(store: PartitionStore) -> None:
    store.savepoint()
    store.put(b"r/a", b"1")
    store.release()
    store.put(b"r/b", b"2")
    store.rollback()  # no savepoint open: nothing to undo
    assert store.dirty() == {b"r/a": b"1", b"r/b": b"2"}
