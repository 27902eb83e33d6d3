"""5,000 runs through a broker failover, a rolling restart and scaling, on a 3-broker cluster (issue 14).

Everything real: a private 3-broker KRaft cluster (RF 3, min.insync 2; three JVMs:
``shared_brokers.three_brokers``, which ``test_devkafka_cluster`` used first and left with every node back in
every ISR), three processor and two worker processes. While 5,000 runs are in flight (each sleeps and polls a
gate until the faults are over, ``apps/failover_app.py``, so every run crosses every fault):

1. the broker leading the most engine partitions is SIGKILLed, the engine keeps going on the two others,
   and the broker comes back and rejoins every ISR;
2. every processor is restarted in turn (SIGTERM, exit code 0, same instance id and state dir), the next one
   only once the restarted one logged its partitions and every history partition has grown again (only
   processors write there, in transactions: every partition is being processed);
3. two processors are stopped, the third takes every partition, and the two start again.

Claims: every run completes with the right result; no committed transition is duplicated (history read
read_committed: per run, gap-free unique sequence numbers, each step position completed once); no engine
process exits on its own. Printed, not asserted (timing depends on the machine): the longest pause a run
saw, raw and beyond its own sleeps, and how long each phase took. BENCHMARKS.md records them.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from confluent_kafka import Consumer
from confluent_kafka.admin import AdminClient
from engine_support import (
    EngineProcess,
    check_no_duplicate_transitions,
    child_env,
    end_offsets,
    executions,
    history,
    in_every_isr,
    partition_leaders,
    pauses,
)

from orchestrator import App, Settings, _devkafka
from orchestrator._devkafka import BrokerInfo
from orchestrator._engine import kafka
from orchestrator.topology import engine_topics, history_topic, inbox_topic

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1500)]
QUIET_LOGGER = logging.getLogger("tests.librdkafka")  # set up silent by tests/integration/conftest.py

APP_SPEC = "tests.integration.apps.failover_app:app"
RUNS = 5000
START_BATCH = 500
PARTITIONS = 6
PAUSE_S = 45.0
"""Mean sleep between a run's gate polls: 5,000 runs poll ~110 times a second. At 30 s (~170 polls a second)
three processors on a shared 2-core machine had no slack left, and every fault left a backlog that the
longest pause measured instead of the fault."""
PROGRESS_TIMEOUT_S = 300.0


def _tail(path: Path, lines: int = 40) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""


class Fleet:
    """The engine processes, which of them the test stopped on purpose, and any that exited by themselves."""

    def __init__(self, parts: dict[str, EngineProcess]) -> None:
        self.parts = parts
        self.stopped: set[str] = set()
        self.unexpected: list[str] = []

    def check(self) -> None:
        for name, part in self.parts.items():
            if name not in self.stopped and part.proc is not None and part.proc.poll() is not None:
                self.unexpected.append(
                    f"{name} exited by itself ({part.proc.returncode}):\n{_tail(part.log)}"
                )
                part.start()  # keep the test going; it fails at the end

    def stop(self, name: str) -> int:
        """SIGTERM and wait for the exit; the exit code."""
        part = self.parts[name]
        self.stopped.add(name)
        assert part.proc is not None
        part.terminate()
        return part.proc.returncode

    def start(self, name: str) -> int:
        """Start again (same arguments: same instance id, same state dir); the log offset it starts at."""
        part = self.parts[name]
        offset = part.log.stat().st_size if part.log.exists() else 0
        part.start()
        self.stopped.discard(name)
        return offset


def _assigned_inbox(log: Path, offset: int, inbox: str) -> set[int] | None:
    """The inbox partitions of the last assignment logged after ``offset`` (None: none logged yet)."""
    text = log.read_text(errors="replace")[offset:] if log.exists() else ""
    lines = [line for line in text.splitlines() if "assigned partitions" in line]
    if not lines:
        return None
    return {int(p) for p in re.findall(rf"\('{re.escape(inbox)}', (\d+)\)", lines[-1])}


async def test_5000_runs_through_broker_failover_rolling_restart_and_scaling(
    three_brokers: tuple[BrokerInfo, Path], unique_name: str, tmp_path: Path
) -> None:
    info, data_dir = three_brokers
    bootstrap = info.bootstrap
    state = tmp_path / "state"
    env = {
        **child_env(unique_name, bootstrap, tmp_path),
        "ORCHESTRATOR_PARTITIONS": str(PARTITIONS),
        "ORCHESTRATOR_REPLICATION_FACTOR": "3",
        "ORCHESTRATOR_MIN_INSYNC_REPLICAS": "2",
        "FAILOVER_PAUSE_S": str(PAUSE_S),
    }
    parts: dict[str, EngineProcess] = {}
    for i in range(3):
        parts[f"p{i}"] = EngineProcess(
            "processor", APP_SPEC, env, "--instance-id", f"fo-p{i}", "--state-dir", str(state),
            log=tmp_path / f"p{i}.log",
        )  # fmt: skip
    for i in range(2):
        parts[f"w{i}"] = EngineProcess(
            "worker", APP_SPEC, env, "--instance-id", f"fo-w{i}", "--concurrency", "64",
            log=tmp_path / f"w{i}.log",
        )  # fmt: skip
    fleet = Fleet(parts)
    app = App(
        unique_name,
        settings=Settings(
            bootstrap_servers=bootstrap, partitions=PARTITIONS, replication_factor=3, min_insync_replicas=2
        ),
    )
    inbox = inbox_topic(unique_name)
    hist_topic = history_topic(unique_name)
    # One admin client and one reader for the whole test (clients made and dropped in threads while a
    # broker is down are what the test would be exercising otherwise).
    admin = AdminClient({"bootstrap.servers": bootstrap, "logger": QUIET_LOGGER})
    reader = Consumer(kafka.reader_config(app.settings, logger=QUIET_LOGGER))
    topics = [spec.name for spec in engine_topics(unique_name, app.settings)]
    side = tmp_path / "executions.log"
    phases: dict[str, tuple[float, float]] = {}  # what -> (wall clock it began, seconds)

    def note(what: str, seconds: float) -> None:
        phases[what] = (time.time() - seconds, seconds)
        print(f"  {what}: {seconds:.1f} s", flush=True)

    async def watch() -> None:
        while True:
            fleet.check()
            await asyncio.sleep(1)

    async def wait_for(check: Callable[[], bool], what: str, timeout: float = PROGRESS_TIMEOUT_S) -> float:
        """Poll ``check`` (in a thread) until true; the seconds it took."""
        t0 = time.monotonic()
        while not await asyncio.to_thread(check):
            assert time.monotonic() - t0 < timeout, f"not true after {timeout} s: {what}"
            assert not fleet.unexpected, fleet.unexpected
            await asyncio.sleep(1)
        return time.monotonic() - t0

    async def progress(what: str) -> float:
        """Wait until every history partition has grown: only processors write there, in transactions, so
        every partition is being processed (by whichever processor holds it now)."""
        before = await asyncio.to_thread(end_offsets, reader, hist_topic, PARTITIONS)

        def moved() -> bool:
            now = end_offsets(reader, hist_topic, PARTITIONS)
            return all(now[p] > before[p] for p in range(PARTITIONS))

        return await wait_for(moved, f"every history partition written again ({what})")

    async def owns(name: str, offset: int, expected: set[int] | None, what: str) -> float:
        """Wait until ``name`` logged (after ``offset``) an assignment of inbox partitions ``expected``."""

        def check() -> bool:
            got = _assigned_inbox(parts[name].log, offset, inbox)
            return got is not None and (bool(got) if expected is None else got == expected)

        return await wait_for(check, what)

    def in_loop() -> bool:
        """Every run has polled the gate once: its first transitions are committed (the timer before the
        poll fires only from a committed store, the worker reads the task read_committed), so the faults
        begin with every run asleep or polling, none still starting."""
        if not side.exists():
            return False
        runs = {line.split()[0] for line in side.read_text().splitlines() if line.endswith(" gate_open")}
        return len(runs) >= RUNS

    for part in parts.values():
        part.start()
    watcher = asyncio.ensure_future(watch())
    try:
        async with app.client() as client:
            t0 = time.monotonic()
            handles = []
            for first in range(0, RUNS, START_BATCH):
                batch = range(first, min(first + START_BATCH, RUNS))
                handles += await asyncio.gather(*(client.start("relay", i, run_id=f"fo{i}") for i in batch))
            results = [asyncio.ensure_future(h.result(timeout=3600)) for h in handles]
            note(f"start {RUNS} runs", time.monotonic() - t0)
            note("every run polled the gate once", await wait_for(in_loop, "every run polled the gate once"))
            assert not any(r.done() for r in results)
            faults_began = time.time()

            # 1. SIGKILL the broker leading the most engine partitions; the engine goes on without it.
            leaders = await asyncio.to_thread(partition_leaders, admin, topics)
            victim, led = leaders.most_common(1)[0]
            t0 = time.monotonic()
            assert await asyncio.to_thread(_devkafka.kill_node, data_dir, victim)

            def moved_away() -> bool:
                now = partition_leaders(admin, topics)
                return now[victim] == 0 and now[-1] == 0

            await wait_for(moved_away, f"leaders moved off broker {victim}")
            await progress(f"broker {victim} down")
            what = f"broker {victim} (led {led} of {sum(leaders.values())}) down, every partition processed"
            note(what, time.monotonic() - t0)
            t0 = time.monotonic()
            await asyncio.to_thread(_devkafka.restart_node, data_dir, victim)

            await wait_for(lambda: in_every_isr(admin, topics, victim), f"broker {victim} back in every ISR")
            await progress(f"broker {victim} back")
            note(f"broker {victim} back in every ISR", time.monotonic() - t0)

            # 2. Rolling restart: one processor at a time, the next once it processes again.
            for name in ("p0", "p1", "p2"):
                t0 = time.monotonic()
                code = await asyncio.to_thread(fleet.stop, name)
                assert code == 0, f"{name} exit code {code} on SIGTERM:\n{_tail(parts[name].log)}"
                offset = fleet.start(name)
                await owns(name, offset, None, f"{name} assigned inbox partitions after its restart")
                await progress(f"{name} restarted")
                note(f"rolling restart {name}", time.monotonic() - t0)

            # 3. Scale 3 -> 1 -> 3.
            t0 = time.monotonic()
            offset = parts["p0"].log.stat().st_size
            for name in ("p1", "p2"):
                code = await asyncio.to_thread(fleet.stop, name)
                assert code == 0, f"{name} exit code {code} on SIGTERM:\n{_tail(parts[name].log)}"
            every = set(range(PARTITIONS))
            await owns("p0", offset, every, "p0 assigned every inbox partition")
            await progress("p0 alone")
            note("scale 3 -> 1", time.monotonic() - t0)
            t0 = time.monotonic()
            offsets = {name: fleet.start(name) for name in ("p1", "p2")}
            for name, at in offsets.items():
                await owns(name, at, None, f"{name} assigned inbox partitions after scaling out")
            await progress("three processors again")
            note("scale 1 -> 3", time.monotonic() - t0)
            faults_ended = time.time()
            assert not any(r.done() for r in results), "a run ended before the gate opened"

            (tmp_path / "gate").touch()
            t0 = time.monotonic()
            values = await asyncio.wait_for(asyncio.gather(*results), 1200)
            note("drain after the gate opened", time.monotonic() - t0)
        fleet.check()
    finally:
        watcher.cancel()
        reader.close()
        for part in parts.values():
            part.terminate()
    assert not fleet.unexpected, "\n\n".join(fleet.unexpected)

    hist = await asyncio.to_thread(history, app)
    assert len(hist) == RUNS
    check_no_duplicate_transitions(hist)
    from orchestrator._engine import events as ev

    for i, value in enumerate(values):
        events = hist[f"fo{i}"]
        gate_polls = sum(1 for e in events if isinstance(e.body, ev.TimerFired))
        assert value == {"x": i + 111, "polls": gate_polls}, (i, value)
        # Every run crossed every fault: it had events before the first and after the last.
        assert events[0].timestamp_ms < faults_began * 1000 < faults_ended * 1000 < events[-1].timestamp_ms
    done = executions(side)
    repeated = {key: runs for key, runs in done.items() if len(runs) > 1}
    gaps = pauses(hist)
    raw = max(gaps, key=lambda p: p.seconds)

    def during(wall_ms: int) -> str:
        began = [(t0, what) for what, (t0, _) in phases.items() if t0 * 1000 <= wall_ms]
        return max(began)[1] if began else "before the phases"

    print(
        f"faults took {faults_ended - faults_began:.0f} s; {sum(len(v) for v in hist.values())} history "
        f"events; steps executed more than once: {len(repeated)} of {len(done)}"
    )
    print(f"longest gap between two events of a run: {raw.seconds:.1f} s ({raw.run_id}: {raw.between})")
    print(f"longest pauses beyond the runs' own sleeps (each {PAUSE_S * 0.5:.0f}-{PAUSE_S * 1.5:.0f} s):")
    for gap in gaps[:5]:
        print(
            f"  {gap.beyond_sleep:.1f} s ({gap.run_id}: {gap.between}), began at "
            f"{gap.began_ms / 1000 - faults_began:+.0f} s from the first fault, in '{during(gap.began_ms)}'"
        )
    worst_per_phase: dict[str, float] = {}
    for gap in gaps:
        phase = during(gap.began_ms)
        worst_per_phase.setdefault(phase, gap.beyond_sleep)  # gaps are sorted: the first is the worst
    for phase, worst in worst_per_phase.items():
        print(f"  worst pause beyond the sleeps that began during '{phase}': {worst:.1f} s")
