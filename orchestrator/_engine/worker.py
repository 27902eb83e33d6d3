"""Step workers: consume step commands, run the user's step functions, report results to the inbox.

A worker that finished a step holds its result until Kafka has it (`outbox.Outbox` produces it again after
a timeout, a full local queue or a fatal producer error), and only then is the command's offset committed.
A command that reaches the worker again meanwhile (its partition was lost in a broker outage and fetched
again from the committed offset) joins its attempt instead of running the step again
(`step_ledger.StepLedger`). So only a worker that died runs a step again, which is why steps get an
idempotency key and the processor drops duplicate or stale results.

Nothing a command does can leave its offset in flight: records that are not commands we can run (junk,
wrong schema, unknown step) and internal errors go to the dead-letter topic with the reason, and the offset
completes when the dead letter is delivered. A broker outage is ridden out: errors are logged once per
episode, commits are retried, consumption resumes when the broker is back.

Threads: all consumer calls happen on one dedicated thread (librdkafka consumers are not meant to be shared
across threads); one thread polls the producer (delivery callbacks); step coroutines run on the asyncio
loop and plain functions on a thread pool.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import itertools
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition
from opentelemetry.trace import Span

from orchestrator import topology
from orchestrator._core import formats
from orchestrator._engine import access, attempts, kafka, metrics, tracing
from orchestrator._engine.committer import Committer
from orchestrator._engine.events import Event, StepCompleted, StepFailed, StepStarted, encode_event
from orchestrator._engine.offsets import OffsetTracker
from orchestrator._engine.outbox import Outbox, Outgoing
from orchestrator._engine.partitioning import partition_for
from orchestrator._engine.records import DeadLetter, StepCommand, decode_command, encode_dead_letter
from orchestrator._engine.step_ledger import Attempt, Claim, Coords, StepLedger
from orchestrator._topic_admin import TopicAdminError
from orchestrator.app import App
from orchestrator.context import StepInfo, _current_step
from orchestrator.errors import SchemaError

log = logging.getLogger("orchestrator.worker")
# librdkafka logs at its default level, as the processor's clients do: a failed reconnect repeated in an
# outage is collapsed into its first line and a summary (orchestrator._log_repeats, ADR 0022); the errors
# also reach error_cb and are logged once per episode (`episodes.Episode`).

CONSUMER_FAILURES = 3
CONSUMER_FAILURE_WINDOW_S = 300.0
"""A worker whose consumer fails fatally this many times within this window stops (`_replace_consumer`)."""


class WorkerFailedError(RuntimeError):
    """The worker cannot go on (e.g. its static instance id was taken by another worker)."""


@dataclass(frozen=True)
class WorkerConfig:
    """Knobs of one worker process.

    Attributes:
        queues: task queues to serve; None serves every queue the app's steps use.
        concurrency: steps running at once (async and sync together).
        instance_id: stable name for static group membership (a restarted worker gets its partitions back
            without a rebalance wait); None for dynamic membership.
        sync_threads: threads for plain (non-async) step functions.
        commit_interval_ms: how often finished offsets are committed.
        delivery_timeout_ms: librdkafka's ``message.timeout.ms`` for results: how long one produce of a
            result may wait for the broker before it is handed back and produced again. The result is held
            and produced again however long the outage lasts; this only bounds one try. Each try after a
            timeout may write the result twice (the processor keeps one per attempt), never runs the step.
        drain_timeout_s: on stop, how long to wait for held results to be delivered. Results still held
            then are lost with the process, and their steps run again on another worker.
        consumer_overrides, producer_overrides: librdkafka settings on top of the engine's.
        buffer: records taken from the consumer ahead of a free slot (None: as many as ``concurrency``).
            With every slot busy the worker keeps polling (rebalances, commit results, the poll interval)
            into this bounded queue and pauses its assignment only when the queue is full, resuming when
            it is half empty. 0 is the earlier back-pressure: pause at every full house and seek back a
            record that arrives anyway; librdkafka drops its prefetched records at each pause, so that
            refetches them (ADR 0025, "Back-pressure").
        stats_interval_ms: librdkafka ``statistics.interval.ms`` for the consumer; when > 0 the fetch
            requests and bytes it reports are kept in `WorkerStats` (benchmarks; 0 = off).
    """

    queues: tuple[str, ...] | None = None
    concurrency: int = 64
    sync_threads: int = 16
    commit_interval_ms: int = 200
    worker_id: str = field(default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}")
    instance_id: str | None = None
    delivery_timeout_ms: int = 30_000
    drain_timeout_s: float = 30.0
    consumer_overrides: dict[str, Any] = field(default_factory=dict)
    producer_overrides: dict[str, Any] = field(default_factory=dict)
    buffer: int | None = None
    stats_interval_ms: int = 0


@dataclass
class WorkerStats:
    started: int = 0
    completed: int = 0
    failed: int = 0
    dead_letters: int = 0
    pauses: int = 0  # calls to the consumer's pause (each drops the records librdkafka had prefetched)
    resumes: int = 0
    seeks: int = 0
    buffered_max: int = 0  # most records waiting for a slot at once
    fetch_requests: int = 0  # from librdkafka statistics (``stats_interval_ms``), summed over brokers
    fetched_bytes: int = 0


class Worker:
    def __init__(self, app: App, config: WorkerConfig | None = None) -> None:
        self.app = app
        self.config = config or WorkerConfig()
        self.queues = self.config.queues or tuple(sorted(app.queues))
        self.topics = [topology.tasks_topic(app.name, q) for q in self.queues]
        self._queue_of = dict(zip(self.topics, self.queues, strict=True))
        self._lag = metrics.ConsumerLag("worker")
        self.inbox = topology.inbox_topic(app.name)
        self.stats = WorkerStats()
        self._tracker = OffsetTracker()
        self._ledger = StepLedger()
        self._committer = Committer(self._tracker)
        self._consumer_trouble = metrics.CountedEpisode(log, "task topics unreachable", "worker", "consume")
        self._outbox: Outbox | None = None  # made by run(); tests may install one with a fake producer
        # Unique event ids without a uuid4 per result: a random prefix for this process, then a counter.
        self._id_prefix = uuid.uuid4().hex[:8]
        self._ids = itertools.count()
        self._running: dict[tuple[str, int, int], tuple[StepInfo, asyncio.Future[Any] | None]] = {}
        self._stop = threading.Event()
        self._fatal: str | None = None
        self._consumer_failed: str | None = None  # set by librdkafka's error callback, acted on by run()
        self._consumer_failures: deque[float] = deque()
        self._paused = False  # consumer thread only: the assignment is paused because every slot is busy
        # Consumer thread only: records taken from the consumer, waiting for a slot (`_poll_buffered`).
        self._buffered: deque[Message] = deque()
        self._buffer_limit = self.config.concurrency if self.config.buffer is None else self.config.buffer

    def stop(self) -> None:
        self._stop.set()

    def _make_producer(self, on_error: Callable[[KafkaError], None]) -> Producer:
        conf = kafka.producer_config(
            self.app.settings,
            **{
                "message.timeout.ms": self.config.delivery_timeout_ms,
                "error_cb": on_error,
            }
            | self.config.producer_overrides,
        )
        return kafka.new_producer(conf)

    def _make_consumer(self) -> Consumer:
        static = {"group.instance.id": f"worker-{self.config.instance_id}"} if self.config.instance_id else {}
        conf = kafka.consumer_config(
            self.app.settings,
            f"{self.app.name}.workers",
            **static,
            **{
                "on_commit": self._committer.on_commit,
                "error_cb": self._on_consumer_error,
            }
            | (
                {"statistics.interval.ms": self.config.stats_interval_ms, "stats_cb": self._on_stats}
                if self.config.stats_interval_ms > 0
                else {}
            )
            | self.config.consumer_overrides,
        )
        return kafka.new_consumer(conf)

    async def _wait_for_topics(self) -> None:
        """Create missing topics, waiting for a broker that is away instead of exiting.

        Why: a worker (re)started during a broker outage (a pod rescheduled while the cluster restarts) used
        to exit at this first call, and whatever supervises it had to notice and try again. It waits, logging
        the trouble once, until the broker answers or the worker is stopped (seen in test_chaos).
        """
        trouble = metrics.CountedEpisode(log, "broker unreachable at start-up", "worker", "topic check")
        delay = 0.2
        while not self._stop.is_set():
            try:
                await asyncio.to_thread(kafka.ensure_topics, self.app, component="worker")
            except (TopicAdminError, KafkaException) as exc:
                trouble.failed(exc)
                await asyncio.to_thread(self._stop.wait, delay)
                delay = min(delay * 2, 5.0)
                continue
            trouble.recovered()
            return

    async def run(self) -> None:
        """Serve until `stop()`; in-flight steps finish and their results are delivered before returning."""
        await self._wait_for_topics()
        if self._stop.is_set():
            return
        loop = asyncio.get_running_loop()
        consumer_thread = ThreadPoolExecutor(1, thread_name_prefix="orchestrator-consumer")
        sync_pool = ThreadPoolExecutor(self.config.sync_threads, thread_name_prefix="orchestrator-step")
        outbox = self._outbox = Outbox(self._make_producer)
        consumer = self._make_consumer()
        pumping = threading.Event()
        pumping.set()
        poller = threading.Thread(
            target=_pump, args=(outbox, pumping), daemon=True, name="orchestrator-producer"
        )
        poller.start()
        slots = asyncio.Semaphore(self.config.concurrency)
        tasks: set[asyncio.Task[None]] = set()
        await loop.run_in_executor(consumer_thread, self._subscribe, consumer)
        log.info("worker %s serving %s", self.config.worker_id, ", ".join(self.topics))
        last_commit = next_refresh = time.monotonic()
        try:
            while not self._stop.is_set():
                free = self.config.concurrency - len(tasks)
                msgs = await loop.run_in_executor(consumer_thread, self._poll, consumer, free, 0.05)
                for msg in msgs:
                    if msg.error() is not None:
                        doing = f"consuming {', '.join(self.topics)} in group {self.app.name}.workers"
                        refused = access.denied(
                            self.app.settings, KafkaException(msg.error()), "worker", doing
                        )
                        if refused is not None:
                            raise refused  # an ACL is missing: retrying cannot help (ADR 0021)
                        self._consumer_trouble.failed(msg.error())
                        continue
                    self._consumer_trouble.recovered()
                    await slots.acquire()
                    self._tracker.started(msg.topic() or "", msg.partition() or 0, msg.offset() or 0)
                    task = asyncio.create_task(self._execute(msg, loop, sync_pool))
                    tasks.add(task)
                    task.add_done_callback(functools.partial(_task_done, tasks, slots))
                if outbox.denied is not None:  # an ACL is missing: no result could ever be delivered
                    doing = f"writing step results to {self.inbox}, dead letters to the dlq"
                    denial = KafkaException(outbox.denied)
                    raise access.denied(self.app.settings, denial, "worker", doing) or denial
                if self._consumer_failed is not None:
                    consumer = await loop.run_in_executor(consumer_thread, self._replace_consumer, consumer)
                if time.monotonic() >= next_refresh:
                    if await loop.run_in_executor(consumer_thread, self._lag.refresh, consumer):
                        self._consumer_trouble.recovered_if_quiet()  # an idle worker gets no record
                    next_refresh = time.monotonic() + metrics.REFRESH_S
                if time.monotonic() - last_commit >= self.config.commit_interval_ms / 1000:
                    await loop.run_in_executor(consumer_thread, self._committer.commit, consumer)
                    last_commit = time.monotonic()
        finally:
            if tasks:
                await asyncio.gather(*tasks, return_exceptions=True)
            pumping.clear()
            await asyncio.to_thread(poller.join)
            left = await asyncio.to_thread(outbox.drain, self.config.drain_timeout_s)
            if left:
                log.error(
                    "worker %s stopping with %d result(s) not delivered after %.0f s; their steps will run "
                    "again on another worker",
                    self.config.worker_id,
                    left,
                    self.config.drain_timeout_s,
                )
            await loop.run_in_executor(consumer_thread, self._committer.commit_now, consumer)
            await loop.run_in_executor(consumer_thread, consumer.close)
            self._lag.forget()
            self._stop.set()
            consumer_thread.shutdown()
            sync_pool.shutdown(wait=False, cancel_futures=True)
            log.info("worker %s stopped: %s, outbox %s", self.config.worker_id, self.stats, outbox.stats)
        if self._fatal is not None:
            raise WorkerFailedError(self._fatal)

    # -- consumer thread ----------------------------------------------------------------------------------
    def _poll(self, consumer: Consumer, free: int, timeout: float) -> list[Message]:
        """Up to ``free`` records; with no free slot, poll paused (`_poll_paused`) and return none."""
        if self._buffer_limit > 0:
            return self._poll_buffered(consumer, free, timeout)
        if free <= 0:
            self._poll_paused(consumer, min(timeout, 0.005))  # a slot may free up any moment
            return []
        if self._paused:
            self._paused = False
            assignment = consumer.assignment()
            if assignment:
                consumer.resume(assignment)
                self.stats.resumes += 1
        return _poll_batch(consumer, free, timeout)

    def _poll_buffered(self, consumer: Consumer, free: int, timeout: float) -> list[Message]:
        """Up to ``free`` records, first from the local queue; keep polling into it while slots are busy.

        Why: librdkafka drops a partition's prefetched records when it is paused and fetches them again on
        resume, so pausing whenever every slot is busy (`_poll_paused`) made the worker and broker fetch the
        same records over and over and stalled the next step on a fetch round trip (ADR 0025). Here the
        assignment is paused only when the queue holds ``buffer`` records, and resumed when half of them
        have gone to slots. A queued record counts as in flight in the offset tracker from the moment it
        is taken, so no commit passes it; on revoke or loss it is dropped and its partition's next owner
        gets it from the committed offset; a crash loses only this memory, the offsets were never committed.
        """
        limit = self._buffer_limit
        queued = self._buffered
        if self._paused and len(queued) <= limit // 2:
            assignment = consumer.assignment()
            if assignment:
                consumer.resume(assignment)
                self.stats.resumes += 1
            self._paused = False
        want = free + limit - len(queued)
        # Wait for records only when there is a slot for them and nothing queued; with every slot busy,
        # wait briefly (a slot may free up any moment); with records queued for a free slot, not at all.
        wait = (timeout if not queued else 0.0) if free > 0 else 0.005
        if want > 0 and not self._paused:
            taken = _poll_batch(consumer, want, wait)
        else:
            if not self._paused:
                assignment = consumer.assignment()
                if assignment:
                    consumer.pause(assignment)
                    self.stats.pauses += 1
                self._paused = True
            # Still poll, so rebalances, commit results and errors are served and the group keeps us.
            msg = consumer.poll(0.0 if free > 0 else 0.005)
            taken = [] if msg is None else [msg]
            if msg is not None and msg.error() is None:  # a partition assigned meanwhile: pause it too
                consumer.pause([TopicPartition(msg.topic() or "", msg.partition() or 0)])
                self.stats.pauses += 1
        for msg in taken:
            if msg.error() is None:
                self._tracker.started(msg.topic() or "", msg.partition() or 0, msg.offset() or 0)
        queued.extend(taken)
        self.stats.buffered_max = max(self.stats.buffered_max, len(queued))
        out: list[Message] = []
        while free > 0 and queued:
            out.append(queued.popleft())
            free -= 1
        metrics.WORKER_BUFFERED.set(len(queued))
        return out

    def _drop_buffered(self, partitions: list[TopicPartition] | None) -> None:
        """Forget queued records of partitions this worker no longer owns (None: all); never started,
        they are fetched again by the partition's next owner from the committed offset."""
        if partitions is None:
            self._buffered.clear()
        else:
            gone = {(tp.topic, tp.partition) for tp in partitions}
            self._buffered = deque(m for m in self._buffered if (m.topic(), m.partition()) not in gone)
        metrics.WORKER_BUFFERED.set(len(self._buffered))

    def _on_stats(self, raw: str) -> None:
        """librdkafka statistics: keep the consumer's fetch requests and bytes received (benchmarks)."""
        brokers = json.loads(raw).get("brokers", {}).values()
        self.stats.fetch_requests = sum(b.get("req", {}).get("Fetch", 0) for b in brokers)
        self.stats.fetched_bytes = sum(b.get("rxbytes", 0) for b in brokers)

    def _poll_paused(self, consumer: Consumer, timeout: float) -> None:
        """Every slot is busy: keep polling with the assignment paused, so that commit results, rebalances
        and errors are still served and the group does not drop a worker whose steps take long
        (``max.poll.interval.ms``). A record that comes anyway (a partition assigned meanwhile) is put back.
        """
        assignment = consumer.assignment()
        if assignment:
            consumer.pause(assignment)
            self.stats.pauses += 1
            self._paused = True
        msg = consumer.poll(timeout)
        if msg is not None and msg.error() is None:
            back = TopicPartition(msg.topic() or "", msg.partition() or 0, msg.offset() or 0)
            consumer.seek(back)
            consumer.pause([back])
            self.stats.seeks += 1
            self._paused = True

    def _subscribe(self, consumer: Consumer) -> None:
        consumer.subscribe(self.topics, on_revoke=self._on_revoke, on_lost=self._on_lost)

    def _replace_consumer(self, old: Consumer) -> Consumer:
        """A consumer librdkafka declared fatal is replaced, unless that keeps happening.

        After a broker restart a static member can be fenced although no other worker has its instance id
        (the processor side saw the same); replacing the consumer rides that out. A genuine duplicate
        instance id fences the new consumer again at once: after `CONSUMER_FAILURES` within
        `CONSUMER_FAILURE_WINDOW_S` the worker stops and says why.
        """
        reason, self._consumer_failed = self._consumer_failed, None
        now = time.monotonic()
        self._consumer_failures.append(now)
        while self._consumer_failures[0] < now - CONSUMER_FAILURE_WINDOW_S:
            self._consumer_failures.popleft()
        if len(self._consumer_failures) >= CONSUMER_FAILURES:
            self._fatal = (
                f"the consumer failed fatally {len(self._consumer_failures)} times in "
                f"{CONSUMER_FAILURE_WINDOW_S:.0f} s, last: {reason}; if it says fenced, another worker runs "
                f"with instance id {self.config.instance_id!r}"
            )
            log.error("worker %s: %s; stopping", self.config.worker_id, self._fatal)
            self._stop.set()
            return old
        log.error("worker %s: consumer failed fatally (%s); replacing it", self.config.worker_id, reason)
        metrics.CLIENT_REPLACEMENTS.labels("worker", "consumer").inc()
        self._tracker.forget_all()  # as if lost: commands fetched again join their attempts
        try:
            old.close()
        except Exception:  # a failed consumer may refuse to close cleanly; it is dropped anyway
            log.debug("closing the failed consumer", exc_info=True)
        consumer = self._make_consumer()
        self._paused = False
        self._drop_buffered(None)
        self._subscribe(consumer)
        return consumer

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Partitions handed over in a rebalance: commit what finished on them first."""
        self._committer.commit_now(consumer, partitions)
        self._drop_buffered(partitions)
        for tp in partitions:
            self._tracker.forget(tp.topic, tp.partition)

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Partitions lost (e.g. the session expired in a broker outage): no commit is possible any more.

        Steps of theirs still running here go on and their results are delivered; if the partitions come
        back, the commands fetched again join those attempts (`StepLedger`) instead of running again.
        """
        log.warning(
            "worker %s lost %d partition(s); they will be fetched again",
            self.config.worker_id,
            len(partitions),
        )
        self._drop_buffered(partitions)
        for tp in partitions:
            self._tracker.forget(tp.topic, tp.partition)

    def _on_consumer_error(self, err: KafkaError) -> None:
        if err.fatal():
            self._consumer_failed = f"{err.name()}: {err.str()}"
            return
        self._consumer_trouble.failed(err.str())

    # -- one command --------------------------------------------------------------------------------------
    async def _execute(self, msg: Message, loop: asyncio.AbstractEventLoop, pool: ThreadPoolExecutor) -> None:
        """Handle one command; whatever happens, its offset completes (after its report is delivered)."""
        coords = (msg.topic() or "", msg.partition() or 0, msg.offset() or 0)
        claimed: Attempt | None = None
        try:
            try:
                cmd = decode_command(msg.value())
            except SchemaError as exc:
                self._dead_letter(msg, coords, "SchemaError", str(exc))
                return
            if cmd.cancel:
                self._cancel_running(cmd)
                self._tracker.finished(*coords)
                return
            if cmd.step not in self.app.steps:
                reason = (
                    f"this worker (queues served: {', '.join(self.queues)}) has no step {cmd.step!r}; deploy "
                    "the code that registers it, then re-drive this record (orchestrator dlq redrive)"
                )
                self._dead_letter(msg, coords, "UnknownStepError", reason)
                return
            attempt = (cmd.run_id, cmd.position, cmd.attempt)
            claim = self._ledger.claim(attempt, coords)
            if claim is not Claim.RUN:
                log.info(
                    "step %s of %s attempt %d delivered again: %s, not running it again",
                    cmd.step,
                    cmd.run_id,
                    cmd.attempt,
                    "already reported" if claim is Claim.DONE else "it ran here already",
                    extra={"run_id": cmd.run_id, "step": cmd.step, "attempt": cmd.attempt},
                )
                if claim is Claim.DONE:
                    self._tracker.finished(*coords)
                return
            claimed = attempt
            queue = self._queue_of.get(coords[0], "")
            if tracing.enabled():  # an OpenTelemetry SDK is installed: the attempt runs in its span
                with tracing.worker_span(cmd, msg) as span:
                    await self._attempt(cmd, attempt, loop, pool, queue, span)
            else:
                await self._attempt(cmd, attempt, loop, pool, queue)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("internal error on %s[%d]@%d; dead-lettering the command", *coords)
            self._dead_letter(msg, coords, "WorkerError", f"{type(exc).__name__}: {exc}", claimed)

    async def _attempt(
        self,
        cmd: StepCommand,
        attempt: Attempt,
        loop: asyncio.AbstractEventLoop,
        pool: ThreadPoolExecutor,
        queue: str = "",
        span: Span | None = None,
    ) -> None:
        """Run the step once and hand its result to the outbox: the last thing this does, it never raises."""
        self.stats.started += 1
        if cmd.report_start:
            started = Event(
                event_id=formats.attempt_started_id(cmd.idempotency_key, cmd.attempt, self._event_suffix()),
                run_id=cmd.run_id,
                workflow=cmd.workflow,
                timestamp_ms=attempts.now_ms(),
                body=StepStarted(cmd.position, cmd.attempt, attempts.now_ms(), self.config.worker_id),
            )
            self._to_inbox(started, f"start of {cmd.step} for run {cmd.run_id}", None)
        metrics.STEPS_IN_FLIGHT.inc()
        try:
            body = await self._run_step(cmd, loop, pool)
        finally:
            metrics.STEPS_IN_FLIGHT.dec()
        metrics.observe_attempt(cmd, queue, body)
        if span is not None:
            tracing.end_worker_span(span, body, cmd.scheduled_ms)
        event = attempts.result_event(cmd, body, self._event_suffix())
        what = f"result of {cmd.step} for run {cmd.run_id} (attempt {cmd.attempt})"
        self._to_inbox(event, what, functools.partial(self._reported, attempt))

    def _reported(self, attempt: Attempt) -> None:
        """The attempt's report reached Kafka (producer poll thread): its commands' offsets are done."""
        for coords in self._ledger.delivered(attempt):
            self._tracker.finished(*coords)

    def _dead_letter(
        self, msg: Message, coords: Coords, error_type: str, reason: str, attempt: Attempt | None = None
    ) -> None:
        self.stats.dead_letters += 1
        letter = DeadLetter(
            coords[0],
            coords[1],
            coords[2],
            msg.key(),
            msg.value(),
            error_type,
            reason,
            attempts.now_ms(),
            f"worker:{self.config.worker_id}",
        )

        def delivered() -> None:
            metrics.DEAD_LETTERS.labels("worker", error_type).inc()
            self._tracker.finished(*coords)
            if attempt is not None:  # not reported: a re-drive of the dead letter runs the step again
                for waiting in self._ledger.release(attempt):
                    self._tracker.finished(*waiting)

        what = f"dead letter for {coords[0]}[{coords[1]}]@{coords[2]} ({error_type})"
        self._require_outbox().send(
            Outgoing(
                topology.dlq_topic(self.app.name), encode_dead_letter(letter), msg.key(), what, -1, delivered
            )
        )

    def _event_suffix(self) -> str:
        return f"{self._id_prefix}{next(self._ids)}"

    def _to_inbox(self, event: Event, what: str, on_delivered: Callable[[], None] | None) -> None:
        partition = partition_for(event.run_id, self.app.settings.partitions)
        # The current (worker's) span, with the attempt's tracestate; none without an OpenTelemetry SDK.
        headers = (tracing.inject() or None) if tracing.enabled() else None
        out = Outgoing(
            self.inbox, encode_event(event), event.run_id.encode(), what, partition, on_delivered, headers
        )
        self._require_outbox().send(out)

    def _require_outbox(self) -> Outbox:
        if self._outbox is None:
            raise RuntimeError("Worker._outbox is made by run(); tests install one before calling _execute")
        return self._outbox

    def _cancel_running(self, cmd: StepCommand) -> None:
        """The run was cancelled (or this attempt timed out): stop the attempt if it runs here."""
        entry = self._running.get((cmd.run_id, cmd.position, cmd.attempt))
        if entry is None:
            return
        info, task = entry
        info.cancelled.set()
        if task is not None:
            task.cancel()
        log.info(
            "cancelled step %s of %s attempt %d",
            cmd.step,
            cmd.run_id,
            cmd.attempt,
            extra={"run_id": cmd.run_id, "step": cmd.step, "attempt": cmd.attempt},
        )

    async def _run_step(
        self, cmd: StepCommand, loop: asyncio.AbstractEventLoop, pool: ThreadPoolExecutor
    ) -> StepCompleted | StepFailed:
        started = attempts.now_ms()
        worker = self.config.worker_id
        try:
            where = f"this worker (queues served: {', '.join(self.queues)})"
            definition = attempts.definition_of(self.app, cmd, where)
            args = attempts.arguments(self.app, definition, cmd)
            info = attempts.step_info(cmd)
            token = _current_step.set(info)
            running_key = (cmd.run_id, cmd.position, cmd.attempt)
            try:
                timeout = cmd.timeout_ms / 1000 if cmd.timeout_ms else None
                if definition.is_async:
                    inner: asyncio.Future[Any] = asyncio.ensure_future(definition.fn(*args))
                else:
                    ctx = contextvars.copy_context()
                    inner = loop.run_in_executor(pool, ctx.run, definition.fn, *args)
                self._running[running_key] = (info, inner if definition.is_async else None)
                try:
                    result = await asyncio.wait_for(inner, timeout)
                except asyncio.CancelledError:
                    if not info.cancelled.is_set():
                        raise  # the worker itself is being cancelled
                    raise attempts.StepCancelledError("the run was cancelled while this step ran") from None
            finally:
                self._running.pop(running_key, None)
                _current_step.reset(token)
            body = attempts.completed(self.app, cmd, result, started, worker)
            self.stats.completed += 1
            return body
        except Exception as exc:  # noqa: BLE001 - every step failure is reported, none crashes the worker
            self.stats.failed += 1
            return attempts.failed(cmd, exc, started, worker)


def _task_done(tasks: set[asyncio.Task[None]], slots: asyncio.Semaphore, task: asyncio.Task[None]) -> None:
    tasks.discard(task)
    slots.release()


def _pump(outbox: Outbox, pumping: threading.Event) -> None:
    while pumping.is_set():
        outbox.pump(0.05)


def _poll_batch(consumer: Consumer, limit: int, timeout: float) -> list[Message]:
    """Wait for the first record only, then take what is already fetched: low latency and batching."""
    first = consumer.poll(timeout)
    if first is None:
        return []
    return [first, *consumer.consume(limit - 1, 0)] if limit > 1 else [first]
