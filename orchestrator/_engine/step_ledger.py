"""Which step attempts this worker has run, so that a command delivered again never runs its step again.

Why: a command's offset is committed only after the step's result is delivered. Until then the same
command can reach this worker again: the broker went away long enough for the consumer to lose its
partitions, and when they come back it fetches from the last committed offset. Running the step again
would pay twice for work this worker already did. Instead the redelivered command joins its attempt: its
offset completes when the attempt's result is delivered (or at once if it already was).

Attempts are keyed by (run id, position, attempt), so a command the processor sent twice for the same
attempt is covered too. Delivered attempts are remembered up to ``capacity`` (oldest forgotten first):
a command can only come back from below the last committed offset, and a worker commits every 200 ms
while the broker is up and fetches nothing new while it is down, so the window that matters is small.
20,000 entries take about 5 MB (100,000 took 23 MB, measured with tracemalloc).
"""

from __future__ import annotations

import enum
import threading
from collections import OrderedDict

Attempt = tuple[str, int, int]
"""(run id, position, attempt)."""
Coords = tuple[str, int, int]
"""(topic, partition, offset) of a consumed command."""


class Claim(enum.Enum):
    RUN = "run"
    """New attempt: run the step."""
    JOINED = "joined"
    """Running or its result is held: this command's offset completes with it."""
    DONE = "done"
    """Its result was delivered already: complete this command's offset now."""


class StepLedger:
    """Shared by the event loop (claims) and the producer poll thread (deliveries)."""

    def __init__(self, capacity: int = 20_000) -> None:
        self._capacity = capacity
        self._lock = threading.Lock()
        self._open: dict[Attempt, list[Coords]] = {}
        self._done: OrderedDict[Attempt, None] = OrderedDict()

    def claim(self, attempt: Attempt, coords: Coords) -> Claim:
        with self._lock:
            waiters = self._open.get(attempt)
            if waiters is not None:
                waiters.append(coords)
                return Claim.JOINED
            if attempt in self._done:
                return Claim.DONE
            self._open[attempt] = [coords]
            return Claim.RUN

    def delivered(self, attempt: Attempt) -> list[Coords]:
        """The attempt's report reached Kafka: the offsets of every command that asked for it."""
        with self._lock:
            waiters = self._open.pop(attempt, [])
            self._done[attempt] = None
            while len(self._done) > self._capacity:
                self._done.popitem(last=False)
            return waiters

    def release(self, attempt: Attempt) -> list[Coords]:
        """The attempt ended without a report (an internal error): forget it, so that a re-driven command
        runs it; the offsets of every command that asked for it."""
        with self._lock:
            return self._open.pop(attempt, [])

    def open_count(self) -> int:
        with self._lock:
            return len(self._open)
