"""Moved to ``orchestrator._core.instance_cache`` (the runtime is pure); re-exported for the processor,
``audit`` and ``_engine/decider.py``, which still import it from here. New code imports the core."""

from __future__ import annotations

from orchestrator._core.instance_cache import InstanceCache

__all__ = ["InstanceCache"]
