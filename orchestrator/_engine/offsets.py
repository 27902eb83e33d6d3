"""Which consumed offsets a worker may commit: everything below its oldest unfinished record.

Steps finish out of order; committing past an unfinished one would lose it on a crash. So each partition
commits up to (not including) the lowest offset still in flight.

The tracker is shared by three threads of a worker: the event loop (records started, cancels finished),
librdkafka's delivery callbacks on the producer poll thread (results acknowledged) and the consumer thread
(commits, revocations). One lock around every method keeps each call atomic; calls are short and never
call out while holding it.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field


@dataclass
class _PartitionTrack:
    inflight: set[int] = field(default_factory=set)
    next_offset: int = -1  # one past the highest finished offset
    committed: int = -1


class OffsetTracker:
    def __init__(self) -> None:
        self._parts: dict[tuple[str, int], _PartitionTrack] = {}
        self._lock = threading.Lock()

    def started(self, topic: str, partition: int, offset: int) -> None:
        with self._lock:
            self._parts.setdefault((topic, partition), _PartitionTrack()).inflight.add(offset)

    def finished(self, topic: str, partition: int, offset: int) -> None:
        with self._lock:
            track = self._parts.get((topic, partition))
            if track is None:  # partition revoked meanwhile: its next owner redoes the record
                return
            track.inflight.discard(offset)
            track.next_offset = max(track.next_offset, offset + 1)

    def committable(self) -> dict[tuple[str, int], int]:
        """Offsets to commit now (only those that moved since the last call)."""
        out: dict[tuple[str, int], int] = {}
        with self._lock:
            for tp, track in self._parts.items():
                position = min(track.inflight) if track.inflight else track.next_offset
                if position > track.committed:
                    out[tp] = position
        return out

    def mark_committed(self, offsets: dict[tuple[str, int], int]) -> None:
        with self._lock:
            for tp, offset in offsets.items():
                if tp in self._parts:
                    self._parts[tp].committed = max(self._parts[tp].committed, offset)

    def forget(self, topic: str, partition: int) -> None:
        with self._lock:
            self._parts.pop((topic, partition), None)

    def forget_all(self) -> None:
        with self._lock:
            self._parts.clear()

    def inflight_count(self) -> int:
        with self._lock:
            return sum(len(t.inflight) for t in self._parts.values())
