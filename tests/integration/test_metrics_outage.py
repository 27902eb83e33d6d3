"""What /metrics shows during a broker outage, on a broker of the test's own that is killed and restarted.

The claim: while the broker is down, a worker's endpoint shows the steps in flight, then the results it
holds (`orchestrator_worker_outbox_records`) and the delivery fault as active; both endpoints keep
answering while the engine waits; after the broker is back every held result is delivered (0 held), the
faults are over (0 active) and each was counted as an episode.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
import pytest
from engine_support import APP_SPEC, EngineProcess, PrivateBroker, child_env, free_ports, settings
from prometheus_client.parser import text_string_to_metric_families

from orchestrator import App

RUNS = 5
EPISODES, ACTIVE = "orchestrator_fault_episodes_total", "orchestrator_faults_active"
OUTAGE_S = 15.0  # longer than the worker's delivery timeout: results are handed back and held


def scrape(port: int) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    body = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(body)
        for s in family.samples
    }


def get(port: int, name: str, **labels: str) -> float:
    return scrape(port).get((name, frozenset(labels.items())), 0.0)


async def wait_for(port: int, name: str, want: float, timeout: float = 120, **labels: str) -> None:
    deadline = time.monotonic() + timeout
    while (got := get(port, name, **labels)) != want:
        assert time.monotonic() < deadline, f"{name}{labels} = {got}, not {want} after {timeout} s"
        await asyncio.sleep(0.2)


async def wait_for_endpoint(port: int, proc: EngineProcess) -> None:
    deadline = time.monotonic() + 60
    while True:
        assert proc.alive
        try:
            scrape(port)
            return
        except httpx.TransportError:
            assert time.monotonic() < deadline, f"no /metrics on {port}"
            await asyncio.sleep(0.1)


@pytest.mark.timeout(600)
async def test_held_results_and_faults_show_during_an_outage_and_clear_after(
    private_broker: PrivateBroker, unique_name: str, tmp_path: Path
) -> None:
    broker = private_broker
    env = child_env(unique_name, broker.bootstrap, tmp_path)
    gate = tmp_path / "gate"
    p_port, w_port = free_ports(2)
    metrics_args = ("--metrics-host", "127.0.0.1", "--metrics-port")
    proc = EngineProcess(
        "processor",
        APP_SPEC,
        env,
        "--instance-id",
        "mo-p0",
        "--state-dir",
        str(tmp_path / "state"),
        *metrics_args,
        str(p_port),
        log=tmp_path / "processor.log",
    )
    work = EngineProcess(
        "worker",
        APP_SPEC,
        env,
        "--delivery-timeout-ms",
        "3000",
        *metrics_args,
        str(w_port),
        log=tmp_path / "worker.log",
    )
    app = App(unique_name, settings=settings(broker.bootstrap))
    deliver = {"component": "worker", "fault": "deliver results"}
    try:
        proc.start()
        work.start()
        await wait_for_endpoint(p_port, proc)
        await wait_for_endpoint(w_port, work)
        async with app.client() as client:
            for i in range(RUNS):
                await client.start("outage", i, run_id=f"o{i}")
        # Every run is inside its held step.
        await wait_for(w_port, "orchestrator_worker_steps_in_flight", RUNS)
        broker.kill()
        gate.touch()  # the held steps finish with the broker down: their results are held
        await wait_for(w_port, "orchestrator_worker_steps_in_flight", 0)
        await wait_for(w_port, "orchestrator_worker_outbox_records", RUNS)
        await wait_for(w_port, "orchestrator_faults_active", 1, **deliver)  # a delivery timed out
        assert get(p_port, "orchestrator_last_commit_timestamp_seconds") > 0  # the processor answers too
        await asyncio.sleep(max(0.0, OUTAGE_S - 5))
        assert get(w_port, "orchestrator_worker_outbox_records") == RUNS  # still held, none lost
        broker.start()
        async with app.client() as client:
            handles = [client.get_handle(f"o{i}", "outage") for i in range(RUNS)]
            values = await asyncio.wait_for(asyncio.gather(*(h.result() for h in handles)), 240)
        assert values == [i + 16 for i in range(RUNS)]  # s1 +1, held +5, s2 +10
        await wait_for(w_port, "orchestrator_worker_outbox_records", 0)
        await wait_for(w_port, "orchestrator_faults_active", 0, **deliver)
        assert get(w_port, "orchestrator_fault_episodes_total", **deliver) >= 1
        assert get(w_port, "orchestrator_worker_outbox_produced_again_total") >= RUNS
        # Every fault the processor met is over, and it met at least one.
        deadline = time.monotonic() + 60
        while True:
            samples = scrape(p_port)
            episodes = {dict(k)["fault"]: v for (n, k), v in samples.items() if n == EPISODES}
            active = {dict(k)["fault"]: v for (n, k), v in samples.items() if n == ACTIVE}
            try:
                assert episodes and sum(episodes.values()) >= 1, samples
                assert set(active) == set(episodes) and not any(active.values()), active
                break
            except AssertionError:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.5)
    finally:
        proc.terminate()
        work.terminate()
