"""An idle worker's Kafka-fault gauge after a broker restart, on a broker of the test's own.

The claim: a worker that consumes nothing after its first run shows its consume fault as active while the
broker is down (librdkafka hands its poll "all brokers are down"), and as over
(``orchestrator_faults_active{fault="consume"}`` 0) once the broker is back, though no record arrives to
close it: it closes after `metrics.QUIET_S` with an assignment and no new consume error. Before, the
OrchestratorKafkaFault alert stood on a quiet app until its next record. (An idle processor's poll got no
such error in the same outage, only a lost session: librdkafka reports it through ``error_cb``; its
quiet-spell close is covered by the unit tests.)
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from engine_support import APP_SPEC, EngineProcess, PrivateBroker, child_env, free_ports, settings
from test_metrics_outage import get, wait_for, wait_for_endpoint

from orchestrator import App

CONSUME = "consume"


@pytest.mark.timeout(600)
async def test_an_idle_apps_consume_fault_clears_after_the_broker_is_back(
    private_broker: PrivateBroker, unique_name: str, tmp_path: Path
) -> None:
    broker = private_broker
    env = child_env(unique_name, broker.bootstrap, tmp_path)
    p_port, w_port = free_ports(2)
    metrics_args = ("--metrics-host", "127.0.0.1", "--metrics-port")
    proc = EngineProcess(
        "processor",
        APP_SPEC,
        env,
        "--instance-id",
        "mi-p0",
        "--state-dir",
        str(tmp_path / "state"),
        *metrics_args,
        str(p_port),
        log=tmp_path / "processor.log",
    )
    work = EngineProcess("worker", APP_SPEC, env, *metrics_args, str(w_port), log=tmp_path / "worker.log")
    w_consume = {"component": "worker", "fault": CONSUME}
    try:
        proc.start()
        work.start()
        await wait_for_endpoint(p_port, proc)
        await wait_for_endpoint(w_port, work)
        async with App(unique_name, settings=settings(broker.bootstrap)).client() as client:
            # One run end to end: both consume their partitions. After it, nothing arrives any more.
            handle = await client.start("five", 1, run_id="idle-0")
            await asyncio.wait_for(handle.result(), 120)
        broker.kill()
        await wait_for(w_port, "orchestrator_faults_active", 1, timeout=120, **w_consume)
        broker.start()
        # No run is started: nothing but the quiet spell can close the fault.
        await wait_for(w_port, "orchestrator_faults_active", 0, timeout=180, **w_consume)
        assert get(w_port, "orchestrator_fault_episodes_total", **w_consume) >= 1
        assert proc.alive and work.alive
    finally:
        proc.terminate()
        work.terminate()
