"""A worker rides out a broker outage without running any step twice.

The claim (issue 12): a worker that finished a step holds the result until the broker has it, and commits
the command's offset only then; it never exits because the broker went away, and it never runs a step
again itself (only a worker that died may). Steps are held by ``crash_app``'s gate while the broker is
killed, then finish with the broker down; it stays down for longer than the worker's delivery timeout and
its consumer session, and comes back on the same data dir and ports.

The test kills a broker, so it starts its own (never the shared one).
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import psutil
from engine_support import APP_SPEC, EngineProcess, child_env, executions, settings

from orchestrator import App, _devkafka

RUNS = 30
OUTAGE_S = 30.0


async def _wait_for(predicate: Callable[[], bool], what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"{what}: not reached in {timeout} s"
        await asyncio.sleep(0.2)


def _executions_at(side: Path, position: int) -> int:
    if not side.exists():
        return 0
    return sum(1 for (_, pos), runs in executions(side).items() if pos == position for _ in runs)


def _kill_broker(pid: int) -> None:
    os.kill(pid, signal.SIGKILL)
    psutil.Process(pid).wait(30)  # reaps it: it was started by this process


async def test_steps_finished_while_the_broker_is_down_are_reported_once(
    unique_name: str, tmp_path: Path, pick_free_ports: Callable[[int], list[int]]
) -> None:
    data_dir = tmp_path / "kafka"
    port, controller_port = pick_free_ports(2)
    broker = _devkafka.start(data_dir, port, controller_port)
    env = child_env(unique_name, broker.bootstrap, tmp_path)
    side, gate = tmp_path / "executions.log", tmp_path / "gate"
    worker_log = tmp_path / "worker.log"
    proc = EngineProcess(
        "processor",
        APP_SPEC,
        env,
        "--instance-id",
        "faults-p0",
        "--state-dir",
        str(tmp_path / "state"),
        log=tmp_path / "processor.log",
    )
    work = EngineProcess(
        "worker",
        APP_SPEC,
        env,
        "--instance-id",
        "faults-w0",
        "--delivery-timeout-ms",
        "5000",  # several tries of each result fail while the broker is down: they are produced again
        log=worker_log,
    )
    app = App(unique_name, settings=settings(broker.bootstrap))
    try:
        proc.start()
        work.start()
        assert work.proc is not None
        worker_pid = work.proc.pid
        async with app.client() as client:
            for i in range(RUNS):
                await client.start("outage", i, run_id=f"o{i}")
            # Every run is inside its held step, in the worker.
            await _wait_for(lambda: _executions_at(side, 1) >= RUNS, "all held steps running")
        _kill_broker(broker.pid)
        gate.touch()  # the held steps finish now, with the broker down
        deadline = time.monotonic() + OUTAGE_S
        while time.monotonic() < deadline:
            assert work.alive, "the worker exited during the broker outage"
            await asyncio.sleep(0.5)
        broker = _devkafka.start(data_dir, port, controller_port)
        async with app.client() as client:
            handles = [client.get_handle(f"o{i}", "outage") for i in range(RUNS)]
            values = await asyncio.wait_for(asyncio.gather(*(h.result(timeout=300) for h in handles)), 320)
        assert work.alive and work.proc.pid == worker_pid, "the worker exited or was replaced"
        proc_alive_at_end = proc.alive
    finally:
        proc.terminate()
        work.terminate()
        _devkafka.stop(data_dir)
    assert values == [i + 16 for i in range(RUNS)]
    done = executions(side)
    assert sorted(done) == sorted((f"o{i}", pos) for i in range(RUNS) for pos in (0, 1, 2))
    twice = {key: runs for key, runs in done.items() if len(runs) != 1}
    assert not twice, f"steps executed more than once: {twice}"
    assert {pid for runs in done.values() for _, pid, _ in runs} == {worker_pid}
    text = worker_log.read_text()
    # The worker's results really outlived librdkafka's timeout: they were produced again, not re-run.
    assert "_MSG_TIMED_OUT" in text, text[-3000:]
    assert proc_alive_at_end, "the processor exited during the outage"
