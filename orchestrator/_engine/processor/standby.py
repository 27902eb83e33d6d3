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
from orchestrator._engine.restore import clear_if_cold, delete_retention_ms
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


REFRESH_FAULT = "standby replicas: describing the group"
APPLY_FAULT = "standby replicas: applying the changelogs"
APPLY_CHUNK = 500
"""Records applied under the lock at a time: ``release`` (in the processor's rebalance callback) waits for
at most one chunk (~0.15 s), not a whole fetched batch (5,000 records took ~1.4 s)."""
CLEANUP_DELAY_S = 600.0
"""A store directory neither active nor standby here for this long is deleted (Kafka Streams'
``state.cleanup.delay.ms``): kept longer, it could miss deletes the changelog's compaction has dropped
(``delete.retention.ms``, 24 h by default), and it holds disk for nothing."""


class Standbys:
    """The standby stores of one processor instance and the thread that keeps them up to date.

    Thread-safety: ``release``, ``adopt``, ``request_refresh`` and ``close`` are called by the processor's
    loop thread (from its rebalance callbacks); everything else runs in the standby thread. One lock
    guards the bookkeeping; it is never held while a store opens (an open may rebuild a whole store's
    indexes) and held for one chunk of records at a time while applying, so ``release`` stalls the
    rebalance callback for at most that long. Only the standby thread touches its consumer; bookkeeping
    changes only after the Kafka call it mirrors succeeded, and any failure rewinds every replica to its
    store's offset (a new consumer, assigned from each store's META_CHANGELOG_OFFSET), so a store's offset
    never runs ahead of its content.
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
        cleanup_delay_s: float = CLEANUP_DELAY_S,
        new_consumer: Callable[[], Any] | None = None,
        delete_retention_ms: Callable[[str], int | None] | None = None,
    ) -> None:
        self.settings = settings
        self.topics = topics
        self.state_dir = state_dir
        self.instance_id = instance_id
        self.replicas = replicas
        self.group = group
        self._describe = describe or self._describe_group
        self._new_consumer = new_consumer or self._standby_consumer
        self._retention = delete_retention_ms or self._delete_retention_ms
        self._refresh_s = refresh_s
        self.cleanup_delay_s = cleanup_delay_s
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)  # an open finished (``release`` waits for it)
        self._replicas: dict[Key, _Replica] = {}
        self._wanted: set[Key] = set()
        self._active: set[Key] = set()  # partitions this instance owns now: never a standby here
        self._opening: set[Key] = set()  # stores being opened (or rebuilt) outside the lock
        self._unassign: set[Key] = set()  # released, for the thread to take from its consumer
        self._unused_since: dict[Key, float] = {}  # directories neither active nor standby, since when
        self._closed = False
        self._stop = threading.Event()
        self._refresh_now = threading.Event()
        self._thread: threading.Thread | None = None
        self._consumer: Any = None
        self._admin: Any = None
        self._retentions: dict[str, int | None] = {}
        self._faults = FaultLog(log)
        self._faults_lock = threading.Lock()  # ``faults()`` is read by other threads
        self._labelled: set[tuple[str, str]] = set()
        self._next_refresh = 0.0
        self._next_lag = 0.0
        self.applied = 0  # changelog records applied by standbys (tests)
        self.described = 0  # group descriptions received (tests: the ACLs allow it)
        self.cleaned = 0  # unused store directories deleted (tests)

    # -- the loop thread's side ---------------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="orchestrator-standby", daemon=True)
        self._thread.start()

    def release(self, keys: Iterable[Key]) -> None:
        """These partitions were assigned to this instance: close their standbys now (synchronously, so the
        active store can open the directory, where the standby left its data and changelog offset). A
        store being opened by the standby thread is waited for: the thread closes it again, seeing the key
        active."""
        keys = list(keys)
        with self._changed:
            self._active.update(keys)
            for key in keys:
                self._unused_since.pop(key, None)
            self._changed.wait_for(lambda: not self._opening.intersection(keys))
            for key in keys:
                replica = self._replicas.pop(key, None)
                if replica is None:
                    continue
                replica.store.close()
                if replica.position is not None:
                    self._unassign.add(key)

    def adopt(self, keys: Iterable[Key]) -> None:
        """These partitions were revoked from this instance: keep their (closed, warm) stores as standbys
        until the next refresh says whether this instance is one of their standbys. Nothing after close
        (the processor's consumer revokes everything as it closes: those stores must stay closed)."""
        with self._lock:
            if self._closed:
                return
            for key in keys:
                self._active.discard(key)
                self._wanted.add(key)
        self._refresh_now.set()

    def request_refresh(self) -> None:
        """Describe the group again soon (after a rebalance of ours: the owners changed)."""
        self._refresh_now.set()

    def close(self) -> None:
        """Stop adopting, stop the thread, close the consumer and every standby store (shutdown). A store
        the thread opens after this (it did not stop in time) is closed by the thread itself."""
        with self._lock:
            self._closed = True
        self._stop.set()
        self._refresh_now.set()
        if self._thread is not None:
            self._thread.join(30)
            if self._thread.is_alive():
                log.warning("standby thread did not stop within 30 s")
        with self._changed:
            for replica in self._replicas.values():
                replica.store.close()
            self._replicas.clear()
            self._changed.notify_all()
        for key in list(self._labelled):
            metrics.STANDBY_LAG.remove(*key)
        self._labelled.clear()
        self._admin = None  # confluent_kafka's AdminClient has no close: dropped, its threads end

    def faults(self) -> list[str]:
        """The standby faults going on now (tests)."""
        with self._faults_lock:
            return self._faults.active()

    def positions(self) -> dict[Key, int | None]:
        """Each standby's next changelog offset (tests, the bench)."""
        with self._lock:
            return {key: r.position for key, r in self._replicas.items()}

    # -- the standby thread ---------------------------------------------------------------------------------
    def _run(self) -> None:
        while not self._stop.is_set():
            self._once()
        self._close_consumer()

    def _once(self) -> None:
        """One round: refresh the choice when due, reconcile, apply one fetched batch, publish the lag.
        A failure is logged once per episode and rewinds every replica to its store's offset."""
        now = time.monotonic()
        if now >= self._next_refresh or self._refresh_now.is_set():
            self._refresh_now.clear()
            self._next_refresh = now + self._refresh_s
            try:
                self._refresh()
                self._learn_retentions()
                self._cleanup()
            except Exception as exc:  # noqa: BLE001  # logged by _fault; the choice stays, applying goes on
                self._fault(REFRESH_FAULT, exc)
            else:
                self._recovered(REFRESH_FAULT)
        try:
            if self._consumer is None:
                self._consumer = self._new_consumer()
            self._reconcile()
            if self._replicas:
                msgs = self._consumer.consume(APPLY_BATCH, 0.2)
                self._apply(msgs)
                if msgs:
                    self._recovered(APPLY_FAULT)  # a batch fetched and applied without any error
            else:
                self._refresh_now.wait(0.2)
            if time.monotonic() >= self._next_lag:
                self._next_lag = time.monotonic() + LAG_REFRESH_S
                self._publish_lag()
        except Exception as exc:  # noqa: BLE001  # logged by _fault; a takeover without a standby still works
            self._fault(APPLY_FAULT, exc)
            self._reset()
            self._stop.wait(1.0)

    def _fault(self, what: str, exc: Exception) -> None:
        refused = access.denied(self.settings, exc, "processor", f"standby replicas of {self.group}")
        with self._faults_lock:
            first = what not in self._faults.active()
            self._faults.fault(what, refused or exc)
        if first and refused is None and not isinstance(exc, KafkaException | OSError):
            log.exception("%s: unexpected error (logged once per episode)", what)

    def _recovered(self, what: str) -> None:
        with self._faults_lock:
            self._faults.recovered(what)

    def _reset(self) -> None:
        """After any failure: forget the consumer (its fetch positions may be past what the stores hold)
        and every replica's position; the next ``_reconcile`` assigns a new consumer each store's offset."""
        self._close_consumer()
        with self._lock:
            for replica in self._replicas.values():
                replica.position = None
            self._unassign.clear()  # the new consumer has nothing assigned

    def _standby_consumer(self) -> Any:
        extra = {"enable.partition.eof": False, "fetch.wait.max.ms": 500, "auto.offset.reset": "error"}
        return kafka.new_consumer(kafka.reader_config(self.settings, **extra))

    def _close_consumer(self) -> None:
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            try:
                consumer.close()
            except KafkaException:
                log.debug("closing the standby consumer failed", exc_info=True)

    def _admin_client(self) -> Any:
        if self._admin is None:
            self._admin = kafka.new_admin(kafka.base(self.settings))
        return self._admin

    def _describe_group(self) -> Any:
        future = self._admin_client().describe_consumer_groups([self.group], request_timeout=10)[self.group]
        return future.result(timeout=15)

    def _delete_retention_ms(self, topic: str) -> int | None:
        return delete_retention_ms(self._admin_client(), topic)

    def _learn_retentions(self) -> None:
        """Each changelog's ``delete.retention.ms``, asked here (once read) rather than in ``_open``: an
        open may be waited on by ``release`` in the rebalance callback, which must not wait on the
        network. Until it is known, ``_open`` assumes Kafka's default."""
        for topic in (self.topics.changelog, self.topics.keyed_changelog):
            if self._retentions.get(topic) is None:
                self._retentions[topic] = self._retention(topic)

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

    def _all_keys(self) -> list[Key]:
        n = self.settings.partitions
        return [(RUN, p) for p in range(n)] + [(KEYED, p) for p in range(n)]

    def _topic(self, key: Key) -> str:
        return self.topics.changelog if key[0] == RUN else self.topics.keyed_changelog

    def _path(self, key: Key) -> Path:
        return self.state_dir / f"{'p' if key[0] == RUN else 'k'}{key[1]}"

    def _open(self, key: Key) -> PartitionStore:
        """Open a standby's store; one whose last write is older than the changelog's
        ``delete.retention.ms`` is cleared (deletes it missed may have been compacted away)."""
        store = PartitionStore(self._path(key), key[1], RunIndexer() if key[0] == RUN else None)
        try:
            topic = self._topic(key)
            clear_if_cold(store, topic, self._retentions.get(topic))
        except BaseException:
            store.close()
            raise
        return store

    def _usable(self, key: Key) -> bool:
        """Under the lock: whether ``key`` may be a standby here now."""
        return not self._closed and key in self._wanted and key not in self._active

    def _reconcile(self) -> None:
        """Open the standbys now wanted, close the ones no longer wanted, and assign the consumer.

        Bookkeeping follows the Kafka calls: a partition leaves ``_unassign`` once unassigned, a replica
        gets its position once assigned; a call that raises leaves them for ``_reset``. Stores open
        outside the lock (``_opening``, which ``release`` waits on).

        No offset lookups here: the consumer sits in a long-poll fetch on the same broker connections,
        and Kafka answers one request per connection at a time (each lookup waited ~0.5 s behind it).
        A store behind the changelog's low watermark is found by the fetch itself
        (``auto.offset.reset=error``, handled in ``_apply``)."""
        now = time.monotonic()
        with self._lock:
            for key in [k for k in self._replicas if not self._usable(k)]:
                replica = self._replicas.pop(key)
                replica.store.close()
                self._unused_since.setdefault(key, now)
                if replica.position is not None:
                    self._unassign.add(key)
            unassign = sorted(self._unassign)
            to_open = sorted(
                k
                for k in self._wanted
                if k not in self._replicas and k not in self._opening and self._usable(k)
            )
            self._opening.update(to_open)
        try:
            if unassign:
                tps = [TopicPartition(self._topic(k), k[1]) for k in unassign]
                self._consumer.incremental_unassign(tps)
                with self._lock:
                    self._unassign.difference_update(unassign)
                log.info("standby: stopped keeping %s warm", _names(tps))
            for key in to_open:
                store = self._open(key)
                with self._changed:
                    self._opening.discard(key)
                    if self._usable(key):
                        self._replicas[key] = _Replica(store)
                        self._unused_since.pop(key, None)
                    else:
                        store.close()  # released (or closed) while it opened
                    self._changed.notify_all()
        finally:
            with self._changed:
                self._opening.difference_update(to_open)
                self._changed.notify_all()
        with self._lock:
            starts = {
                k: r.store.meta_offset(META_CHANGELOG_OFFSET)
                for k, r in self._replicas.items()
                if r.position is None
            }
        if not starts:
            return
        assign = [
            TopicPartition(self._topic(k), k[1], start if start else OFFSET_BEGINNING)
            for k, start in starts.items()
        ]
        self._consumer.incremental_assign(assign)
        with self._lock:
            for key, start in starts.items():
                assigned = self._replicas.get(key)
                if assigned is None:
                    self._unassign.add(key)  # released while being assigned
                elif assigned.position is None:
                    assigned.position = start or 0
        log.info(
            "standby: keeping %s warm",
            ", ".join(f"{tp.topic}[{tp.partition}] from {max(tp.offset, 0)}" for tp in assign),
        )

    def _rebuild(self, key: Key) -> None:
        """The changelog no longer holds what came after the store's offset (records deleted, a topic
        recreated): tombstones in between may be gone, so the standby starts again from empty. The
        partition is unassigned first; ``_reconcile`` assigns the fresh store from the beginning."""
        tp = TopicPartition(self._topic(key), key[1])
        with self._lock:
            replica = self._replicas.get(key)
            if replica is None or replica.position is None:
                return
        self._consumer.incremental_unassign([tp])
        with self._lock:
            taken = self._replicas.pop(key, None)
            if taken is None:
                self._unassign.discard(key)  # released meanwhile: already unassigned above
                return
            replica = taken
            self._opening.add(key)
        log.warning(
            "standby %s[%d]: the store's offset %s is out of the changelog's range; rebuilding it",
            tp.topic,
            key[1],
            replica.store.meta_offset(META_CHANGELOG_OFFSET),
        )
        try:
            replica.store.close()
            PartitionStore.destroy(self._path(key))
            store = self._open(key)
            with self._lock:
                if self._usable(key):
                    self._replicas[key] = _Replica(store)
                else:
                    store.close()
        finally:
            with self._changed:
                self._opening.discard(key)
                self._changed.notify_all()

    def _apply(self, msgs: Sequence[Message]) -> None:
        """Apply fetched changelog records to their standby stores.

        Errors are looked at first: a partition whose offset is out of range is rebuilt and its rows of
        this batch dropped (they belong to the store it had); a partition with another error loses its
        rows (``_reset`` fetches them again) while every other partition's rows are applied; then the
        error is raised. Each store takes its rows in chunks, each chunk one write batch with its offset.

        A record older than its store's position is skipped: after a partition is released and taken up
        again, records fetched for the earlier assignment may still arrive, and applying one would put
        back a value the store has already replaced."""
        stages = {self.topics.changelog: RUN, self.topics.keyed_changelog: KEYED}
        fetched: dict[Key, list[tuple[int, bytes | None, bytes | None]]] = {}
        rebuild: list[Key] = []
        failed: dict[Key, KafkaError] = {}
        for msg in msgs:
            err = msg.error()
            key = (stages.get(msg.topic() or "", ""), msg.partition() or 0)
            if err is not None:
                if err.code() == KafkaError._AUTO_OFFSET_RESET:
                    rebuild.append(key)
                elif err.code() != KafkaError._PARTITION_EOF and not is_transient(err):
                    failed.setdefault(key, err)
                continue  # transient: a broker that is away, librdkafka reconnects and fetches again
            fetched.setdefault(key, []).append((msg.offset() or 0, msg.key(), msg.value()))
        for key in [*rebuild, *failed]:
            fetched.pop(key, None)
        for key, rows in fetched.items():
            self._apply_rows(key, rows)
        for key in dict.fromkeys(rebuild):
            self._rebuild(key)
        if failed:
            raise KafkaException(next(iter(failed.values())))

    def _apply_rows(self, key: Key, rows: list[tuple[int, bytes | None, bytes | None]]) -> None:
        for i in range(0, len(rows), APPLY_CHUNK):
            chunk = rows[i : i + APPLY_CHUNK]
            with self._lock:
                replica = self._replicas.get(key)
                if replica is None or replica.position is None:
                    return  # released meanwhile
                end = chunk[-1][0] + 1
                if end <= replica.position:
                    continue
                fresh = [(k, v) for offset, k, v in chunk if offset >= replica.position and k is not None]
                if fresh:
                    replica.store.restore_batch(fresh, end)
                    self.applied += len(fresh)
                replica.position = end

    def _cleanup(self) -> None:
        """Delete store directories neither active nor standby here for ``cleanup_delay_s`` (1e in ADR
        0024): a directory kept longer could miss deletes compaction dropped, and holds disk for nothing.
        Under the lock, so an assign (``release``) cannot open one while it goes."""
        now = time.monotonic()
        names = {f"p{p}": (RUN, p) for p in range(self.settings.partitions)}
        names.update({f"k{p}": (KEYED, p) for p in range(self.settings.partitions)})
        present = (
            [names[d.name] for d in self.state_dir.iterdir() if d.name in names]
            if self.state_dir.is_dir()
            else []
        )
        with self._lock:
            for key in present:
                if (
                    key in self._replicas
                    or key in self._active
                    or key in self._opening
                    or key in self._wanted
                ):
                    self._unused_since.pop(key, None)
                    continue
                since = self._unused_since.setdefault(key, now)
                if now - since >= self.cleanup_delay_s:
                    PartitionStore.destroy(self._path(key))
                    self._unused_since.pop(key, None)
                    self.cleaned += 1
                    log.info("standby: deleted %s, unused for %.0f s", self._path(key), now - since)

    def _publish_lag(self) -> None:
        """``orchestrator_standby_lag_records``: the changelog's end (last stable offset, as a read_committed
        consumer sees it) minus the consumer's position, per standby. A standby not assigned at the moment
        (after a failure) keeps its last figure: its series never disappears while it is a standby."""
        with self._lock:
            keys = dict(self._replicas)
        seen: set[tuple[str, str]] = set()
        for key, replica in keys.items():
            labels = (key[0], str(key[1]))
            if labels in self._labelled:
                seen.add(labels)
            if replica.position is None:
                continue
            tp = TopicPartition(self._topic(key), key[1])
            _, high = self._consumer.get_watermark_offsets(tp, cached=True)
            positions = self._consumer.position([tp])
            position = positions[0].offset if positions and positions[0].offset >= 0 else replica.position
            if high is not None and high >= 0 and position is not None:
                replica.lag = max(0, high - position)
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
