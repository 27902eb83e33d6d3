"""A bounded LRU of live workflow instances, so that hot runs are not re-executed on every event.

An evicted or missing instance is rebuilt by re-executing the workflow against the run's recorded state;
the cache is only ever a shortcut, never a source of truth. Instances that leave are closed (their
coroutine and private event loop are released).
"""

from __future__ import annotations

from orchestrator._core.runtime import WorkflowInstance
from orchestrator._engine.lru import Lru


class InstanceCache(Lru[str, WorkflowInstance]):
    def __init__(self, capacity: int = 2000) -> None:
        if capacity < 1:
            raise ValueError("InstanceCache capacity must be at least 1 (the run being advanced lives there)")
        super().__init__(capacity, on_evict=WorkflowInstance.close)
