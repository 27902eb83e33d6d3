"""Our engine under load: a private broker, one processor and one worker as child processes, the drivers.

Also measures the cost of a run (records and bytes written to each engine topic, RocksDB bytes, CPU seconds
of processor and worker) and profiles processor and worker with py-spy while they are loaded.
"""

from __future__ import annotations

import shutil
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

from bench.breakdown import hops
from bench.infra import REPO, BenchError, Child, ForeignCpu, driver, log, rss_mb, run, venv

APP_NAME = "bench"
TOPIC_ROLES = ("inbox", "history", "changelog", "tasks.default", "outcomes", "dlq")


class Ours:
    def __init__(
        self,
        work: Path,
        *,
        partitions: int,
        max_batch: int,
        worker_concurrency: int,
        batch_linger_ms: int = 0,
        processors: int = 1,
        processor_set: list[str] | None = None,
        processor_args: list[str] | None = None,
    ) -> None:
        self.processor_set = processor_set or []
        self.extra_processor_args = processor_args or []
        self.processors = processors
        self.extra: list[Child] = []
        self.work = work
        self.kafka_dir = work / "kafka"
        self.state_dir = work / "state"
        self.partitions = partitions
        self.max_batch = max_batch
        self.batch_linger_ms = batch_linger_ms
        self.worker_concurrency = worker_concurrency
        self.port = 0
        self.processor: Child | None = None
        self.worker: Child | None = None
        self.env: dict[str, str] = {}

    # -- lifecycle ------------------------------------------------------------------------------------------
    def start(self, port: int, controller_port: int) -> None:
        self.port = port
        cli = str(Path(sys.executable).with_name("orchestrator"))
        t0 = time.monotonic()
        r = run(
            [
                cli,
                "kafka",
                "start",
                "--dir",
                str(self.kafka_dir),
                "--port",
                str(port),
                "--controller-port",
                str(controller_port),
            ],
            timeout=300,
            cwd=REPO,
        )
        if r.returncode != 0:
            raise BenchError(f"kafka start failed: {(r.stdout + r.stderr).strip()[-800:]}")
        log(f"broker on 127.0.0.1:{port} in {time.monotonic() - t0:.1f} s")
        self.env = {
            "ORCHESTRATOR_BOOTSTRAP_SERVERS": f"127.0.0.1:{port}",
            "ORCHESTRATOR_PARTITIONS": str(self.partitions),
            "ORCHESTRATOR_STATE_DIR": str(self.state_dir),
        }
        self.processor = Child("ours-processor", self.processor_args(cli, 0), self.work, self.env)
        for i in range(1, self.processors):  # more instances share the partitions (one consumer group)
            self.extra.append(Child(f"ours-processor-{i}", self.processor_args(cli, i), self.work, self.env))
        self.worker = Child(
            "ours-worker",
            [
                cli,
                "worker",
                "bench.apps:app",
                "--concurrency",
                str(self.worker_concurrency),
                "--instance-id",
                "bench-w0",
            ],
            self.work,
            self.env,
        )

    def processor_args(self, cli: str, i: int) -> list[str]:
        common = [
            "--instance-id",
            f"bench-p{i}",
            "--state-dir",
            str(self.state_dir),
            "--max-batch",
            str(self.max_batch),
            "--batch-linger-ms",
            str(self.batch_linger_ms),
        ]
        if self.processor_set:  # an experiment: same Processor, with librdkafka overrides
            sets = [a for kv in self.processor_set for a in ("--set", kv)]
            return [sys.executable, "-m", "bench.processor_main", *common, *sets]
        return [cli, "processor", "bench.apps:app", *common, *self.extra_processor_args]

    def stop(self) -> None:
        for child in (self.worker, *self.extra, self.processor):
            if child is not None:
                child.stop()
        if self.port:
            cli = str(Path(sys.executable).with_name("orchestrator"))
            run([cli, "kafka", "stop", "--dir", str(self.kafka_dir)], timeout=120, cwd=REPO)
            log("broker stopped")

    def broker_pids(self) -> list[int]:
        pid_file = self.kafka_dir / "broker.pid"
        try:
            return [int(pid_file.read_text().strip())]
        except (OSError, ValueError):
            return []

    # -- measuring ------------------------------------------------------------------------------------------
    def topic_offsets(self) -> dict[str, int]:
        """Sum over partitions of each engine topic's end offset (transaction markers take offsets too)."""
        from confluent_kafka import Consumer, TopicPartition

        c = Consumer({"bootstrap.servers": f"127.0.0.1:{self.port}", "group.id": "bench-watermarks"})
        try:
            out = {}
            md = c.list_topics(timeout=10)
            for role in self.roles(md.topics):
                topic = f"{APP_NAME}.{role}"
                meta = md.topics.get(topic)
                parts = list(meta.partitions) if meta is not None and meta.error is None else []
                out[role] = sum(
                    c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in parts
                )
            return out
        finally:
            c.close()

    def topic_bytes(self) -> dict[str, int]:
        """Bytes of each engine topic's segment files in the broker's log dir (compressed record batches)."""
        out = {}
        names = {d.name.rsplit("-", 1)[0] for d in self.kafka_dir.glob("kraft/*-*") if d.is_dir()}
        for role in self.roles(names):
            topic = f"{APP_NAME}.{role}"
            out[role] = sum(
                f.stat().st_size for d in self.kafka_dir.glob(f"kraft/{topic}-*") for f in d.glob("*.log")
            )
        return out

    @staticmethod
    def roles(topics: Any) -> list[str]:
        """The engine's standard roles first, then any other topic of the bench app (new engine topics)."""
        more = sorted(t.removeprefix(f"{APP_NAME}.") for t in topics if t.startswith(f"{APP_NAME}."))
        return list(dict.fromkeys([*TOPIC_ROLES, *more]))

    def store_bytes(self) -> int:
        return sum(f.stat().st_size for f in self.state_dir.rglob("*") if f.is_file())

    def cpu_seconds(self) -> dict[str, float]:
        import psutil

        out = {}
        for child in (self.processor, self.worker):
            assert child is not None
            out[child.name] = 0.0
            for c in [child, *self.extra] if child is self.processor else [child]:
                try:
                    t = psutil.Process(c.pid).cpu_times()
                    out[child.name] += t.user + t.system
                except psutil.Error:
                    pass
        out["broker"] = 0.0
        for pid in self.broker_pids():
            try:
                t = psutil.Process(pid).cpu_times()
                out["broker"] += t.user + t.system
            except psutil.Error:
                pass
        return out

    def load(
        self,
        workflow: str,
        levels: list[int],
        warmup: float,
        duration: float,
        extra_env: dict[str, str] | None = None,
        rate: float = 0.0,
    ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """One driver run over ``levels``; returns its results and the cost of its runs."""
        assert self.processor is not None and self.worker is not None
        for child in (self.processor, self.worker):
            if not child.alive:
                raise BenchError(f"{child.name} died; see {child.log_path}")
        off0, bytes0, store0, cpu0 = (
            self.topic_offsets(),
            self.topic_bytes(),
            self.store_bytes(),
            self.cpu_seconds(),
        )
        peak = {"processor": 0.0, "worker": 0.0}
        done = threading.Event()

        def sample() -> None:
            while not done.is_set():
                procs = [self.processor, *self.extra]
                peak["processor"] = max(peak["processor"], sum(rss_mb(c.pid) for c in procs))  # type: ignore[union-attr]
                peak["worker"] = max(peak["worker"], rss_mb(self.worker.pid))  # type: ignore[union-attr]
                done.wait(0.5)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        noise = ForeignCpu(self.broker_pids())
        timeout = len(levels) * (warmup + duration + 60) + 60
        try:
            results = driver(
                sys.executable,
                [
                    "-m",
                    "bench.ours_driver",
                    "--workflow",
                    workflow,
                    "--warmup",
                    str(warmup),
                    "--duration",
                    str(duration),
                    "--concurrency",
                    *map(str, levels),
                    *(["--rate", f"{rate:.1f}"] if rate else []),
                ],
                self.work,
                f"ours-driver-{workflow}{'-exp' if extra_env else ''}",
                timeout,
                env={**self.env, **(extra_env or {})},
            )
        finally:
            done.set()
            sampler.join()
        foreign = noise.cores()
        for r in results:
            r["foreign_cpu_cores"] = foreign
        time.sleep(0.5)
        for r in results:
            if r.get("run_prefix"):
                try:
                    r["hops"] = hops(
                        f"127.0.0.1:{self.port}", APP_NAME, self.partitions, r["run_prefix"] + "-"
                    )
                except Exception as exc:  # a breakdown is a bonus: never lose the run's figures for it
                    r["hops"] = {"error": f"{type(exc).__name__}: {exc}"}
        time.sleep(1.0)  # let the last transactions and changelog writes land
        off1, bytes1, store1, cpu1 = (
            self.topic_offsets(),
            self.topic_bytes(),
            self.store_bytes(),
            self.cpu_seconds(),
        )
        runs = sum(r["all_completed"] for r in results) + 1  # +1: the driver's warm-up run
        cost: dict[str, Any] = {
            "workflow": workflow,
            "runs": runs,
            "records_per_run": {k: round((off1[k] - off0.get(k, 0)) / runs, 2) for k in off1},
            "bytes_per_run": {k: round((bytes1[k] - bytes0.get(k, 0)) / runs) for k in bytes1},
            "rocksdb_bytes_delta_per_run": round((store1 - store0) / runs),
            "cpu_ms_per_run": {
                k.removeprefix("ours-"): round((cpu1[k] - cpu0[k]) * 1000 / runs, 2) for k in cpu0
            },
            "peak_rss_mb": {k: round(v, 1) for k, v in peak.items()},
        }
        # the driver process's CPU over its whole life (start-up included): the load generator's share
        driver_cpu = max((r.get("driver_cpu_s", 0.0) for r in results), default=0.0)
        cost["cpu_ms_per_run"]["driver"] = round(driver_cpu * 1000 / runs, 2)
        cost["records_per_run"]["total"] = round(sum(cost["records_per_run"].values()), 2)
        cost["bytes_per_run"]["total"] = sum(cost["bytes_per_run"].values())
        return results, cost

    # -- profiling ------------------------------------------------------------------------------------------
    def profile(self, concurrency: int, seconds: float, out_dir: Path) -> dict[str, Any]:
        """py-spy (from its own environment) on processor and worker while ``concurrency`` callers run."""
        assert self.processor is not None and self.worker is not None
        try:
            tools = venv("tools", ["py-spy", "matplotlib"], "import matplotlib")
        except BenchError as exc:
            return {"error": str(exc)}
        pyspy = tools / "bin" / "py-spy"
        if not pyspy.exists():
            return {"error": "py-spy not installed"}
        spies = {}
        for child, idle in ((self.processor, False), (self.processor, True), (self.worker, False)):
            name = child.name + ("-wall" if idle else "-cpu")
            raw = out_dir / f"profile-{name}.txt"
            cmd = [
                str(pyspy),
                "record",
                "--pid",
                str(child.pid),
                "--duration",
                str(int(seconds)),
                "--rate",
                "100",
                "--format",
                "raw",
                "--output",
                str(raw),
                "--nonblocking",
            ]
            spies[name] = (raw, Child(f"py-spy-{name}", [*cmd, "--idle"] if idle else cmd, self.work))
        time.sleep(1.0)
        results = driver(
            sys.executable,
            [
                "-m",
                "bench.ours_driver",
                "--workflow",
                "five",
                "--warmup",
                "0",
                "--duration",
                str(seconds + 2),
                "--concurrency",
                str(concurrency),
            ],
            self.work,
            "ours-driver-profile",
            seconds + 120,
            env=self.env,
        )
        out: dict[str, Any] = {"load": results[0]}
        for name, (raw, spy) in spies.items():
            spy.popen.wait(seconds + 60)
            if not raw.exists():
                out[name] = {
                    "error": f"py-spy wrote nothing; see {spy.log_path}: " + spy.log_path.read_text()[-400:]
                }
                continue
            out[name] = summarize_collapsed(raw)
            out[name]["seconds"] = seconds
            out[name]["rate"] = 100
        return out


def summarize_collapsed(path: Path, top: int = 15) -> dict[str, Any]:
    """Self and inclusive sample shares of the busiest functions in a py-spy collapsed-stack file."""
    self_c: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    lines_c: Counter[str] = Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack or not n.isdigit():
            continue
        count = int(n)
        if "_report (" in stack:  # the CLI's stats thread, asleep
            continue
        frames = [_short(f) for f in stack.split(";")]
        frames = [f for f in frames if f and not f.endswith(_FRAMEWORK)]
        total += count
        if frames:
            self_c[frames[-1]] += count
            leaf = stack.split(";")[-1]
            lines_c[_leaf_line(leaf)] += count
        for f in set(frames):
            incl[f] += count

    def share(c: Counter[str]) -> list[tuple[str, float]]:
        return [(f, round(100 * n / total, 1)) for f, n in c.most_common(top)] if total else []

    return {
        "samples": total,
        "self_pct": share(self_c),
        "inclusive_pct": share(incl),
        "leaf_lines_pct": share(lines_c)[:8],
    }


_FRAMEWORK = (
    "(core.py)",
    "(main.py)",
    "(orchestrator/cli/__init__.py)",
    "(orchestrator/cli/engine.py)",
    "(orchestrator)",
    "(<frozen runpy>)",
    "(asyncio/runners.py)",
    "(asyncio/base_events.py)",
    "(threading.py)",
    "(asyncio/events.py)",
)


def _leaf_line(frame: str) -> str:
    """``fn file.py:123 `the source line``` (read now, right after profiling, while the file is the same)."""
    name, _, where = frame.partition(" (")
    path, _, line = where.rstrip(")").rpartition(":")
    code = ""
    if line.isdigit():
        try:
            code = Path(path).read_text().splitlines()[int(line) - 1].strip()[:70]
        except (OSError, IndexError, UnicodeDecodeError):
            code = ""
    return f"{name} {Path(path).name}:{line}" + (f" `{code}`" if code else "")


def _short(frame: str) -> str:
    """``fn (path/to/mod.py:123)`` -> ``fn (mod.py)``; thread roots dropped."""
    if frame.startswith(("process ", "thread ")):
        return ""
    name, _, where = frame.partition(" (")
    file = where.rstrip(")").rsplit(":", 1)[0]
    parts = Path(file).parts
    for anchor in ("orchestrator", "confluent_kafka", "rocksdict", "fastavro", "asyncio"):
        if anchor in parts:
            file = "/".join(parts[parts.index(anchor) :])
            break
    else:
        file = Path(file).name
    return f"{name} ({file})"


def clean(work: Path) -> None:
    shutil.rmtree(work, ignore_errors=True)
