"""One partition's state: a RocksDB store whose writes reach disk only when Kafka has committed them.

Writes made while a batch is processed sit in an overlay (read-your-writes). When the Kafka transaction
that carries their changelog records commits, the overlay goes to RocksDB in one atomic write batch
together with the consumed inbox offset and the changelog offset it corresponds to (KIP-892/KIP-1035
style). A crash before the commit leaves RocksDB exactly as Kafka last committed it, or behind it, never
ahead: restore then replays the changelog from the offset the store itself records.

Key layout (frozen; bytes sort in this order):
  ``r/<run_id>``                              run state (Avro RunState)
  ``t/<due_ms: 8 bytes big-endian><run_id>\\x00<tag>``   timer index, empty value
  ``m/<name>``                                local metadata, never changelogged
"""

from __future__ import annotations

import shutil
import struct
from collections.abc import Iterator
from functools import cache
from pathlib import Path

from rocksdict import BlockBasedOptions, Cache, Options, Rdict, WriteBatch, WriteBufferManager

RUN_PREFIX = b"r/"
TIMER_PREFIX = b"t/"
META_PREFIX = b"m/"
META_INBOX_OFFSET = b"m/inbox_offset"
META_CHANGELOG_OFFSET = b"m/changelog_offset"

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


class PartitionStore:
    def __init__(self, path: Path, partition: int) -> None:
        self.path = path
        self.partition = partition
        path.mkdir(parents=True, exist_ok=True)
        self._db = Rdict(str(path), options=_options())
        self._overlay: dict[bytes, bytes | None] = {}
        self._undo: dict[bytes, object] | None = None  # overlay entries before the savepoint, by key

    # -- reads and buffered writes ------------------------------------------------------------------------
    def get(self, key: bytes) -> bytes | None:
        if key in self._overlay:
            return self._overlay[key]
        value = self._db.get(key)
        return value if isinstance(value, bytes) else None

    def put(self, key: bytes, value: bytes) -> None:
        if self._undo is not None and key not in self._undo:
            self._undo[key] = self._overlay.get(key, _ABSENT)
        self._overlay[key] = value

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

    def commit(self, inbox_offset: int | None, changelog_offset: int | None) -> None:
        """Make the batch durable locally, with the offsets it corresponds to, in one atomic write."""
        batch = WriteBatch(raw_mode=True)
        for key, value in self._overlay.items():
            if value is None:
                batch.delete(key)
            else:
                batch.put(key, value)
        if inbox_offset is not None:
            batch.put(META_INBOX_OFFSET, _DUE.pack(inbox_offset))
        if changelog_offset is not None:
            batch.put(META_CHANGELOG_OFFSET, _DUE.pack(changelog_offset))
        self._db.write(batch)
        self._overlay = {}

    # -- restore ------------------------------------------------------------------------------------------
    def restore_batch(self, records: list[tuple[bytes, bytes | None]], next_changelog_offset: int) -> None:
        batch = WriteBatch(raw_mode=True)
        for key, value in records:
            if value is None:
                batch.delete(key)
            else:
                batch.put(key, value)
        batch.put(META_CHANGELOG_OFFSET, _DUE.pack(next_changelog_offset))
        self._db.write(batch)

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

    def close(self) -> None:
        self._overlay = {}
        self._db.close()

    @staticmethod
    def destroy(path: Path) -> None:
        shutil.rmtree(path, ignore_errors=True)
