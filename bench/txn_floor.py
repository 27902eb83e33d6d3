"""The floor under each processor transaction: Kafka's transactional calls alone, timed one by one.

``python -m bench txn-floor`` starts a private broker, then runs N transactions shaped like one processor
step (consume one inbox record, produce one record to each of 4 output topics, send the consumed offset to
the transaction, flush, commit) with the engine's own producer settings, and prints p50/p99 per call.
No engine code runs: this is what any design that commits once per step pays on this machine.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.infra import REPO, BenchError, free_port, log, run


def measure(bootstrap: str, n: int = 300, tag: str = "a", **overrides: Any) -> dict[str, dict[str, float]]:
    from confluent_kafka import Consumer, Producer, TopicPartition
    from confluent_kafka.admin import AdminClient, NewTopic

    from orchestrator._engine import kafka
    from orchestrator.settings import Settings

    settings = Settings(bootstrap_servers=bootstrap)
    topics = [f"floor-{tag}.{t}" for t in ("in", "a", "b", "c", "d")]
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for f in admin.create_topics([NewTopic(t, 1, 1) for t in topics]).values():
        f.result(30)
    src = Producer(kafka.producer_config(settings))
    for i in range(n + 10):
        src.produce(topics[0], str(i).encode(), b"k")
    src.flush(30)
    consumer = Consumer(kafka.consumer_config(settings, f"floor-group-{tag}"))
    consumer.subscribe([topics[0]])
    producer = Producer(kafka.transactional_producer_config(settings, f"floor-tx-{tag}", **overrides))
    producer.init_transactions(60)
    times: dict[str, list[float]] = {
        k: [] for k in ("begin+produce", "send_offsets", "flush", "commit", "total")
    }
    done = 0
    while done < n:
        msg = consumer.poll(5)
        if msg is None or msg.error() is not None:
            continue
        t0 = time.perf_counter()
        producer.begin_transaction()
        for t in topics[1:]:
            producer.produce(t, b"x" * 100, b"k")
        t1 = time.perf_counter()
        producer.send_offsets_to_transaction(
            [TopicPartition(topics[0], 0, (msg.offset() or 0) + 1)], consumer.consumer_group_metadata(), 30
        )
        t2 = time.perf_counter()
        producer.flush(30)
        t3 = time.perf_counter()
        producer.commit_transaction(30)
        t4 = time.perf_counter()
        if done >= 10:  # skip the first transactions (coordinator look-ups)
            for k, v in zip(times, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t4 - t0), strict=True):
                times[k].append(v * 1000)
        done += 1
    consumer.close()
    return {
        k: {
            "p50_ms": round(statistics.median(v), 2),
            "p90_ms": round(sorted(v)[int(len(v) * 0.9) - 1], 2),
            "mean_ms": round(statistics.fmean(v), 2),
        }
        for k, v in times.items()
    }


def main(n: int = 300) -> dict[str, Any]:
    cli = str(Path(sys.executable).with_name("orchestrator"))
    kdir = Path(tempfile.mkdtemp(prefix="orchestrator-bench-floor-"))
    port = free_port()
    r = run(
        [
            cli,
            "kafka",
            "start",
            "--dir",
            str(kdir),
            "--port",
            str(port),
            "--controller-port",
            str(free_port()),
        ],
        timeout=300,
        cwd=REPO,
    )
    if r.returncode != 0:
        raise BenchError(f"kafka start failed: {(r.stdout + r.stderr).strip()[-800:]}")
    result: dict[str, Any] = {}
    try:
        bootstrap = f"127.0.0.1:{port}"
        # the engine's settings (librdkafka's default retry.backoff.ms = 100), then a short backoff
        result["engine settings"] = measure(bootstrap, n, "a")
        result["retry.backoff.ms=5"] = measure(bootstrap, n, "b", **{"retry.backoff.ms": 5})
    finally:
        run([cli, "kafka", "stop", "--dir", str(kdir)], timeout=120, cwd=REPO)
        run(["rm", "-rf", str(kdir)])
    for name, calls in result.items():
        for k, v in calls.items():
            log(f"{name:20} {k:14} p50 {v['p50_ms']:7.2f} p90 {v['p90_ms']:7.2f} mean {v['mean_ms']:7.2f} ms")
    return result
