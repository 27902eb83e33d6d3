"""The /metrics endpoints of a real processor and a real worker (child processes, ``--metrics-port``).

The claim: after known runs (some complete, some fail, one step fails once and is retried, one run is
parked, junk records are dead-lettered by each side), the scraped values are exactly those counts; the step
histograms hold one observation per attempt; the lag of every assigned partition returns to 0; nothing is
left in flight or held.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from engine_support import Bad, EngineProcess, free_ports, settings
from prometheus_client.parser import text_string_to_metric_families

from orchestrator import App, topology
from orchestrator.errors import RunFailedError

APP_SPEC = "tests.integration.apps.metrics_app:app"

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(port: int) -> Samples:
    body = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    out: Samples = {}
    for family in text_string_to_metric_families(body):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sample ``name`` with exactly these labels (0 when absent: a counter never incremented)."""
    return samples.get((name, frozenset(labels.items())), 0.0)


def series(samples: Samples, name: str) -> dict[frozenset[tuple[str, str]], float]:
    return {labels: v for (n, labels), v in samples.items() if n == name}


def eventually(port: int, check: Callable[[Samples], None], timeout: float = 60.0) -> Samples:
    """Scrape until ``check`` passes (counters are published right after the commit that the client's
    answer follows, and gauges are sampled once a second)."""
    deadline = time.monotonic() + timeout
    while True:
        samples = scrape(port)
        try:
            check(samples)
            return samples
        except AssertionError:
            if time.monotonic() > deadline:
                raise
        time.sleep(0.2)


def wait_for_endpoint(port: int, proc: EngineProcess, log: Path) -> None:
    deadline = time.monotonic() + 60
    while True:
        assert proc.alive, log.read_text()[-3000:]
        try:
            scrape(port)
            return
        except httpx.TransportError:
            assert time.monotonic() < deadline, f"no /metrics on {port}"
            time.sleep(0.1)


GOOD, RETRIED, BAD = 5, 2, 3


async def test_metrics_of_a_processor_and_a_worker_count_what_happened(
    kafka_bootstrap: str, unique_name: str, tmp_path: Path
) -> None:
    env = {
        "METRICS_APP_NAME": unique_name,
        "ORCHESTRATOR_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "ORCHESTRATOR_PARTITIONS": "4",
    }
    p_port, w_port = free_ports(2)
    log = tmp_path / "engine.log"
    proc = EngineProcess(
        "processor",
        APP_SPEC,
        env,
        "--instance-id",
        "m-p0",
        "--state-dir",
        str(tmp_path / "state"),
        "--metrics-port",
        str(p_port),
        "--metrics-host",
        "127.0.0.1",
        log=log,
    )
    work = EngineProcess(
        "worker", APP_SPEC, env, "--metrics-port", str(w_port), "--metrics-host", "127.0.0.1", log=log
    )
    app = App(unique_name, settings=settings(kafka_bootstrap))
    proc.start()
    work.start()
    try:
        wait_for_endpoint(p_port, proc, log)
        wait_for_endpoint(w_port, work, log)
        async with app.client() as client:
            good = [await client.start("good", i, run_id=f"good-{i}") for i in range(GOOD)]
            retried = [await client.start("retried", i, run_id=f"retried-{i}") for i in range(RETRIED)]
            bad = [await client.start("bad", i, run_id=f"bad-{i}") for i in range(BAD)]
            ghost = await client.start("ghost", 0, run_id="ghost-0")  # no such workflow: parked
            assert await asyncio.gather(*(h.result(timeout=120) for h in good)) == [
                i + 11 for i in range(GOOD)
            ]
            assert await asyncio.gather(*(h.result(timeout=120) for h in retried)) == list(range(RETRIED))
            for h in bad:
                with pytest.raises(RunFailedError) as failed:
                    await h.result(timeout=120)
                assert failed.value.status == "failed"
            with pytest.raises(RunFailedError) as parked:
                await ghost.result(timeout=120)
            assert parked.value.status == "parked"
        junk = Bad(kafka_bootstrap)
        junk.put("inbox junk", topology.inbox_topic(unique_name), b"not an event", "junk", 0)
        junk.put("task junk", topology.tasks_topic(unique_name, "default"), b"not a command", "junk", 0)

        def processor_counts(s: Samples) -> None:
            for workflow, started, completed, failed, parked_n in (
                ("good", GOOD, GOOD, 0, 0),
                ("retried", RETRIED, RETRIED, 0, 0),
                ("bad", BAD, 0, BAD, 0),
                ("ghost", 1, 0, 0, 1),
            ):
                w = {"workflow": workflow}
                assert value(s, "orchestrator_runs_started_total", **w) == started, workflow
                assert value(s, "orchestrator_runs_completed_total", **w) == completed, workflow
                assert value(s, "orchestrator_runs_failed_total", **w) == failed, workflow
                assert value(s, "orchestrator_runs_parked_total", **w) == parked_n, workflow
            letters = series(s, "orchestrator_dead_letters_total")
            assert letters == {frozenset({("component", "processor"), ("reason", "SchemaError")}): 1.0}
            # Each retry's backoff is a timer of its run.
            assert value(s, "orchestrator_timers_fired_total", stage="run") >= RETRIED
            # Every partition the processor reads is drained.
            lag = series(s, "orchestrator_consumer_lag")
            inbox = topology.inbox_topic(unique_name)
            assert {dict(k)["topic"] for k in lag} >= {inbox}, lag
            assert len([k for k in lag if dict(k)["topic"] == inbox]) == 4, lag
            assert all(v == 0 for v in lag.values()), lag

        ps = eventually(p_port, processor_counts)
        # The local step ran in the processor, once per good run: measured there, under queue "local".
        local = {"step": "stamp", "queue": "local"}
        assert value(ps, "orchestrator_step_attempts_total", **local) == GOOD
        assert value(ps, "orchestrator_step_duration_seconds_count", **local) == GOOD
        assert value(ps, "orchestrator_step_schedule_to_start_seconds_count", **local) == GOOD
        commits = value(ps, "orchestrator_transactions_total", result="commit")
        assert commits > 0
        assert value(ps, "orchestrator_transactions_total", result="abort") == 0
        # One observation per committed transaction (scraped at one instant: the counts agree).
        assert value(ps, "orchestrator_transaction_duration_seconds_count") == commits
        assert value(ps, "orchestrator_batch_records_count") == commits
        assert value(ps, "orchestrator_restore_duration_seconds_count") >= 1
        assert value(ps, "orchestrator_last_commit_timestamp_seconds") > time.time() - 120
        store_keys = series(ps, "orchestrator_store_keys")
        assert {dict(k)["stage"] for k in store_keys} == {"run", "keyed"}
        assert sum(v for k, v in store_keys.items() if dict(k)["stage"] == "run") > 0
        assert all(v == 0 for v in series(ps, "orchestrator_timers_due").values())
        build = series(ps, "orchestrator_build_info")
        assert len(build) == 1 and dict(next(iter(build)))["version"] == "0.1.0"

        def worker_counts(s: Samples) -> None:
            for step, queue, attempts, retryable_failures, terminal_failures in (
                ("add_one", "default", GOOD, 0, 0),
                ("add_ten", "slow", GOOD, 0, 0),
                ("flaky", "default", 2 * RETRIED, RETRIED, 0),
                ("boom", "default", BAD, 0, BAD),
            ):
                labels = {"step": step, "queue": queue}
                assert value(s, "orchestrator_step_attempts_total", **labels) == attempts, step
                # One duration and one schedule-to-start observation per attempt.
                assert value(s, "orchestrator_step_duration_seconds_count", **labels) == attempts, step
                assert value(s, "orchestrator_step_schedule_to_start_seconds_count", **labels) == attempts
                fails = "orchestrator_step_failures_total"
                assert value(s, fails, retryable="true", **labels) == retryable_failures, step
                assert value(s, fails, retryable="false", **labels) == terminal_failures, step
            # add_ten sleeps 50 ms per attempt: the histogram's sum says so.
            assert value(s, "orchestrator_step_duration_seconds_sum", step="add_ten", queue="slow") >= (
                GOOD * 0.05 * 0.9
            )
            letters = series(s, "orchestrator_dead_letters_total")
            assert letters == {frozenset({("component", "worker"), ("reason", "SchemaError")}): 1.0}
            assert value(s, "orchestrator_worker_steps_in_flight") == 0
            assert value(s, "orchestrator_worker_outbox_records") == 0
            lag = series(s, "orchestrator_consumer_lag")
            topics = {dict(k)["topic"] for k in lag}
            assert topics == {topology.tasks_topic(unique_name, q) for q in ("default", "slow")}, lag
            assert all(v == 0 for v in lag.values()), lag

        eventually(w_port, worker_counts)
    finally:
        proc.terminate()
        work.terminate()
