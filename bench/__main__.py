"""``python -m bench run [--quick] [--peers ...] [--write-markdown]``: the whole benchmark, one command."""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import report
from bench.infra import REPO, BenchError, free_port, log
from bench.ours import Ours, clean
from bench.peers.runners import PEERS

LEVELS = [1, 8, 32, 128, 256]
WORKFLOWS = ["five", "one", "twenty", "five_10ms", "five_local"]


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m bench")
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="run the benchmark and print the tables")
    r.add_argument("--quick", action="store_true", help="short windows (2 s warm-up, 5 s measured)")
    r.add_argument("--warmup", type=float, help="seconds of warm-up per level")
    r.add_argument("--duration", type=float, help="measured seconds per level")
    r.add_argument("--levels", type=int, nargs="+", default=LEVELS, help="caller counts")
    r.add_argument("--workflows", nargs="+", default=WORKFLOWS, choices=WORKFLOWS)
    r.add_argument("--peers", nargs="*", default=list(PEERS), choices=list(PEERS), help="peers to run")
    r.add_argument("--no-profile", action="store_true", help="skip the py-spy profile of our processes")
    r.add_argument(
        "--watcher-experiment",
        type=float,
        default=0.0,
        metavar="MS",
        help="also run ours with the client's outcome-watcher wait capped at MS (0: skip)",
    )
    r.add_argument("--partitions", type=int, default=4)
    r.add_argument("--processors", type=int, default=1, help="processor instances (they share partitions)")
    r.add_argument(
        "--processor-set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="experiment: librdkafka producer setting for the processor (runs bench.processor_main)",
    )
    r.add_argument("--max-batch", type=int, default=500)
    r.add_argument(
        "--processor-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="experiment: extra `orchestrator processor` argument, e.g. --processor-arg=--early-dispatch",
    )
    r.add_argument(
        "--batch-linger-ms", type=int, default=0, help="processor: wait for more records before a transaction"
    )
    r.add_argument("--worker-concurrency", type=int, default=64)
    r.add_argument(
        "--system-warmup", type=float, default=20.0, help="seconds of load before ours is measured (JIT)"
    )
    r.add_argument("--write-markdown", action="store_true", help="rewrite the tables in BENCHMARKS.md")
    r.add_argument("--keep", action="store_true", help="keep the temp dir (logs, data) afterwards")
    f = sub.add_parser("txn-floor", help="time Kafka's transactional calls alone (no engine code)")
    f.add_argument("-n", type=int, default=300, help="transactions")
    m = sub.add_parser("markdown", help="rewrite BENCHMARKS.md from a results JSON file")
    m.add_argument("results", type=Path)
    c = sub.add_parser(
        "capacity", help="RSS with many sleeping runs, recovery after SIGKILL, replay events/s"
    )
    c.add_argument("--runs", type=int, default=10_000)
    cp = sub.add_parser("cpu-path", help="CPU per run of the processor's and worker's code, no Kafka")
    cp.add_argument("--runs", type=int, default=3000)
    cp.add_argument("--in-flight", type=int, default=256)
    cp.add_argument("--repeats", type=int, default=5)
    cp.add_argument("--tuned-gc", action="store_true", help="GC settings of the CLI's engine commands")
    cp.add_argument("--baseline", action="store_true", help="no state cache, plain Avro state encoding")
    cp.add_argument("--traced", action="store_true", help="OpenTelemetry SDK installed (spans dropped)")
    q = sub.add_parser("run-queries", help="runs list first-page latency over many runs; index write cost")
    q.add_argument("--runs", type=int, default=1_000_000)
    q.add_argument("--partitions", type=int, default=8)
    q.add_argument("--repeats", type=int, default=50)
    q.add_argument("--transitions", type=int, default=50_000)
    q.add_argument("--keep", action="store_true", help="keep the temp dir (stores, logs)")
    t = sub.add_parser("takeover", help="takeover time with many runs in the stores, with/without standbys")
    t.add_argument("--runs", type=int, default=1_000_000)
    t.add_argument("--partitions", type=int, default=8)
    t.add_argument("--standby-replicas", type=int, nargs="+", default=[0, 1])
    t.add_argument("--signals", nargs="+", default=["kill", "term"], choices=["kill", "term"])
    t.add_argument("--repeats", type=int, default=1)
    t.add_argument("--rate", type=float, default=50.0, help="runs started per second during a takeover")
    t.add_argument("--keep", action="store_true", help="keep the temp dir (logs, stores)")
    args = ap.parse_args()
    if args.cmd == "takeover":
        from bench import takeover

        out = takeover.main(
            args.runs,
            args.partitions,
            args.standby_replicas,
            args.signals,
            args.repeats,
            args.rate,
            args.keep,
        )
        print(json.dumps(out, indent=1))
        return
    if args.cmd == "run-queries":
        from bench import run_queries

        print(
            json.dumps(
                run_queries.main(args.runs, args.partitions, args.repeats, args.transitions, args.keep),
                indent=1,
            )
        )
        return
    if args.cmd == "cpu-path":
        from bench import cpu_path

        out = cpu_path.main(
            args.runs, args.in_flight, args.repeats, args.tuned_gc, args.baseline, args.traced
        )
        print(json.dumps(out))
        return
    if args.cmd == "capacity":
        from bench import capacity

        capacity.main(args.runs)
        return
    if args.cmd == "txn-floor":
        from bench import txn_floor

        print(json.dumps(txn_floor.main(args.n), indent=1))
        return
    if args.cmd == "markdown":
        data = json.loads(args.results.read_text())
        report.write_markdown(data, REPO / "BENCHMARKS.md", args.results.parent)
        return
    run(args)


def run(args: argparse.Namespace) -> None:
    warmup = args.warmup if args.warmup is not None else (2.0 if args.quick else 5.0)
    duration = args.duration if args.duration is not None else (5.0 if args.quick else 15.0)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out_dir = REPO / "bench" / "results" / stamp
    out_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="orchestrator-bench-"))
    log(f"work dir {work}, results {out_dir}")
    data: dict[str, Any] = {
        "command": "python -m bench run" + (" --quick" if args.quick else "") + _extra(args),
        "started": stamp,
        "machine": report.machine(),
        "python": platform.python_version(),
        "settings": {
            "warmup_s": warmup,
            "duration_s": duration,
            "levels": args.levels,
            "partitions": args.partitions,
            "max_batch": args.max_batch,
            "batch_linger_ms": args.batch_linger_ms,
            "system_warmup_s": args.system_warmup,
            "worker_concurrency": args.worker_concurrency,
            "processors": args.processors,
            "processor_set": args.processor_set,
            "processor_args": args.processor_arg,
        },
        "versions": {"ours": report.our_versions()},
        "results": [],
        "costs": [],
        "failures": {},
        "rss_mb": {},
    }
    t0 = time.monotonic()
    try:
        ours = Ours(
            work / "ours",
            partitions=args.partitions,
            max_batch=args.max_batch,
            batch_linger_ms=args.batch_linger_ms,
            worker_concurrency=args.worker_concurrency,
            processors=args.processors,
            processor_set=args.processor_set,
            processor_args=args.processor_arg,
        )
        (work / "ours").mkdir()
        try:
            ours.start(free_port(), free_port())
            if args.system_warmup > 0:
                # A fresh broker runs interpreted until its JIT has compiled the hot paths: without this the
                # first level measured (1 caller) came out at half its warm figure (79 vs ~40 ms p50).
                log(f"ours: warming the broker up ({args.system_warmup:.0f} s of five at 64 callers)")
                ours.load("five", [64], 0.0, args.system_warmup)
            for wf in args.workflows:
                log(f"ours: {wf} at {args.levels} callers")
                results, cost = ours.load(wf, args.levels, warmup, duration)
                data["results"] += results
                data["costs"].append(cost)
                _show(results)
            data["rss_mb"]["ours"] = max(
                c["peak_rss_mb"]["processor"] + c["peak_rss_mb"]["worker"] for c in data["costs"]
            )
            for wf in ("five", "five_local"):
                closed = [r for r in data["results"] if r["system"] == "ours" and r["workflow"] == wf]
                if closed:
                    half = max(r["runs_per_s"] for r in closed) / 2
                    log(f"ours: {wf}, open loop at half of peak load ({half:.1f} runs/s)")
                    results, _ = ours.load(wf, [1], warmup, duration, rate=half)
                    data["results"] += results
                    _show(results)
            if args.watcher_experiment:
                log(f"ours: five with the client's outcome wait capped at {args.watcher_experiment} ms")
                results, _ = ours.load(
                    "five",
                    args.levels,
                    warmup,
                    duration,
                    {"BENCH_WATCHER_WAIT_MS": str(args.watcher_experiment)},
                )
                data["results"] += results
                _show(results)
            if not args.no_profile:
                log("ours: py-spy profile of processor and worker at 32 callers")
                data["profile"] = ours.profile(32, 10 if args.quick else 15, out_dir)
        except BenchError as exc:
            data["failures"]["ours"] = str(exc)
            log(f"ours FAILED: {exc}")
        finally:
            ours.stop()
        for name in args.peers:
            peer = PEERS[name](work)
            try:
                log(f"{name}: starting")
                peer.start()
                data["versions"][name] = peer.version
                log(f"{name} ({peer.version}): five at {args.levels} callers")
                results = peer.load("five", args.levels, warmup, duration)
                data["rss_mb"][name] = peer.rss_mb()
                data["results"] += results
                _show(results)
                if "five_local" in args.workflows and peer.in_process_steps:
                    # Compared with our local steps: the peer's own way of running steps in-process.
                    data.setdefault("in_process", {})[name] = {
                        "workflow": peer.in_process_workflow,
                        "how": peer.in_process_steps,
                    }
                    if peer.in_process_workflow != "five":
                        log(f"{name}: {peer.in_process_workflow} ({peer.in_process_steps})")
                        results = peer.load(peer.in_process_workflow, args.levels, warmup, duration)
                        data["results"] += results
                        _show(results)
            except (BenchError, OSError) as exc:
                data["failures"][name] = str(exc)
                log(f"{name} FAILED: {exc}")
            finally:
                peer.stop()
    finally:
        data["elapsed_s"] = round(time.monotonic() - t0)
        (out_dir / "results.json").write_text(json.dumps(data, indent=1))
        if not args.keep:
            clean(work)
        else:
            log(f"kept {work}")
    print(report.text_tables(data))
    plots = report.plots(out_dir)
    if plots:
        log(f"plots: {', '.join(str(p) for p in plots)}")
    if args.write_markdown:
        report.write_markdown(data, REPO / "BENCHMARKS.md", out_dir)
        log("BENCHMARKS.md updated")
    log(f"done in {data['elapsed_s']} s; results in {out_dir / 'results.json'}")


def _extra(args: argparse.Namespace) -> str:
    parts = []
    if args.peers != list(PEERS):
        parts.append("--peers " + " ".join(args.peers))
    if args.workflows != WORKFLOWS:
        parts.append("--workflows " + " ".join(args.workflows))
    for kv in args.processor_set:
        parts.append(f"--processor-set {kv}")
    for arg in args.processor_arg:
        parts.append(f"--processor-arg={arg}")
    if args.processors != 1:
        parts.append(f"--processors {args.processors}")
    if args.write_markdown:
        parts.append("--write-markdown")
    return "".join(" " + p for p in parts)


def _show(results: list[dict[str, Any]]) -> None:
    for r in results:
        log(
            f"  {r['system']:8} {r['workflow']:10} C={r['concurrency']:<3} {r['runs_per_s']:>8.1f} runs/s "
            f"p50 {r['p50_ms']} p95 {r['p95_ms']} p99 {r['p99_ms']} ms errors {r['errors']}"
        )


if __name__ == "__main__":
    main()
