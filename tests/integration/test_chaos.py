"""Bounded chaos: processors and workers SIGKILLed at random while the broker itself is killed once.

The claim, with everything real (two processor processes, two worker processes, a broker of the test's own):
whatever dies and whenever, every run completes with the right result, no committed transition appears twice
in a history, a step runs again only if the worker that ran it before was killed, and no engine process
exits on its own (a broker outage is ridden out, not survived by restarting).
"""

from __future__ import annotations

import asyncio
import random
import time
from pathlib import Path

import pytest
from engine_support import (
    APP_SPEC,
    EngineProcess,
    PrivateBroker,
    child_env,
    executions,
    history,
    settings,
)

from orchestrator import App
from orchestrator._engine import events as ev

EXPECTED = 11111  # five() adds 1 + 10 + 100 + 1000 + 10000
RUNS = 300
CHAOS_SECONDS = 45.0
BROKER_DOWN_AT = 12.0
BROKER_DOWN_FOR = 10.0


def _tail(path: Path, lines: int = 40) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""


@pytest.mark.slow
async def test_chaos_processes_and_broker_killed(
    private_broker: PrivateBroker, unique_name: str, tmp_path: Path
) -> None:
    broker = private_broker
    env = child_env(unique_name, broker.bootstrap, tmp_path)
    procs = {
        f"p{i}": EngineProcess(
            "processor",
            APP_SPEC,
            env,
            "--instance-id",
            f"chaos-p{i}",
            "--state-dir",
            str(tmp_path / "state"),
            "--max-batch",
            "50",
            log=tmp_path / f"p{i}.log",
        )
        for i in range(2)
    }
    works = {
        f"w{i}": EngineProcess(
            "worker",
            APP_SPEC,
            env,
            "--instance-id",
            f"chaos-w{i}",
            "--concurrency",
            "32",
            log=tmp_path / f"w{i}.log",
        )
        for i in range(2)
    }
    every = {**procs, **works}
    app = App(unique_name, settings=settings(broker.bootstrap))
    rng = random.Random(11)
    killed: dict[str, int] = {"processor": 0, "worker": 0}
    killed_worker_pids: set[int] = set()
    unexpected_exits: list[str] = []

    def check_alive() -> None:
        for name, part in every.items():
            if part.proc is not None and part.proc.poll() is not None:
                unexpected_exits.append(
                    f"{name} exited by itself (code {part.proc.returncode}):\n{_tail(part.log)}"
                )
                part.start()

    async def broker_outage() -> None:
        await asyncio.sleep(BROKER_DOWN_AT)
        await asyncio.to_thread(broker.kill)
        await asyncio.sleep(BROKER_DOWN_FOR)
        await asyncio.to_thread(broker.start)

    for part in every.values():
        part.start()
    try:
        async with app.client() as client:
            handles = [await client.start("five", i, run_id=f"x{i}") for i in range(RUNS)]
            results = [asyncio.ensure_future(h.result(timeout=900)) for h in handles]
            outage = asyncio.ensure_future(broker_outage())
            deadline = time.monotonic() + CHAOS_SECONDS
            while time.monotonic() < deadline:
                await asyncio.sleep(rng.uniform(0.5, 2.5))
                check_alive()
                name = rng.choice(sorted(every))
                part = every[name]
                if name.startswith("w"):
                    assert part.proc is not None
                    killed_worker_pids.add(part.proc.pid)
                    killed["worker"] += 1
                else:
                    killed["processor"] += 1
                part.kill()
                await asyncio.sleep(rng.uniform(0.0, 0.5))
                part.start()
            await outage
            values = await asyncio.wait_for(asyncio.gather(*results), 600)
            check_alive()
    finally:
        for part in every.values():
            part.terminate()
    assert not unexpected_exits, "\n\n".join(unexpected_exits)
    assert killed["processor"] >= 3 and killed["worker"] >= 3, killed
    assert values == [i + EXPECTED for i in range(RUNS)]
    # No committed transition twice: each run's history is one start, each step's completion once, one end,
    # and gap-free sequence numbers (a duplicated transition would repeat or skip a seq).
    hist = history(app)
    assert len(hist) == RUNS
    for run_id, events in hist.items():
        kinds = [e.kind for e in events]
        completions = sorted(e.body.position for e in events if isinstance(e.body, ev.StepCompleted))
        assert completions == [0, 1, 2, 3, 4], (run_id, kinds)
        assert kinds.count("RunStarted") == 1 and kinds.count("RunCompleted") == 1, (run_id, kinds)
        assert [e.seq for e in events] == list(range(len(events))), (run_id, kinds)
    # A step ran again only after the worker that ran it before was SIGKILLed.
    done = executions(tmp_path / "executions.log")
    assert len(done) == RUNS * 5
    for key, runs_of_step in done.items():
        earlier = sorted(runs_of_step, key=lambda x: x[2])[:-1]
        assert all(pid in killed_worker_pids for _, pid, _ in earlier), (key, runs_of_step)
    repeated = sum(1 for v in done.values() if len(v) > 1)
    print(f"killed={killed} repeated_steps={repeated} of {RUNS * 5}")
