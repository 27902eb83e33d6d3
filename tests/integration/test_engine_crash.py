"""Crash safety with real processes killed by SIGKILL.

The claim: while runs are in flight, killing the processor and the worker at random moments loses no run
and duplicates no transition; a step whose completion was committed is never executed again. Only a step
that was in flight in a worker when that worker was killed may run twice.
"""

from __future__ import annotations

import asyncio
import random
import time
from pathlib import Path

from engine_support import APP_SPEC, EngineProcess, child_env, executions, history, settings

from orchestrator import App
from orchestrator._engine import events as ev

EXPECTED = 11111  # five() adds 1 + 10 + 100 + 1000 + 10000


async def test_sigkill_processor_and_worker_repeatedly(
    kafka_bootstrap: str, unique_name: str, tmp_path: Path
) -> None:
    side = tmp_path / "executions.log"
    env = child_env(unique_name, kafka_bootstrap, tmp_path)
    log = tmp_path / "engine.log"
    proc = EngineProcess(
        "processor",
        APP_SPEC,
        env,
        "--instance-id",
        "crash-p0",
        "--state-dir",
        str(tmp_path / "state"),
        "--max-batch",
        "50",
        log=log,
    )
    work = EngineProcess("worker", APP_SPEC, env, "--instance-id", "crash-w0", "--concurrency", "32", log=log)
    app = App(unique_name, settings=settings(kafka_bootstrap))
    killed_worker_pids: set[int] = set()
    kills = {"processor": 0, "worker": 0}
    rng = random.Random(7)
    runs = 500
    proc.start()
    work.start()
    try:
        async with app.client() as client:
            handles = [await client.start("five", i, run_id=f"c{i}") for i in range(runs)]
            results = [asyncio.ensure_future(h.result(timeout=600)) for h in handles]
            deadline = time.monotonic() + 40
            while time.monotonic() < deadline and not all(r.done() for r in results):
                await asyncio.sleep(rng.uniform(0.3, 2.5))
                victim = rng.choice(["processor", "worker", "both"])
                if victim in ("processor", "both"):
                    proc.kill()
                    kills["processor"] += 1
                if victim in ("worker", "both"):
                    assert work.proc is not None
                    killed_worker_pids.add(work.proc.pid)
                    work.kill()
                    kills["worker"] += 1
                await asyncio.sleep(rng.uniform(0.0, 0.5))
                if not proc.alive:
                    proc.start()
                if not work.alive:
                    work.start()
            values = await asyncio.wait_for(asyncio.gather(*results), 300)
    finally:
        proc.terminate()
        work.terminate()
    assert kills["processor"] >= 3 and kills["worker"] >= 3, kills
    # Every run completed, with the right result.
    assert values == [i + EXPECTED for i in range(runs)]
    # The history of every run holds each step's completion exactly once, and one start and one end.
    hist = history(app)
    assert len(hist) == runs
    for run_id, events in hist.items():
        completions = [e.body.position for e in events if isinstance(e.body, ev.StepCompleted)]
        assert sorted(completions) == [0, 1, 2, 3, 4], (run_id, [e.kind for e in events])
        assert [e.kind for e in events].count("RunStarted") == 1
        assert [e.kind for e in events].count("RunCompleted") == 1
        assert [e.seq for e in events] == list(range(len(events))), run_id
    # A step ran more than once only when a worker running it was killed before its offset was committed.
    done = executions(side)
    assert len(done) == runs * 5
    repeated = {k: v for k, v in done.items() if len(v) > 1}
    for key, runs_of_step in repeated.items():
        earlier = sorted(runs_of_step, key=lambda x: x[2])[:-1]
        assert all(pid in killed_worker_pids for _, pid, _ in earlier), (
            key,
            runs_of_step,
            killed_worker_pids,
        )
    print(f"kills={kills} repeated_steps={len(repeated)} of {runs * 5}")
