"""The worker's local queue of commands waiting for a slot (ADR 0025, "Back-pressure"), on the real broker.

The claims: with every slot busy the worker keeps taking commands into a bounded queue (``--buffer``) and then
pauses; a queued command is never started and never committed as done, so when the worker is SIGKILLed with
commands queued, a new worker runs each of them, exactly once, and only the steps that were running when the
worker died run twice.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
import pytest
from engine_support import APP_SPEC, EngineProcess, child_env, executions, free_ports, settings
from prometheus_client.parser import text_string_to_metric_families

from orchestrator import App

RUNS = 30
SLOTS = 4
BUFFER = 8
HELD = 1  # position of the `held` step in crash_app's `outage` workflow (s1, held, s2)


def metric(port: int, name: str) -> float | None:
    try:
        body = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    except httpx.TransportError:
        return None  # not serving yet
    for family in text_string_to_metric_families(body):
        for sample in family.samples:
            if sample.name == name and not sample.labels:
                return sample.value
    return None


@pytest.mark.timeout(300)
async def test_queued_commands_survive_a_sigkill_and_run_once(
    kafka_bootstrap: str, unique_name: str, tmp_path: Path
) -> None:
    env = child_env(unique_name, kafka_bootstrap, tmp_path)
    log = tmp_path / "engine.log"
    (port,) = free_ports(1)
    proc = EngineProcess(
        "processor", APP_SPEC, env, "--instance-id", "buf-p0", "--state-dir", str(tmp_path / "state"), log=log
    )
    worker_args = ("--instance-id", "buf-w0", "--concurrency", str(SLOTS), "--buffer", str(BUFFER))
    metrics_args = ("--metrics-host", "127.0.0.1", "--metrics-port", str(port))
    first = EngineProcess("worker", APP_SPEC, env, *worker_args, *metrics_args, log=log)
    second = EngineProcess("worker", APP_SPEC, env, *worker_args, log=log)
    app = App(unique_name, settings=settings(kafka_bootstrap))
    side = tmp_path / "executions.log"
    proc.start()
    first.start()
    try:
        async with app.client() as client:
            handles = [await client.start("outage", i, run_id=f"b{i}") for i in range(RUNS)]
            # `held` blocks until the gate file exists: SLOTS of them run, more wait in the queue. With
            # every slot busy the queue grows to BUFFER and the worker pauses; it resumes only at half, so a
            # queue that filled, paused, then gave a few `s1` commands to slots (before the `held` ones took
            # them all) stays between BUFFER // 2 + 1 and BUFFER for good. Wait for that, stable for 1 s.
            deadline = time.monotonic() + 120
            settled: tuple[int, float | None, float] | None = None
            while True:
                running = [k for k in executions(side) if k[1] == HELD] if side.exists() else []
                queued = metric(port, "orchestrator_worker_buffered_records")
                full = len(running) == SLOTS and queued is not None and BUFFER // 2 < queued <= BUFFER
                if not full:
                    settled = None
                elif settled is None or settled[1] != queued:
                    settled = (len(running), queued, time.monotonic())
                elif time.monotonic() - settled[2] >= 1.0:
                    break
                assert first.alive
                assert time.monotonic() < deadline, (running, queued, log.read_text()[-3000:])
                await asyncio.sleep(0.2)
            await asyncio.sleep(1.0)  # several commit intervals: whatever the worker would commit, it has
            assert first.proc is not None
            killed = first.proc.pid
            first.kill()
            held_before = {k: v for k, v in executions(side).items() if k[1] == HELD}
            assert len(held_before) == SLOTS  # queued commands were never started
            (tmp_path / "gate").touch()
            second.start()
            values = await asyncio.wait_for(asyncio.gather(*(h.result(timeout=240) for h in handles)), 250)
    finally:
        proc.terminate()
        first.terminate()
        second.terminate()
    assert values == [i + 1 + 5 + 10 for i in range(RUNS)]
    done = executions(side)
    held = {k: v for k, v in done.items() if k[1] == HELD}
    assert len(held) == RUNS  # every held step ran, the queued ones included
    twice = {k for k, v in held.items() if len(v) > 1}
    assert twice == set(held_before), "only the steps running at the kill run again"
    for key, runs in done.items():
        # any other repeat is a step whose earlier execution was on the killed worker (offset not committed)
        earlier = sorted(runs, key=lambda r: r[2])[:-1]
        assert all(pid == killed for _, pid, _ in earlier), (key, runs)
        assert len(runs) <= 2, (key, runs)
