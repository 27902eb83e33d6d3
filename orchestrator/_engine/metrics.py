"""Prometheus metrics of the engine processes: their definitions, and the ``/metrics`` endpoint.

One job: say what is measured (every family below, all named ``orchestrator_...``) and serve it. The
processor and the worker update these from small hooks; `docs/metrics.md` lists them for operators and the
dashboard and alert rules under ``deploy/observability/`` are checked against `FAMILIES` by a unit test.

What counts where, and when (ADR 0017):
- Run outcomes, dead letters and timers of a processor change only when the Kafka transaction that records
  them commits: a batch counts into a `BatchCounts` while it is processed, which `ProcessorMetrics.committed`
  publishes and `ProcessorMetrics.aborted` drops. An aborted batch is processed again; it counts once.
- Step attempts are measured by the worker that runs them (their latency is the worker's view), once per
  attempt it executes; a step that runs again after a worker died counts again, because it did run again.
- Gauges (lag, timers, stores) are sampled by the loop that owns the consumer and stores, at most once per
  `REFRESH_S`: neither librdkafka consumers nor the stores are read from the scrape thread.

Labels are bounded: workflow, step and queue names, topics, partitions, fault names, error types. Never a
run id or a worker id (Prometheus adds the scraped instance itself).
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from importlib import metadata
from typing import Any
from wsgiref.simple_server import WSGIServer

import confluent_kafka
from confluent_kafka import Consumer, TopicPartition
from prometheus_client import Counter, Gauge, Histogram, Info, start_http_server
from prometheus_client.metrics import MetricWrapperBase

from orchestrator._core.effects import StepCommand
from orchestrator._core.events import (
    Event,
    RunCancelled,
    RunCompleted,
    RunFailed,
    RunParked,
    RunResumed,
    RunStarted,
    StepCompleted,
    StepFailed,
)
from orchestrator._engine.episodes import Episode
from orchestrator._engine.faults import FaultLog

REFRESH_S = 1.0
"""Most often the sampled gauges (lag, timers, store sizes) are refreshed by the loops that own them."""

QUIET_S = 15.0
"""A consume fault with an assignment and no new error for this long is over. Only a record arriving
closes it otherwise, and an idle app gets none: its OrchestratorKafkaFault alert would stand after a broker
restart."""

TIMERS_DUE_CAP = 10_000
"""Due timers are counted up to this many per partition: the count scans the store's timer index."""

TIMERS_DUE_REFRESH_S = 15.0
"""How often due timers are counted: each count scans and parses up to `TIMERS_DUE_CAP` keys per store,
too much to do every `REFRESH_S` (the processor's loop pays it); a gauge 15 s old is recent enough."""

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)

# -- runs (processor, counted once the transaction that records them commits) ------------------------------
RUNS_STARTED = Counter("orchestrator_runs_started", "Runs started (RunStarted recorded).", ["workflow"])
RUNS_COMPLETED = Counter("orchestrator_runs_completed", "Runs that completed.", ["workflow"])
RUNS_FAILED = Counter("orchestrator_runs_failed", "Runs that failed (the workflow raised).", ["workflow"])
RUNS_PARKED = Counter(
    "orchestrator_runs_parked", "Runs parked (engine could not go on; resumable).", ["workflow"]
)
RUNS_CANCELLED = Counter("orchestrator_runs_cancelled", "Runs cancelled.", ["workflow"])
RUNS_RESUMED = Counter("orchestrator_runs_resumed", "Parked runs resumed.", ["workflow"])
TIMERS_FIRED = Counter("orchestrator_timers_fired", "Timers fired (retries, sleeps, timeouts).", ["stage"])
DEAD_LETTERS = Counter(
    "orchestrator_dead_letters",
    "Records sent to the dead-letter topic, by who wrote them and why.",
    ["component", "reason"],
)

# -- transactions (processor) ---------------------------------------------------------------------------
TRANSACTIONS = Counter(
    "orchestrator_transactions", "Processor transactions, by result (commit, abort).", ["result"]
)
TRANSACTION_SECONDS = Histogram(
    "orchestrator_transaction_duration_seconds",
    "From begin to the end of the commit of one processor transaction (committed ones).",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
BATCH_RECORDS = Histogram(
    "orchestrator_batch_records",
    "Input records handled by one committed processor transaction.",
    buckets=(0, 1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500),
)
LAST_COMMIT = Gauge(
    "orchestrator_last_commit_timestamp_seconds", "Unix time of the processor's last committed transaction."
)

# -- timers and stores (processor, sampled) -------------------------------------------------------------
TIMERS_DUE = Gauge(
    "orchestrator_timers_due",
    f"Timers due now and not fired yet, per partition store (counted up to {TIMERS_DUE_CAP}).",
    ["stage", "partition"],
)
TIMER_NEXT_DUE = Gauge(
    "orchestrator_timer_next_due_timestamp_seconds",
    "Unix time the earliest timer of a partition store is due (in the past: it is late).",
    ["stage", "partition"],
)
STORE_KEYS = Gauge(
    "orchestrator_store_keys", "RocksDB's estimate of keys in a partition store.", ["stage", "partition"]
)
STORE_BYTES = Gauge(
    "orchestrator_store_bytes",
    "RocksDB's estimate of live data bytes in a partition store.",
    ["stage", "partition"],
)
RESTORE_SECONDS = Histogram(
    "orchestrator_restore_duration_seconds",
    "Time to open and restore the stores of newly assigned partitions (one rebalance).",
    buckets=(0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 900),
)
RESTORED_RECORDS = Counter("orchestrator_restored_records", "Changelog records applied by restores.")
STANDBY_LAG = Gauge(
    "orchestrator_standby_lag_records",
    "Changelog records a standby replica has not applied yet (--standby-replicas): what a takeover of "
    "this partition by this instance would restore.",
    ["stage", "partition"],
)

# -- consumers (processor and worker, sampled) ----------------------------------------------------------
CONSUMER_LAG = Gauge(
    "orchestrator_consumer_lag",
    "Records of an assigned partition not consumed yet (end offset minus position).",
    ["component", "topic", "partition"],
)

# -- steps (worker) -------------------------------------------------------------------------------------
STEP_ATTEMPTS = Counter("orchestrator_step_attempts", "Step attempts a worker ran.", ["step", "queue"])
STEP_FAILURES = Counter(
    "orchestrator_step_failures",
    "Step attempts that raised (retryable: the step's policy may try again).",
    ["step", "queue", "retryable"],
)
STEP_SECONDS = Histogram(
    "orchestrator_step_duration_seconds",
    "How long one step attempt ran on the worker.",
    ["step", "queue"],
    buckets=_LATENCY_BUCKETS,
)
STEP_SCHEDULE_TO_START = Histogram(
    "orchestrator_step_schedule_to_start_seconds",
    "From the processor scheduling a step attempt to a worker starting it (queueing and retry backoff).",
    ["step", "queue"],
    buckets=_LATENCY_BUCKETS,
)
STEPS_IN_FLIGHT = Gauge("orchestrator_worker_steps_in_flight", "Step attempts running on this worker now.")
WORKER_BUFFERED = Gauge(
    "orchestrator_worker_buffered_records",
    "Step commands taken from Kafka and waiting for a free slot on this worker (at most --buffer).",
)
OUTBOX_HELD = Gauge(
    "orchestrator_worker_outbox_records",
    "Results and dead letters a worker holds until Kafka acknowledges them (grows while the broker is away).",
)
OUTBOX_PRODUCED_AGAIN = Counter(
    "orchestrator_worker_outbox_produced_again", "Held records produced again after a failed delivery."
)

# -- faults ---------------------------------------------------------------------------------------------
FAULT_EPISODES = Counter(
    "orchestrator_fault_episodes",
    "Episodes of a Kafka fault ridden out (broker unreachable, commit failing, ...), counted as they start.",
    ["component", "fault"],
)
FAULTS_ACTIVE = Gauge(
    "orchestrator_faults_active", "Faults going on now (1 while an episode lasts).", ["component", "fault"]
)
CLIENT_REPLACEMENTS = Counter(
    "orchestrator_client_replacements",
    "Kafka clients replaced after a fatal error (fenced by a transaction timeout, a stuck call, a fenced "
    "static member); a real second instance stops the process instead.",
    ["component", "client"],
)
BUILD = Info("orchestrator_build", "Version of the engine and of the Kafka client library.")

FAMILIES: tuple[MetricWrapperBase, ...] = (
    RUNS_STARTED,
    RUNS_COMPLETED,
    RUNS_FAILED,
    RUNS_PARKED,
    RUNS_CANCELLED,
    RUNS_RESUMED,
    TIMERS_FIRED,
    DEAD_LETTERS,
    TRANSACTIONS,
    TRANSACTION_SECONDS,
    BATCH_RECORDS,
    LAST_COMMIT,
    TIMERS_DUE,
    TIMER_NEXT_DUE,
    STORE_KEYS,
    STORE_BYTES,
    RESTORE_SECONDS,
    RESTORED_RECORDS,
    STANDBY_LAG,
    CONSUMER_LAG,
    STEP_ATTEMPTS,
    STEP_FAILURES,
    STEP_SECONDS,
    STEP_SCHEDULE_TO_START,
    STEPS_IN_FLIGHT,
    WORKER_BUFFERED,
    OUTBOX_HELD,
    OUTBOX_PRODUCED_AGAIN,
    FAULT_EPISODES,
    FAULTS_ACTIVE,
    CLIENT_REPLACEMENTS,
    BUILD,
)
"""Every family this module defines: what the dashboard and the alert rules may refer to."""


def exported_names() -> set[str]:
    """Every series name the families expose (counters' ``_total``, histograms' ``_bucket``, ...)."""
    names: set[str] = set()
    for family in FAMILIES:
        for metric in family.describe():
            for sample_suffix in _SUFFIXES[metric.type]:
                names.add(metric.name + sample_suffix)
    return names


_SUFFIXES: dict[str, tuple[str, ...]] = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
    "info": ("_info",),
}


_StepChildren = tuple[Any, Any, Any]
_step_children: dict[tuple[str, str], _StepChildren] = {}
"""(attempts, duration, schedule-to-start) children per (step, queue): ``labels()`` takes a lock and
builds the child key on every call, a third of the hook's cost (bench.metrics_hooks)."""


def observe_attempt(cmd: StepCommand, queue: str, body: object) -> None:
    """One step attempt ran (on a worker, or in the processor for a local step, ``queue`` "local"): its
    duration, how long it waited to start, and whether it failed. Counted per execution: an attempt that
    runs again (a worker died, a local step's batch was aborted) did run again."""
    if not isinstance(body, StepCompleted | StepFailed):
        return
    key = (cmd.step, queue)
    children = _step_children.get(key)
    if children is None:
        children = _step_children[key] = (
            STEP_ATTEMPTS.labels(*key),
            STEP_SECONDS.labels(*key),
            STEP_SCHEDULE_TO_START.labels(*key),
        )
    attempts, seconds, waited = children
    attempts.inc()
    seconds.observe(max(0, body.finished_ms - body.started_ms) / 1000)
    if cmd.scheduled_ms > 0:
        waited.observe(max(0, body.started_ms - cmd.scheduled_ms) / 1000)
    if isinstance(body, StepFailed):
        STEP_FAILURES.labels(cmd.step, queue, "true" if body.retryable else "false").inc()


# -- the endpoint ---------------------------------------------------------------------------------------
def _set_build_info() -> None:
    try:
        version = metadata.version("kafka-orchestrator")
    except metadata.PackageNotFoundError:  # run from a source tree that is not installed
        version = "unknown"
    BUILD.info(
        {
            "version": version,
            "python": ".".join(map(str, sys.version_info[:3])),
            "librdkafka": confluent_kafka.libversion()[0],
            "confluent_kafka": confluent_kafka.version()[0],
        }
    )


def serve_metrics(port: int, host: str = "0.0.0.0") -> WSGIServer:
    """Serve ``/metrics`` (Prometheus text format) on ``host:port`` from a daemon thread.

    Returns the server (``server.server_port`` is the port, useful with port 0; ``shutdown()`` stops it).
    Called by ``orchestrator processor|worker --metrics-port`` and by the web UI; every engine part of the
    process reports into the same registry, so one endpoint per process is enough.
    """
    _set_build_info()
    server, _thread = start_http_server(port, addr=host)
    return server


# -- the processor's side -------------------------------------------------------------------------------
_RUN_COUNTERS: dict[type, Counter] = {
    RunStarted: RUNS_STARTED,
    RunCompleted: RUNS_COMPLETED,
    RunFailed: RUNS_FAILED,
    RunParked: RUNS_PARKED,
    RunCancelled: RUNS_CANCELLED,
    RunResumed: RUNS_RESUMED,
}


class BatchCounts:
    """What one processor transaction would add to the counters, held until it commits.

    Plain dict increments on the hot path; the Prometheus children (each behind a lock) are touched once
    per transaction, in `publish`.
    """

    __slots__ = ("_children", "counts")

    def __init__(self) -> None:
        self.counts: dict[tuple[Counter, tuple[str, ...]], int] = {}
        self._children: dict[tuple[Counter, tuple[str, ...]], Any] = {}

    def history(self, events: Iterable[Event]) -> None:
        """Count the run-level events among ``events`` (about to be produced to the history topic)."""
        for event in events:
            counter = _RUN_COUNTERS.get(type(event.body))
            if counter is not None:
                key = (counter, (event.workflow,))
                self.counts[key] = self.counts.get(key, 0) + 1

    def add(self, counter: Counter, *labels: str) -> None:
        key = (counter, labels)
        self.counts[key] = self.counts.get(key, 0) + 1

    def publish(self) -> None:
        for key, n in self.counts.items():
            child = self._children.get(key)
            if child is None:
                counter, labels = key
                child = self._children[key] = counter.labels(*labels) if labels else counter
            child.inc(n)
        self.counts.clear()

    def drop(self) -> None:
        self.counts.clear()


class ProcessorMetrics:
    """The processor's hooks: transaction results, restores, and the sampled gauges."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.batch = BatchCounts()
        self._commits = TRANSACTIONS.labels("commit")
        self._aborts = TRANSACTIONS.labels("abort")
        self._next_refresh = 0.0
        self._clock = clock
        self._next_timer_count = 0.0
        self._labelled: dict[Gauge, set[tuple[str, ...]]] = {}

    def committed(self, records: int, seconds: float) -> None:
        """The transaction committed: its counts become visible."""
        self.batch.publish()
        self._commits.inc()
        TRANSACTION_SECONDS.observe(seconds)
        BATCH_RECORDS.observe(records)
        LAST_COMMIT.set(time.time())

    def aborted(self) -> None:
        """The transaction was aborted: nothing it counted happened (its batch is processed again)."""
        self.batch.drop()
        self._aborts.inc()

    @staticmethod
    def restored(records: int, seconds: float) -> None:
        RESTORE_SECONDS.observe(seconds)
        RESTORED_RECORDS.inc(records)

    def due_for_refresh(self) -> bool:
        """Whether `REFRESH_S` passed since the last refresh (one monotonic clock read)."""
        now = time.monotonic()
        if now < self._next_refresh:
            return False
        self._next_refresh = now + REFRESH_S
        return True

    def refresh_stores(self, stores: Sequence[tuple[str, int, Any]], now_ms: int) -> None:
        """Timers and sizes of each (stage, partition, `PartitionStore`); stores no longer owned vanish."""
        seen: set[tuple[str, ...]] = set()
        nexts: set[tuple[str, ...]] = set()
        count_timers = self._clock() >= self._next_timer_count
        if count_timers:
            self._next_timer_count = self._clock() + TIMERS_DUE_REFRESH_S
        for stage, p, store in stores:
            labels = (stage, str(p))
            seen.add(labels)
            if count_timers:
                TIMERS_DUE.labels(*labels).set(len(store.due_timers(now_ms, TIMERS_DUE_CAP)))
            nxt = store.next_timer_due()
            if nxt is not None:
                TIMER_NEXT_DUE.labels(*labels).set(nxt / 1000)
                nexts.add(labels)
            keys, size = store.size_estimate()
            STORE_KEYS.labels(*labels).set(keys)
            STORE_BYTES.labels(*labels).set(size)
        for gauge in (STORE_KEYS, STORE_BYTES):
            self._keep(gauge, seen)
        # Between counts, a revoked partition's count goes; a new one's waits for the next count.
        self._keep(TIMERS_DUE, seen if count_timers else seen & self._labelled.get(TIMERS_DUE, set()))
        self._keep(TIMER_NEXT_DUE, nexts)

    def _keep(self, gauge: Gauge, labelsets: set[tuple[str, ...]]) -> None:
        """Remove the children of ``gauge`` this instance set before and not now (a revoked partition)."""
        for gone in self._labelled.get(gauge, set()) - labelsets:
            _remove(gauge, gone)
        self._labelled[gauge] = labelsets


class ConsumerLag:
    """Samples one consumer's lag per assigned partition, on the thread that owns the consumer.

    Lag is the partition's end offset as last fetched (librdkafka's cached high watermark; for a
    ``read_committed`` consumer the last stable offset) minus the consumer's position. The position moves
    past transaction markers (checked on the broker: a drained partition shows 0), so an idle transactional
    input shows 0, not 1 as a committed-offset lag would. Nothing here calls the broker.
    """

    def __init__(self, component: str) -> None:
        self.component = component
        self._seen: set[tuple[str, ...]] = set()

    def refresh(self, consumer: Consumer) -> bool:
        """Sample the lag; whether ``consumer`` has partitions assigned (for `recovered_if_quiet`)."""
        try:
            assignment = consumer.assignment()
            positions = consumer.position(assignment) if assignment else []
        except (RuntimeError, confluent_kafka.KafkaException):  # closed or being replaced: next time
            return False
        seen: set[tuple[str, ...]] = set()
        for tp in positions:
            labels = (self.component, tp.topic, str(tp.partition))
            try:
                _low, high = consumer.get_watermark_offsets(
                    TopicPartition(tp.topic, tp.partition), cached=True
                )
            except (RuntimeError, confluent_kafka.KafkaException):
                continue
            if tp.offset < 0 or high < 0:
                continue  # nothing fetched yet: unknown, not zero
            CONSUMER_LAG.labels(*labels).set(max(0, high - tp.offset))
            seen.add(labels)
        for gone in self._seen - seen:
            _remove(CONSUMER_LAG, gone)
        self._seen = seen
        return bool(assignment)

    def forget(self) -> None:
        for gone in self._seen:
            _remove(CONSUMER_LAG, gone)
        self._seen = set()


def _remove(gauge: Gauge, labels: tuple[str, ...]) -> None:
    """Drop one child of ``gauge`` (a partition no longer assigned), if it is there."""
    with contextlib.suppress(KeyError):
        gauge.remove(*labels)


# -- faults ---------------------------------------------------------------------------------------------
class CountedFaultLog(FaultLog):
    """The processor's `FaultLog`, also counting each episode when it starts and showing it while it lasts
    (as a gauge set from the calling thread, so it is current even while the loop waits out an outage)."""

    def __init__(
        self, logger: Any, component: str, clock: Callable[[], float] = time.monotonic
    ) -> None:
        super().__init__(logger)
        self.component = component
        self._going_on: set[str] = set()  # `recovered` runs after every successful call: keep it cheap
        self._clock = clock
        self._last_fault: dict[str, float] = {}

    def fault(self, what: str, detail: object) -> None:
        self._last_fault[what] = self._clock()
        if what not in self._going_on:
            self._going_on.add(what)
            FAULT_EPISODES.labels(self.component, what).inc()
            FAULTS_ACTIVE.labels(self.component, what).set(1)
        super().fault(what, detail)

    def recovered(self, what: str) -> None:
        if self._going_on and what in self._going_on:
            self._going_on.discard(what)
            FAULTS_ACTIVE.labels(self.component, what).set(0)
        super().recovered(what)

    def recovered_if_quiet(self, what: str) -> None:
        """Close ``what`` if no occurrence was recorded for `QUIET_S`: for faults that only a record arriving
        would close otherwise (consume errors on an idle processor). Call it only while partitions are
        assigned, so a consumer that lost its group does not count as quiet."""
        if what in self._going_on and self._clock() - self._last_fault.get(what, 0.0) >= QUIET_S:
            self.recovered(what)


class CountedEpisode(Episode):
    """A worker's `Episode` that is also counted (`FAULT_EPISODES`) and shown (`FAULTS_ACTIVE`)."""

    def __init__(
        self,
        logger: Any,
        what: str,
        component: str,
        fault: str,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(logger, what)
        self._labels = (component, fault)
        self._clock = clock
        self._last_failure = 0.0

    def failed(self, detail: object) -> None:
        self._last_failure = self._clock()
        if not self.active:
            FAULT_EPISODES.labels(*self._labels).inc()
            FAULTS_ACTIVE.labels(*self._labels).set(1)
        super().failed(detail)

    def recovered(self) -> None:
        if self.active:
            FAULTS_ACTIVE.labels(*self._labels).set(0)
        super().recovered()

    def recovered_if_quiet(self) -> None:
        """Close the episode if it saw no failure for `QUIET_S` (see `CountedFaultLog.recovered_if_quiet`)."""
        if self.active and self._clock() - self._last_failure >= QUIET_S:
            self.recovered()
