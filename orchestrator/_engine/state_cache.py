"""Decoded run states of recently touched runs, so that a run's state is not decoded on every event.

The processor changes states in place and writes each change to its store as bytes; the object kept here
is always the one last written (or read). Whenever that may not hold (a batch aborted, partitions moved, an
event failed half-way), the processor drops entries and the next read decodes the store's bytes again: the
cache is a shortcut, never a source of truth.
"""

from __future__ import annotations

from collections import OrderedDict

from orchestrator._engine.state import RunState


class StateCache:
    def __init__(self, capacity: int = 2000) -> None:
        if capacity < 1:
            raise ValueError("StateCache capacity must be at least 1")
        self.capacity = capacity
        self._items: OrderedDict[str, RunState] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def get(self, run_id: str) -> RunState | None:
        state = self._items.get(run_id)
        if state is None:
            self.misses += 1
            return None
        self.hits += 1
        self._items.move_to_end(run_id)
        return state

    def put(self, state: RunState) -> None:
        self._items[state.run_id] = state
        self._items.move_to_end(state.run_id)
        while len(self._items) > self.capacity:
            self._items.popitem(last=False)

    def evict(self, run_id: str) -> None:
        self._items.pop(run_id, None)

    def clear(self) -> None:
        self._items.clear()

    def __len__(self) -> int:
        return len(self._items)
