"""Step commands sent before the transaction that records them commits (ADR 0025), on the real broker.

What early dispatch opens, each case shown here: a processor that dies with commands out whose transaction
never commits, a transaction that aborts after the step it dispatched completed, and a worker killed in the
middle of a step. In each, a step runs again only when the worker running it died, and every transition is
recorded once.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import defaultdict
from pathlib import Path

from confluent_kafka import KafkaError, KafkaException
from engine_support import EngineProcess, check_no_duplicate_transitions, engine, history, settings

from orchestrator import App, WorkflowContext, step_info
from orchestrator._engine import events as ev

SPEC = "tests.integration.apps.dispatch_app:app"


def _env(name: str, bootstrap: str, tmp: Path) -> dict[str, str]:
    return {
        "DISPATCH_APP_NAME": name,
        "DISPATCH_SIDE_FILE": str(tmp / "executions.log"),
        "DISPATCH_FREEZE_FILE": str(tmp / "freeze.pid"),
        "DISPATCH_GATE_FILE": str(tmp / "gate"),
        "ORCHESTRATOR_BOOTSTRAP_SERVERS": bootstrap,
        "ORCHESTRATOR_PARTITIONS": "4",
    }


def _executions(tmp: Path) -> dict[tuple[str, str], list[int]]:
    """(run id, step) -> the pids of the processes that executed it, in order."""
    out: dict[tuple[str, str], list[int]] = defaultdict(list)
    side = tmp / "executions.log"
    if side.exists():
        for line in side.read_text().splitlines():
            run_id, step, _attempt, pid, _ts = line.split()
            out[(run_id, step)].append(int(pid))
    return out


async def _until(what: str, check: object, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


async def test_processor_killed_before_the_commit_of_a_dispatched_step(
    kafka_bootstrap: str, unique_name: str, tmp_path: Path
) -> None:
    """The worker runs the step and the processor is frozen (SIGSTOP, sent by the step itself) and then
    SIGKILLed, with the transaction that scheduled the step still open: the restarted processor decides the
    same attempt again and sends its command again; the worker that ran it does not run it again, its result
    is accepted, and the history records the step once."""
    env = _env(unique_name, kafka_bootstrap, tmp_path)
    log = tmp_path / "engine.log"
    state = str(tmp_path / "state")
    proc = EngineProcess(
        "processor", SPEC, env, "--instance-id", "ed-p0", "--state-dir", state, "--early-dispatch", log=log
    )
    work = EngineProcess("worker", SPEC, env, "--instance-id", "ed-w0", log=log)
    app = App(unique_name, settings=settings(kafka_bootstrap))
    freeze_file = tmp_path / "freeze.pid"
    caught_open: list[str] = []
    proc.start()
    work.start()
    try:
        async with app.client() as client:
            for i in range(6):  # until one freeze lands before the commit (on a busy machine: the first)
                run_id = f"f{i}"
                assert proc.proc is not None
                freeze_file.write_text(str(proc.proc.pid))
                handle = await client.start("frozen", i, run_id=run_id)
                await _until("the step to run", lambda r=run_id: (r, "freeze") in _executions(tmp_path))
                await _until("the freeze file taken", lambda: not freeze_file.exists())
                await asyncio.sleep(0.5)  # the processor is stopped; a commit it had sent completes anyway
                proc.kill()
                proc.start()
                assert await handle.result(timeout=60) == (i + 7) * 10
                resent = f"step freeze of {run_id} attempt 1 delivered again"
                if resent in log.read_text():
                    caught_open.append(run_id)
                    break
    finally:
        proc.terminate()
        work.terminate()
    # At least one processor died with the step's transaction open: its command was sent again.
    assert caught_open, log.read_text()[-3000:]
    runs = {f"f{i}" for i in range(int(caught_open[0][1:]) + 1)}
    execs = _executions(tmp_path)
    for run_id in runs:  # the worker lived: every step ran exactly once
        assert len(execs[(run_id, "freeze")]) == 1, execs
        assert len(execs[(run_id, "after")]) == 1, execs
    hist = {r: events for r, events in history(app).items() if r in runs}
    check_no_duplicate_transitions(hist)
    for events in hist.values():
        scheduled = [e.body.position for e in events if isinstance(e.body, ev.StepScheduled)]
        assert scheduled == [0, 1]


async def test_aborted_transaction_whose_dispatched_step_completed(
    kafka_bootstrap: str, unique_name: str, tmp_path: Path
) -> None:
    """The transaction that scheduled a step is aborted after the worker finished that step: the batch is
    handled again, the same attempt is decided and sent again, the worker does not run it again, and the
    result it had already reported completes the step once."""
    app = App(unique_name, settings=settings(kafka_bootstrap))
    ran: list[tuple[str, str]] = []
    charged = threading.Event()

    @app.step
    async def charge(x: int) -> int:
        ran.append((step_info().run_id, "charge"))
        charged.set()
        return x + 1

    @app.step
    async def ship(x: int) -> int:
        ran.append((step_info().run_id, "ship"))
        return x * 2

    @app.workflow
    async def order(ctx: WorkflowContext, x: int) -> int:
        x = await ctx.step(charge, x)
        return await ctx.step(ship, x)

    with engine(app, tmp_path, processor_config={"early_dispatch": True}) as (proc,):
        dispatch = proc.output
        real_commit = proc.transactions.commit
        injected: list[str] = []

        def commit_unless_charge_ran_first() -> None:
            """The first commit after charge's command went out fails once charge has run (the transaction
            is then aborted on the broker by the processor's own error path, and its batch handled again)."""
            assert dispatch.dispatch is not None
            if not injected and dispatch.dispatch.sent > 0:
                assert charged.wait(30), "the worker never ran the dispatched step"
                injected.append("abort")
                raise KafkaException(KafkaError(KafkaError._TIMED_OUT, "injected: commit failed"))
            real_commit()

        proc.transactions.commit = commit_unless_charge_ran_first  # type: ignore[method-assign]
        async with app.client() as client:
            handle = await client.start("order", 4, run_id="o1")
            assert await handle.result(timeout=60) == 10
        assert injected == ["abort"]
        assert proc.stats.aborts == 1
    assert sorted(ran) == [("o1", "charge"), ("o1", "ship")]  # the worker lived: each step ran once
    hist = history(app)
    check_no_duplicate_transitions(hist)
    kinds = [e.kind for e in hist["o1"]]
    assert kinds == ["RunStarted", *["StepScheduled", "StepCompleted"] * 2, "RunCompleted"]


async def test_worker_killed_mid_step_runs_it_again_once(
    kafka_bootstrap: str, unique_name: str, tmp_path: Path
) -> None:
    """A worker SIGKILLed while a step runs: the next worker runs that step again, once; the steps before and
    after it run once, and the transition is recorded once."""
    env = _env(unique_name, kafka_bootstrap, tmp_path)
    log = tmp_path / "engine.log"
    state = str(tmp_path / "state")
    proc = EngineProcess(
        "processor", SPEC, env, "--instance-id", "ed-p1", "--state-dir", state, "--early-dispatch", log=log
    )
    work = EngineProcess("worker", SPEC, env, "--instance-id", "ed-w1", log=log)
    app = App(unique_name, settings=settings(kafka_bootstrap))
    proc.start()
    work.start()
    try:
        async with app.client() as client:
            handle = await client.start("gated", 1, run_id="g1")
            await _until("the step to start", lambda: len(_executions(tmp_path)[("g1", "held")]) == 1)
            work.kill()
            work.start()
            await _until("the step to run again", lambda: len(_executions(tmp_path)[("g1", "held")]) == 2)
            (tmp_path / "gate").touch()
            assert await handle.result(timeout=60) == 60
    finally:
        proc.terminate()
        work.terminate()
    execs = _executions(tmp_path)
    first, second = execs[("g1", "held")]
    assert first != second  # run again only by the worker that replaced the dead one
    assert len(execs[("g1", "after")]) == 1
    hist = history(app)
    check_no_duplicate_transitions(hist)
    assert [e.kind for e in hist["g1"]].count("StepCompleted") == 2
