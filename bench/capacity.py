"""Capacity figures: processor memory with many sleeping runs, recovery after SIGKILL, replay speed.

``python -m bench capacity [--runs 10000]``: a private broker, one processor and one worker (as in
``bench run``), then:
1. start N runs that each sleep an hour, sampling the processor's RSS as they accumulate;
2. SIGKILL the processor and restart it with its store intact: time until a new run completes;
3. SIGKILL it again, delete its store, restart: time until a new run completes (full changelog restore);
4. ``orchestrator replay`` over the history: events/s (and that it finds zero differences).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import sys
import time
from pathlib import Path
from typing import Any

import psutil

from bench.infra import free_port, log, run
from bench.ours import Ours

REPO = Path(__file__).resolve().parents[1]


def _rss_mb(pid: int) -> float:
    return psutil.Process(pid).memory_info().rss / 1e6


async def _start_many(app: Any, n: int, rss: list[tuple[int, float]], pid: int) -> None:
    async with app.client() as client:
        step = max(1, n // 10)
        for i in range(n):
            await client.start("sleeper", i, run_id=f"sleeper-{i}")
            if (i + 1) % step == 0:
                rss.append((i + 1, _rss_mb(pid)))


def _history_events(ours: Ours) -> int:
    return ours.topic_offsets().get("history", 0)


async def _probe(app: Any, tag: str) -> float:
    t0 = time.monotonic()
    async with app.client() as client:
        handle = await client.start("one", 1, run_id=f"probe-{tag}-{time.time()}")
        await handle.result(timeout=600)
    return time.monotonic() - t0


def capacity(runs: int, work: Path) -> dict[str, Any]:
    os.environ["ORCHESTRATOR_PARTITIONS"] = "4"
    ours = Ours(work, partitions=4, max_batch=500, worker_concurrency=64)
    ours.start(free_port(), free_port())
    os.environ["ORCHESTRATOR_BOOTSTRAP_SERVERS"] = ours.env["ORCHESTRATOR_BOOTSTRAP_SERVERS"]
    from bench.apps import app  # settings come from the environment set above

    out: dict[str, Any] = {"runs": runs}
    try:
        assert ours.processor is not None
        asyncio.run(_probe(app, "warmup"))
        out["rss_idle_mb"] = round(_rss_mb(ours.processor.pid), 1)
        rss: list[tuple[int, float]] = []
        t0 = time.monotonic()
        asyncio.run(_start_many(app, runs, rss, ours.processor.pid))
        while _history_events(ours) < 2 * runs:  # RunStarted + TimerStarted each
            time.sleep(0.5)
        out["start_all_s"] = round(time.monotonic() - t0, 1)
        time.sleep(5)
        out["rss_by_sleeping_runs_mb"] = [[n, round(mb, 1)] for n, mb in rss] + [
            [runs, round(_rss_mb(ours.processor.pid), 1)]
        ]
        out["store_mb"] = round(ours.store_bytes() / 1e6, 1)
        # Recovery, store intact.
        cli = str(Path(sys.executable).with_name("orchestrator"))
        for label, wipe in (("recovery_store_intact_s", False), ("recovery_from_changelog_s", True)):
            os.kill(ours.processor.pid, signal.SIGKILL)
            ours.processor.popen.wait(30)
            if wipe:
                shutil.rmtree(ours.state_dir, ignore_errors=True)
            t1 = time.monotonic()
            from bench.infra import Child

            ours.processor = Child(
                f"ours-processor-{label}", ours.processor_args(cli, 0), ours.work, ours.env
            )
            asyncio.run(_probe(app, label))
            out[label] = round(time.monotonic() - t1, 2)
            log(f"{label}: {out[label]} s")
        # Replay.
        r = run(
            [cli, "replay", "--app", "bench.apps:app"], timeout=1800, cwd=REPO, env={**os.environ, **ours.env}
        )
        text = r.stdout + r.stderr
        m = re.search(
            r"replayed (\d+) run\(s\), (\d+) events in ([\d.]+)s \((\d+) events/s\): (\d+) difference", text
        )
        if m:
            out["replay"] = {
                "runs": int(m.group(1)),
                "events": int(m.group(2)),
                "seconds": float(m.group(3)),
                "events_per_s": int(m.group(4)),
                "differences": int(m.group(5)),
            }
        else:
            out["replay"] = {"error": text[-500:]}
    finally:
        ours.stop()
    return out


def main(runs: int) -> None:
    work = Path(os.environ.get("TMPDIR", "/tmp")) / f"bench-capacity-{int(time.time())}"
    work.mkdir(parents=True)
    try:
        result = capacity(runs, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(result, indent=2))
