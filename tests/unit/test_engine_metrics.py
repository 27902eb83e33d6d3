"""orchestrator._engine.metrics: what a batch counts (and only once it commits), faults as episodes, the
sampled store gauges on a real RocksDB store, and the endpoint. Counters are process-global: read deltas."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client import REGISTRY

from orchestrator._core.events import (
    Event,
    RunCompleted,
    RunFailed,
    RunParked,
    RunStarted,
    StepCompleted,
    StepScheduled,
)
from orchestrator._engine import metrics
from orchestrator._engine.store import PartitionStore, run_key, timer_key

log = logging.getLogger("tests.metrics")


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def ev(workflow: str, body: object) -> Event:
    return Event("e", "run-1", workflow, 0, body)  # type: ignore[arg-type]


def test_a_batch_counts_run_level_events_per_workflow_and_publishes_once() -> None:
    wf = "wf_batch_publish"
    before = {k: sample(f"orchestrator_runs_{k}_total", workflow=wf) for k in ("started", "completed")}
    batch = metrics.BatchCounts()
    batch.history(
        [
            ev(wf, RunStarted(b"")),
            ev(wf, StepScheduled(0, "s", "default", 1, b"", "k")),  # not run-level: not counted
            ev(wf, StepCompleted(0, 1, b"", 0, 1)),
            ev(wf, RunCompleted(b"")),
        ]
    )
    batch.history([ev(wf, RunStarted(b""))])
    assert sample("orchestrator_runs_started_total", workflow=wf) == before["started"]  # not yet
    batch.publish()
    batch.publish()  # a second publish adds nothing: the batch was emptied
    assert sample("orchestrator_runs_started_total", workflow=wf) == before["started"] + 2
    assert sample("orchestrator_runs_completed_total", workflow=wf) == before["completed"] + 1


def test_an_aborted_transaction_counts_nothing_but_the_abort() -> None:
    wf = "wf_batch_abort"
    pm = metrics.ProcessorMetrics()
    aborts = sample("orchestrator_transactions_total", result="abort")
    commits = sample("orchestrator_transactions_total", result="commit")
    pm.batch.history([ev(wf, RunFailed("E", "m")), ev(wf, RunParked("k", "r"))])
    pm.batch.add(metrics.DEAD_LETTERS, "processor", "Unit")
    letters = sample("orchestrator_dead_letters_total", component="processor", reason="Unit")
    pm.aborted()
    assert sample("orchestrator_runs_failed_total", workflow=wf) == 0
    assert sample("orchestrator_dead_letters_total", component="processor", reason="Unit") == letters
    assert sample("orchestrator_transactions_total", result="abort") == aborts + 1
    # The batch processed again commits: counted once.
    pm.batch.history([ev(wf, RunFailed("E", "m")), ev(wf, RunParked("k", "r"))])
    pm.batch.add(metrics.DEAD_LETTERS, "processor", "Unit")
    pm.committed(records=3, seconds=0.01)
    assert sample("orchestrator_runs_failed_total", workflow=wf) == 1
    assert sample("orchestrator_runs_parked_total", workflow=wf) == 1
    assert sample("orchestrator_dead_letters_total", component="processor", reason="Unit") == letters + 1
    assert sample("orchestrator_transactions_total", result="commit") == commits + 1


def test_a_fault_episode_is_counted_once_and_shown_while_it_lasts() -> None:
    faults = metrics.CountedFaultLog(log, "unit-processor")
    labels = {"component": "unit-processor", "fault": "commit_transaction"}
    faults.fault("commit_transaction", "down")
    faults.fault("commit_transaction", "still down")
    assert sample("orchestrator_fault_episodes_total", **labels) == 1
    assert sample("orchestrator_faults_active", **labels) == 1
    faults.recovered("commit_transaction")
    faults.recovered("commit_transaction")  # the usual call after every success: nothing to close
    assert sample("orchestrator_faults_active", **labels) == 0
    faults.fault("commit_transaction", "down again")
    assert sample("orchestrator_fault_episodes_total", **labels) == 2


def test_a_worker_episode_is_counted_once_and_shown_while_it_lasts() -> None:
    episode = metrics.CountedEpisode(log, "results cannot be delivered", "unit-worker", "deliver")
    labels = {"component": "unit-worker", "fault": "deliver"}
    episode.failed("timed out")
    episode.failed("timed out")
    assert sample("orchestrator_fault_episodes_total", **labels) == 1
    assert sample("orchestrator_faults_active", **labels) == 1
    episode.recovered()
    assert sample("orchestrator_faults_active", **labels) == 0


class _Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_consume_fault_on_an_idle_processor_closes_after_a_quiet_spell() -> None:
    # No record arrives on a quiet app after a broker restart, so nothing else would ever close it.
    clock = _Clock()
    faults = metrics.CountedFaultLog(log, "unit-idle-processor", clock=clock)
    labels = {"component": "unit-idle-processor", "fault": "consume"}
    faults.fault("consume", "broker down")
    clock.now += metrics.QUIET_S - 1
    faults.fault("consume", "still down")
    clock.now += metrics.QUIET_S - 1
    faults.recovered_if_quiet("consume")  # the last error is too recent
    assert sample("orchestrator_faults_active", **labels) == 1
    clock.now += 1
    faults.recovered_if_quiet("consume")
    assert sample("orchestrator_faults_active", **labels) == 0
    assert faults.active() == []
    faults.recovered_if_quiet("consume")  # nothing open: nothing happens
    assert sample("orchestrator_fault_episodes_total", **labels) == 1


def test_a_consume_episode_on_an_idle_worker_closes_after_a_quiet_spell() -> None:
    clock = _Clock()
    episode = metrics.CountedEpisode(
        log, "task topics unreachable", "unit-idle-worker", "consume", clock=clock
    )
    labels = {"component": "unit-idle-worker", "fault": "consume"}
    episode.failed("broker down")
    clock.now += metrics.QUIET_S - 0.5
    episode.recovered_if_quiet()
    assert sample("orchestrator_faults_active", **labels) == 1
    clock.now += 0.5
    episode.recovered_if_quiet()
    assert sample("orchestrator_faults_active", **labels) == 0
    assert not episode.active


@pytest.fixture
def store(tmp_path: Path) -> Iterator[PartitionStore]:
    s = PartitionStore(tmp_path / "p7", 7)
    yield s
    s.close()


def test_store_gauges_follow_timers_and_vanish_with_the_partition(store: PartitionStore) -> None:
    now_ms = 1_800_000_000_000
    for i in range(3):
        store.put(run_key(f"r{i}"), b"x" * 100)
        store.put(timer_key(now_ms - 1000 + i, f"r{i}", "t"), b"")  # due
    store.put(timer_key(now_ms + 60_000, "r9", "t"), b"")  # not yet
    store.commit(None, None)
    pm = metrics.ProcessorMetrics()
    labels = {"stage": "unit", "partition": "7"}
    pm.refresh_stores([("unit", 7, store)], now_ms)
    assert sample("orchestrator_timers_due", **labels) == 3
    assert sample("orchestrator_timer_next_due_timestamp_seconds", **labels) == (now_ms - 1000) / 1000
    assert sample("orchestrator_store_keys", **labels) > 0
    pm.refresh_stores([], now_ms)  # revoked
    assert REGISTRY.get_sample_value("orchestrator_timers_due", labels) is None
    assert REGISTRY.get_sample_value("orchestrator_store_keys", labels) is None
    assert REGISTRY.get_sample_value("orchestrator_timer_next_due_timestamp_seconds", labels) is None


class _CountingStore:
    """A store that counts its due-timer scans (each parses up to `TIMERS_DUE_CAP` keys)."""

    def __init__(self, store: PartitionStore) -> None:
        self.store = store
        self.scans = 0

    def due_timers(self, now_ms: int, limit: int) -> list[tuple[bytes, int, str, str]]:
        self.scans += 1
        return self.store.due_timers(now_ms, limit)

    def next_timer_due(self) -> int | None:
        return self.store.next_timer_due()

    def size_estimate(self) -> tuple[int, int]:
        return self.store.size_estimate()


def test_due_timers_are_counted_every_timers_interval_not_every_refresh(store: PartitionStore) -> None:
    now_ms = 1_800_000_000_000
    store.put(timer_key(now_ms - 1000, "r1", "t"), b"")
    store.commit(None, None)
    clock = _Clock()
    pm = metrics.ProcessorMetrics(clock=clock)
    counting = _CountingStore(store)
    labels = {"stage": "unit-count", "partition": "7"}
    for _ in range(5):  # one refresh a second
        pm.refresh_stores([("unit-count", 7, counting)], now_ms)
        clock.now += metrics.REFRESH_S
    assert counting.scans == 1
    assert sample("orchestrator_timers_due", **labels) == 1  # the last count stands in between
    clock.now += metrics.TIMERS_DUE_REFRESH_S
    pm.refresh_stores([("unit-count", 7, counting)], now_ms)
    assert counting.scans == 2
    pm.refresh_stores([], now_ms)  # revoked between counts: its gauge goes at once
    assert REGISTRY.get_sample_value("orchestrator_timers_due", labels) is None


def test_exported_names_carry_the_sample_suffixes() -> None:
    names = metrics.exported_names()
    assert "orchestrator_runs_completed_total" in names
    assert "orchestrator_step_duration_seconds_bucket" in names
    assert "orchestrator_consumer_lag" in names
    assert "orchestrator_build_info" in names
    assert "orchestrator_runs_completed" not in names


def test_serve_metrics_serves_the_registry_with_build_info() -> None:
    server = metrics.serve_metrics(0, "127.0.0.1")
    try:
        body = httpx.get(f"http://127.0.0.1:{server.server_port}/metrics", timeout=10).text
    finally:
        server.shutdown()
        server.server_close()
    assert 'orchestrator_build_info{confluent_kafka="' in body
    assert "# TYPE orchestrator_runs_completed_total counter" in body
