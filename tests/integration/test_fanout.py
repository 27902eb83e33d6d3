"""Fan-out with a bound on items in flight, across a processor SIGKILL."""

from __future__ import annotations

import asyncio
from pathlib import Path

from engine_support import APP_SPEC, EngineProcess, child_env, history, settings

from orchestrator import App


async def test_fanout_of_1000_with_50_in_flight_survives_sigkill(
    kafka_bootstrap: str, unique_name: str, tmp_path: Path
) -> None:
    side = tmp_path / "executions.log"
    env = child_env(unique_name, kafka_bootstrap, tmp_path)
    log = tmp_path / "engine.log"
    proc = EngineProcess(
        "processor", APP_SPEC, env, "--instance-id", "f0", "--state-dir", str(tmp_path / "s"), log=log
    )
    # A second instance shares the partitions (the issue asks for two).
    other = EngineProcess(
        "processor", APP_SPEC, env, "--instance-id", "f1", "--state-dir", str(tmp_path / "s1"), log=log
    )
    work = EngineProcess("worker", APP_SPEC, env, "--concurrency", "200", log=log)
    app = App(unique_name, settings=settings(kafka_bootstrap))
    proc.start()
    other.start()
    work.start()
    try:
        async with app.client() as client:
            handle = await client.start("fanout", 1000, run_id="fan")
            while len(side.read_text().splitlines() if side.exists() else []) < 400:
                await asyncio.sleep(0.1)
            proc.kill()  # in the middle of the fan-out
            await asyncio.sleep(0.5)
            proc.start()
            result = await handle.result(timeout=300)
    finally:
        proc.terminate()
        other.terminate()
        work.terminate()
    assert result == [2 * i for i in range(1000)]  # fan-in in input order
    lines = [line.split() for line in side.read_text().splitlines()]
    positions = [int(parts[1]) for parts in lines]
    assert sorted(set(positions)) == list(range(1000))
    assert len(positions) == len(set(positions)), "a completed item ran again"
    assert max(int(parts[5]) for parts in lines) <= 50  # never more than 50 in flight
    completions = [e for e in history(app)["fan"] if e.kind == "StepCompleted"]
    assert len(completions) == 1000
