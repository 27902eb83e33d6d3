"""Step workers: consume step commands, run the user's step functions, report results to the inbox.

At-least-once by design: a result is produced (idempotent producer) and only then is the command's offset
committed. A worker that dies in between runs the step again, which is why steps get an idempotency key and
the processor drops duplicate or stale results. All consumer calls happen on one dedicated thread
(librdkafka consumers are not meant to be shared across threads); step coroutines run on the asyncio loop
and plain functions on a thread pool.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import itertools
import logging
import os
import socket
import threading
import time
import uuid
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import Consumer, KafkaException, Message, Producer, TopicPartition

from orchestrator import topology
from orchestrator._engine import attempts, kafka
from orchestrator._engine.events import Event, StepCompleted, StepFailed, StepStarted, encode_event
from orchestrator._engine.offsets import OffsetTracker
from orchestrator._engine.partitioning import partition_for
from orchestrator._engine.records import DeadLetter, StepCommand, decode_command, encode_dead_letter
from orchestrator.app import App
from orchestrator.context import StepInfo, _current_step
from orchestrator.errors import SchemaError

log = logging.getLogger("orchestrator.worker")


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
    """

    queues: tuple[str, ...] | None = None
    concurrency: int = 64
    sync_threads: int = 16
    commit_interval_ms: int = 200
    worker_id: str = field(default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}")
    instance_id: str | None = None
    consumer_overrides: dict[str, Any] = field(default_factory=dict)


@dataclass
class WorkerStats:
    started: int = 0
    completed: int = 0
    failed: int = 0
    dead_letters: int = 0


class Worker:
    def __init__(self, app: App, config: WorkerConfig | None = None) -> None:
        self.app = app
        self.config = config or WorkerConfig()
        self.queues = self.config.queues or tuple(sorted(app.queues))
        self.topics = [topology.tasks_topic(app.name, q) for q in self.queues]
        self.inbox = topology.inbox_topic(app.name)
        self.stats = WorkerStats()
        self._tracker = OffsetTracker()
        # Results Kafka has acknowledged, appended by librdkafka's delivery callbacks (producer poll thread)
        # and folded into the tracker before each commit: no event-loop wake-up per result.
        self._delivered: deque[tuple[str, int, int]] = deque()
        # Unique event ids without a uuid4 per result: a random prefix for this process, then a counter.
        self._id_prefix = uuid.uuid4().hex[:8]
        self._ids = itertools.count()
        self._running: dict[tuple[str, int, int], tuple[StepInfo, asyncio.Future[Any] | None]] = {}
        self._stop = threading.Event()

    def stop(self) -> None:
        self._stop.set()

    async def run(self) -> None:
        """Serve until `stop()`; in-flight steps finish (their results are reported) before returning."""
        s = self.app.settings
        await asyncio.to_thread(kafka.ensure_topics, self.app)
        loop = asyncio.get_running_loop()
        consumer_thread = ThreadPoolExecutor(1, thread_name_prefix="orchestrator-consumer")
        sync_pool = ThreadPoolExecutor(self.config.sync_threads, thread_name_prefix="orchestrator-step")
        producer = Producer(kafka.producer_config(s.bootstrap_servers))
        static = {"group.instance.id": f"worker-{self.config.instance_id}"} if self.config.instance_id else {}
        consumer = Consumer(
            kafka.consumer_config(
                s.bootstrap_servers, f"{self.app.name}.workers", **static, **self.config.consumer_overrides
            )
        )
        poller = threading.Thread(target=self._poll_producer, args=(producer,), daemon=True)
        poller.start()
        slots = asyncio.Semaphore(self.config.concurrency)
        tasks: set[asyncio.Task[None]] = set()
        await loop.run_in_executor(
            consumer_thread,
            lambda: consumer.subscribe(self.topics, on_revoke=self._on_revoke, on_lost=self._on_revoke),
        )
        log.info("worker %s serving %s", self.config.worker_id, ", ".join(self.topics))
        last_commit = time.monotonic()
        try:
            while not self._stop.is_set():
                free = self.config.concurrency - len(tasks)
                msgs: list[Message] = []
                if free > 0:
                    msgs = await loop.run_in_executor(consumer_thread, _poll_batch, consumer, free, 0.05)
                else:
                    await asyncio.sleep(0.005)
                for msg in msgs:
                    if msg.error() is not None:
                        log.warning("consumer error: %s", msg.error())
                        continue
                    await slots.acquire()
                    self._tracker.started(msg.topic() or "", msg.partition() or 0, msg.offset() or 0)
                    task = asyncio.create_task(self._execute(msg, producer, loop, sync_pool))
                    tasks.add(task)
                    task.add_done_callback(functools.partial(_task_done, tasks, slots))
                if time.monotonic() - last_commit >= self.config.commit_interval_ms / 1000:
                    await loop.run_in_executor(consumer_thread, self._commit, consumer)
                    last_commit = time.monotonic()
        finally:
            if tasks:
                await asyncio.gather(*tasks, return_exceptions=True)
            await asyncio.to_thread(producer.flush, 30)
            await loop.run_in_executor(consumer_thread, self._commit, consumer)
            await loop.run_in_executor(consumer_thread, consumer.close)
            self._stop.set()
            poller.join(5)
            consumer_thread.shutdown()
            sync_pool.shutdown(wait=False, cancel_futures=True)
            log.info("worker %s stopped: %s", self.config.worker_id, self.stats)

    # -- consumer-thread helpers --------------------------------------------------------------------------
    def _commit(self, consumer: Consumer) -> None:
        while self._delivered:
            self._tracker.finished(*self._delivered.popleft())
        offsets = self._tracker.committable()
        if not offsets:
            return
        try:
            consumer.commit(
                offsets=[TopicPartition(t, p, o) for (t, p), o in offsets.items()], asynchronous=False
            )
            self._tracker.mark_committed(offsets)
        except KafkaException as exc:
            log.warning("offset commit failed (will retry): %s", exc)

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._commit(consumer)
        for tp in partitions:
            self._tracker.forget(tp.topic, tp.partition)

    def _poll_producer(self, producer: Producer) -> None:
        while not self._stop.is_set():
            producer.poll(0.05)
        producer.poll(0)

    # -- one command --------------------------------------------------------------------------------------
    async def _execute(
        self, msg: Message, producer: Producer, loop: asyncio.AbstractEventLoop, pool: ThreadPoolExecutor
    ) -> None:
        topic, partition, offset = msg.topic() or "", msg.partition() or 0, msg.offset() or 0

        def delivered(err: Any, _msg: Message) -> None:
            if err is None:
                self._delivered.append((topic, partition, offset))
            else:
                log.error(
                    "result of %s[%d]@%d not delivered: %s; the step will run again",
                    topic,
                    partition,
                    offset,
                    err,
                )

        try:
            cmd = decode_command(msg.value())
        except SchemaError as exc:
            self.stats.dead_letters += 1
            letter = DeadLetter(
                topic,
                partition,
                offset,
                msg.key(),
                msg.value(),
                "SchemaError",
                str(exc),
                attempts.now_ms(),
                f"worker:{self.config.worker_id}",
            )
            producer.produce(
                topology.dlq_topic(self.app.name),
                encode_dead_letter(letter),
                msg.key(),
                on_delivery=delivered,
            )
            return
        if cmd.cancel:
            self._cancel_running(cmd)
            self._tracker.finished(topic, partition, offset)
            return
        self.stats.started += 1
        if cmd.report_start:
            started = Event(
                event_id=f"{cmd.idempotency_key}/{cmd.attempt}/started/{self._event_suffix()}",
                run_id=cmd.run_id,
                workflow=cmd.workflow,
                timestamp_ms=attempts.now_ms(),
                body=StepStarted(cmd.position, cmd.attempt, attempts.now_ms(), self.config.worker_id),
            )
            self._to_inbox(producer, started, None)
        body = await self._run_step(cmd, loop, pool)
        self._to_inbox(producer, attempts.result_event(cmd, body, self._event_suffix()), delivered)

    def _event_suffix(self) -> str:
        return f"{self._id_prefix}{next(self._ids)}"

    def _to_inbox(self, producer: Producer, event: Event, on_delivery: Any) -> None:
        kwargs = {"on_delivery": on_delivery} if on_delivery is not None else {}
        producer.produce(
            self.inbox,
            encode_event(event),
            event.run_id.encode(),
            partition=partition_for(event.run_id, self.app.settings.partitions),
            **kwargs,
        )

    def _cancel_running(self, cmd: StepCommand) -> None:
        """The run was cancelled (or this attempt timed out): stop the attempt if it runs here."""
        entry = self._running.get((cmd.run_id, cmd.position, cmd.attempt))
        if entry is None:
            return
        info, task = entry
        info.cancelled.set()
        if task is not None:
            task.cancel()
        log.info("cancelled step %s of %s attempt %d", cmd.step, cmd.run_id, cmd.attempt)

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


def _poll_batch(consumer: Consumer, limit: int, timeout: float) -> list[Message]:
    """Wait for the first record only, then take what is already fetched: low latency and batching."""
    first = consumer.poll(timeout)
    if first is None:
        return []
    return [first, *consumer.consume(limit - 1, 0)] if limit > 1 else [first]
