"""What the Helm chart (deploy/helm/kafka-orchestrator, ADR 0020) relies on when Kubernetes stops pods.

Run as the chart runs them: real `orchestrator processor|worker` processes, the state dir from
ORCHESTRATOR_STATE_DIR (the ConfigMap), a fixed processor instance id (the StatefulSet pod name), workers
without one (a Deployment). Kubernetes stops a container with SIGTERM, then SIGKILL after
terminationGracePeriodSeconds.

- A processor stops on SIGTERM within seconds, exit code 0. Restarted with the same name and the same
  volume it restores nothing from the changelog (its stores are current); with an empty volume it
  restores every record (what an emptyDir instead of the PersistentVolumeClaim would cost on each restart).
- A worker on SIGTERM takes no new step, lets the running step finish and delivers its result before it
  exits: the step runs once. Hence the worker's grace period must outlast the longest step.
- The lag KEDA scales workers on (end offset minus the committed offset of group {app}.workers on the
  task topics) counts a running step until its result is delivered. Once every step is done it is not
  0 but one per partition written: the processors write task topics in transactions, and the commit
  marker after a partition's last command takes an offset no consumer can commit past (KEDA issue
  kedacore/keda#5675). With every partition written, that floor equals the partition count, the chart's
  default activationLagThreshold, and one new command with no worker running lifts the lag above it:
  KEDA would wake workers scaled to zero (docs/deploy.md, section 5).
"""

from __future__ import annotations

import asyncio
import re
import shutil
import signal
import time
from pathlib import Path

from confluent_kafka import ConsumerGroupTopicPartitions, TopicPartition
from confluent_kafka.admin import AdminClient
from engine_support import APP_SPEC, EngineProcess, child_env, executions, settings

from orchestrator import App
from orchestrator._engine import kafka
from orchestrator._engine.partitioning import partition_for
from orchestrator.topology import tasks_topic

EXPECTED = 11111  # five() adds 1 + 10 + 100 + 1000 + 10000
STOPPED = re.compile(r"processor (\S+) stopped: .*restored_records=(\d+)")


def _sigterm(process: EngineProcess, within: float) -> tuple[int, float]:
    """(exit code, seconds from SIGTERM to exit)."""
    assert process.proc is not None and process.alive
    t0 = time.monotonic()
    process.proc.send_signal(signal.SIGTERM)
    code = process.proc.wait(within)
    return code, time.monotonic() - t0


def _restored(log: Path) -> list[int]:
    """restored_records of each processor stop logged so far."""
    return [int(m.group(2)) for m in STOPPED.finditer(log.read_text())]


async def test_processor_sigterm_then_restart_with_the_same_name_and_volume_restores_nothing(
    kafka_bootstrap: str, unique_name: str, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    env = {**child_env(unique_name, kafka_bootstrap, tmp_path), "ORCHESTRATOR_STATE_DIR": str(state)}
    log = tmp_path / "processor.log"
    pod = f"{unique_name}-processor-0"
    proc = EngineProcess("processor", APP_SPEC, env, "--instance-id", pod, log=log)
    work = EngineProcess("worker", APP_SPEC, env, log=tmp_path / "worker.log")
    app = App(unique_name, settings=settings(kafka_bootstrap))

    async def run_batch(first: int, count: int) -> float:
        t0 = time.monotonic()
        async with app.client() as client:
            handles = [await client.start("five", i, run_id=f"r{i}") for i in range(first, first + count)]
            values = await asyncio.gather(*(h.result(timeout=120) for h in handles))
        assert values == [i + EXPECTED for i in range(first, first + count)]
        return time.monotonic() - t0

    proc.start()
    work.start()
    try:
        await run_batch(0, 30)
        code, took = _sigterm(proc, within=60)
        assert code == 0, log.read_text()[-2000:]
        assert (state / unique_name / pod).is_dir()  # state_dir/app/instance id: on the pod's own volume

        proc.start()  # the same pod name and volume: a rolling restart
        restart_to_runs_done = await run_batch(30, 5)
        code, took_again = _sigterm(proc, within=60)
        assert code == 0

        shutil.rmtree(state)  # the same pod name, an empty volume
        proc.start()
        empty_to_runs_done = await run_batch(35, 5)
        code, _ = _sigterm(proc, within=60)
        assert code == 0
    finally:
        proc.terminate()
        work.terminate()

    first, same_volume, empty_volume = _restored(log)
    assert first == 0  # new app: empty changelog
    assert same_volume == 0
    assert empty_volume >= 30  # at least one changelog record per run so far
    print(
        f"SIGTERM to exit: {took:.2f} s, {took_again:.2f} s; restart to 5 runs done: same volume "
        f"{restart_to_runs_done:.2f} s (0 records restored), empty volume {empty_to_runs_done:.2f} s "
        f"({empty_volume} records restored)"
    )


async def test_worker_sigterm_finishes_the_running_step_and_delivers_it(
    kafka_bootstrap: str, unique_name: str, tmp_path: Path
) -> None:
    env = {**child_env(unique_name, kafka_bootstrap, tmp_path), "ORCHESTRATOR_STATE_DIR": str(tmp_path / "s")}
    side, gate = tmp_path / "executions.log", tmp_path / "gate"
    proc = EngineProcess("processor", APP_SPEC, env, "--instance-id", "p0", log=tmp_path / "processor.log")
    work = EngineProcess("worker", APP_SPEC, env, log=tmp_path / "worker.log")
    app = App(unique_name, settings=settings(kafka_bootstrap))
    proc.start()
    work.start()
    try:
        async with app.client() as client:
            handle = await client.start("outage", 1, run_id="held-1")  # s1, then `held` (waits for the gate)
            deadline = time.monotonic() + 60
            while not (side.exists() and ("held-1", 1) in executions(side)):
                assert time.monotonic() < deadline, "the held step never started"
                await asyncio.sleep(0.1)
            assert work.proc is not None
            work.proc.send_signal(signal.SIGTERM)
            await asyncio.sleep(2.0)
            assert work.alive, "the worker left while its step was running"
            gate.touch()  # the step finishes now
            t0 = time.monotonic()
            code = await asyncio.to_thread(work.proc.wait, 60)
            exit_after_step = time.monotonic() - t0
            assert code == 0, (tmp_path / "worker.log").read_text()[-2000:]
            work.start()  # the next pod of the Deployment: runs s2
            assert await handle.result(timeout=120) == 1 + 1 + 5 + 10
    finally:
        proc.terminate()
        work.terminate()
    done = executions(side)
    assert len(done[("held-1", 1)]) == 1  # delivered before the worker left: not run again
    print(f"worker exit after its last step finished: {exit_after_step:.2f} s")


def _workers_lag(admin: AdminClient, app: App) -> tuple[int, int]:
    """(lag, partitions written) of the default task topic, the lag as KEDA's Kafka scaler computes it for
    the chart's trigger: per partition, the end offset minus the group's committed offset (minus the
    start offset if none is committed, as with offsetResetPolicy earliest)."""
    topic = tasks_topic(app.name, "default")
    parts = [TopicPartition(topic, p) for p in range(app.settings.partitions)]
    request = [ConsumerGroupTopicPartitions(f"{app.name}.workers", parts)]
    answer = admin.list_consumer_group_offsets(request)[request[0].group_id].result(30)
    committed = {tp.partition: tp.offset for tp in answer.topic_partitions}
    reader = kafka.new_consumer(kafka.reader_config(app.settings))
    try:
        lag = written = 0
        for tp in parts:
            low, high = kafka.watermarks(reader, tp)
            offset = committed.get(tp.partition, -1)
            lag += high - (offset if offset >= 0 else low)
            written += high > 0
        return lag, written
    finally:
        reader.close()


async def test_a_running_step_counts_as_lag_and_a_commit_marker_per_partition_stays(
    kafka_bootstrap: str, unique_name: str, tmp_path: Path, admin: AdminClient
) -> None:
    env = {**child_env(unique_name, kafka_bootstrap, tmp_path), "ORCHESTRATOR_STATE_DIR": str(tmp_path / "s")}
    side, gate = tmp_path / "executions.log", tmp_path / "gate"
    proc = EngineProcess("processor", APP_SPEC, env, "--instance-id", "p0", log=tmp_path / "processor.log")
    work = EngineProcess("worker", APP_SPEC, env, log=tmp_path / "worker.log")
    app = App(unique_name, settings=settings(kafka_bootstrap))
    proc.start()
    work.start()
    try:
        async with app.client() as client:
            # Runs on every partition, done; then one more whose second step waits for the gate.
            partitions = app.settings.partitions
            ids = {partition_for(f"five-{i}", partitions): f"five-{i}" for i in range(100)}
            assert len(ids) == partitions
            done = [await client.start("five", i, run_id=run_id) for i, run_id in enumerate(ids.values())]
            await asyncio.gather(*(h.result(timeout=60) for h in done))
            handle = await client.start("outage", 1, run_id="lag-1")
            deadline = time.monotonic() + 60
            while not (side.exists() and ("lag-1", 1) in executions(side)):
                assert time.monotonic() < deadline, "the held step never started"
                await asyncio.sleep(0.1)
            held = []
            for _ in range(10):  # 3 s: many of the worker's 200 ms commit rounds
                held.append(await asyncio.to_thread(_workers_lag, admin, app))
                await asyncio.sleep(0.3)
            gate.touch()
            assert await handle.result(timeout=60) == 17
            settled: list[tuple[int, int]] = []
            deadline = time.monotonic() + 30
            while len(settled) < 5 or len({lag for lag, _ in settled[-5:]}) > 1:
                assert time.monotonic() < deadline, f"lag never settled: {settled}"
                settled.append(await asyncio.to_thread(_workers_lag, admin, app))
                await asyncio.sleep(0.3)
            # Workers scaled to zero; one new run: its first command must lift the lag above the floor.
            work.terminate()
            woken = await client.start("five", 0, run_id="wake-1")
            deadline = time.monotonic() + 30
            while (wake_lag := (await asyncio.to_thread(_workers_lag, admin, app))[0]) <= partitions:
                assert time.monotonic() < deadline, f"lag {wake_lag} never rose above {partitions}"
                await asyncio.sleep(0.2)
            work.start()
            assert await woken.result(timeout=60) == EXPECTED
    finally:
        proc.terminate()
        work.terminate()
    lag, written = settled[-1]
    assert written == app.settings.partitions
    assert lag == written, settled  # nothing left to run: one commit marker per partition written
    assert all(lag_then > written_then for lag_then, written_then in held), held  # the held command counts
    print(
        f"lag while one step ran: {held[-1][0]}; idle: {lag} on {written} partitions written; "
        f"one new command, no worker: {wake_lag}"
    )
