"""A bounded least-recently-used map: the shape of the processor's in-memory shortcuts.

Both of the processor's caches (live workflow instances, decoded run states) are only ever shortcuts to
what the store holds, so they can drop any entry at any time; this is the one place that bounds them.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class Lru(Generic[K, V]):
    """``on_evict`` is called for every value that leaves (evicted, replaced, cleared): e.g. to close it."""

    def __init__(self, capacity: int, on_evict: Callable[[V], None] | None = None) -> None:
        if capacity < 1:
            raise ValueError(f"{type(self).__name__} capacity must be at least 1")
        self.capacity = capacity
        self._on_evict = on_evict
        self._items: OrderedDict[K, V] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def get(self, key: K) -> V | None:
        value = self._items.get(key)
        if value is None:
            self.misses += 1
            return None
        self.hits += 1
        self._items.move_to_end(key)
        return value

    def put(self, key: K, value: V) -> None:
        old = self._items.pop(key, None)
        if old is not None and old is not value:
            self._dropped(old)
        self._items[key] = value
        while len(self._items) > self.capacity:
            _, evicted = self._items.popitem(last=False)
            self._dropped(evicted)

    def evict(self, key: K) -> None:
        value = self._items.pop(key, None)
        if value is not None:
            self._dropped(value)

    def clear(self) -> None:
        values = list(self._items.values())
        self._items.clear()
        for value in values:
            self._dropped(value)

    def __len__(self) -> int:
        return len(self._items)

    def _dropped(self, value: V) -> None:
        if self._on_evict is not None:
            self._on_evict(value)
