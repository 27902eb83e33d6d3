"""An in-memory stand-in for the keyed stage's partition store.

The router and its admission stage only read and write keys (``get``/``put``/``delete``) and scan
prefixes (``scan_merged``); timers are keys under ``t/`` in the same store. A dict does all of that, so a
test needs no RocksDB and leaves nothing on disk. There are no transactions here: every write is final
at once, as if each input were its own committed batch.
"""

from __future__ import annotations

from orchestrator._engine.store import TIMER_PREFIX, parse_timer_key


class MemoryStore:
    """The subset of ``PartitionStore`` that the keyed stage uses, kept in a dict."""

    def __init__(self, partition: int = 0) -> None:
        self.partition = partition
        self._data: dict[bytes, bytes] = {}

    def get(self, key: bytes) -> bytes | None:
        return self._data.get(key)

    def put(self, key: bytes, value: bytes) -> None:
        self._data[key] = value

    def delete(self, key: bytes) -> None:
        self._data.pop(key, None)

    def scan_merged(self, prefix: bytes) -> list[tuple[bytes, bytes]]:
        """Entries under ``prefix`` in key order, as the RocksDB store returns them."""
        return sorted((k, v) for k, v in self._data.items() if k.startswith(prefix))

    def timers(self) -> list[tuple[bytes, int, str, str]]:
        """(key, due ms, ident, tag) of every keyed-stage timer, earliest first."""
        return [(key, *parse_timer_key(key)) for key, _ in self.scan_merged(TIMER_PREFIX)]
