"""Bring a cluster's topics in line with declared :class:`~orchestrator.topology.TopicSpec` s, carefully.

``plan`` compares what exists with what is declared; ``apply`` does the safe part. Missing topics are
created. Everything else is drift that is only reported unless the operator opts in: config values are
fixed with ``fix_config`` (through incremental alter, touching only the declared keys), partitions are
added with ``allow_partition_increase`` (it moves keys to other partitions, which breaks run placement for
existing runs). Nothing is ever deleted or shrunk, and replication is never changed: those need a human.

The comparison itself (:func:`diff`) is a pure function, unit tested without a broker.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import (  # type: ignore[attr-defined]  # re-exported without __all__
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    NewPartitions,
    NewTopic,
    ResourceType,
)

from orchestrator.settings import Settings
from orchestrator.topology import TopicSpec

_CONVERGE_TIMEOUT_S = 15.0
_METADATA_TIMEOUT_S = 10.0

# librdkafka logs every failed connection attempt to stderr; the same failures reach callers as
# exceptions from the admin calls, so its own log lines are dropped.
_LIBRDKAFKA_LOG = logging.getLogger("orchestrator.topic_admin.librdkafka")
_LIBRDKAFKA_LOG.addHandler(logging.NullHandler())
_LIBRDKAFKA_LOG.propagate = False


class TopicAdminError(RuntimeError):
    """A topic could not be inspected, created or changed."""


class ChangeKind(StrEnum):
    CREATE = "create"
    ADD_PARTITIONS = "add-partitions"
    """Fewer partitions than declared; fixed only with ``allow_partition_increase``."""
    UPDATE_CONFIG = "update-config"
    """A declared config value differs; fixed only with ``fix_config``."""
    TOO_MANY_PARTITIONS = "too-many-partitions"
    """More partitions than declared; never fixed (Kafka cannot shrink a topic)."""
    REPLICATION_DRIFT = "replication-drift"
    """Replication factor differs; never fixed here (it needs a reassignment plan)."""


@dataclass(frozen=True)
class ObservedTopic:
    """A topic as it exists on the cluster, reduced to what we compare."""

    name: str
    partitions: int
    replication_factor: int
    config: dict[str, str] = field(hash=False)


@dataclass(frozen=True)
class TopicChange:
    """One difference between the declared and the actual topics, and what apply does about it."""

    topic: str
    kind: ChangeKind
    current: str
    desired: str
    key: str | None = None
    """The config key, for ``UPDATE_CONFIG``."""
    allowed: bool = True
    """Whether apply, with the flags given, makes this change."""
    applied: bool = False
    """Set by apply once the change is done."""
    hint: str = ""


def diff(
    specs: Sequence[TopicSpec],
    observed: Mapping[str, ObservedTopic],
    *,
    fix_config: bool = False,
    allow_partition_increase: bool = False,
) -> list[TopicChange]:
    """Every difference between ``specs`` and ``observed``, in spec order."""
    changes: list[TopicChange] = []
    for spec in specs:
        actual = observed.get(spec.name)
        if actual is None:
            plural = "" if spec.partitions == 1 else "s"
            desired = f"{spec.partitions} partition{plural}, replication {spec.replication_factor}"
            changes.append(TopicChange(spec.name, ChangeKind.CREATE, "absent", desired))
            continue
        changes.extend(_partition_changes(spec, actual, allow_partition_increase))
        if actual.replication_factor != spec.replication_factor:
            changes.append(
                TopicChange(
                    spec.name,
                    ChangeKind.REPLICATION_DRIFT,
                    str(actual.replication_factor),
                    str(spec.replication_factor),
                    allowed=False,
                    hint="reassign partitions by hand",
                )
            )
        for key, value in spec.config.items():
            current = actual.config.get(key)
            if current != value:
                changes.append(
                    TopicChange(
                        spec.name,
                        ChangeKind.UPDATE_CONFIG,
                        str(current),
                        value,
                        key=key,
                        allowed=fix_config,
                        hint="" if fix_config else "use --fix-config",
                    )
                )
    return changes


def _partition_changes(spec: TopicSpec, actual: ObservedTopic, allow_increase: bool) -> list[TopicChange]:
    current, desired = str(actual.partitions), str(spec.partitions)
    if actual.partitions < spec.partitions:
        hint = "" if allow_increase else "use --allow-partition-increase (moves keys between partitions)"
        kind = ChangeKind.ADD_PARTITIONS
        return [TopicChange(spec.name, kind, current, desired, allowed=allow_increase, hint=hint)]
    if actual.partitions > spec.partitions:
        hint = "Kafka cannot shrink a topic; recreate it or change the partitions setting"
        kind = ChangeKind.TOO_MANY_PARTITIONS
        return [TopicChange(spec.name, kind, current, desired, allowed=False, hint=hint)]
    return []


def _result(future: Future[Any], what: str) -> Any:
    try:
        return future.result()
    except KafkaException as exc:
        raise TopicAdminError(f"{what}: {exc.args[0] if exc.args else exc}") from exc


def _unknown_topic(future: Future[Any]) -> bool:
    exc = future.exception()
    err = exc.args[0] if isinstance(exc, KafkaException) and exc.args else None
    return isinstance(err, KafkaError) and err.code() == KafkaError.UNKNOWN_TOPIC_OR_PART


def observe(admin: AdminClient, names: Iterable[str], timeout: float = 30.0) -> dict[str, ObservedTopic]:
    """Partition count, replication and config of those of ``names`` that exist."""
    try:
        # Metadata comes back in milliseconds from a live cluster; waiting long only delays the error.
        metadata = admin.list_topics(timeout=min(timeout, _METADATA_TIMEOUT_S))
    except KafkaException as exc:
        raise TopicAdminError(f"cannot list topics: {exc.args[0] if exc.args else exc}") from exc
    present = {
        name: metadata.topics[name]
        for name in dict.fromkeys(names)
        if name in metadata.topics and metadata.topics[name].error is None
    }
    if not present:
        return {}
    resources = [ConfigResource(ResourceType.TOPIC, name) for name in present]
    futures = admin.describe_configs(resources, request_timeout=timeout)
    configs: dict[str, Any] = {}
    for res, fut in futures.items():
        if _unknown_topic(fut):
            # Listed by one broker, not yet known to the one asked for its configs: a topic created a
            # moment ago on a multi-broker cluster. Not there yet; callers create it (already exists: fine)
            # or wait for it to show (seen when clients and processors start together on 3 brokers).
            present.pop(res.name)
            continue
        configs[res.name] = _result(fut, f"describe configs of {res.name}")
    observed: dict[str, ObservedTopic] = {}
    for name, topic in present.items():
        partitions = topic.partitions
        replicas = len(partitions[min(partitions)].replicas) if partitions else 0
        entries: dict[str, ConfigEntry] = configs[name]
        config = {key: entry.value for key, entry in entries.items() if entry.value is not None}
        observed[name] = ObservedTopic(name, len(partitions), replicas, config)
    return observed


def plan(
    admin: AdminClient,
    specs: Sequence[TopicSpec],
    *,
    fix_config: bool = False,
    allow_partition_increase: bool = False,
    timeout: float = 30.0,
) -> list[TopicChange]:
    """What ``apply`` with the same flags would find; ``allowed`` tells which changes it would make."""
    observed = observe(admin, [spec.name for spec in specs], timeout)
    return diff(specs, observed, fix_config=fix_config, allow_partition_increase=allow_partition_increase)


def apply(
    admin: AdminClient,
    specs: Sequence[TopicSpec],
    *,
    fix_config: bool = False,
    allow_partition_increase: bool = False,
    timeout: float = 30.0,
) -> list[TopicChange]:
    """Make the allowed changes, wait until the cluster shows them, and return every change found.

    Returned changes have ``applied=True`` when done; drift left alone has ``applied=False``. An empty
    list means the cluster already matched the specs.
    """
    flags = {"fix_config": fix_config, "allow_partition_increase": allow_partition_increase}
    changes = plan(admin, specs, timeout=timeout, **flags)
    todo = [change for change in changes if change.allowed]
    if not todo:
        return changes
    by_name = {spec.name: spec for spec in specs}
    _create(admin, [by_name[c.topic] for c in todo if c.kind is ChangeKind.CREATE], timeout)
    _add_partitions(admin, [by_name[c.topic] for c in todo if c.kind is ChangeKind.ADD_PARTITIONS], timeout)
    _update_configs(admin, [c for c in todo if c.kind is ChangeKind.UPDATE_CONFIG], timeout)
    _await_converged(admin, specs, flags, timeout)
    return [replace(change, applied=change.allowed) for change in changes]


def _create(admin: AdminClient, specs: list[TopicSpec], timeout: float) -> None:
    if not specs:
        return
    new_topics = [
        NewTopic(
            s.name, num_partitions=s.partitions, replication_factor=s.replication_factor, config=s.config
        )
        for s in specs
    ]
    futures = admin.create_topics(new_topics, operation_timeout=timeout, request_timeout=timeout)
    for name, future in futures.items():
        try:
            future.result()
        except KafkaException as exc:
            err = exc.args[0] if exc.args else None
            # Processors, workers and clients start together and each ensures the topics: losing that race
            # is fine, the topic is there.
            if isinstance(err, KafkaError) and err.code() == KafkaError.TOPIC_ALREADY_EXISTS:
                continue
            raise TopicAdminError(f"create topic {name}: {err or exc}") from exc


def _add_partitions(admin: AdminClient, specs: list[TopicSpec], timeout: float) -> None:
    if not specs:
        return
    requests = [NewPartitions(s.name, s.partitions) for s in specs]
    futures = admin.create_partitions(requests, operation_timeout=timeout, request_timeout=timeout)
    for name, future in futures.items():
        _result(future, f"add partitions to {name}")


def _update_configs(admin: AdminClient, changes: list[TopicChange], timeout: float) -> None:
    if not changes:
        return
    per_topic: dict[str, list[ConfigEntry]] = {}
    for change in changes:
        assert change.key is not None  # UPDATE_CONFIG changes always carry their key
        entry = ConfigEntry(change.key, change.desired, incremental_operation=AlterConfigOpType.SET)
        per_topic.setdefault(change.topic, []).append(entry)
    resources = [
        ConfigResource(ResourceType.TOPIC, name, incremental_configs=entries)
        for name, entries in per_topic.items()
    ]
    futures = admin.incremental_alter_configs(resources, request_timeout=timeout)
    for resource, future in futures.items():
        _result(future, f"update config of {resource.name}")


def _await_converged(
    admin: AdminClient, specs: Sequence[TopicSpec], flags: Mapping[str, bool], timeout: float
) -> None:
    """Wait until the broker's view shows our changes, so an immediate re-plan reports nothing to do."""
    deadline = time.monotonic() + min(timeout, _CONVERGE_TIMEOUT_S)
    while True:
        pending = [c for c in plan(admin, specs, timeout=timeout, **flags) if c.allowed]
        if not pending:
            return
        if time.monotonic() > deadline:
            names = ", ".join(sorted({c.topic for c in pending}))
            raise TopicAdminError(f"changes to {names} were accepted but are not visible yet")
        time.sleep(0.1)


def admin_client(settings: Settings) -> AdminClient:
    """An AdminClient for the topic tools: quiet, errors surface as exceptions from its calls."""
    from orchestrator._engine import kafka

    return kafka.new_admin(kafka.base(settings, logger=_LIBRDKAFKA_LOG))
