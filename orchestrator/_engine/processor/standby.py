"""Standby replicas: warm copies of other instances' partition stores, so a takeover restores only the tail.

Kafka Streams' model (``num.standby.replicas``), placed without a custom assignor: each instance works out
by itself which partitions it keeps warm, from the processors' group as the coordinator describes it (each
member's ``group.instance.id`` and assignment, as ``queries.fanout`` reads them). The choice is rendezvous
hashing of (stage, partition, member): for each partition, the ``replicas`` members with the highest score,
its owner excluded. Every member computes the same answer from the same description, the standbys of a
group spread evenly, and a member joining or leaving moves only the standbys it wins or held (ADR 0024).

A standby lives in the very directory the active store would use (``state_dir/p{p}``, ``k{p}``), tailed by
an assign-only ``read_committed`` consumer in a background thread and applied with
``PartitionStore.restore_batch`` (so the run indexes are derived as in a restore and the store's changelog
offset moves with its data). When the partition is assigned to this instance, ``release`` closes the
standby synchronously, before the active store opens the directory (RocksDB allows one opener), and the
normal restore then reads only the records the standby had not applied yet. A revoked partition's closed
active store becomes a standby at once (``adopt``): its data is warm; the next refresh keeps it or drops it.

Standby stores are never in ``StateManager.run_stores``: run queries (``http_api``) never see them.
A standby failing (broker away, a missing ACL, a bug) is logged and retried; it never stops the processor,
whose correctness does not depend on it (a takeover without a warm store restores from the changelog).
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, KafkaError, KafkaException, Message, TopicPartition

from orchestrator._engine import access, kafka, metrics
from orchestrator._engine.faults import FaultLog, is_transient
from orchestrator._engine.processor.config import ProcessorTopics
from orchestrator._engine.queries.index import RunIndexer
from orchestrator._engine.store import META_CHANGELOG_OFFSET, PartitionStore
from orchestrator.settings import Settings

log = logging.getLogger("orchestrator.processor.standby")

RUN = "run"
KEYED = "keyed"
Key = tuple[str, int]
"""(stage, partition): ``run`` for an inbox partition's run store, ``keyed`` for a keyed partition's."""

MEMBER_PREFIX = "processor-"
"""A processor's ``group.instance.id`` is this plus its instance id (``loop.Processor._subscribe``)."""
REFRESH_S = 5.0
"""How often the group is described again: other members' assignments change without our callbacks."""
LAG_REFRESH_S = 2.0
APPLY_BATCH = 5000


# -- the choice (pure) ------------------------------------------------------------------------------------
def _score(key: Key, member: str) -> int:
    """A stable pseudo-random score: the same in every process (``hash()`` is salted per process)."""
    digest = hashlib.blake2b(f"{key[0]}/{key[1]}/{member}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def standbys_of(key: Key, owner: str | None, members: Iterable[str], replicas: int) -> list[str]:
    """The members keeping ``key`` warm: the ``replicas`` best scores among the members but its owner
    (fewer when there are not that many other members), best first."""
    others = sorted({m for m in members if m != owner})
    others.sort(key=lambda m: (_score(key, m), m), reverse=True)
    return others[: max(0, replicas)]


def choose(me: str, owners: Mapping[Key, str | None], members: Iterable[str], replicas: int) -> set[Key]:
    """The partitions ``me`` keeps warm, given each partition's owner (None: unassigned) and the members."""
    everyone = list(members)
    return {key for key, owner in owners.items() if me in standbys_of(key, owner, everyone, replicas)}


@dataclass(frozen=True)
class GroupView:
    """The processors' group as the coordinator describes it: members (instance ids) and owners."""

    members: tuple[str, ...]
    owners: dict[Key, str]


def group_view(description: Any, topics: ProcessorTopics) -> GroupView | None:
    """From ``describe_consumer_groups``' answer; None while the group is rebalancing (assignments then
    are those of the previous generation or empty, and a choice made from them would churn)."""
    state = getattr(description, "state", None)
    if state is not None and getattr(state, "name", str(state)) != "STABLE":
        return None
    stages = {topics.inbox: RUN, topics.keyed: KEYED}
    members: list[str] = []
    owners: dict[Key, str] = {}
    for member in description.members:
        static_id = member.group_instance_id or ""
        if not static_id.startswith(MEMBER_PREFIX):
            continue
        instance = static_id.removeprefix(MEMBER_PREFIX)
        members.append(instance)
        assigned = member.assignment.topic_partitions if member.assignment is not None else []
        for tp in assigned:
            stage = stages.get(tp.topic)
            if stage is not None:
                owners[(stage, tp.partition)] = instance
    return GroupView(tuple(sorted(members)), owners)


# -- the replicas ------------------------------------------------------------------------------------------
@dataclass
class _Replica:
    store: PartitionStore
    position: int | None = None  # next changelog offset to apply; None until the consumer is assigned it
    lag: int | None = None


class Standbys:
    """The standby stores of one processor instance and the thread that keeps them up to date.

    Thread-safety: ``release``, ``adopt``, ``request_refresh`` and ``close`` are called by the processor's
    loop thread (from its rebalance callbacks); everything else runs in the standby thread. One lock
    guards the stores; only the standby thread touches its consumer.
    """

    def __init__(
        self,
        settings: Settings,
        topics: ProcessorTopics,
        state_dir: Path,
        instance_id: str,
        replicas: int,
        group: str,
        describe: Callable[[], Any] | None = None,
        refresh_s: float = REFRESH_S,
    ) -> None:
        self.settings = settings
        self.topics = topics
        self.state_dir = state_dir
        self.instance_id = instance_id
        self.replicas = replicas
        self.group = group
        self._describe = describe or self._describe_group
        self._refresh_s = refresh_s
        self._lock = threading.Lock()
        self._replicas: dict[Key, _Replica] = {}
        self._wanted: set[Key] = set()
        self._active: set[Key] = set()  # partitions this instance owns now: never a standby here
        self._unassign: set[Key] = set()  # released, for the thread to take from its consumer
        self._stop = threading.Event()
        self._refresh_now = threading.Event()
        self._thread: threading.Thread | None = None
        self._consumer: Any = None
        self._admin: Any = None
        self._faults = FaultLog(log)
        self._labelled: set[tuple[str, str]] = set()
        self.applied = 0  # changelog records applied by standbys (tests)
        self.described = 0  # group descriptions received (tests: the ACLs allow it)

    # -- the loop thread's side ---------------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="orchestrator-standby", daemon=True)
        self._thread.start()

    def release(self, keys: Iterable[Key]) -> None:
        """These partitions were assigned to this instance: close their standbys now (synchronously, so the
        active store can open the directory, where the standby left its data and changelog offset)."""
        with self._lock:
            for key in keys:
                self._active.add(key)
                replica = self._replicas.pop(key, None)
                if replica is None:
                    continue
                replica.store.close()
                if replica.position is not None:
                    self._unassign.add(key)

    def adopt(self, keys: Iterable[Key]) -> None:
        """These partitions were revoked from this instance: keep their (closed, warm) stores as standbys
        until the next refresh says whether this instance is one of their standbys."""
        with self._lock:
            for key in keys:
                self._active.discard(key)
                self._wanted.add(key)
        self._refresh_now.set()

    def request_refresh(self) -> None:
        """Describe the group again soon (after a rebalance of ours: the owners changed)."""
        self._refresh_now.set()

    def close(self) -> None:
        """Stop the thread, close the consumer and every standby store (shutdown)."""
        self._stop.set()
        self._refresh_now.set()
        if self._thread is not None:
            self._thread.join(30)
            if self._thread.is_alive():
                log.warning("standby thread did not stop within 30 s")
        with self._lock:
            for replica in self._replicas.values():
                replica.store.close()
            self._replicas.clear()
        for key in list(self._labelled):
            metrics.STANDBY_LAG.remove(*key)
        self._labelled.clear()

    def faults(self) -> list[str]:
        """The standby faults going on now (tests)."""
        return self._faults.active()

    def positions(self) -> dict[Key, int | None]:
        """Each standby's next changelog offset (tests, the bench)."""
        with self._lock:
            return {key: r.position for key, r in self._replicas.items()}

    # -- the standby thread ---------------------------------------------------------------------------------
    def _run(self) -> None:
        next_refresh = 0.0
        next_lag = 0.0
        while not self._stop.is_set():
            try:
                if self._consumer is None:
                    extra = {
                        "enable.partition.eof": False,
                        "fetch.wait.max.ms": 500,
                        "auto.offset.reset": "error",
                    }
                    conf = kafka.reader_config(self.settings, **extra)
                    self._consumer = kafka.new_consumer(conf)
                now = time.monotonic()
                if now >= next_refresh or self._refresh_now.is_set():
                    self._refresh_now.clear()
                    next_refresh = now + self._refresh_s
                    self._refresh()
                self._reconcile()
                if self._replicas:
                    self._apply(self._consumer.consume(APPLY_BATCH, 0.2))
                else:
                    self._refresh_now.wait(0.2)
                if time.monotonic() >= next_lag:
                    next_lag = time.monotonic() + LAG_REFRESH_S
                    self._publish_lag()
            except Exception as exc:  # never stop the processor: a takeover without a standby still works
                refused = access.denied(self.settings, exc, "processor", f"standby replicas of {self.group}")
                first = "standby replicas" not in self._faults.active()
                self._faults.fault("standby replicas", refused or exc)
                if first and not isinstance(exc, KafkaException | OSError):
                    log.exception("standby replicas: unexpected error (logged once per episode)")
                self._stop.wait(1.0)
        if self._consumer is not None:
            try:
                self._consumer.close()
            except KafkaException:
                log.debug("closing the standby consumer failed", exc_info=True)
            self._consumer = None

    def _describe_group(self) -> Any:
        if self._admin is None:
            self._admin = kafka.new_admin(kafka.base(self.settings))
        future = self._admin.describe_consumer_groups([self.group], request_timeout=10)[self.group]
        return future.result(timeout=15)

    def _refresh(self) -> None:
        """Describe the group, choose this instance's standbys; kept as they are while it rebalances."""
        view = group_view(self._describe(), self.topics)
        self.described += 1
        if view is None or self.instance_id not in view.members:
            return
        partitions = {**{k: None for k in self._all_keys()}, **view.owners}
        wanted = choose(self.instance_id, partitions, view.members, self.replicas)
        with self._lock:
            changed, self._wanted = wanted != self._wanted, wanted
        if changed:
            log.info(
                "standby: members %s; this instance keeps %s warm",
                ", ".join(view.members),
                ", ".join(f"{stage}[{p}]" for stage, p in sorted(wanted)) or "nothing",
            )
        self._faults.recovered("standby replicas")

    def _all_keys(self) -> list[Key]:
        n = self.settings.partitions
        return [(RUN, p) for p in range(n)] + [(KEYED, p) for p in range(n)]

    def _topic(self, key: Key) -> str:
        return self.topics.changelog if key[0] == RUN else self.topics.keyed_changelog

    def _path(self, key: Key) -> Path:
        return self.state_dir / f"{'p' if key[0] == RUN else 'k'}{key[1]}"

    def _open(self, key: Key) -> PartitionStore:
        return PartitionStore(self._path(key), key[1], RunIndexer() if key[0] == RUN else None)

    def _reconcile(self) -> None:
        """Open the standbys now wanted, close the ones no longer wanted, and assign the consumer.

        No offset lookups here: the consumer sits in a long-poll fetch on the same broker connections,
        and Kafka answers one request per connection at a time (each lookup waited ~0.5 s behind it).
        A store behind the changelog's low watermark is found by the fetch itself
        (``auto.offset.reset=error``, handled in ``_apply``)."""
        assign: list[TopicPartition] = []
        with self._lock:
            gone = [k for k in self._replicas if k not in self._wanted or k in self._active]
            for key in gone:
                replica = self._replicas.pop(key)
                replica.store.close()
                if replica.position is not None:
                    self._unassign.add(key)
            unassign = [TopicPartition(self._topic(k), k[1]) for k in sorted(self._unassign)]
            self._unassign.clear()
            for key in sorted(k for k in self._wanted if k not in self._replicas and k not in self._active):
                replica = _Replica(self._open(key))
                start = replica.store.meta_offset(META_CHANGELOG_OFFSET)
                replica.position = start or 0
                self._replicas[key] = replica
                assign.append(TopicPartition(self._topic(key), key[1], start if start else OFFSET_BEGINNING))
        if unassign:
            self._consumer.incremental_unassign(unassign)
            log.info("standby: stopped keeping %s warm", _names(unassign))
        if assign:
            self._consumer.incremental_assign(assign)
            log.info(
                "standby: keeping %s warm",
                ", ".join(f"{tp.topic}[{tp.partition}] from {max(tp.offset, 0)}" for tp in assign),
            )

    def _rebuild(self, key: Key) -> None:
        """The changelog no longer holds what came after the store's offset (records deleted, a topic
        recreated): tombstones in between may be gone, so the standby starts again from empty."""
        tp = TopicPartition(self._topic(key), key[1])
        with self._lock:
            replica = self._replicas.get(key)
            if replica is None:
                return
            log.warning(
                "standby %s[%d]: the store's offset %s is out of the changelog's range; rebuilding it",
                tp.topic,
                key[1],
                replica.store.meta_offset(META_CHANGELOG_OFFSET),
            )
            replica.store.close()
            PartitionStore.destroy(self._path(key))
            replica.store = self._open(key)
            replica.position = 0
        self._consumer.incremental_unassign([tp])
        self._consumer.incremental_assign([TopicPartition(tp.topic, tp.partition, OFFSET_BEGINNING)])

    def _apply(self, msgs: Sequence[Message]) -> None:
        """Apply fetched changelog records to their standby stores, each store in one write batch.

        A record older than its store's position is skipped: after a partition is released and taken up
        again, records fetched for the earlier assignment may still arrive, and applying one would put
        back a value the store has already replaced."""
        stages = {self.topics.changelog: RUN, self.topics.keyed_changelog: KEYED}
        fetched: dict[Key, list[tuple[int, bytes | None, bytes | None]]] = {}
        for msg in msgs:
            err = msg.error()
            key = (stages.get(msg.topic() or "", ""), msg.partition() or 0)
            if err is not None:
                if err.code() == KafkaError._AUTO_OFFSET_RESET:
                    self._rebuild(key)
                    continue
                if err.code() == KafkaError._PARTITION_EOF or is_transient(err):
                    continue  # a broker that is away: librdkafka reconnects and fetches again
                raise KafkaException(err)
            fetched.setdefault(key, []).append((msg.offset() or 0, msg.key(), msg.value()))
        with self._lock:
            for key, rows in fetched.items():
                replica = self._replicas.get(key)
                if replica is None or replica.position is None:
                    continue  # released meanwhile
                fresh = [(k, v) for offset, k, v in rows if offset >= replica.position and k is not None]
                end = rows[-1][0] + 1
                if end <= replica.position:
                    continue
                if fresh:
                    replica.store.restore_batch(fresh, end)
                    self.applied += len(fresh)
                replica.position = end
        if msgs:
            self._faults.recovered("standby replicas")

    def _publish_lag(self) -> None:
        """``orchestrator_standby_lag_records``: the changelog's end (last stable offset, as a read_committed
        consumer sees it) minus the consumer's position, per standby."""
        with self._lock:
            keys = {k: r for k, r in self._replicas.items() if r.position is not None}
        seen: set[tuple[str, str]] = set()
        for key, replica in keys.items():
            tp = TopicPartition(self._topic(key), key[1])
            _, high = self._consumer.get_watermark_offsets(tp, cached=True)
            positions = self._consumer.position([tp])
            position = positions[0].offset if positions and positions[0].offset >= 0 else replica.position
            if high is not None and high >= 0 and position is not None:
                replica.lag = max(0, high - position)
                labels = (key[0], str(key[1]))
                metrics.STANDBY_LAG.labels(*labels).set(replica.lag)
                seen.add(labels)
        for labels in self._labelled - seen:
            metrics.STANDBY_LAG.remove(*labels)
        self._labelled = seen

    def lags(self) -> dict[Key, int | None]:
        """Each standby's lag in records, as last measured (tests)."""
        with self._lock:
            return {key: r.lag for key, r in self._replicas.items()}


def _names(tps: Iterable[TopicPartition]) -> str:
    return ", ".join(f"{tp.topic}[{tp.partition}]" for tp in tps)
