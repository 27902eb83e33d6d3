"""A bounded LRU of live workflow instances, so that hot runs are not re-executed on every event.

An evicted or missing instance is rebuilt by re-executing the workflow against the run's recorded state;
the cache is only ever a shortcut, never a source of truth.
"""

from __future__ import annotations

from collections import OrderedDict

from orchestrator._engine.runtime import WorkflowInstance


class InstanceCache:
    def __init__(self, capacity: int = 2000) -> None:
        if capacity < 1:
            raise ValueError("InstanceCache capacity must be at least 1 (the run being advanced lives there)")
        self.capacity = capacity
        self._items: OrderedDict[str, WorkflowInstance] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def get(self, run_id: str) -> WorkflowInstance | None:
        inst = self._items.get(run_id)
        if inst is None:
            self.misses += 1
            return None
        self.hits += 1
        self._items.move_to_end(run_id)
        return inst

    def put(self, run_id: str, inst: WorkflowInstance) -> None:
        old = self._items.pop(run_id, None)
        if old is not None and old is not inst:
            old.close()
        self._items[run_id] = inst
        while len(self._items) > self.capacity:
            _, evicted = self._items.popitem(last=False)
            evicted.close()

    def evict(self, run_id: str) -> None:
        inst = self._items.pop(run_id, None)
        if inst is not None:
            inst.close()

    def clear(self) -> None:
        for inst in self._items.values():
            inst.close()
        self._items.clear()

    def __len__(self) -> int:
        return len(self._items)
