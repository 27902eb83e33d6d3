"""One partition's state: a RocksDB store whose writes reach disk only when Kafka has committed them.

Writes made while a batch is processed sit in an overlay (read-your-writes). When the Kafka transaction
that carries their changelog records commits, the overlay goes to RocksDB in one atomic write batch
together with the consumed inbox offset and the changelog offset it corresponds to (KIP-892/KIP-1035
style). A crash before the commit leaves RocksDB exactly as Kafka last committed it, or behind it, never
ahead: restore then replays the changelog from the offset the store itself records.

Key layout (frozen; bytes sort in this order):
  ``i/...``                                   run indexes (run stores only), empty values; see below
  ``m/<name>``                                local metadata, never changelogged
  ``r/<run_id>``                              run state (Avro RunState)
  ``t/<due_ms: 8 bytes big-endian><run_id>\\x00<tag>``   timer index, empty value
  ``x/<run_id>``                              run summary (two JSON lines), what the indexes were built from

Run indexes (ADR 0016; written by ``orchestrator._engine.queries.index.RunIndexer``). ``<inv>`` is
``2**64 - 1 - ms`` as 8 bytes big-endian, so that the newest sorts first; ties sort by run id:
  ``i/c/<inv created><run_id>``                       every run, newest first
  ``i/w/<workflow>\\x00<inv created><run_id>``        by workflow
  ``i/s/<status>\\x00<inv created><run_id>``          by status
  ``i/e/<error_type>\\x00<inv created><run_id>``      by error type (runs that have one)
  ``i/t/<key>=<value>\\x00<inv created><run_id>``     by tag, one entry per pair
  ``i/n/<inv ended><run_id>``                         ended runs, most recently ended first
  ``m/index_version``                               the index layout this store's indexes follow

The indexes and summaries are derived from the run states: ``commit`` and ``restore_batch`` write them in
the same RocksDB write batch as the states they are derived from (so they can never disagree with the
stored state, crash or not), and they are never written to the changelog (``dirty`` holds only states
and timers): a restore re-derives them. A store whose ``m/index_version`` is absent or older (written by
older code) has its indexes rebuilt from its states when it is opened.

Reads for queries (``reading``) see only committed data (never the overlay), from any thread;
``close`` waits for the reads in progress, and a read of a closed store raises ``StoreClosedError``
instead of touching freed memory.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import struct
import threading
import time
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any, Protocol

from rocksdict import BlockBasedOptions, Cache, Options, Rdict, WriteBatch, WriteBufferManager

log = logging.getLogger("orchestrator.store")

RUN_PREFIX = b"r/"
TIMER_PREFIX = b"t/"
META_PREFIX = b"m/"
META_INBOX_OFFSET = b"m/inbox_offset"
META_CHANGELOG_OFFSET = b"m/changelog_offset"
META_INDEX_VERSION = b"m/index_version"
META_WRITTEN_MS = b"m/written_ms"
"""Wall-clock ms of the store's last write (commit or restore batch): a store unused for longer than its
changelog's ``delete.retention.ms`` may have missed tombstones compaction dropped (ADR 0024)."""
INDEX_PREFIX = b"i/"
SUMMARY_PREFIX = b"x/"

_DUE = struct.Struct(">Q")
_TOMBSTONE = None
_ABSENT = object()  # in an undo log: the key had no entry in the overlay


def run_key(run_id: str) -> bytes:
    return RUN_PREFIX + run_id.encode()


def timer_key(due_ms: int, run_id: str, tag: str) -> bytes:
    return TIMER_PREFIX + _DUE.pack(max(due_ms, 0)) + run_id.encode() + b"\x00" + tag.encode()


def parse_timer_key(key: bytes) -> tuple[int, str, str]:
    due = _DUE.unpack_from(key, len(TIMER_PREFIX))[0]
    run_id, _, tag = key[len(TIMER_PREFIX) + 8 :].partition(b"\x00")
    return due, run_id.decode(), tag.decode()


# One memory budget for every store of the process, however many partitions it owns. RocksDB's defaults
# give each store up to 2 x 64 MB of memtables: a processor's RSS grew to ~390 MB under load with 8 stores
# and would grow with the partition count. Memtables share one 64 MB limit (a store flushes early when the
# process is over it), reads share one 32 MB block cache, and a bloom filter answers "no such run" (every
# new run's first read) without touching the files.
MEMTABLES_BYTES = 64 << 20
BLOCK_CACHE_BYTES = 32 << 20
WRITE_BUFFER_BYTES = 8 << 20


@cache
def _shared() -> tuple[Cache, WriteBufferManager]:
    return Cache(BLOCK_CACHE_BYTES), WriteBufferManager(MEMTABLES_BYTES, False)


def _options() -> Options:
    block_cache, memtables = _shared()
    options = Options(raw_mode=True)
    options.set_write_buffer_size(WRITE_BUFFER_BYTES)
    options.set_write_buffer_manager(memtables)
    table = BlockBasedOptions()
    table.set_bloom_filter(10, False)
    table.set_block_cache(block_cache)
    options.set_block_based_table_factory(table)
    return options


class StoreClosedError(Exception):
    """A query read a store that a rebalance (or shutdown) closed: its partition is answered elsewhere."""


class Indexer(Protocol):
    """Derives a store's secondary indexes from its run states (the store applies them atomically)."""

    version: int

    def summary(self, state_bytes: bytes) -> bytes:
        """The summary of a stored run state (what its index entries are computed from)."""
        ...

    def index_keys(self, run_id: bytes, summary: bytes) -> list[bytes]:
        """The index keys of a run with this summary."""
        ...

    def same_keys(self, old: bytes, new: bytes) -> bool:
        """Whether two summaries give the same index keys (checked cheaply, before computing them)."""
        ...


class PartitionStore:
    def __init__(self, path: Path, partition: int, indexer: Indexer | None = None) -> None:
        self.path = path
        self.partition = partition
        path.mkdir(parents=True, exist_ok=True)
        self._db = Rdict(str(path), options=_options())
        self._overlay: dict[bytes, bytes | None] = {}
        self._undo: dict[bytes, object] | None = None  # overlay entries before the savepoint, by key
        self._indexer = indexer
        # Summaries computed by the caller from the state it encoded (no decode at commit): key -> (the
        # exact bytes object put, summary). Used only while the overlay still holds that very object.
        self._hints: dict[bytes, tuple[bytes, bytes]] = {}
        self._readers = 0
        self._closed = False
        self._readers_done = threading.Condition()
        if indexer is not None:
            self._check_index_version(indexer)

    # -- reads and buffered writes ------------------------------------------------------------------------
    def get(self, key: bytes) -> bytes | None:
        if key in self._overlay:
            return self._overlay[key]
        value = self._db.get(key)
        return value if isinstance(value, bytes) else None

    def put(self, key: bytes, value: bytes, summary: bytes | None = None) -> None:
        """Buffer a write; ``summary``: the indexer's summary of ``value`` (a run state), if known."""
        if self._undo is not None and key not in self._undo:
            self._undo[key] = self._overlay.get(key, _ABSENT)
        self._overlay[key] = value
        if summary is not None:
            self._hints[key] = (value, summary)

    def delete(self, key: bytes) -> None:
        if self._undo is not None and key not in self._undo:
            self._undo[key] = self._overlay.get(key, _ABSENT)
        self._overlay[key] = _TOMBSTONE

    # -- savepoints: undo the writes of one record of the batch, keep the rest --------------------------
    def savepoint(self) -> None:
        """Remember the overlay as it is now, so that ``rollback`` can undo the writes that follow.

        Why: one input (a keyed record) may raise after some of its writes; the batch's other inputs are
        fine and commit, so discarding the whole overlay is wrong, and keeping the half-done writes would
        commit a state no input produced. One level, cheap: only keys written afterwards are remembered.
        """
        self._undo = {}

    def written_since_savepoint(self) -> list[bytes]:
        """Keys written since ``savepoint()`` (empty without one)."""
        return list(self._undo or ())

    def rollback(self) -> None:
        """Undo every write since ``savepoint()``; the writes before it stay."""
        for key, before in (self._undo or {}).items():
            if before is _ABSENT:
                self._overlay.pop(key, None)
            else:
                self._overlay[key] = before  # type: ignore[assignment]
        self._undo = None

    def release(self) -> None:
        """Keep the writes since ``savepoint()`` and stop remembering."""
        self._undo = None

    def dirty(self) -> dict[bytes, bytes | None]:
        """Writes of the open batch (key -> value, None for a delete), for the changelog."""
        return self._overlay

    def discard(self) -> None:
        """The transaction aborted: forget its writes."""
        self._overlay = {}
        self._undo = None
        self._hints = {}

    def commit(self, inbox_offset: int | None, changelog_offset: int | None) -> None:
        """Make the batch durable locally, with the offsets it corresponds to, in one atomic write (the
        run indexes derived from the batch's states included)."""
        batch = WriteBatch(raw_mode=True)
        indexer = self._indexer
        for key, value in self._overlay.items():
            if value is None:
                batch.delete(key)
            else:
                batch.put(key, value)
            if indexer is not None and key.startswith(RUN_PREFIX):
                hint = self._hints.get(key)
                summary = hint[1] if hint is not None and hint[0] is value else None
                self._index(batch, indexer, key, value, summary)
        if inbox_offset is not None:
            batch.put(META_INBOX_OFFSET, _DUE.pack(inbox_offset))
        if changelog_offset is not None:
            batch.put(META_CHANGELOG_OFFSET, _DUE.pack(changelog_offset))
        batch.put(META_WRITTEN_MS, _DUE.pack(int(time.time() * 1000)))
        self._db.write(batch)
        self._overlay = {}
        self._hints = {}

    def _index(
        self, batch: WriteBatch, indexer: Indexer, key: bytes, value: bytes | None, summary: bytes | None
    ) -> None:
        """Into ``batch``: the index changes of the run at ``key`` getting state ``value`` (None: deleted),
        against the summary committed before. One point read; index keys change only with what they
        index (a run's status, its tags, its end), its summary on every write."""
        run_id = key[len(RUN_PREFIX) :]
        summary_key = SUMMARY_PREFIX + run_id
        old = self._db.get(summary_key)
        new = None if value is None else (summary if summary is not None else indexer.summary(value))
        if old == new:
            return
        if isinstance(old, bytes) and new is not None and indexer.same_keys(old, new):
            batch.put(summary_key, new)  # most transitions: the run's indexed fields did not change
            return
        old_keys = set(indexer.index_keys(run_id, old)) if isinstance(old, bytes) else set()
        new_keys = set(indexer.index_keys(run_id, new)) if new is not None else set()
        for k in old_keys - new_keys:
            batch.delete(k)
        for k in new_keys - old_keys:
            batch.put(k, b"")
        if new is None:
            batch.delete(summary_key)
        else:
            batch.put(summary_key, new)

    # -- restore ------------------------------------------------------------------------------------------
    def restore_batch(self, records: list[tuple[bytes, bytes | None]], next_changelog_offset: int) -> None:
        """Apply changelog records; only the last record of a key matters (the changelog is the store's
        history of writes), so each run's indexes are derived once per batch, from its final state."""
        batch = WriteBatch(raw_mode=True)
        latest: dict[bytes, bytes | None] = {}
        for key, value in records:
            latest.pop(key, None)  # keep the order of the last writes
            latest[key] = value
        for key, value in latest.items():
            if value is None:
                batch.delete(key)
            else:
                batch.put(key, value)
            if self._indexer is not None and key.startswith(RUN_PREFIX):
                self._index(batch, self._indexer, key, value, None)
        batch.put(META_CHANGELOG_OFFSET, _DUE.pack(next_changelog_offset))
        batch.put(META_WRITTEN_MS, _DUE.pack(int(time.time() * 1000)))
        self._db.write(batch)

    def clear(self) -> None:
        """Delete every key (state, timers, indexes, offsets) in one write batch.

        Why: a store whose changelog offset fell below the changelog's start (records deleted, a topic
        recreated) cannot be caught up by replaying what is left, since a tombstone between its offset and
        the new start may be gone: the run it deleted would come back. It must start again from empty."""
        batch = WriteBatch(raw_mode=True)
        it = self._db.iter()
        try:
            it.seek_to_first()
            while it.valid():
                batch.delete(it.key())
                it.next()
        finally:
            del it
        self._db.write(batch)
        self._overlay = {}
        self._hints = {}
        if self._indexer is not None:
            self._check_index_version(self._indexer)

    # -- index maintenance ----------------------------------------------------------------------------------
    def _check_index_version(self, indexer: Indexer) -> None:
        """Rebuild the indexes of a store written by code with another (or no) index layout."""
        raw = self._db.get(META_INDEX_VERSION)
        version = _DUE.unpack(raw)[0] if isinstance(raw, bytes) else None
        if version == indexer.version:
            return
        count = self.rebuild_indexes(indexer)
        log.info(
            "store %s: index version %s -> %d, rebuilt the indexes of %d runs",
            self.path,
            version,
            indexer.version,
            count,
        )

    def rebuild_indexes(self, indexer: Indexer, batch_size: int = 2000) -> int:
        """Drop every index entry and summary, derive them again from the stored states; the run count.

        Deletes by range (two tombstones, not one per key); the new entries go in batches, the version
        marker last, so a crash halfway leaves a store whose next open rebuilds again.
        """
        self._db.delete(META_INDEX_VERSION)
        for prefix in (INDEX_PREFIX, SUMMARY_PREFIX):
            self._db.delete_range(prefix, prefix[:-1] + bytes([prefix[-1] + 1]))
        batch, pending, count = WriteBatch(raw_mode=True), 0, 0
        for key, value in self.scan(RUN_PREFIX):
            summary = indexer.summary(value)
            run_id = key[len(RUN_PREFIX) :]
            for k in indexer.index_keys(run_id, summary):
                batch.put(k, b"")
            batch.put(SUMMARY_PREFIX + run_id, summary)
            pending += 1
            count += 1
            if pending >= batch_size:
                self._db.write(batch)
                batch, pending = WriteBatch(raw_mode=True), 0
        batch.put(META_INDEX_VERSION, _DUE.pack(indexer.version))
        self._db.write(batch)
        return count

    # -- reads for queries (any thread, committed data only) -------------------------------------------------
    @contextlib.contextmanager
    def reading(self) -> Iterator[Any]:
        """The committed data (``get``, ``iter``: RocksDB reads are thread-safe), valid inside the block;
        StoreClosedError if the store is closed. ``close`` waits until every such block has ended.

        Not a RocksDB snapshot: rocksdict's snapshot iterators (0.3) saw writes made after the snapshot
        (checked by hand), so readers take each run's summary as the truth about it and skip a run whose
        summary no longer matches the index entry that led to it.
        """
        with self._readers_done:
            if self._closed:
                raise StoreClosedError(f"store of partition {self.partition} is closed")
            self._readers += 1
        try:
            yield self._db
        finally:
            with self._readers_done:
                self._readers -= 1
                self._readers_done.notify_all()

    def meta_offset(self, key: bytes) -> int | None:
        raw = self._db.get(key)
        return _DUE.unpack(raw)[0] if isinstance(raw, bytes) else None

    # -- scans (on committed data: callers scan between batches, when the overlay is empty) ----------------
    def scan(self, prefix: bytes, start: bytes | None = None) -> Iterator[tuple[bytes, bytes]]:
        it = self._db.iter()
        try:
            it.seek(start or prefix)
            while it.valid():
                key = it.key()
                if not key.startswith(prefix):
                    break
                yield key, it.value()
                it.next()
        finally:
            del it

    def scan_merged(self, prefix: bytes) -> list[tuple[bytes, bytes]]:
        """Committed and uncommitted entries under ``prefix``, in key order (reads of the open batch)."""
        merged = dict(self.scan(prefix))
        for key, value in self._overlay.items():
            if key.startswith(prefix):
                if value is None:
                    merged.pop(key, None)
                else:
                    merged[key] = value
        return sorted(merged.items())

    def due_timers(self, now_ms: int, limit: int) -> list[tuple[bytes, int, str, str]]:
        out: list[tuple[bytes, int, str, str]] = []
        end = TIMER_PREFIX + _DUE.pack(now_ms + 1)
        for key, _ in self.scan(TIMER_PREFIX):
            if key >= end or len(out) >= limit:
                break
            due, run_id, tag = parse_timer_key(key)
            out.append((key, due, run_id, tag))
        return out

    def next_timer_due(self) -> int | None:
        for key, _ in self.scan(TIMER_PREFIX):
            return parse_timer_key(key)[0]
        return None

    def size_estimate(self) -> tuple[int, int]:
        """RocksDB's own (keys, live data bytes) estimates: cheap, no scan (for the store size metrics)."""
        keys = self._db.property_int_value("rocksdb.estimate-num-keys") or 0
        size = self._db.property_int_value("rocksdb.estimate-live-data-size") or 0
        return int(keys), int(size)

    def count(self, prefix: bytes) -> int:
        return sum(1 for _ in self.scan(prefix))

    @property
    def closed(self) -> bool:
        """Set as ``close`` begins: a long read checks it now and then and gives up (``StoreClosedError``),
        so a rebalance never waits for a whole walk of the indexes."""
        return self._closed

    def close(self) -> None:
        """Close the database once no query reads it (queries are bounded by their page size)."""
        with self._readers_done:
            self._closed = True
            self._readers_done.wait_for(lambda: self._readers == 0)
        self._overlay = {}
        self._hints = {}
        self._db.close()

    @staticmethod
    def destroy(path: Path) -> None:
        shutil.rmtree(path, ignore_errors=True)
