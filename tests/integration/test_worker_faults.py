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
import dataclasses
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from engine_support import (
    APP_SPEC,
    EngineProcess,
    PrivateBroker,
    ProcessorThread,
    WorkerThread,
    child_env,
    executions,
    settings,
)

from orchestrator import App, WorkflowContext
from orchestrator._engine import kafka
from orchestrator._engine.events import Event, StartRun, encode_event
from orchestrator._engine.reader import read_partitions
from orchestrator._engine.records import (
    DeadLetter,
    StepCommand,
    decode_dead_letter,
    encode_command,
)
from orchestrator.topology import dlq_topic, tasks_topic

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


def _tail(log: Path, lines: int = 15) -> str:
    """The log's last lines without librdkafka's own (``%3|...``), for a failure message."""
    ours = [line[:300] for line in log.read_text(errors="replace").splitlines() if not line.startswith("%")]
    return "\n".join(ours[-lines:])


@pytest.mark.timeout(600)
async def test_steps_finished_while_the_broker_is_down_are_reported_once(
    private_broker: PrivateBroker, unique_name: str, tmp_path: Path
) -> None:
    broker = private_broker
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
        broker.kill()
        gate.touch()  # the held steps finish now, with the broker down
        deadline = time.monotonic() + OUTAGE_S
        while time.monotonic() < deadline:
            assert work.alive, "the worker exited during the broker outage"
            await asyncio.sleep(0.5)
        broker.start()
        async with app.client() as client:
            handles = [client.get_handle(f"o{i}", "outage") for i in range(RUNS)]
            try:
                values = await asyncio.wait_for(asyncio.gather(*(h.result() for h in handles)), 240)
            except TimeoutError:
                raise AssertionError(
                    f"runs did not complete after the outage (worker alive: {work.alive}, processor alive: "
                    f"{proc.alive}); worker log:\n{_tail(worker_log)}\nprocessor log:\n"
                    f"{_tail(tmp_path / 'processor.log')}"
                ) from None
        assert work.alive and work.proc.pid == worker_pid, "the worker exited or was replaced"
        proc_alive_at_end = proc.alive
    finally:
        proc.terminate()
        work.terminate()
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


async def test_poison_commands_are_dead_lettered_and_their_offsets_committed(
    kafka_bootstrap: str, unique_name: str, tmp_path: Path
) -> None:
    app = App(unique_name, settings=settings(kafka_bootstrap))

    @app.step
    async def echo(x: int) -> int:
        return x

    @app.workflow
    async def wf(ctx: WorkflowContext, x: int) -> int:
        return await ctx.step(echo, x)

    tasks = tasks_topic(app.name, "default")
    command = StepCommand("r", "wf", 0, "echo", 1, b"[1]", "r/0/echo", scheduled_ms=1)
    poison = {
        "junk": b"not avro at all",
        "unknown schema id": b"\x00\x00\x00\x03\xe7garbage",
        "wrong type": encode_event(Event("e1", "r", "wf", 1, StartRun(b"1"))),
        "missing field": encode_command(command)[:-6],
        "unknown step": encode_command(dataclasses.replace(command, step="not_here")),
    }
    proc = ProcessorThread(app, tmp_path)
    worker = WorkerThread(app)
    try:
        async with app.client() as client:
            assert await (await client.start(wf, 1)).result(timeout=60) == 1
            producer = Producer({"bootstrap.servers": kafka_bootstrap})
            for value in poison.values():
                producer.produce(tasks, value, b"r", partition=0)
            assert producer.flush(30) == 0
            # The worker goes on with good commands after them.
            assert await (await client.start(wf, 2)).result(timeout=60) == 2
            reader = Consumer(kafka.reader_config(app.settings))
            try:
                end = kafka.watermarks(reader, TopicPartition(tasks, 0))[1]
            finally:
                reader.close()
            letters: list[DeadLetter] = []
            committed = -1

            def settled() -> bool:
                nonlocal letters, committed
                msgs = read_partitions(app.settings, dlq_topic(app.name), [0])
                letters = [decode_dead_letter(m.value()) for m in msgs]
                group = Consumer(kafka.consumer_config(app.settings, f"{app.name}.workers"))
                try:
                    [tp] = group.committed([TopicPartition(tasks, 0)], timeout=10)
                finally:
                    group.close()
                committed = tp.offset
                return len(letters) >= len(poison) and committed >= end

            await _wait_for(settled, "dead letters written and offsets committed", timeout=60)
    finally:
        worker.stop()
        proc.stop()
    assert len(letters) == len(poison)
    by_value = {d.value: d for d in letters}
    for name, value in poison.items():
        letter = by_value[value]
        assert (letter.source_topic, letter.source_partition) == (tasks, 0), name
        assert letter.source_offset >= 0 and letter.component.startswith("worker:"), name
        expected = "UnknownStepError" if name == "unknown step" else "SchemaError"
        assert letter.error_type == expected, (name, letter)
    assert "unknown schema id 999" in by_value[poison["unknown schema id"]].reason
    assert "expected a orchestrator.v1.StepCommand" in by_value[poison["wrong type"]].reason
    assert "does not match its schema" in by_value[poison["missing field"]].reason
    assert "no step 'not_here'" in by_value[poison["unknown step"]].reason
    assert len({d.source_offset for d in letters}) == len(poison)
    assert committed >= end
