"""What the UI reads from and writes to Kafka, apart from the run list (that is the `RunQuery`'s).

Each read is the audit library's or the client's, the same calls the CLI makes (`orchestrator runs show`,
`history`, `replay RUN --at`, `dlq`, `schedules`); each action goes through the public `Client`. The
reads block (they read topics), so the web handlers run them on threads.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import KafkaException, TopicPartition

from orchestrator import topology
from orchestrator._engine import audit, kafka, wire
from orchestrator._engine.events import Event
from orchestrator._engine.reader import partition_count, read_partitions
from orchestrator._engine.records import DeadLetter, decode_dead_letter
from orchestrator._engine.state import KIND_COMPENSATION, KIND_STEP, STEP_SCHEDULED, RunState, StepRecord
from orchestrator._engine.unreadable import Unreadable, decoded
from orchestrator._topic_admin import admin_client
from orchestrator.app import App
from orchestrator.client import Client


@dataclass(frozen=True)
class PartitionLag:
    queue: str
    topic: str
    partition: int
    end_offset: int
    committed: int | None
    """The worker group's committed offset; None when the group never committed on this partition."""
    oldest_waiting_ms: int | None = None
    """Timestamp of the first command the workers have not consumed yet (None: nothing waits)."""
    lag: int = 0
    """Offsets between the committed one and the end: 0 when no record waits there (only transaction
    markers); otherwise an upper bound, since markers among the waiting records take offsets too."""


@dataclass(frozen=True)
class QueueReport:
    queue: str
    partitions: list[PartitionLag]
    in_flight: int
    """Steps whose current attempt a worker has started and not reported."""
    scheduled: int
    """Steps scheduled and not started yet (in the topic, or fetched and not begun)."""
    oldest_scheduled_ms: int | None

    @property
    def lag(self) -> int:
        return sum(p.lag for p in self.partitions)

    @property
    def oldest_waiting_ms(self) -> int | None:
        waiting = [p.oldest_waiting_ms for p in self.partitions if p.oldest_waiting_ms is not None]
        return min(waiting) if waiting else None


@dataclass(frozen=True)
class WorkerMember:
    """One worker in the workers' consumer group, and the task partitions it holds."""

    client_id: str
    host: str
    member_id: str
    partitions: tuple[str, ...]


@dataclass(frozen=True)
class Workers:
    state: str
    """The group's state as the coordinator reports it (STABLE, PREPARING_REBALANCE, EMPTY, ...)."""
    members: list[WorkerMember]


@dataclass
class Letters:
    letters: list[tuple[int, DeadLetter]] = field(default_factory=list)
    skipped: list[Unreadable] = field(default_factory=list)


def workers_group(app: App) -> str:
    """The consumer group workers join (`Worker._make_consumer`)."""
    return f"{app.name}.workers"


class Operations:
    """The UI's reads and actions for one App. One client for the server's life (`close` it)."""

    def __init__(self, app: App) -> None:
        self.app = app
        self.client = Client(app, on_unreadable=lambda bad: None)

    async def close(self) -> None:
        await self.client.close()

    # -- one run ----------------------------------------------------------------------------------------
    def state(self, run_id: str, skipped: list[Unreadable]) -> RunState | None:
        return audit.live_state(self.app, run_id, on_unreadable=skipped.append)

    def history(self, run_id: str, skipped: list[Unreadable]) -> list[Event]:
        return list(audit.history_events(self.app, run_id=run_id, on_unreadable=skipped.append))

    @staticmethod
    def state_at(events: Iterable[Event], run_id: str, seq: int) -> RunState | None:
        """The run as it stood right after its event ``seq``: its history folded up to there, as
        ``orchestrator replay RUN --at`` does it (by time), into a scratch store."""
        rebuilt = audit.rebuild([e for e in events if e.run_id == run_id and e.seq <= seq])
        return rebuilt.get(run_id)

    # -- actions (the public client) -------------------------------------------------------------------
    async def act(
        self,
        action: str,
        run_id: str,
        *,
        reason: str,
        signal: str = "",
        payload: Any = None,
        from_position: int | None = None,
    ) -> None:
        if action == "cancel":
            await self.client.cancel(run_id, reason)
        elif action == "resume":
            await self.client.resume(run_id, reason)
        elif action == "rerun":
            await self.client.rerun(run_id, from_position, reason)
        elif action == "signal":
            await self.client.signal(run_id, signal, payload)
        else:
            raise ValueError(f"unknown action {action!r}")

    async def pause_schedule(self, workflow: str, paused: bool) -> None:
        await self.client.pause_schedule(workflow, paused)

    def schedules(self, skipped: list[Unreadable]) -> list[dict[str, Any]]:
        return audit.schedules(self.app, on_unreadable=skipped.append)

    # -- dead letters (as `orchestrator dlq list|show|redrive`) ------------------------------------------
    def dead_letters(self) -> Letters:
        out = Letters()
        msgs = read_partitions(self.app.settings, topology.dlq_topic(self.app.name), [0])
        for where, letter in decoded(msgs, decode_dead_letter, wire.DEAD_LETTER, out.skipped.append):
            out.letters.append((where.offset, letter))
        return out

    def redrive(self, offsets: set[int]) -> int:
        """Produce the chosen dead letters back where they came from; how many were."""
        chosen = [d for o, d in self.dead_letters().letters if o in offsets]
        producer = kafka.new_producer(kafka.producer_config(self.app.settings))
        for d in chosen:
            producer.produce(d.source_topic, d.value, d.key, partition=d.source_partition)
        left = producer.flush(30)
        if left:
            raise RuntimeError(f"{left} re-driven record(s) not delivered within 30 s")
        return len(chosen)

    # -- task queues -------------------------------------------------------------------------------------
    def queues(self, states: Iterable[RunState]) -> list[QueueReport]:
        """Lag of the worker group per queue and partition, the age of the oldest command not consumed
        yet, and the steps in flight (from the runs' states)."""
        steps = [
            s
            for state in states
            for s in state.records(StepRecord)
            if s.kind in (KIND_STEP, KIND_COMPENSATION) and s.status == STEP_SCHEDULED
        ]
        reports = []
        consumer = kafka.new_consumer(
            kafka.reader_config(self.app.settings, **{"group.id": workers_group(self.app)})
        )
        try:
            for queue in sorted(self.app.queues):
                topic = topology.tasks_topic(self.app.name, queue)
                lags = self._lags(consumer, queue, topic)
                mine = [s for s in steps if (s.queue or "default") == queue]
                waiting = [s for s in mine if not s.started_ms or s.started_ms < s.scheduled_ms]
                reports.append(
                    QueueReport(
                        queue,
                        lags,
                        in_flight=len(mine) - len(waiting),
                        scheduled=len(waiting),
                        oldest_scheduled_ms=min((s.scheduled_ms for s in waiting), default=None),
                    )
                )
        finally:
            consumer.close()
        return reports

    def workers(self) -> Workers:
        """The workers' consumer group as its coordinator describes it: who is in it, holding what."""
        admin = admin_client(self.app.settings)
        group = workers_group(self.app)
        try:
            described = admin.describe_consumer_groups([group], request_timeout=10)[group].result(15)
        except KafkaException as exc:  # the page still shows the queues; it says why workers are missing
            return Workers(f"not described: {exc}", [])
        members = [
            WorkerMember(
                m.client_id,
                m.host,
                m.member_id,
                tuple(sorted(f"{tp.topic}[{tp.partition}]" for tp in (m.assignment.topic_partitions or []))),
            )
            for m in described.members
        ]
        state = getattr(described.state, "name", str(described.state))
        return Workers(state, sorted(members, key=lambda m: (m.host, m.client_id, m.member_id)))

    def _lags(self, consumer: Any, queue: str, topic: str) -> list[PartitionLag]:
        try:
            count = partition_count(self.app.settings, topic)
        except Exception:  # noqa: BLE001 - a queue whose topic does not exist yet has no lag to show
            return []
        tps = [TopicPartition(topic, p) for p in range(count)]
        committed = {tp.partition: tp.offset for tp in consumer.committed(tps, timeout=10)}
        ends = {p: kafka.watermarks(consumer, TopicPartition(topic, p))[1] for p in range(count)}
        done = {p: at if at is not None and at >= 0 else None for p, at in committed.items()}
        behind = {p: done.get(p) or 0 for p in range(count) if ends[p] > (done.get(p) or 0)}
        oldest = self._first_waiting(topic, behind)
        out = []
        for p in range(count):
            at = done.get(p)
            # Task topics are written in transactions: each commit marker takes an offset, so an end offset
            # past the committed one may hide no record at all. Nothing to read there means no lag.
            end = ends[p] if p in oldest else max(at or 0, 0)
            out.append(PartitionLag(queue, topic, p, ends[p], at, oldest.get(p), end - (at or 0)))
        return out

    def _first_waiting(self, topic: str, starts: dict[int, int]) -> dict[int, int]:
        """Partition -> timestamp of its first record from ``starts[partition]`` on, for the partitions
        that have one (read_committed: records of aborted transactions and markers are not records)."""
        if not starts:
            return {}
        reader = kafka.new_consumer(kafka.reader_config(self.app.settings))
        found: dict[int, int] = {}
        pending = set(starts)
        try:
            reader.assign([TopicPartition(topic, p, o) for p, o in starts.items()])
            deadline = time.monotonic() + 10
            while pending and time.monotonic() < deadline:
                msg = reader.poll(0.2)
                if msg is None:
                    continue
                partition = msg.partition() or 0
                if partition in pending and msg.error() is None:
                    found[partition] = int(msg.timestamp()[1])
                pending.discard(partition)  # a record, or the end of the partition
            return found
        finally:
            reader.close()
