"""StateManager.assign publishes a partition's stores only once restored: run queries read
``run_stores`` from another thread, and a store still being restored is incomplete (issue 13, F3)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import TopicPartition

from orchestrator._engine.faults import FaultLog, Retrier
from orchestrator._engine.processor import state_manager
from orchestrator._engine.processor.config import ProcessorTopics
from orchestrator._engine.processor.state_manager import StateManager
from orchestrator.settings import Settings

_TOPICS = ProcessorTopics("in", "hist", "cl", "out", "dlq", "keyed", "keyed-cl", ())


def _manager(tmp_path: Path) -> StateManager:
    retry = Retrier(FaultLog(logging.getLogger("test")), lambda: True)
    return StateManager(tmp_path, _TOPICS, Settings(), retry)


def test_stores_are_published_only_after_their_restore(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[tuple[list[int], list[int]]] = []

    def fake_restore(settings: Any, targets: list[Any]) -> int:
        seen.append((sorted(manager.run_stores), sorted(manager.keyed_stores)))
        return 7

    manager = _manager(tmp_path)
    monkeypatch.setattr(state_manager, "restore", fake_restore)
    assert manager.assign([TopicPartition("in", 0), TopicPartition("keyed", 1)]) == 7
    assert seen == [([], [])]  # nothing to query while the restore ran
    assert sorted(manager.run_stores) == [0] and sorted(manager.keyed_stores) == [1]
    manager.close()


def test_stores_of_a_failed_restore_are_still_closed_by_close(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def failing_restore(settings: Any, targets: list[Any]) -> int:
        raise RuntimeError("restore failed")

    manager = _manager(tmp_path)
    monkeypatch.setattr(state_manager, "restore", failing_restore)
    with pytest.raises(RuntimeError):
        manager.assign([TopicPartition("in", 0)])
    store = manager.run_stores[0]  # kept, as before, so that close() closes it
    manager.close()
    assert store.closed
