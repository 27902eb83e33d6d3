"""Early dispatch on vs off (ADR 0025), interleaved in short blocks on one broker, one worker.

Why: on a machine shared with other load, two `bench run`s minutes apart differ by 2x; blocks of a few
seconds alternating between the two processors see the same background load, so their medians compare.
Only the processor is replaced between blocks (same broker, worker, topics, static instance id).

    .venv/bin/python -m bench.dispatch_ab --blocks 4 --duration 6 --concurrency 1 32
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.infra import Child, free_port, log
from bench.ours import Ours, clean

MODES = {"on": ["--early-dispatch"], "off": []}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--blocks", type=int, default=4, help="blocks per mode (alternating)")
    ap.add_argument("--warmup", type=float, default=2.0)
    ap.add_argument("--duration", type=float, default=6.0)
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 32])
    ap.add_argument("--workflow", default="five")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="orchestrator-ab-"))
    ours = Ours(work, partitions=4, max_batch=500, worker_concurrency=64)
    cli = str(Path(sys.executable).with_name("orchestrator"))
    rows: list[dict[str, Any]] = []
    try:
        ours.start(free_port(), free_port())
        ours.load(args.workflow, [32], 1.0, 10.0)  # the broker's JIT warm
        for block in range(args.blocks):
            for mode, extra in MODES.items():
                assert ours.processor is not None
                ours.processor.stop()
                ours.processor = Child(
                    f"ours-processor-{mode}-{block}", [*ours.processor_args(cli, 0), *extra], work, ours.env
                )
                time.sleep(3.0)  # partitions back (static membership) and stores restored
                results, cost = ours.load(args.workflow, args.concurrency, args.warmup, args.duration)
                for r in results:
                    hops = r.get("hops") or {}
                    row = {
                        "mode": mode,
                        "block": block,
                        "callers": r["concurrency"],
                        "runs_per_s": r["runs_per_s"],
                        "p50_ms": r["p50_ms"],
                        "p99_ms": r["p99_ms"],
                        "hops": {k: v for k, v in hops.items() if isinstance(v, int | float)},
                        "records_per_run": cost["records_per_run"].get("total"),
                        "broker_cpu_ms": cost["cpu_ms_per_run"].get("broker"),
                    }
                    rows.append(row)
                    log(json.dumps(row))
    finally:
        ours.stop()
        clean(work)
    print("\n| callers | mode | runs/s per block | median runs/s | median p50 ms |")
    print("|---|---|---|---|---|")
    for c in args.concurrency:
        for mode in MODES:
            mine = [r for r in rows if r["callers"] == c and r["mode"] == mode]
            rates = [r["runs_per_s"] for r in mine]
            p50s = [r["p50_ms"] for r in mine if r["p50_ms"] is not None]
            med_p50 = f"{statistics.median(p50s):.1f}" if p50s else "-"
            print(
                f"| {c} | {mode} | {' / '.join(f'{x:g}' for x in rates)} | "
                f"{statistics.median(rates):.1f} | {med_p50} |"
            )


if __name__ == "__main__":
    main()
