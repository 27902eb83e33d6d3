"""``python -m bench run-queries``: first-page latency of ``runs list`` over many runs, and the index's
write cost.

1. **Load** ``--runs`` run states (default 1,000,000) straight into the RocksDB partition stores of two
   processor instances, through the engine's own write path (``PartitionStore.put`` with the run's summary,
   then ``commit`` in batches of 5,000, which writes the indexes in the same batch): the fastest honest way,
   the bytes are what a processor writes. No changelog is written, so the processors find nothing to restore
   and serve the stores as loaded. One store per partition is written once, then copied to the second
   instance's state dir (which instance gets which partitions is the group's choice).
   The runs are completed 5-step states: created over the last 30 days, 5 workflows, 80 % completed, 10 %
   failed (3 error types), 5 % running, 5 % parked; tags ``customer=c-0..c-9999`` and ``plan=free|pro``.
2. **Serve**: a private broker and two ``orchestrator processor bench.apps:app --http-port ...`` processes.
3. **Measure** ``FanOutRunQuery.list`` (what ``runs list`` and the UI call: group discovery, the registry
   read, both instances asked in parallel over HTTP, merge) for several filters, ``--repeats`` times each:
   p50/p99 wall ms of the first page (50 runs), of a second page (with the cursor), and of ``count``.
4. **Index write cost**: ``--transitions`` state writes (runs written 10 times each, their status changing
   on the last) committed in batches of 500 into a store with the run indexer and into one without, CPU µs
   per transition (the store's part of a transition: encode, summary, put, the batch write).
"""

from __future__ import annotations

import dataclasses
import json
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.infra import REPO, BenchError, Child, free_port, log, run
from orchestrator import App, Settings
from orchestrator._engine import state as st
from orchestrator._engine.queries.fanout import FanOutRunQuery
from orchestrator._engine.queries.index import RunIndexer, summary_of
from orchestrator._engine.queries.model import RunFilter
from orchestrator._engine.store import PartitionStore, run_key

APP_NAME = "bench"
DAY_MS = 86_400_000
WORKFLOWS = ["five", "one", "twenty", "five_10ms", "five_local"]
ERRORS = ["TimeoutError", "ValueError", "PaymentDeclined"]


def _template() -> st.RunState:
    steps: list[st.CommandRecord] = [
        st.StepRecord(i, "inc", "default", st.STEP_COMPLETED, 1, b"[1]", 0, result=b"2") for i in range(5)
    ]
    return st.RunState("x", "five", st.COMPLETED, b"1", 0, 0, steps=steps, result=b"6")


def _run(rng: random.Random, i: int, now_ms: int, template: st.RunState) -> st.RunState:
    created = now_ms - rng.randrange(30 * DAY_MS)
    roll = rng.random()
    status = (
        st.COMPLETED if roll < 0.8 else st.FAILED if roll < 0.9 else st.RUNNING if roll < 0.95 else st.PARKED
    )
    error = rng.choice(ERRORS) if status == st.FAILED else ""
    return dataclasses.replace(
        template,
        run_id=f"run-{i:07d}",
        workflow=WORKFLOWS[i % len(WORKFLOWS)],
        status=status,
        created_ms=created,
        updated_ms=created + rng.randrange(60_000),
        error_type=error,
        error_message=f"{error}: order {i}" if error else "",
        tags={"customer": f"c-{rng.randrange(10_000)}", "plan": rng.choice(("free", "pro"))},
    )


def load(state_dir: Path, runs: int, partitions: int, instances: list[str]) -> float:
    """Write ``runs`` states into every partition's store of ``instances[0]``, copy them to the others."""
    rng = random.Random(13)
    now = int(time.time() * 1000)
    template = _template()
    first = state_dir / APP_NAME / instances[0]
    stores = [PartitionStore(first / f"p{p}", p, RunIndexer()) for p in range(partitions)]
    t0 = time.monotonic()
    for i in range(runs):
        state = _run(rng, i, now, template)
        store = stores[i % partitions]
        store.put(run_key(state.run_id), st.encode_state(state), summary_of(state))
        if i % 5000 == 4999:
            for s in stores:
                s.commit(None, None)
        if i % 100_000 == 99_999:
            log(f"loaded {i + 1} runs ({(i + 1) / (time.monotonic() - t0):.0f}/s)")
    for s in stores:
        s.commit(None, None)
        s.close()
    elapsed = time.monotonic() - t0
    for other in instances[1:]:
        shutil.copytree(first, state_dir / APP_NAME / other)
    return elapsed


def _stats(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "p50_ms": round(statistics.median(ordered), 1),
        "p99_ms": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))], 1),
        "max_ms": round(ordered[-1], 1),
    }


def measure(query: FanOutRunQuery, repeats: int) -> list[dict[str, Any]]:
    recent = int(time.time() * 1000) - 3_600_000
    filters = {
        "none": RunFilter(),
        "status=failed": RunFilter(status="failed"),
        "workflow=twenty": RunFilter(workflow="twenty"),
        "tag customer=c-42": RunFilter(tags={"customer": "c-42"}),
        "since 1h": RunFilter(since_ms=recent),
        "status=parked workflow=one": RunFilter(status="parked", workflow="one"),
        "error_type=ValueError plan=pro": RunFilter(error_type="ValueError", tags={"plan": "pro"}),
    }
    rows = []
    for name, flt in filters.items():
        first, second, counts = [], [], []
        rows_on_page = 0
        for _ in range(repeats):
            t0 = time.perf_counter()
            page = query.list(flt, limit=50)
            first.append((time.perf_counter() - t0) * 1000)
            if page.missing_partitions:
                raise BenchError(f"partitions missing during the measurement: {page.missing_partitions}")
            rows_on_page = len(page.runs)
            if page.next_cursor:
                t0 = time.perf_counter()
                query.list(flt, page.next_cursor, 50)
                second.append((time.perf_counter() - t0) * 1000)
        for _ in range(max(3, repeats // 10)):
            t0 = time.perf_counter()
            total = query.count(flt)
            counts.append((time.perf_counter() - t0) * 1000)
        row = {"filter": name, "rows": rows_on_page, "matching": total, "first_page": _stats(first)}
        if second:
            row["second_page"] = _stats(second)
        row["count"] = _stats(counts)
        log(f"{name}: {row}")
        rows.append(row)
    return rows


def index_write_cost(work: Path, transitions: int) -> dict[str, float]:
    """CPU µs per state write committed (batches of 500), with and without the run indexer.

    Like runs of the bench's ``five``: each run is written 10 times (its transitions), its status changes
    once (the last write: running to completed or failed), the other writes change only ``updated_ms``.
    """
    rng = random.Random(5)
    now = int(time.time() * 1000)
    template = _template()
    runs = max(1, transitions // 10)
    out = {}
    for name, indexer in (("without_index", None), ("with_index", RunIndexer())):
        states = [dataclasses.replace(_run(rng, i, now, template), status=st.RUNNING) for i in range(runs)]
        store = PartitionStore(work / f"cost-{name}", 0, indexer)
        written = 0
        t0 = time.process_time()
        for round_ in range(10):
            for state in states:
                state.updated_ms += 1
                if round_ == 9:
                    state.status = st.COMPLETED if written % 10 else st.FAILED
                summary = summary_of(state) if indexer is not None else None
                store.put(run_key(state.run_id), st.encode_state(state), summary)
                written += 1
                if written % 500 == 0:
                    store.commit(written, written)
        store.commit(None, None)
        out[f"{name}_us"] = round((time.process_time() - t0) / written * 1e6, 1)
        store.close()
    out["overhead_us"] = round(out["with_index_us"] - out["without_index_us"], 1)
    return out


def main(runs: int, partitions: int, repeats: int, transitions: int, keep: bool) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="orchestrator-bench-queries-"))
    cli = str(Path(sys.executable).with_name("orchestrator"))
    instances = ["q0", "q1"]
    children: list[Child] = []
    kafka_dir = work / "kafka"
    out: dict[str, Any] = {"runs": runs, "partitions": partitions, "repeats": repeats}
    started = False
    try:
        out["index_write_cost"] = index_write_cost(work, transitions)
        log(f"index write cost: {out['index_write_cost']}")
        log(f"loading {runs} runs into {partitions} partition stores")
        out["load_s"] = round(load(work / "state", runs, partitions, instances), 1)
        out["store_mb"] = round(
            sum(f.stat().st_size for f in (work / "state").rglob("*") if f.is_file()) / 2**20
        )
        port = free_port()
        r = run([cli, "kafka", "start", "--dir", str(kafka_dir), "--port", str(port), "--controller-port",
                 str(free_port())], timeout=300, cwd=REPO)  # fmt: skip
        if r.returncode != 0:
            raise BenchError(f"kafka start failed: {(r.stdout + r.stderr).strip()[-800:]}")
        started = True
        env = {
            "ORCHESTRATOR_BOOTSTRAP_SERVERS": f"127.0.0.1:{port}",
            "ORCHESTRATOR_PARTITIONS": str(partitions),
        }
        for name in instances:
            http = ["--http-port", str(free_port()), "--advertised-host", "127.0.0.1"]
            args = [
                cli,
                "processor",
                "bench.apps:app",
                "--instance-id",
                name,
                "--state-dir",
                str(work / "state"),
            ]
            args += http
            children.append(Child(f"query-{name}", args, work, env))
        app = App(APP_NAME, settings=Settings(bootstrap_servers=f"127.0.0.1:{port}", partitions=partitions))
        query = FanOutRunQuery(app.settings, app)
        deadline = time.monotonic() + 180
        while True:
            if not all(c.alive for c in children):
                raise BenchError(f"a processor exited; see {work}")
            try:
                page = query.list(RunFilter(), limit=1)
                owners = [i for i in query.instances()[0] if i.partitions]
                if not page.missing_partitions and len(owners) == len(instances):
                    break
            except Exception as exc:  # the group may not exist yet
                log(f"waiting for the processors: {exc}")
            if time.monotonic() > deadline:
                raise BenchError("the processors did not answer for every partition in 180 s")
            time.sleep(1)
        log("both processors answer; measuring")
        out["queries"] = measure(query, repeats)
        query.close()
        del query
        log(f"results: {json.dumps(out)}")
    finally:
        for child in children:
            child.stop()
        if started:
            run([cli, "kafka", "stop", "--dir", str(kafka_dir)], timeout=120, cwd=REPO)
        if keep:
            log(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return out
