"""A broker outage reads as a few lines: librdkafka's repeated reconnect errors are collapsed (ADR 0022).

A processor and a worker run as real processes with ``--log-format json`` against a private broker, which
is SIGKILLed for 20 s and started again. Before the collapsing filter the processor's consumer alone wrote
~19 ``FAIL ... Connect to ... failed: Connection refused`` records a second (882 in a 46 s outage, 1,141 in
60 s); the worker wrote none, because it had librdkafka's log level at 2 (so it also lost librdkafka's
warnings, such as a session time-out). Now both log the first of each kind, a summary every minute while it
goes on, and a last summary once it has stopped, which is when the client has reconnected.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

from engine_support import (
    PrivateBroker,
    child_env,
    settings,
    spawn_stderr_to_file,
    stop_process,
)

from orchestrator import App
from orchestrator._log_repeats import QUIET_S
from orchestrator._logging import LIBRDKAFKA_LOGGER

OUTAGE_S = 20.0
MOST_RECORDS = 60
"""Bound on the librdkafka records of one process from the kill to the end of the test. The raw rate was ~19
a second from the processor's consumer alone: a 20 s outage (plus the broker's restart) gave 400-1,600."""


def _kafka_records(err: Path, since_ms: int) -> list[dict[str, Any]]:
    records = [json.loads(line) for line in err.read_text().splitlines()]
    return [r for r in records if r["logger"] == LIBRDKAFKA_LOGGER and r["time_ms"] >= since_ms]


def _refused(records: list[dict[str, Any]], client: str) -> list[dict[str, Any]]:
    return [
        r
        for r in records
        if str(r.get("kafka_client", "")).startswith(client)
        and r["kafka_facility"] == "FAIL"
        and "Connection refused" in r["message"]
    ]


def _ended(records: list[dict[str, Any]], client: str) -> list[dict[str, Any]]:
    return [r for r in _refused(records, client) if r.get("repeated") and "then stopped" in r["message"]]


async def test_an_outage_is_a_first_line_and_a_summary_in_processor_and_worker(
    private_broker: PrivateBroker, unique_name: str, tmp_path: Path
) -> None:
    env = child_env(unique_name, private_broker.bootstrap, tmp_path)
    json_logs = ("--log-format", "json")
    state = str(tmp_path / "state")
    proc, proc_err = spawn_stderr_to_file("processor", env, tmp_path, *json_logs, "--state-dir", state)
    work, work_err = spawn_stderr_to_file("worker", env, tmp_path, *json_logs)
    app = App(unique_name, settings=settings(private_broker.bootstrap))
    try:
        async with app.client() as client:
            assert await (await client.start("five", 1, run_id="before")).result(timeout=120) == 11112
        killed_ms = int(time.time() * 1000)
        private_broker.kill()
        await asyncio.sleep(OUTAGE_S)
        await asyncio.to_thread(private_broker.start)
        async with app.client() as client:
            assert await (await client.start("five", 1, run_id="after")).result(timeout=180) == 11112
        # The last summary comes QUIET_S after the last failed reconnect; the deadline only guards a hang.
        deadline = time.monotonic() + QUIET_S + 60
        while not (
            _ended(_kafka_records(proc_err, killed_ms), "rdkafka#consumer")
            and _ended(_kafka_records(work_err, killed_ms), "rdkafka#consumer")
        ):
            assert time.monotonic() < deadline, "no summary once the reconnect errors stopped"
            await asyncio.sleep(1)
        assert proc.poll() is None and work.poll() is None
    finally:
        stop_process(proc)
        stop_process(work)
    for err in (proc_err, work_err):
        records = _kafka_records(err, killed_ms)
        assert len(records) <= MOST_RECORDS, [r["message"] for r in records]
        refused = _refused(records, "rdkafka#consumer")
        first, ended = refused[0], _ended(records, "rdkafka#consumer")[0]
        assert first["level"] == "ERROR" and "repeated" not in first  # the first occurrence, as it was
        assert ended["level"] == "ERROR" and ended["time_ms"] > first["time_ms"]
        # Every repeat was counted: at least one a second per client while the broker was down.
        assert sum(r.get("repeated", 0) for r in refused) >= OUTAGE_S
        assert ended["repeated_seconds"] > 0
    worker_lines = [json.loads(line)["message"] for line in work_err.read_text().splitlines()]
    assert any("task topics unreachable: recovered after" in m for m in worker_lines)
