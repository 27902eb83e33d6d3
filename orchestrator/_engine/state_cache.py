"""Decoded run states of recently touched runs, so that a run's state is not decoded on every event.

The processor changes states in place and writes each change to its store as bytes; the object kept here
is always the one last written (or read). Whenever that may not hold (a batch aborted, partitions moved, an
event failed half-way), the processor drops entries and the next read decodes the store's bytes again: the
cache is a shortcut, never a source of truth.
"""

from __future__ import annotations

from orchestrator._engine.lru import Lru
from orchestrator._engine.state import RunState


class StateCache(Lru[str, RunState]):
    """Run id -> its decoded state."""
