"""The run indexes of a partition store: frozen key layout, maintained atomically with the states (commit,
restore), rebuilt for stores of older code, and the one-store queries (filters, order, cursor)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from orchestrator._engine import state as st
from orchestrator._engine.queries.index import (
    _CLOSED_CHECK,
    RunIndexer,
    _walk,
    count_partition,
    criteria,
    decode_cursor,
    encode_cursor,
    inv,
    list_partition,
    smallest,
    summary_of,
)
from orchestrator._engine.queries.model import RunFilter
from orchestrator._engine.store import (
    INDEX_PREFIX,
    META_INDEX_VERSION,
    SUMMARY_PREFIX,
    PartitionStore,
    StoreClosedError,
    run_key,
)


def _state(run_id: str, created: int, status: st.RunStatus = st.RUNNING, **kw: object) -> st.RunState:
    return st.RunState(run_id, kw.pop("workflow", "wf"), status, b"null", created, created + 5, **kw)  # type: ignore[arg-type]


def _index(store: PartitionStore) -> dict[bytes, bytes]:
    return dict(store.scan(INDEX_PREFIX)) | dict(store.scan(SUMMARY_PREFIX))


def _save(store: PartitionStore, state: st.RunState, hint: bool = True) -> None:
    store.put(run_key(state.run_id), st.encode_state(state), summary_of(state) if hint else None)


def test_index_key_layout_is_frozen() -> None:
    state = _state("r-1", 1_000, st.FAILED, error_type="Boom", tags={"customer": "c-42"})
    keys = RunIndexer().index_keys(b"r-1", summary_of(state))
    at = (2**64 - 1 - 1_000).to_bytes(8, "big") + b"r-1"
    assert keys == [
        b"i/c/" + at,
        b"i/w/wf\x00" + at,
        b"i/s/failed\x00" + at,
        b"i/e/Boom\x00" + at,
        b"i/t/customer=c-42\x00" + at,
        b"i/n/" + (2**64 - 1 - 1_005).to_bytes(8, "big") + b"r-1",
    ]
    assert inv(2_000) < inv(1_000)  # newer sorts first
    assert summary_of(state) == b'["wf","failed",1000,1005,"Boom",{"customer":"c-42"}]\n[1005,""]'


def test_a_transition_that_changes_no_indexed_field_writes_only_the_summary(tmp_path: Path) -> None:
    store = PartitionStore(tmp_path / "p0", 0, RunIndexer())
    state = _state("r-1", 1_000)
    _save(store, state)
    store.commit(1, 1)
    keys = set(store.scan(INDEX_PREFIX))
    state.updated_ms += 50
    _save(store, state)
    store.commit(2, 2)
    assert set(store.scan(INDEX_PREFIX)) == keys
    assert list_partition(store, RunFilter(), None, 1)[0][0].updated_ms == 1_055
    store.close()


def test_commit_writes_indexes_with_the_state_and_moves_them_on_change(tmp_path: Path) -> None:
    store = PartitionStore(tmp_path / "p0", 0, RunIndexer())
    running = _state("r-1", 1_000)
    _save(store, running)
    assert store.dirty().keys() == {run_key("r-1")}  # indexes are not for the changelog
    assert not _index(store)  # nothing before the commit
    store.commit(1, 1)
    assert b"i/s/running\x00" + inv(1_000) + b"r-1" in _index(store)
    failed = _state("r-1", 1_000, st.FAILED, error_type="Boom")
    _save(store, failed, hint=False)  # no hint: the store decodes the state
    store.commit(2, 2)
    keys = set(_index(store))
    assert b"i/s/running\x00" + inv(1_000) + b"r-1" not in keys
    assert b"i/s/failed\x00" + inv(1_000) + b"r-1" in keys
    assert b"i/e/Boom\x00" + inv(1_000) + b"r-1" in keys
    store.delete(run_key("r-1"))
    store.commit(3, 3)
    assert _index(store) == {}
    store.close()


def test_a_rolled_back_write_does_not_index_its_summary(tmp_path: Path) -> None:
    store = PartitionStore(tmp_path / "p0", 0, RunIndexer())
    _save(store, _state("r-1", 1_000))
    store.savepoint()
    _save(store, _state("r-1", 1_000, st.FAILED))
    store.rollback()
    store.commit(1, 1)
    assert list_partition(store, RunFilter(status="running"), None, 10)[0][0].run_id == "r-1"
    assert count_partition(store, RunFilter(status="failed")) == 0
    store.close()


def test_discarded_batch_leaves_no_index(tmp_path: Path) -> None:
    store = PartitionStore(tmp_path / "p0", 0, RunIndexer())
    _save(store, _state("r-1", 1_000))
    store.discard()
    store.commit(1, 1)
    assert _index(store) == {}
    store.close()


def test_restore_indexes_the_last_version_and_equals_a_rebuild(tmp_path: Path) -> None:
    store = PartitionStore(tmp_path / "p0", 0, RunIndexer())
    records: list[tuple[bytes, bytes | None]] = []
    for i in range(30):
        records.append((run_key(f"r-{i}"), st.encode_state(_state(f"r-{i}", 1_000 + i))))
    for i in range(0, 30, 3):  # later versions in the same batch and the next
        records.append((run_key(f"r-{i}"), st.encode_state(_state(f"r-{i}", 1_000 + i, st.COMPLETED))))
    store.restore_batch(records[:35], 35)
    store.restore_batch([*records[35:], (run_key("r-1"), None)], 41)
    restored = _index(store)
    assert store.rebuild_indexes(RunIndexer()) == 29
    assert _index(store) == restored
    assert count_partition(store, RunFilter(status="completed")) == 10
    assert count_partition(store, RunFilter()) == 29
    store.close()


def test_a_store_of_older_code_gets_its_indexes_rebuilt_on_open(tmp_path: Path) -> None:
    old = PartitionStore(tmp_path / "p0", 0)  # no indexer: what older code wrote
    for i in range(5):
        old.put(run_key(f"r-{i}"), st.encode_state(_state(f"r-{i}", 1_000 + i, tags={"k": str(i % 2)})))
    old.commit(5, 5)
    old.close()
    store = PartitionStore(tmp_path / "p0", 0, RunIndexer())
    assert store.meta_offset(META_INDEX_VERSION) == RunIndexer.version
    got = list_partition(store, RunFilter(tags={"k": "1"}), None, 10)[0]
    assert [r.run_id for r in got] == ["r-3", "r-1"]
    store.close()


@pytest.fixture
def filled(tmp_path: Path) -> PartitionStore:
    store = PartitionStore(tmp_path / "p3", 3, RunIndexer())
    for i in range(40):
        status = [st.RUNNING, st.COMPLETED, st.FAILED, st.PARKED][i % 4]
        error = "Boom" if status == st.FAILED else ""
        tags = {"customer": f"c-{i % 5}", "plan": "pro" if i % 2 else "free"}
        workflow = "a" if i < 20 else "b"
        _save(
            store,
            _state(
                f"r-{i:02d}", 10_000 + (i // 2) * 100, status, workflow=workflow, error_type=error, tags=tags
            ),
        )
    store.commit(1, 1)
    yield store
    store.close()


def _all(store: PartitionStore, flt: RunFilter) -> list[str]:
    return [r.run_id for r in list_partition(store, flt, None, 1_000)[0]]


def test_filters_newest_first_ties_by_run_id(filled: PartitionStore) -> None:
    everything = _all(filled, RunFilter())
    assert everything[:4] == ["r-38", "r-39", "r-36", "r-37"]
    assert len(everything) == 40
    assert _all(filled, RunFilter(status="failed")) == [f"r-{i:02d}" for i in range(38, -1, -4)][::1][:10]
    assert _all(filled, RunFilter(error_type="Boom")) == _all(filled, RunFilter(status="failed"))
    assert set(_all(filled, RunFilter(workflow="a"))) == {f"r-{i:02d}" for i in range(20)}
    assert _all(filled, RunFilter(tags={"customer": "c-0", "plan": "free"})) == [
        "r-30",
        "r-20",
        "r-10",
        "r-00",
    ]
    assert _all(filled, RunFilter(workflow="b", status="running", tags={"plan": "free"})) == [
        "r-36", "r-32", "r-28", "r-24", "r-20"
    ]  # fmt: skip
    assert _all(filled, RunFilter(since_ms=11_800)) == ["r-38", "r-39", "r-36", "r-37"]
    assert _all(filled, RunFilter(since_ms=10_100, until_ms=10_200)) == ["r-02", "r-03"]
    assert _all(filled, RunFilter(run_id_prefix="r-1")) == [
        f"r-{i}" for i in (18, 19, 16, 17, 14, 15, 12, 13, 10, 11)
    ]
    assert count_partition(filled, RunFilter(status="parked")) == 10
    assert all(r.partition == 3 for r in list_partition(filled, RunFilter(), None, 5)[0])


def test_cursor_pages_cover_everything_once(filled: PartitionStore) -> None:
    for flt in (RunFilter(), RunFilter(status="completed"), RunFilter(tags={"plan": "pro"}, since_ms=10_500)):
        seen: list[str] = []
        after = None
        while True:
            runs, more = list_partition(filled, flt, after, 3)
            seen += [r.run_id for r in runs]
            if not more:
                break
            after = decode_cursor(encode_cursor(runs[-1].created_ms, runs[-1].run_id))
        assert seen == _all(filled, flt)


def test_the_smallest_index_of_a_filter_is_walked(filled: PartitionStore) -> None:
    flt = RunFilter(workflow="a", status="failed", tags={"plan": "free"})
    prefixes = criteria(flt)
    with filled.reading() as db:
        # plan=free: 20 runs, failed: 10, workflow a: 20 (and 0 runs, an empty prefix, is smallest of all)
        assert prefixes[smallest(db, prefixes)] == b"i/s/failed\x00"
        assert smallest(db, [*prefixes, b"i/w/none\x00"]) == 3


def test_cursor_is_checked() -> None:
    with pytest.raises(ValueError, match="cursor"):
        decode_cursor("not-a-cursor!")


def test_reading_a_closed_store_fails_cleanly_and_close_waits_for_readers(tmp_path: Path) -> None:
    store = PartitionStore(tmp_path / "p0", 0, RunIndexer())
    for i in range(2_000):
        _save(store, _state(f"r-{i}", 1_000 + i))
    store.commit(1, 1)
    closed = threading.Event()
    reading = threading.Event()

    def close_while_read() -> None:
        reading.wait(5)
        store.close()
        closed.set()

    closer = threading.Thread(target=close_while_read)
    closer.start()
    rows = 0
    with store.reading() as db:
        reading.set()
        time.sleep(0.2)
        assert not closed.is_set()  # close waits for the read in progress
        it = db.iter()
        it.seek(b"i/c/")
        while it.valid() and it.key().startswith(b"i/c/"):
            rows += 1
            it.next()
        del it
    closer.join(5)
    assert closed.is_set() and rows == 2_000
    with pytest.raises(StoreClosedError):
        list_partition(store, RunFilter(), None, 10)


def test_an_undecodable_state_is_indexed_as_unreadable_and_restore_carries_on(tmp_path: Path) -> None:
    """A state from a newer schema (rolling upgrade) or with an unknown status must not stop the
    partition's restore or rebuild: the run is listed as ``unreadable`` and every other run is indexed."""
    newer = b"\x00" + (99_999).to_bytes(4, "big") + b"\x02xx"
    odd = st.encode_state(_state("r-odd", 1_500, st.RunStatus.RUNNING, workflow="shop"))
    odd_status = odd.replace(b"\x0erunning", b"\x0efrobbed")  # Avro string: zigzag length 7, then the text
    assert odd_status != odd
    with pytest.raises(ValueError):
        st.decode_state(odd_status)
    store = PartitionStore(tmp_path / "p0", 0, RunIndexer())
    records: list[tuple[bytes, bytes | None]] = [
        (run_key("r-ok"), st.encode_state(_state("r-ok", 1_000))),
        (run_key("r-new"), newer),
        (run_key("r-odd"), odd_status),
    ]
    store.restore_batch(records, 3)
    restored = _index(store)
    assert count_partition(store, RunFilter()) == 3
    rows = {r.run_id: r for r in list_partition(store, RunFilter(status="unreadable"), None, 10)[0]}
    assert sorted(rows) == ["r-new", "r-odd"]
    assert (rows["r-odd"].workflow, rows["r-odd"].created_ms) == ("shop", 1_500)  # what the record says
    assert "newer version" in rows["r-new"].error_message
    assert store.rebuild_indexes(RunIndexer()) == 3
    assert _index(store) == restored
    store.close()


def test_a_stale_index_entry_never_yields_a_row_that_does_not_match(tmp_path: Path) -> None:
    """A walk is not a snapshot: it can step onto an index entry that a commit has since replaced (the run
    completed, or was recreated with another created time). The summary is the truth: such a row is
    skipped, never listed under a filter it does not match."""
    store = PartitionStore(tmp_path / "p0", 0, RunIndexer())
    _save(store, _state("r-done", 1_000, st.COMPLETED))
    _save(store, _state("r-moved", 2_000))
    _save(store, _state("r-live", 500))
    store.commit(1, 1)
    with store.reading() as db:  # what a walk that started before those commits can still step onto
        db.put(INDEX_PREFIX + b"s/running\x00" + inv(1_000) + b"r-done", b"")
        db.put(INDEX_PREFIX + b"s/running\x00" + inv(3_000) + b"r-moved", b"")
    assert _all(store, RunFilter(status="running")) == ["r-moved", "r-live"]
    rows = list_partition(store, RunFilter(status="running"), None, 10)[0]
    assert [r.created_ms for r in rows] == [2_000, 500]
    store.close()


def test_a_long_walk_gives_up_when_the_store_closes(tmp_path: Path) -> None:
    """``close`` (a rebalance's revoke) waits for the reads in progress; a count walks every matching
    entry, so a walk looks at the closed flag every ``_CLOSED_CHECK`` entries and ends with
    StoreClosedError instead of holding the rebalance for the whole walk."""
    store = PartitionStore(tmp_path / "p0", 0, RunIndexer())
    for i in range(3 * _CLOSED_CHECK):
        _save(store, _state(f"r-{i}", 1_000 + i))
    store.commit(1, 1)
    walk = _walk(store, RunFilter(), None, summaries=False)
    next(walk)  # inside the read now
    closer = threading.Thread(target=store.close)
    closer.start()
    deadline = time.monotonic() + 5
    while not store.closed and time.monotonic() < deadline:
        time.sleep(0.01)
    assert store.closed and closer.is_alive()  # close waits for this walk
    with pytest.raises(StoreClosedError):
        for _ in walk:
            pass
    closer.join(5)
    assert not closer.is_alive()
