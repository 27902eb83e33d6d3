"""A broker SIGKILLed for 30 s: what the engine does while it is down and after it is back (one outage).

Six claims, each a scenario with an engine of its own (its app, its processor and worker processes, its temp
dir) on one private broker (its own data dir and ports: the shared broker is never touched), which is
SIGKILLed once every scenario has its engine where it wants the kill to find it, and started again on the
same data dir and ports once every scenario has checked what it checks meanwhile and 30 s have passed
(``shared_outage.Outage``). Each used to kill a broker of its own and wait out its own outage (15-30 s of a
fixed wait each, five minutes of the suite in all); the scenarios and their assertions are theirs
unchanged. One test per claim reports its scenario's outcome:

- ``test_engine_survives_a_30s_broker_outage`` (issue 12): with ~400 runs in flight and the broker down for
  20 s, the processor's ``abort_transaction`` timed out ("retry call to resume"), the processor raised and
  exited, and every run stayed stuck until someone restarted it. Now processor and worker (real child
  processes) never exit, every run completes with the right result, and no committed transition is
  duplicated.
- ``test_processor_started_while_the_broker_is_down_waits_for_it``: start-up (topic check,
  init_transactions, restore) waits for the broker instead of exiting.
- ``test_steps_finished_while_the_broker_is_down_are_reported_once`` (issue 12): a worker that finished a
  step holds the result until the broker has it, and commits the command's offset only then; it never exits
  because the broker went away, and it never runs a step again itself (only a worker that died may). Steps
  are held by ``crash_app``'s gate while the broker is killed, then finish with the broker down; it stays
  down for longer than the worker's delivery timeout and its consumer session.
- ``test_an_outage_is_a_first_line_and_a_summary_in_processor_and_worker`` (ADR 0022): librdkafka's
  repeated reconnect errors are collapsed. Before the collapsing filter the processor's consumer alone wrote
  ~19 ``FAIL ... Connect to ... failed: Connection refused`` records a second (882 in a 46 s outage, 1,141
  in 60 s); the worker wrote none, because it had librdkafka's log level at 2 (so it also lost librdkafka's
  warnings, such as a session time-out). Now both log the first of each kind, a summary every minute while
  it goes on, and a last summary once it has stopped, which is when the client has reconnected.
- ``test_held_results_and_faults_show_during_an_outage_and_clear_after`` (ADR 0017): while the broker is
  down, a worker's /metrics shows the steps in flight, then the results it holds
  (``orchestrator_worker_outbox_records``) and the delivery fault as active; both endpoints keep answering
  while the engine waits; after the broker is back every held result is delivered (0 held), the faults are
  over (0 active) and each was counted as an episode.
- ``test_an_idle_apps_consume_fault_clears_after_the_broker_is_back`` (ADR 0017): a worker that consumes
  nothing after its first run shows its consume fault as active while the broker is down (librdkafka hands
  its poll "all brokers are down"), and as over (``orchestrator_faults_active{fault="consume"}`` 0) once the
  broker is back, though no record arrives to close it: it closes after ``metrics.QUIET_S`` with an
  assignment and no new consume error. Before, the OrchestratorKafkaFault alert stood on a quiet app until
  its next record. (An idle processor's poll got no such error in the same outage, only a lost session:
  librdkafka reports it through ``error_cb``; its quiet-spell close is covered by the unit tests.)
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from engine_support import (
    APP_SPEC,
    EngineProcess,
    PrivateBroker,
    child_env,
    executions,
    free_ports,
    history,
    settings,
    spawn_stderr_to_file,
    stop_process,
)
from prometheus_client.parser import text_string_to_metric_families
from shared_outage import RESTART, Outage, Scenario, run_scenarios

from orchestrator import App
from orchestrator._engine import events as ev
from orchestrator._log_repeats import QUIET_S
from orchestrator._logging import LIBRDKAFKA_LOGGER

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

OUTAGE_S = 30.0
EXPECTED = 11111  # five() adds 1 + 10 + 100 + 1000 + 10000


def _tail(path: Path, lines: int = 40) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""


def _our_tail(log: Path, lines: int = 15) -> str:
    """The log's last lines without librdkafka's own (``%3|...``), for a failure message."""
    ours = [line[:300] for line in log.read_text(errors="replace").splitlines() if not line.startswith("%")]
    return "\n".join(ours[-lines:])


async def _wait_for(predicate: Callable[[], bool], what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"{what}: not reached in {timeout} s"
        await asyncio.sleep(0.2)


# -- 1. the engine under load --------------------------------------------------------------------------------

ENGINE_RUNS = 500


async def engine_under_load(outage: Outage, name: str, tmp_path: Path) -> None:
    broker = outage.broker
    env = child_env(name, broker.bootstrap, tmp_path)
    log = tmp_path / "engine.log"
    proc = EngineProcess(
        "processor", APP_SPEC, env, "--instance-id", "outage-p0", "--state-dir", str(tmp_path / "state"),
        "--max-batch", "50", log=log,
    )  # fmt: skip
    # Static membership for both: after a broker restart librdkafka may declare a static member fatally
    # fenced; processor and worker replace their consumer then (and must, for this test to pass).
    work = EngineProcess(
        "worker", APP_SPEC, env, "--instance-id", "outage-w0", "--concurrency", "32", log=log
    )
    app = App(name, settings=settings(broker.bootstrap))
    exits: list[str] = []

    def check_alive(when: str) -> None:
        for part in (proc, work):
            if not part.alive and part.proc is not None and not any(e.startswith(part.role) for e in exits):
                exits.append(f"{part.role} exited with {part.proc.returncode} {when}")

    try:
        proc.start()
        work.start()
        # This scenario's runs move fast: they start once every other scenario waits for the kill.
        await outage.others_ready_to_kill(name)
        async with app.client() as client:
            handles = [await client.start("five", i, run_id=f"o{i}") for i in range(ENGINE_RUNS)]
            results = [asyncio.ensure_future(h.result(timeout=600)) for h in handles]
            # Kill the broker with runs at every stage: some done, most still in flight.
            while sum(r.done() for r in results) < ENGINE_RUNS // 10:
                await asyncio.sleep(0.05)
            in_flight_at_kill = ENGINE_RUNS - sum(r.done() for r in results)
            await outage.ready_to_kill(name)
            await outage.ready_to_restart(name)
            while not outage.restarted:
                await asyncio.sleep(1)
                check_alive("while the broker was down")
            pending = set(results)
            while pending and not exits:
                _, pending = await asyncio.wait(pending, timeout=1)
                check_alive("after the broker came back")
            assert not exits, f"{exits}\n{_tail(log)}"
            values = [r.result() for r in results]
        check_alive("at the end")
        hist = await asyncio.to_thread(history, app)
    finally:
        await asyncio.gather(asyncio.to_thread(proc.terminate), asyncio.to_thread(work.terminate))
    assert not exits, f"{exits}\n{_tail(log)}"
    assert in_flight_at_kill > ENGINE_RUNS // 2, in_flight_at_kill
    # Every run completed, with the right result.
    assert values == [i + EXPECTED for i in range(ENGINE_RUNS)]
    # No committed transition twice: each run's history is gap-free, each step completed once.
    assert len(hist) == ENGINE_RUNS
    for run_id, events in hist.items():
        assert [e.seq for e in events] == list(range(len(events))), run_id
        completions = [e.body.position for e in events if isinstance(e.body, ev.StepCompleted)]
        assert sorted(completions) == [0, 1, 2, 3, 4], (run_id, [e.kind for e in events])
        assert [e.kind for e in events].count("RunCompleted") == 1
    # Re-executions are the worker's business (a worker holding a result should deliver it, not re-run the
    # step); reported here, not asserted.
    done = executions(tmp_path / "executions.log")
    repeated = {k: v for k, v in done.items() if len(v) > 1}
    killed_at, restarted_at = outage.killed_at, outage.restarted_at
    across = [k for k, v in repeated.items() if any(killed_at - 1 <= t <= restarted_at + 60 for _, _, t in v)]
    print(
        f"in flight at kill: {in_flight_at_kill}; steps executed more than once: {len(repeated)} of "
        f"{ENGINE_RUNS * 5} ({len(across)} around the outage)"
    )


# -- 2. a processor started while the broker is down ---------------------------------------------------------


async def processor_started_while_down(outage: Outage, name: str, tmp_path: Path) -> None:
    broker = outage.broker
    env = child_env(name, broker.bootstrap, tmp_path)
    log = tmp_path / "engine.log"
    proc = EngineProcess(
        "processor", APP_SPEC, env, "--instance-id", "late-p0", "--state-dir", str(tmp_path / "state"),
        log=log,
    )  # fmt: skip
    work = EngineProcess("worker", APP_SPEC, env, "--concurrency", "8", log=log)
    app = App(name, settings=settings(broker.bootstrap))
    try:
        await outage.ready_to_kill(name)
        proc.start()
        await asyncio.sleep(OUTAGE_S / 2)  # the processor is retrying its start-up meanwhile
        assert proc.alive, _tail(log)
        await outage.ready_to_restart(name)
        await outage.passed(RESTART)
        assert proc.alive, _tail(log)
        work.start()
        async with app.client() as client:
            handles = [await client.start("five", i, run_id=f"late{i}") for i in range(20)]
            values = await asyncio.gather(*(h.result(timeout=180) for h in handles))
        assert proc.alive, _tail(log)
    finally:
        await asyncio.gather(asyncio.to_thread(proc.terminate), asyncio.to_thread(work.terminate))
    assert values == [i + EXPECTED for i in range(20)]
    assert "topic check failed, retrying until it succeeds" in log.read_text()


# -- 3. a worker holding results -----------------------------------------------------------------------------

HELD_RUNS = 30


def _executions_at(side: Path, position: int) -> int:
    if not side.exists():
        return 0
    return sum(1 for (_, pos), runs in executions(side).items() if pos == position for _ in runs)


async def worker_holds_results(outage: Outage, name: str, tmp_path: Path) -> None:
    broker = outage.broker
    env = child_env(name, broker.bootstrap, tmp_path)
    side, gate = tmp_path / "executions.log", tmp_path / "gate"
    worker_log = tmp_path / "worker.log"
    proc = EngineProcess(
        "processor", APP_SPEC, env, "--instance-id", "faults-p0", "--state-dir", str(tmp_path / "state"),
        log=tmp_path / "processor.log",
    )  # fmt: skip
    work = EngineProcess(
        "worker", APP_SPEC, env, "--instance-id", "faults-w0",
        "--delivery-timeout-ms", "5000",  # several tries of each result fail while the broker is down
        log=worker_log,
    )  # fmt: skip
    app = App(name, settings=settings(broker.bootstrap))
    try:
        proc.start()
        work.start()
        assert work.proc is not None
        worker_pid = work.proc.pid
        async with app.client() as client:
            for i in range(HELD_RUNS):
                await client.start("outage", i, run_id=f"o{i}")
            # Every run is inside its held step, in the worker.
            await _wait_for(lambda: _executions_at(side, 1) >= HELD_RUNS, "all held steps running")
        await outage.ready_to_kill(name)
        gate.touch()  # the held steps finish now, with the broker down
        await outage.ready_to_restart(name)
        while not outage.restarted:
            assert work.alive, "the worker exited during the broker outage"
            await asyncio.sleep(0.5)
        async with app.client() as client:
            handles = [client.get_handle(f"o{i}", "outage") for i in range(HELD_RUNS)]
            try:
                values = await asyncio.wait_for(asyncio.gather(*(h.result() for h in handles)), 240)
            except TimeoutError:
                raise AssertionError(
                    f"runs did not complete after the outage (worker alive: {work.alive}, processor alive: "
                    f"{proc.alive}); worker log:\n{_our_tail(worker_log)}\nprocessor log:\n"
                    f"{_our_tail(tmp_path / 'processor.log')}"
                ) from None
        assert work.alive and work.proc.pid == worker_pid, "the worker exited or was replaced"
        proc_alive_at_end = proc.alive
    finally:
        await asyncio.gather(asyncio.to_thread(proc.terminate), asyncio.to_thread(work.terminate))
    assert values == [i + 16 for i in range(HELD_RUNS)]
    done = executions(side)
    assert sorted(done) == sorted((f"o{i}", pos) for i in range(HELD_RUNS) for pos in (0, 1, 2))
    twice = {key: runs for key, runs in done.items() if len(runs) != 1}
    assert not twice, f"steps executed more than once: {twice}"
    assert {pid for runs in done.values() for _, pid, _ in runs} == {worker_pid}
    text = worker_log.read_text()
    # The worker's results really outlived librdkafka's timeout: they were produced again, not re-run.
    assert "_MSG_TIMED_OUT" in text, text[-3000:]
    assert proc_alive_at_end, "the processor exited during the outage"


# -- 4. the logs of an outage --------------------------------------------------------------------------------

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


async def outage_logs(outage: Outage, name: str, tmp_path: Path) -> None:
    env = child_env(name, outage.broker.bootstrap, tmp_path)
    json_logs = ("--log-format", "json")
    state = str(tmp_path / "state")
    proc, proc_err = spawn_stderr_to_file("processor", env, tmp_path, *json_logs, "--state-dir", state)
    work, work_err = spawn_stderr_to_file("worker", env, tmp_path, *json_logs)
    app = App(name, settings=settings(outage.broker.bootstrap))
    try:
        async with app.client() as client:
            assert await (await client.start("five", 1, run_id="before")).result(timeout=120) == 11112
        await outage.ready_to_kill(name)
        killed_ms = int(outage.killed_at * 1000)
        await outage.ready_to_restart(name)
        await outage.passed(RESTART)
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
        await asyncio.gather(asyncio.to_thread(stop_process, proc), asyncio.to_thread(stop_process, work))
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


# -- 5. and 6. what /metrics shows ---------------------------------------------------------------------------

METRIC_RUNS = 5
EPISODES, ACTIVE = "orchestrator_fault_episodes_total", "orchestrator_faults_active"


def scrape(port: int) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    body = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(body)
        for s in family.samples
    }


def get(port: int, name: str, **labels: str) -> float:
    return scrape(port).get((name, frozenset(labels.items())), 0.0)


async def wait_for(port: int, name: str, want: float, timeout: float = 120, **labels: str) -> None:
    deadline = time.monotonic() + timeout
    while (got := await asyncio.to_thread(get, port, name, **labels)) != want:
        assert time.monotonic() < deadline, f"{name}{labels} = {got}, not {want} after {timeout} s"
        await asyncio.sleep(0.2)


async def wait_for_endpoint(port: int, proc: EngineProcess) -> None:
    deadline = time.monotonic() + 60
    while True:
        assert proc.alive
        try:
            await asyncio.to_thread(scrape, port)
            return
        except httpx.TransportError:
            assert time.monotonic() < deadline, f"no /metrics on {port}"
            await asyncio.sleep(0.1)


def _metrics_engine(
    name: str, bootstrap: str, tmp_path: Path, instance: str, *worker_args: str
) -> tuple[EngineProcess, EngineProcess, int, int]:
    env = child_env(name, bootstrap, tmp_path)
    p_port, w_port = free_ports(2)
    metrics_args = ("--metrics-host", "127.0.0.1", "--metrics-port")
    proc = EngineProcess(
        "processor", APP_SPEC, env, "--instance-id", instance, "--state-dir", str(tmp_path / "state"),
        *metrics_args, str(p_port), log=tmp_path / "processor.log",
    )  # fmt: skip
    work = EngineProcess(
        "worker", APP_SPEC, env, *worker_args, *metrics_args, str(w_port), log=tmp_path / "worker.log"
    )
    return proc, work, p_port, w_port


async def metrics_of_held_results(outage: Outage, name: str, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    proc, work, p_port, w_port = _metrics_engine(
        name, outage.broker.bootstrap, tmp_path, "mo-p0", "--delivery-timeout-ms", "3000"
    )
    app = App(name, settings=settings(outage.broker.bootstrap))
    deliver = {"component": "worker", "fault": "deliver results"}
    try:
        proc.start()
        work.start()
        await wait_for_endpoint(p_port, proc)
        await wait_for_endpoint(w_port, work)
        async with app.client() as client:
            for i in range(METRIC_RUNS):
                await client.start("outage", i, run_id=f"o{i}")
        # Every run is inside its held step.
        await wait_for(w_port, "orchestrator_worker_steps_in_flight", METRIC_RUNS)
        await outage.ready_to_kill(name)
        gate.touch()  # the held steps finish with the broker down: their results are held
        await wait_for(w_port, "orchestrator_worker_steps_in_flight", 0)
        await wait_for(w_port, "orchestrator_worker_outbox_records", METRIC_RUNS)
        await wait_for(w_port, "orchestrator_faults_active", 1, **deliver)  # a delivery timed out
        assert get(p_port, "orchestrator_last_commit_timestamp_seconds") > 0  # the processor answers too
        # Still held, none lost, 10 s on (as long as on a broker of its own) and just before the restart.
        await asyncio.sleep(max(10.0, OUTAGE_S - 1 - outage.seconds_down()))
        assert get(w_port, "orchestrator_worker_outbox_records") == METRIC_RUNS
        await outage.ready_to_restart(name)
        await outage.passed(RESTART)
        async with app.client() as client:
            handles = [client.get_handle(f"o{i}", "outage") for i in range(METRIC_RUNS)]
            values = await asyncio.wait_for(asyncio.gather(*(h.result() for h in handles)), 240)
        assert values == [i + 16 for i in range(METRIC_RUNS)]  # s1 +1, held +5, s2 +10
        await wait_for(w_port, "orchestrator_worker_outbox_records", 0)
        await wait_for(w_port, "orchestrator_faults_active", 0, **deliver)
        assert get(w_port, "orchestrator_fault_episodes_total", **deliver) >= 1
        assert get(w_port, "orchestrator_worker_outbox_produced_again_total") >= METRIC_RUNS
        # Every fault the processor met is over, and it met at least one.
        deadline = time.monotonic() + 60
        while True:
            samples = scrape(p_port)
            episodes = {dict(k)["fault"]: v for (n, k), v in samples.items() if n == EPISODES}
            active = {dict(k)["fault"]: v for (n, k), v in samples.items() if n == ACTIVE}
            try:
                assert episodes and sum(episodes.values()) >= 1, samples
                assert set(active) == set(episodes) and not any(active.values()), active
                break
            except AssertionError:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.5)
    finally:
        await asyncio.gather(asyncio.to_thread(proc.terminate), asyncio.to_thread(work.terminate))


async def metrics_of_an_idle_app(outage: Outage, name: str, tmp_path: Path) -> None:
    proc, work, p_port, w_port = _metrics_engine(name, outage.broker.bootstrap, tmp_path, "mi-p0")
    w_consume = {"component": "worker", "fault": "consume"}
    try:
        proc.start()
        work.start()
        await wait_for_endpoint(p_port, proc)
        await wait_for_endpoint(w_port, work)
        async with App(name, settings=settings(outage.broker.bootstrap)).client() as client:
            # One run end to end: both consume their partitions. After it, nothing arrives any more.
            handle = await client.start("five", 1, run_id="idle-0")
            await asyncio.wait_for(handle.result(), 120)
        await outage.ready_to_kill(name)
        await wait_for(w_port, "orchestrator_faults_active", 1, timeout=120, **w_consume)
        await outage.ready_to_restart(name)
        await outage.passed(RESTART)
        # No run is started: nothing but the quiet spell can close the fault.
        await wait_for(w_port, "orchestrator_faults_active", 0, timeout=180, **w_consume)
        assert get(w_port, "orchestrator_fault_episodes_total", **w_consume) >= 1
        assert proc.alive and work.alive
    finally:
        await asyncio.gather(asyncio.to_thread(proc.terminate), asyncio.to_thread(work.terminate))


# -- the outage and one test per scenario --------------------------------------------------------------------

SCENARIOS = {
    "engine": engine_under_load,
    "late": processor_started_while_down,
    "held": worker_holds_results,
    "logs": outage_logs,
    "metrics": metrics_of_held_results,
    "idle": metrics_of_an_idle_app,
}


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, BaseException | None]]:
    """Every scenario run against one outage of one private broker; what each raised (None: it passed)."""
    broker = PrivateBroker(tmp_path_factory.mktemp("outage") / "kafka")
    broker.start()
    try:
        names = {key: f"t{uuid.uuid4().hex[:10]}" for key in SCENARIOS}  # apps, topics, groups
        outage = Outage(broker, list(names.values()), OUTAGE_S)
        dirs = {key: tmp_path_factory.mktemp(key) for key in SCENARIOS}

        def bound(key: str) -> Scenario:
            return lambda shared, name: SCENARIOS[key](shared, name, dirs[key])

        found = asyncio.run(run_scenarios(outage, {names[key]: bound(key) for key in SCENARIOS}))
        yield {key: found[names[key]] for key in SCENARIOS}
    finally:
        broker.stop()


def _check(outcomes: dict[str, BaseException | None], key: str) -> None:
    failure = outcomes[key]
    if failure is not None:
        raise failure


def test_engine_survives_a_30s_broker_outage(outcomes: dict[str, BaseException | None]) -> None:
    _check(outcomes, "engine")


def test_processor_started_while_the_broker_is_down_waits_for_it(
    outcomes: dict[str, BaseException | None],
) -> None:
    _check(outcomes, "late")


def test_steps_finished_while_the_broker_is_down_are_reported_once(
    outcomes: dict[str, BaseException | None],
) -> None:
    _check(outcomes, "held")


def test_an_outage_is_a_first_line_and_a_summary_in_processor_and_worker(
    outcomes: dict[str, BaseException | None],
) -> None:
    _check(outcomes, "logs")


def test_held_results_and_faults_show_during_an_outage_and_clear_after(
    outcomes: dict[str, BaseException | None],
) -> None:
    _check(outcomes, "metrics")


def test_an_idle_apps_consume_fault_clears_after_the_broker_is_back(
    outcomes: dict[str, BaseException | None],
) -> None:
    _check(outcomes, "idle")
