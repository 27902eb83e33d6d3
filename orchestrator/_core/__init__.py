"""The engine's pure core: run state, events, ``evolve``, ``decide`` and the frozen formats.

Nothing in here does I/O or imports Kafka or RocksDB (an import-linter contract in ``pyproject.toml``
checks it): the processor loop, replay and the tests all drive the same functions.
"""
