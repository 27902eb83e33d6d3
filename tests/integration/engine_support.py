"""Running the engine for tests: processors and workers in threads, or as real processes to SIGKILL."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import signal
import socket
import subprocess
import sys
import threading
from collections import Counter, defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from confluent_kafka import Producer

from orchestrator import App, Settings
from orchestrator._engine.events import Event, decode_event
from orchestrator._engine.processor import Processor, ProcessorConfig
from orchestrator._engine.reader import read_partitions
from orchestrator._engine.worker import Worker, WorkerConfig
from orchestrator.topology import history_topic

REPO = Path(__file__).resolve().parents[2]


APP_SPEC = "tests.integration.apps.crash_app:app"
"""The app the child-process tests run (``tests/integration/apps/crash_app.py``)."""


def child_env(name: str, bootstrap: str, tmp: Path) -> dict[str, str]:
    """Environment of a child processor/worker running ``APP_SPEC`` as app ``name``.

    Steps log each execution to ``tmp/executions.log``; the ``gate`` step waits for ``tmp/gate``.
    """
    return {
        "CRASH_APP_NAME": name,
        "CRASH_SIDE_FILE": str(tmp / "executions.log"),
        "CRASH_GATE_FILE": str(tmp / "gate"),
        "ORCHESTRATOR_BOOTSTRAP_SERVERS": bootstrap,
        "ORCHESTRATOR_PARTITIONS": "4",
    }


def executions(side: Path) -> dict[tuple[str, int], list[tuple[int, int, float]]]:
    """(run id, position) -> [(attempt, pid, time)] of every step execution ``crash_app`` logged."""
    out: dict[tuple[str, int], list[tuple[int, int, float]]] = defaultdict(list)
    for line in side.read_text().splitlines():
        run_id, position, attempt, pid, ts = line.split()[:5]
        out[(run_id, int(position))].append((int(attempt), int(pid), float(ts)))
    return out


def settings(bootstrap: str, partitions: int = 4) -> Settings:
    return Settings(bootstrap_servers=bootstrap, partitions=partitions)


class _Thread(threading.Thread):
    """A thread that remembers its exception, so the test fails loudly instead of hanging."""

    def __init__(self, target: Any, name: str) -> None:
        super().__init__(target=self._wrap, args=(target,), name=name, daemon=True)
        self.error: BaseException | None = None

    def _wrap(self, target: Any) -> None:
        try:
            target()
        except BaseException as exc:
            self.error = exc


class ProcessorThread:
    """A processor in a background thread; ``stop()`` ends it and surfaces any error it died of."""

    def __init__(self, app: App, state_dir: Path, instance_id: str = "p0", **config: Any) -> None:
        self.processor = Processor(
            app, ProcessorConfig(instance_id=instance_id, state_dir=state_dir, **config)
        )
        self.thread = _Thread(
            lambda: self.processor.run(install_signal_handlers=False), f"proc-{instance_id}"
        )
        self.thread.start()

    def stop(self) -> None:
        self.processor.stop()
        self.thread.join(60)
        if self.thread.error is not None:
            raise self.thread.error


class WorkerThread:
    """A worker on its own event loop in a background thread."""

    def __init__(self, app: App, concurrency: int = 32) -> None:
        self.worker = Worker(app, WorkerConfig(concurrency=concurrency))
        self.thread = _Thread(lambda: asyncio.run(self.worker.run()), "worker")
        self.thread.start()

    def stop(self) -> None:
        self.worker.stop()
        self.thread.join(60)
        if self.thread.error is not None:
            raise self.thread.error


@contextmanager
def engine(
    app: App,
    state_dir: Path,
    *,
    processors: int = 1,
    workers: int = 1,
    worker_concurrency: int = 32,
    processor_config: dict[str, Any] | None = None,
) -> Iterator[list[Processor]]:
    """Processors and workers for ``app`` in background threads, stopped (and checked) on exit."""
    procs = [ProcessorThread(app, state_dir, f"p{i}", **(processor_config or {})) for i in range(processors)]
    wks = [WorkerThread(app, worker_concurrency) for _ in range(workers)]
    try:
        yield [p.processor for p in procs]
    finally:
        errors = []
        for part in [*wks, *procs]:
            try:
                part.stop()
            except BaseException as exc:
                errors.append(exc)
        if errors:
            raise errors[0]


def history(app: App) -> dict[str, list[Event]]:
    """Every run's history events, in order, read from the history topic."""
    out: dict[str, list[Event]] = {}
    topic = history_topic(app.name)
    for msg in read_partitions(app.settings, topic, list(range(app.settings.partitions))):
        ev = decode_event(msg.value())
        out.setdefault(ev.run_id, []).append(ev)
    return out


class EngineProcess:
    """``orchestrator processor|worker MODULE:app`` as a real child process."""

    def __init__(self, role: str, app_spec: str, env: dict[str, str], *extra: str, log: Path) -> None:
        self.role = role
        self.args = [sys.executable, "-m", "orchestrator", role, app_spec, *extra]
        self.env = {**os.environ, **env}
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        fh = self.log.open("ab")
        self.proc = subprocess.Popen(self.args, env=self.env, cwd=REPO, stdout=fh, stderr=subprocess.STDOUT)
        fh.close()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(30)

    def terminate(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


def spawn_stderr_to_file(
    role: str, env: dict[str, str], tmp: Path, *args: str
) -> tuple[subprocess.Popen[bytes], Path]:
    """``orchestrator ROLE APP_SPEC ARGS`` with its stderr (the logs) alone in ``tmp/ROLE.stderr``, for tests
    that check every log line (``EngineProcess`` mixes stdout in)."""
    err = tmp / f"{role}.stderr"
    with err.open("wb") as fh:
        proc = subprocess.Popen(
            [sys.executable, "-m", "orchestrator", role, APP_SPEC, *args],
            env={**os.environ, **env},
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=fh,
        )
    return proc, err


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL if it has not ended within 30 s."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(30)


def free_ports(count: int) -> list[int]:
    """Ports free right now, all distinct: held open together, then released for the broker to bind."""
    sockets = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


class PrivateBroker:
    """A broker of a test's own, to kill and start again: an outage must not touch the shared broker.

    A real ``_devkafka`` broker in a temp dir on free ports. ``kill()`` is SIGKILL (no controlled shutdown:
    what a crashed machine looks like); ``start()`` brings it back on the same data dir and ports, so the
    engine's clients, configured with its address, reconnect by themselves.
    """

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.port, self.controller_port = free_ports(2)
        self.pid = 0

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        from orchestrator import _devkafka

        self.pid = _devkafka.start(self.data_dir, self.port, self.controller_port, heap_mb=384).pid

    def kill(self) -> None:
        """SIGKILL, as a crashed machine would: no controlled shutdown, no flushed state."""
        from orchestrator._devkafka import process

        if not self.pid:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)
        # Reaped (through its Popen when this process started it): a zombie would still look like a running
        # broker to the next start, and a forgotten Popen warns when collected (an error under
        # filterwarnings=error).
        process.wait_gone(self.pid, 30.0)
        self.pid = 0

    def stop(self) -> None:
        from orchestrator import _devkafka

        _devkafka.stop(self.data_dir)
        self.pid = 0


class Bad:
    """Produces records straight to the engine's topics and remembers where each landed."""

    def __init__(self, bootstrap: str) -> None:
        self.producer = Producer({"bootstrap.servers": bootstrap})
        self.landed: dict[str, str] = {}

    def put(self, label: str, topic: str, value: bytes, key: str | None, partition: int) -> None:
        def delivered(err: Any, msg: Any) -> None:
            assert err is None, err
            self.landed[label] = f"{msg.topic()}[{msg.partition()}]@{msg.offset()}"

        self.producer.produce(topic, value, key, partition=partition, on_delivery=delivered)
        self.producer.flush(30)
        assert label in self.landed


# -- checks shared by the fault tests (test_cluster_failover) ------------------------------------------------


def check_no_duplicate_transitions(hist: dict[str, list[Event]]) -> None:
    """No committed transition twice, read from the history topic (read_committed).

    Per run: sequence numbers gap-free from 0 (a transition committed twice would repeat or skip one),
    event ids unique, one ``RunStarted``, one ``RunCompleted``, each step position completed once.
    """
    from orchestrator._engine import events as ev

    for run_id, events in hist.items():
        kinds = [e.kind for e in events]
        assert [e.seq for e in events] == list(range(len(events))), (run_id, kinds)
        assert len({e.event_id for e in events}) == len(events), (run_id, kinds)
        assert kinds.count("RunStarted") == 1 and kinds.count("RunCompleted") == 1, (run_id, kinds)
        completed = [e.body.position for e in events if isinstance(e.body, ev.StepCompleted)]
        assert len(completed) == len(set(completed)), (run_id, kinds)


@dataclass(frozen=True)
class Pause:
    """A gap between two consecutive events of one run, with what of it the workflow's own sleep explains."""

    seconds: float  # between the two events' timestamps
    beyond_sleep: float  # from the later of the first event and the timer's due time (TimerFired only)
    run_id: str
    between: str  # "Kind#seq -> Kind#seq"
    began_ms: int  # the first event's timestamp (wall clock of the processor that wrote it)


def pauses(hist: dict[str, list[Event]]) -> list[Pause]:
    """Every gap between consecutive events of a run, longest beyond its sleep first.

    A ``TimerFired`` is measured from the timer's due time as well as from the ``TimerStarted`` before it:
    what is left is how late the engine was, which is what a fault adds.
    """
    from orchestrator._engine import events as ev

    out: list[Pause] = []
    for run_id, events in hist.items():
        due: dict[int, int] = {}
        for before, after in itertools.pairwise(events):
            if isinstance(before.body, ev.TimerStarted):
                due[before.body.position] = before.body.due_ms
            since = before.timestamp_ms
            if isinstance(after.body, ev.TimerFired) and after.body.position in due:
                since = max(since, due[after.body.position])
            out.append(
                Pause(
                    (after.timestamp_ms - before.timestamp_ms) / 1000,
                    (after.timestamp_ms - since) / 1000,
                    run_id,
                    f"{before.kind}#{before.seq} -> {after.kind}#{after.seq}",
                    before.timestamp_ms,
                )
            )
    out.sort(key=lambda p: p.beyond_sleep, reverse=True)
    return out


def partition_leaders(admin: Any, topics: list[str]) -> Counter[int]:
    """How many partitions of ``topics`` each broker leads (-1: none right now), from ``admin``'s metadata."""
    meta = admin.list_topics(timeout=30)
    counts: Counter[int] = Counter()
    for name in topics:
        for part in meta.topics[name].partitions.values():
            counts[part.leader] += 1
    return counts


def in_every_isr(admin: Any, topics: list[str], node_id: int) -> bool:
    """Whether broker ``node_id`` is in the ISR of every partition of ``topics``."""
    meta = admin.list_topics(timeout=30)
    return all(node_id in p.isrs for name in topics for p in meta.topics[name].partitions.values())


def end_offsets(consumer: Any, topic: str, partitions: int) -> dict[int, int]:
    """The end offset of each partition of ``topic``, asked of its leader (not cached).

    Retried while a partition has no reachable leader (a killed broker's partitions move within seconds).
    """
    import time

    from confluent_kafka import KafkaException, TopicPartition

    out: dict[int, int] = {}
    deadline = time.monotonic() + 120
    for p in range(partitions):
        while p not in out:
            try:
                out[p] = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10, cached=False)[1]
            except KafkaException:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
    return out
