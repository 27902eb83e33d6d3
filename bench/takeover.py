"""``python -m bench takeover --runs 1000000 [--standby-replicas 0 1]``: how long a processor's partitions
stand still when it goes away and the other one takes them over, with and without standby replicas.

1. **Load**: a private broker; ``--runs`` completed run states (``run_queries``' generator: 5 workflows,
   tags, statuses) produced to the changelog in the format the engine writes (key ``r/<run_id>``, the
   Avro state, on the run's partition), so that a restore has real work: each record is applied and its
   run's indexes derived (``PartitionStore.restore_batch``).
2. **For each** ``--standby-replicas`` value and each signal (``--signals kill term``), ``--repeats`` times:
   two processors (fresh state dirs) restore their halves (and with standbys, the other half in the
   background) until both are ready and every standby's lag is 0; a worker, and a client starting ``one``
   runs at ``--rate`` per second on every partition; then one processor gets the signal.
3. **Measure**, from the survivor's log (its ``assigned partitions ...: restored N changelog records ... in
   X s`` line) and the history topic (record timestamps): (a) from the survivor's assignment to the first
   transition it committed on a partition it took over; (b) from the signal to that transition; and the
   records the takeover restored.

SIGKILL leaves the group only when the member's session times out (10 s: static membership), and leaves
the victim's open transaction to be aborted by the coordinator (``transaction.timeout.ms`` 10 s, checked
every 10 s by default), which holds read_committed readers back; (b) includes both. SIGTERM closes the
processor cleanly (its last transaction committed).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import re
import shutil
import signal
import sys
import tempfile
import time
import urllib.request
from datetime import datetime
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, Producer, TopicPartition

from bench import run_queries
from bench.infra import REPO, BenchError, Child, free_port, log, run
from orchestrator import App, Settings, topology
from orchestrator._engine import kafka
from orchestrator._engine import state as st
from orchestrator._engine.partitioning import partition_for
from orchestrator._engine.queries.index import RunIndexer, summary_of
from orchestrator._engine.store import PartitionStore, run_key

APP_NAME = run_queries.APP_NAME
LINE = re.compile(
    r"^(\S+ \S+) INFO orchestrator\.processor: assigned partitions (\[.*?\]): restored (\d+) changelog "
    r"records into (\d+) stores in ([\d.]+)s",
    re.M,
)


def load(settings: Settings, runs: int, state_dir: Path, instances: list[str]) -> dict[str, float]:
    """``runs`` completed run states produced to the changelog as the engine writes them, and written into
    ``instances[0]``'s stores through the engine's write path (``put`` with the summary, ``commit``: the
    indexes in the same batches) at the changelog's end offsets, then copied to the other instances: both
    processors start warm, and a cold takeover is made by deleting the survivor's copy (``trial``)."""
    rng = random.Random(13)
    now = int(time.time() * 1000)
    template = run_queries._template()
    topic = topology.changelog_topic(APP_NAME)
    conf = kafka.producer_config(settings, **{"linger.ms": 50, "batch.size": 1_000_000})
    producer = Producer(dict(conf))
    first = state_dir / APP_NAME / instances[0]
    stores = [PartitionStore(first / f"p{p}", p, RunIndexer()) for p in range(settings.partitions)]
    t0 = time.monotonic()
    for i in range(runs):
        state = run_queries._run(rng, i, now, template)
        p = partition_for(state.run_id, settings.partitions)
        key, value = run_key(state.run_id), st.encode_state(state)
        while True:
            try:
                producer.produce(topic, value, key, partition=p)
                break
            except BufferError:
                producer.poll(0.1)
        stores[p].put(key, value, summary_of(state))
        if i % 5000 == 4999:
            producer.poll(0)
            for store in stores:
                store.commit(None, None)
        if i % 100_000 == 99_999:
            log(f"loaded {i + 1} run states ({(i + 1) / (time.monotonic() - t0):.0f}/s)")
    if producer.flush(300) != 0:
        raise BenchError("the changelog records were not all delivered")
    out = {"load_s": round(time.monotonic() - t0, 1)}
    consumer = Consumer(dict(kafka.reader_config(settings)))
    try:
        for p, store in enumerate(stores):
            _, end = kafka.watermarks(consumer, TopicPartition(topic, p))
            store.commit(None, end)
            store.close()
    finally:
        consumer.close()
    for other in instances[1:]:
        shutil.copytree(first, state_dir / APP_NAME / other)
    out["store_mb_per_instance"] = round(
        sum(f.stat().st_size for f in first.rglob("*") if f.is_file()) / 2**20
    )
    return out


def _metric_lags(port: int) -> list[float]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            text = response.read().decode()
    except OSError:
        return []
    return [float(v) for v in re.findall(r"^orchestrator_standby_lag_records\{[^}]*\} (\S+)$", text, re.M)]


def _ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=5) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def _assignments(path: Path) -> list[tuple[float, set[int], int, float]]:
    """(log time, inbox partitions, records restored, restore seconds) of each assignment logged."""
    out = []
    inbox = topology.inbox_topic(APP_NAME)
    text = path.read_text(errors="replace") if path.exists() else ""
    for m in LINE.finditer(text):
        at = datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()  # noqa: DTZ007 - local, like the log
        parts = {int(p) for p in re.findall(rf"\('{re.escape(inbox)}', (\d+)\)", m.group(2))}
        out.append((at, parts, int(m.group(3)), float(m.group(5))))
    return out


def _first_history_after(settings: Settings, partitions: set[int], after_s: float, timeout: float) -> float:
    """The timestamp (s) of the first committed history record after ``after_s`` on any of ``partitions``:
    the first transition a processor handled there (a record's timestamp is when it was produced)."""
    topic = topology.history_topic(APP_NAME)
    consumer = Consumer(dict(kafka.reader_config(settings)))
    try:
        wanted = [TopicPartition(topic, p, int(after_s * 1000)) for p in sorted(partitions)]
        starts = [tp for tp in consumer.offsets_for_times(wanted, timeout=30) if tp.offset >= 0]
        if not starts:
            raise BenchError(f"no history record on partitions {sorted(partitions)} after the takeover")
        consumer.assign(starts)
        firsts: dict[int, float] = {}
        deadline = time.monotonic() + timeout
        while len(firsts) < len(starts) and time.monotonic() < deadline:
            for msg in consumer.consume(100, 0.5):
                if msg.error() is None and msg.timestamp()[1] / 1000 > after_s:
                    firsts.setdefault(msg.partition() or 0, msg.timestamp()[1] / 1000)
        if not firsts:
            raise BenchError(f"no history record on partitions {sorted(partitions)} after the takeover")
        return min(firsts.values())
    finally:
        consumer.close()


async def _traffic(app: App, rate: float, stop: asyncio.Event) -> int:
    """Start ``one`` runs at ``rate`` per second (every partition gets some) until ``stop``."""
    started = 0
    async with app.client() as client:
        t0 = time.monotonic()
        while not stop.is_set():
            await client.start("one", started, run_id=f"live-{time.time_ns()}-{started}")
            started += 1
            ahead = t0 + started / rate - time.monotonic()
            if ahead > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), ahead)
    return started


INSTANCES = ["pa", "pb"]
"""The two processors, the same in every trial (their state dirs carry over: each trial starts warm)."""


def trial(
    work: Path, env: dict[str, str], settings: Settings, standby: int, sig: str, n: int, rate: float
) -> dict[str, Any]:
    """One takeover: ``pa`` gets ``sig``, ``pb`` takes its partitions over; the figures."""
    cli = str(Path(sys.executable).with_name("orchestrator"))
    state = work / "state"
    ports = {name: (free_port(), free_port()) for name in INSTANCES}
    logs = {name: work / f"{name}-{n}.log" for name in INSTANCES}
    procs: dict[str, Child] = {}
    for name in INSTANCES:
        http, metrics_port = ports[name]
        args = [cli, "processor", "bench.apps:app", "--instance-id", name, "--state-dir", str(state)]
        args += ["--standby-replicas", str(standby), "--http-port", str(http)]
        args += ["--advertised-host", "127.0.0.1", "--metrics-port", str(metrics_port)]
        procs[name] = Child(f"{name}-{n}", args, work, env)
    worker = Child(f"worker-{n}", [cli, "worker", "bench.apps:app", "--concurrency", "64"], work, env)
    t0 = time.monotonic()
    try:
        while True:
            if not all(p.alive for p in procs.values()):
                raise BenchError(f"a processor exited; see {work}")
            owned = [_assignments(logs[name]) for name in INSTANCES]
            ready = all(a and a[-1][1] for a in owned) and all(_ready(ports[x][0]) for x in INSTANCES)
            lags = [_metric_lags(ports[x][1]) for x in INSTANCES]
            warm = standby == 0 or all(len(lag) >= settings.partitions and not any(lag) for lag in lags)
            if ready and warm:
                break
            if time.monotonic() - t0 > 1800:
                raise BenchError("the processors did not restore and warm up in 30 min")
            time.sleep(2)
        warm_s = time.monotonic() - t0
        victim, survivor = INSTANCES
        victim_parts = _assignments(logs[victim])[-1][1]
        if standby == 0:
            # A cold takeover: the survivor has never held the victim's partitions (without this, its copy
            # from an earlier trial would make the restore a tail). Not open: it keeps no standbys.
            for p in victim_parts:
                for prefix in ("p", "k"):
                    shutil.rmtree(state / APP_NAME / survivor / f"{prefix}{p}", ignore_errors=True)
        log(f"trial {n} (standbys {standby}, {sig}): both ready and warm after {warm_s:.0f} s")
        app = App(APP_NAME, settings=settings)
        before = len(_assignments(logs[survivor]))

        async def drive() -> tuple[float, int]:
            stop = asyncio.Event()
            traffic = asyncio.create_task(_traffic(app, rate, stop))
            await asyncio.sleep(5)
            signalled = time.time()
            procs[victim].popen.send_signal(signal.SIGKILL if sig == "kill" else signal.SIGTERM)
            deadline = time.monotonic() + 1800
            while True:
                found = _assignments(logs[survivor])
                if len(found) > before and found[-1][1] >= victim_parts:
                    break
                if time.monotonic() > deadline:
                    raise BenchError("the survivor took nothing over in 30 min")
                await asyncio.sleep(0.2)
            await asyncio.sleep(10)  # traffic on the taken-over partitions
            stop.set()
            return signalled, await traffic

        signalled, started = asyncio.run(drive())
        at, _, restored, restore_s = _assignments(logs[survivor])[-1]
        assigned = at - restore_s
        first = _first_history_after(settings, victim_parts, assigned, 60)
        out = {
            "standby_replicas": standby,
            "signal": sig,
            "warm_up_s": round(warm_s, 1),
            "restored_records": restored,
            "restore_s": round(restore_s, 2),
            "assign_to_first_transition_s": round(first - assigned, 2),
            "signal_to_assign_s": round(assigned - signalled, 2),
            "signal_to_first_transition_s": round(first - signalled, 2),
            "runs_started_meanwhile": started,
            "load_average": round(os.getloadavg()[0], 1),
        }
        log(f"trial {n}: {out}")
        return out
    finally:
        for child in [*procs.values(), worker]:
            child.stop()


def main(
    runs: int,
    partitions: int,
    standbys: list[int],
    signals: list[str],
    repeats: int,
    rate: float,
    keep: bool,
) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="orchestrator-bench-takeover-"))
    cli = str(Path(sys.executable).with_name("orchestrator"))
    kafka_dir = work / "kafka"
    out: dict[str, Any] = {"runs": runs, "partitions": partitions, "trials": []}
    started = False
    try:
        port = free_port()
        r = run([cli, "kafka", "start", "--dir", str(kafka_dir), "--port", str(port), "--controller-port",
                 str(free_port())], timeout=300, cwd=REPO)  # fmt: skip
        if r.returncode != 0:
            raise BenchError(f"kafka start failed: {(r.stdout + r.stderr).strip()[-800:]}")
        started = True
        settings = Settings(bootstrap_servers=f"127.0.0.1:{port}", partitions=partitions)
        kafka.ensure_topics(App(APP_NAME, settings=settings), component="processor")
        log(f"loading {runs} run states into the changelog and the stores")
        out.update(load(settings, runs, work / "state", INSTANCES))
        log(f"loaded: {out}")
        env = {
            "ORCHESTRATOR_BOOTSTRAP_SERVERS": settings.bootstrap_servers,
            "ORCHESTRATOR_PARTITIONS": str(partitions),
        }
        n = 0
        for _ in range(repeats):
            for standby in standbys:
                for sig in signals:
                    out["trials"].append(trial(work, env, settings, standby, sig, n, rate))
                    n += 1
                    time.sleep(12)  # the survivor, a static member, leaves the group only at session timeout
        log(f"results: {json.dumps(out)}")
    finally:
        if started:
            run([cli, "kafka", "stop", "--dir", str(kafka_dir)], timeout=120, cwd=REPO)
        if keep:
            log(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return out
