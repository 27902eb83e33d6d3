"""Run states in a partition store, decoded once and cached, with their timers kept in the timer index.

The typed layer over ``PartitionStore`` for run stores: a run's state is stored encoded under ``run_key``
(with its summary, from which the store derives the run's index entries); every timer its state implies
(``timers_of``) has a key in the timer index, so saving a state adds the timers it gained and removes those
it lost.
"""

from __future__ import annotations

from orchestrator._engine.decider import timers_of
from orchestrator._engine.instance_cache import InstanceCache
from orchestrator._engine.queries.index import summary_of
from orchestrator._engine.state import RunState, decode_state, encode_state
from orchestrator._engine.state_cache import StateCache
from orchestrator._engine.store import PartitionStore, run_key, timer_key


class RunStates:
    """Also holds the live workflow instances (the decider's cache): both are shortcuts that `forget` and
    `clear` drop together whenever memory may disagree with the store."""

    def __init__(self, cache_size: int) -> None:
        self.cache = StateCache(cache_size)
        self.instances = InstanceCache(cache_size)

    def load(self, store: PartitionStore, run_id: str) -> RunState | None:
        """The run's state, None for no such run; raises what decoding the stored bytes raises."""
        state = self.cache.get(run_id)
        if state is not None:
            return state
        raw = store.get(run_key(run_id))
        if raw is None:
            return None
        state = decode_state(raw)
        self.cache.put(state.run_id, state)
        return state

    def save(
        self,
        store: PartitionStore,
        state: RunState,
        old_timers: set[tuple[int, str]],
        encoded: bytes | None = None,
    ) -> None:
        # The summary goes with the state so that the store's commit derives the run's index entries
        # without decoding the state again (the indexes are written with it, never changelogged).
        data = encode_state(state) if encoded is None else encoded
        store.put(run_key(state.run_id), data, summary_of(state))
        if state.terminal:  # ended runs are rarely touched again: keep room for live ones
            self.cache.evict(state.run_id)
        else:
            self.cache.put(state.run_id, state)
        new_timers = timers_of(state)
        for due, tag in old_timers - new_timers:
            store.delete(timer_key(due, state.run_id, tag))
        for due, tag in new_timers - old_timers:
            store.put(timer_key(due, state.run_id, tag), b"")

    def evict(self, run_id: str) -> None:
        """Drop the cached state: the next `load` decodes the store's bytes."""
        self.cache.evict(run_id)

    def forget(self, run_id: str) -> None:
        """Drop the run's state and live instance: handling it failed halfway, or its state was changed in
        place by what is not recorded; the store has the good bytes."""
        self.instances.evict(run_id)
        self.cache.evict(run_id)

    def clear(self) -> None:
        """Drop everything (a batch aborted, partitions moved)."""
        self.instances.clear()
        self.cache.clear()
