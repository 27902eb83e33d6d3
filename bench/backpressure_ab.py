"""The worker's back-pressure (ADR 0025, "Back-pressure"): local queue vs pause-and-seek, interleaved.

Why: the lead was that with every slot busy, `Worker._poll_paused` paused the assignment and librdkafka then
dropped and refetched its prefetched records. Four modes (worker ``--buffer 0`` = the old pause-and-seek,
the default queue; processor early dispatch off/on) alternate in short blocks on one broker, so they see
the same background load on a shared machine. Processor and worker are replaced before each block; the
worker runs with librdkafka statistics on and logs its pauses, seeks and fetch requests when it stops.

    .venv/bin/python -m bench.backpressure_ab --blocks 3 --duration 6 --concurrency 32 256
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.infra import Child, free_port, log
from bench.ours import Ours, clean

MODES = {
    "seek/off": (["--buffer", "0"], []),
    "queue/off": ([], []),
    "seek/on": (["--buffer", "0"], ["--early-dispatch"]),
    "queue/on": ([], ["--early-dispatch"]),
}
STATS = re.compile(r"stopped: WorkerStats\((.*?)\)")


def worker_stats(path: Path) -> dict[str, int]:
    """The counters the worker logged when it stopped (`WorkerStats`)."""
    found = STATS.findall(path.read_text(errors="replace"))
    if not found:
        return {}
    return {k: int(v) for k, v in (kv.split("=") for kv in found[-1].split(", "))}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--blocks", type=int, default=3, help="blocks per mode (alternating)")
    ap.add_argument("--warmup", type=float, default=2.0)
    ap.add_argument("--duration", type=float, default=6.0)
    ap.add_argument("--concurrency", type=int, nargs="+", default=[32, 256])
    ap.add_argument("--worker-concurrency", type=int, default=64)
    ap.add_argument("--workflow", default="five")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="orchestrator-bp-"))
    ours = Ours(work, partitions=4, max_batch=500, worker_concurrency=args.worker_concurrency)
    cli = str(Path(sys.executable).with_name("orchestrator"))
    rows: list[dict[str, Any]] = []
    try:
        ours.start(free_port(), free_port())
        ours.load(args.workflow, [32], 1.0, 10.0)  # the broker's JIT warm
        for block in range(args.blocks):
            for c in args.concurrency:  # one level per worker life, so its counters belong to that level
                for mode, (wextra, pextra) in MODES.items():
                    rows.append(block_row(ours, cli, args, mode, wextra, pextra, block, c, work))
    finally:
        ours.stop()
        clean(work)
    print(
        "\n| callers | worker/early dispatch | runs/s per block | median runs/s | worker CPU ms/run | "
        "broker CPU ms/run | pauses/run | seeks/run | fetch req/run | fetched KB/run |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for c in args.concurrency:
        for mode in MODES:
            mine = [r for r in rows if r["callers"] == c and r["mode"] == mode]
            if not mine:
                continue

            def med(key: str, mine: list[dict[str, Any]] = mine) -> float:
                return statistics.median(float(r.get(key) or 0) for r in mine)

            print(
                f"| {c} | {mode} | {' / '.join(format(r['runs_per_s'], 'g') for r in mine)} | "
                f"{med('runs_per_s'):.1f} | {med('worker_cpu_ms'):.2f} | {med('broker_cpu_ms'):.2f} | "
                f"{med('pauses'):.3f} | {med('seeks'):.3f} | {med('fetch_requests'):.3f} | "
                f"{med('fetched_bytes') / 1024:.2f} |"
            )


def block_row(
    ours: Ours,
    cli: str,
    args: argparse.Namespace,
    mode: str,
    wextra: list[str],
    pextra: list[str],
    block: int,
    callers: int,
    work: Path,
) -> dict[str, Any]:
    """Fresh processor and worker in ``mode``, one load level, the worker's counters per run."""
    assert ours.processor is not None and ours.worker is not None
    ours.processor.stop()
    ours.worker.stop()
    tag = f"{mode.replace('/', '-')}-{callers}-{block}"
    ours.processor = Child(f"ours-processor-{tag}", [*ours.processor_args(cli, 0), *pextra], work, ours.env)
    wargs = [cli, "worker", "bench.apps:app", "--concurrency", str(args.worker_concurrency)]
    wargs += ["--instance-id", "bench-w0", "--stats-interval-ms", "500", *wextra]
    ours.worker = Child(f"ours-worker-{tag}", wargs, work, ours.env)
    time.sleep(3.0)  # partitions back (static membership) and stores restored
    results, cost = ours.load(args.workflow, [callers], args.warmup, args.duration)
    ours.worker.stop()
    final = worker_stats(ours.worker.log_path)
    runs = cost["runs"]
    cpu = cost["cpu_ms_per_run"]
    row: dict[str, Any] = {
        "mode": mode,
        "block": block,
        "callers": callers,
        "runs_per_s": results[0]["runs_per_s"],
        "p50_ms": results[0]["p50_ms"],
        "worker_cpu_ms": next(v for k, v in cpu.items() if k.startswith("worker")),
        "broker_cpu_ms": cpu.get("broker"),
        "runs": runs,
        "buffered_max": final.get("buffered_max"),
    }
    # counted over the worker's whole life (start, idle settle, warm-up, window): per run of the load
    for k in ("pauses", "seeks", "fetch_requests", "fetched_bytes", "started"):
        row[k] = round(final.get(k, 0) / runs, 3)
    log(json.dumps(row))
    return row


if __name__ == "__main__":
    main()
