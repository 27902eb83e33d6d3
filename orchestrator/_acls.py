"""The least-privilege Kafka ACLs of each engine component, derived from the app's shape (ADR 0021).

Teams that run Kafka secure it, and a component should hold only the permissions it uses: a worker that
can write to the history topic could forge a run's record of what happened. This module says, for one
app, exactly which topics, consumer groups and transactional ids each component touches and how, so that
``orchestrator acls plan`` can print it, ``orchestrator acls apply`` can create it, and
``orchestrator topics render --format strimzi --users`` can put it into Strimzi ``KafkaUser`` resources.

Why each entry is there (the engine's own calls; the secured-cluster test runs the whole engine with
exactly these ACLs, so an entry the plan forgot fails that test):

- Every component calls ``kafka.ensure_topics`` at start: it lists the app's topics (``Describe``, else a
  topic looks missing) and describes their configs (``DescribeConfigs``). It creates only topics that are
  missing; with the topics applied beforehand (``orchestrator topics apply`` as an admin) no component needs
  ``Create``, unless the operator asks for it (``create_topics``).
- The processor consumes the inbox, the keyed topic and the users' source topics in its group, restores its
  stores from both changelogs, writes every engine topic in transactions (transactional id
  ``{app}.processor.{instance}``, hence a prefixed ACL), and describes its output topics' configs for the
  record limit. With ``--standby-replicas`` it also describes its own group (``Read`` on a group implies
  ``Describe``) and tails both changelogs as an assign-only reader: no ACL beyond the above (ADR 0024).
- The worker consumes its tasks topics in its group and writes step results to the inbox, dead letters to
  the dlq.
- The client writes to the inbox and the keyed topic (signals, idempotent starts), tails the outcomes topic
  and reads the changelogs (``describe``, ``list_runs``, ``list_schedules``, and an awaited run that ended
  before the client looked).
- The ui (and the read-only CLI: ``history``, ``export``, ``replay``, ``dead-letters``) needs the client's
  rights and reads the history and the dlq.
- Readers (restore, the CLI, the outcome watcher) assign partitions but carry the group id
  ``orchestrator-reader``; they never join or commit, and librdkafka only looks up its coordinator, so
  that group needs ``Describe``, never ``Read``.
- Idempotent producers need no ``IdempotentWrite`` on the cluster since Kafka 3.0 (KIP-679: ``Write`` on a
  topic is enough); ``idempotent_write`` adds it for older brokers.
"""

from __future__ import annotations

import shlex
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from confluent_kafka import KafkaException
from confluent_kafka.admin import (  # type: ignore[attr-defined]  # re-exported without __all__
    AclBinding,
    AclOperation,
    AclPermissionType,
    AdminClient,
    ResourcePatternType,
    ResourceType,
)

from orchestrator import topology
from orchestrator._engine.queries.registry import registry_topic
from orchestrator.app import App


class Component(StrEnum):
    """A kind of engine process, each run under its own Kafka principal."""

    PROCESSOR = "processor"
    WORKER = "worker"
    CLIENT = "client"
    UI = "ui"


class ResourceKind(StrEnum):
    """Kafka's ACL resource types the engine uses (names as ``kafka-acls.sh`` and Strimzi spell them)."""

    TOPIC = "topic"
    GROUP = "group"
    TRANSACTIONAL_ID = "transactionalId"
    CLUSTER = "cluster"


class Pattern(StrEnum):
    LITERAL = "literal"
    PREFIXED = "prefixed"


class Operation(StrEnum):
    """ACL operations, spelled as ``kafka-acls.sh --operation`` and Strimzi's ``operations`` take them."""

    READ = "Read"
    WRITE = "Write"
    CREATE = "Create"
    DESCRIBE = "Describe"
    DESCRIBE_CONFIGS = "DescribeConfigs"
    IDEMPOTENT_WRITE = "IdempotentWrite"


CLUSTER_NAME = "kafka-cluster"
"""The one name Kafka gives the cluster resource."""
READER_GROUP = "orchestrator-reader"
"""The group id of every group-less reader (``kafka.reader_config``): restore, CLI, outcome watcher."""


def processor_group(app: str) -> str:
    return f"{app}.processors"


def worker_group(app: str) -> str:
    return f"{app}.workers"


def processor_transactional_prefix(app: str) -> str:
    """Each processor instance's transactional id is this plus its instance id (``processor/loop.py``)."""
    return f"{app}.processor."


@dataclass(frozen=True)
class Resource:
    kind: ResourceKind
    name: str
    pattern: Pattern = Pattern.LITERAL


@dataclass(frozen=True)
class Acl:
    """One resource a component needs, with every operation it needs on it, and why."""

    component: Component
    resource: Resource
    operations: tuple[Operation, ...]
    why: str


@dataclass(frozen=True)
class AppShape:
    """What the ACLs of an app depend on: its name, its task queues and the users' topics it consumes."""

    name: str
    queues: tuple[str, ...] = ("default",)
    source_topics: tuple[str, ...] = ()

    @classmethod
    def of(cls, app: App) -> AppShape:
        return cls(app.name, tuple(sorted(app.queues)), tuple(sorted(app.source_topics)))


def _topic(name: str) -> Resource:
    return Resource(ResourceKind.TOPIC, name)


def _component_acls(
    component: Component, shape: AppShape, *, create_topics: bool, idempotent_write: bool
) -> list[Acl]:
    app = shape.name
    t = topology
    tasks = [t.tasks_topic(app, q) for q in dict.fromkeys(shape.queues)]
    engine = engine_topic_names(shape)
    # operations per topic, in engine.toml order, then the users' topics
    ops: dict[str, list[Operation]] = {name: [] for name in engine}
    why: dict[str, str] = {}

    def need(topic: str, op: Operation, reason: str) -> None:
        ops.setdefault(topic, [])
        if op not in ops[topic]:
            ops[topic].append(op)
        if reason not in why.get(topic, ""):
            why[topic] = f"{why[topic]}; {reason}" if topic in why else reason

    history, changelog, outcomes = t.history_topic(app), t.changelog_topic(app), t.outcomes_topic(app)
    inbox, dlq, keyed = t.inbox_topic(app), t.dlq_topic(app), t.keyed_topic(app)
    keyed_log = t.keyed_changelog_topic(app)
    instances = registry_topic(app)
    extra: list[Acl] = []
    if component is Component.PROCESSOR:
        for topic in (inbox, keyed):
            need(topic, Operation.READ, "consumed in the processors' group")
        for topic in (changelog, keyed_log):
            need(topic, Operation.READ, "store restore")
        for topic in (inbox, history, changelog, outcomes, dlq, keyed, keyed_log, *tasks):
            need(topic, Operation.WRITE, "transactional output")
        need(instances, Operation.WRITE, "where this instance answers run queries (ADR 0016)")
        for topic in shape.source_topics:
            need(topic, Operation.READ, "trigger / event source consumed in the processors' group")
        group = Resource(ResourceKind.GROUP, processor_group(app))
        extra.append(Acl(component, group, (Operation.READ,), "consumer group; offsets sent in transactions"))
        txn = Resource(ResourceKind.TRANSACTIONAL_ID, processor_transactional_prefix(app), Pattern.PREFIXED)
        extra.append(Acl(component, txn, (Operation.WRITE,), "one transactional id per instance"))
        extra.append(_reader_group(component))
    elif component is Component.WORKER:
        for topic in tasks:
            need(topic, Operation.READ, "step commands consumed in the workers' group")
        need(inbox, Operation.WRITE, "step results")
        need(dlq, Operation.WRITE, "dead letters")
        group = Resource(ResourceKind.GROUP, worker_group(app))
        extra.append(Acl(component, group, (Operation.READ,), "consumer group; offsets committed"))
    else:
        need(inbox, Operation.WRITE, "starts, signals, cancels")
        need(keyed, Operation.WRITE, "idempotent starts and keyed signals")
        need(outcomes, Operation.READ, "awaited results (tailed by assignment)")
        need(changelog, Operation.READ, "describe, list runs, outcome of a run that ended earlier")
        need(keyed_log, Operation.READ, "list schedules")
        if component is Component.UI:
            need(history, Operation.READ, "run history, export, replay")
            need(dlq, Operation.READ, "dead letters")
            need(instances, Operation.READ, "run queries: where each processor answers (ADR 0016)")
            group = Resource(ResourceKind.GROUP, processor_group(app))
            owners = "run queries: which processor owns which partition"
            extra.append(Acl(component, group, (Operation.DESCRIBE,), owners))
        extra.append(_reader_group(component))
    for topic in engine:
        if not ops[topic]:
            need(topic, Operation.DESCRIBE, "start-up topic check (kafka.ensure_topics)")
        need(topic, Operation.DESCRIBE_CONFIGS, "start-up topic check (kafka.ensure_topics)")
    if create_topics:
        extra.append(
            Acl(
                component,
                Resource(ResourceKind.TOPIC, f"{app}.", Pattern.PREFIXED),
                (Operation.CREATE,),
                "create missing engine topics at start-up",
            )
        )
    if idempotent_write:
        cluster = Resource(ResourceKind.CLUSTER, CLUSTER_NAME)
        extra.append(
            Acl(component, cluster, (Operation.IDEMPOTENT_WRITE,), "idempotent producer (Kafka < 3.0)")
        )
    topics = [Acl(component, _topic(name), tuple(o), why[name]) for name, o in ops.items() if o]
    return topics + extra


def _reader_group(component: Component) -> Acl:
    group = Resource(ResourceKind.GROUP, READER_GROUP)
    return Acl(component, group, (Operation.DESCRIBE,), "group id of the assign-only readers (never joined)")


def engine_topic_names(shape: AppShape) -> list[str]:
    """The app's engine topics in ``engine.toml`` order (as ``topology.engine_topics`` lists them), without
    reading any settings: names do not depend on them."""
    names: list[str] = []
    for role, template in topology.load_templates().items():
        for queue in dict.fromkeys(shape.queues) if template.per_queue else [None]:
            names.append(topology.topic_name(role, shape.name, queue))
    return names


def plan(
    shape: AppShape,
    components: Iterable[Component] = tuple(Component),
    *,
    create_topics: bool = False,
    idempotent_write: bool = False,
) -> list[Acl]:
    """Every ACL each of ``components`` needs, component by component, topics first."""
    out: list[Acl] = []
    for component in components:
        out += _component_acls(
            Component(component), shape, create_topics=create_topics, idempotent_write=idempotent_write
        )
    return out


# -- Kafka's AdminClient ------------------------------------------------------------------------------------
_RESOURCE_TYPES = {
    ResourceKind.TOPIC: ResourceType.TOPIC,
    ResourceKind.GROUP: ResourceType.GROUP,
    ResourceKind.TRANSACTIONAL_ID: ResourceType.TRANSACTIONAL_ID,
    ResourceKind.CLUSTER: ResourceType.BROKER,  # librdkafka's name for the cluster resource
}
_PATTERNS = {Pattern.LITERAL: ResourcePatternType.LITERAL, Pattern.PREFIXED: ResourcePatternType.PREFIXED}
_OPERATIONS = {
    Operation.READ: AclOperation.READ,
    Operation.WRITE: AclOperation.WRITE,
    Operation.CREATE: AclOperation.CREATE,
    Operation.DESCRIBE: AclOperation.DESCRIBE,
    Operation.DESCRIBE_CONFIGS: AclOperation.DESCRIBE_CONFIGS,
    Operation.IDEMPOTENT_WRITE: AclOperation.IDEMPOTENT_WRITE,
}


class AclApplyError(RuntimeError):
    """The cluster refused to create an ACL (not authorized, or no authorizer configured)."""


def bindings(acls: Iterable[Acl], principal: str, host: str = "*") -> list[AclBinding]:
    """One ALLOW binding per operation of each ACL, for ``principal`` (e.g. ``User:proc``)."""
    out = []
    for acl in acls:
        r = acl.resource
        for op in acl.operations:
            out.append(
                AclBinding(
                    _RESOURCE_TYPES[r.kind],
                    r.name,
                    _PATTERNS[r.pattern],
                    principal,
                    host,
                    _OPERATIONS[op],
                    AclPermissionType.ALLOW,
                )
            )
    return out


def apply(admin: AdminClient, acls: Iterable[Acl], principal: str, timeout: float = 30.0) -> int:
    """Create the ALLOW bindings of ``acls`` for ``principal``; returns how many. Creating one that
    exists already is not an error (Kafka keeps one copy)."""
    wanted = bindings(acls, principal)
    if not wanted:
        return 0
    futures = admin.create_acls(wanted, request_timeout=timeout)
    for binding, future in futures.items():
        try:
            future.result()
        except KafkaException as exc:
            reason = exc.args[0] if exc.args else exc
            raise AclApplyError(f"create ACL {binding}: {reason}") from exc
    return len(wanted)


# -- renderings ---------------------------------------------------------------------------------------------
def as_json(acls: Sequence[Acl]) -> list[dict[str, Any]]:
    return [
        {
            "component": acl.component.value,
            "resource_type": acl.resource.kind.value,
            "name": acl.resource.name,
            "pattern_type": acl.resource.pattern.value,
            "operations": [op.value for op in acl.operations],
            "why": acl.why,
        }
        for acl in acls
    ]


def kafka_acls_commands(
    acls: Sequence[Acl],
    principals: Mapping[Component, str],
    *,
    bootstrap: str = "BOOTSTRAP",
    command_config: str | None = None,
) -> list[str]:
    """``kafka-acls.sh --add`` command lines, one per resource and component, quoted for a POSIX shell."""
    lines = []
    for acl in acls:
        args = ["kafka-acls.sh", "--bootstrap-server", bootstrap]
        if command_config:
            args += ["--command-config", command_config]
        args += ["--add", "--allow-principal", principals[acl.component]]
        for op in acl.operations:
            args += ["--operation", op.value]
        r = acl.resource
        if r.kind is ResourceKind.CLUSTER:
            args.append("--cluster")
        else:
            flag = {"topic": "--topic", "group": "--group", "transactionalId": "--transactional-id"}[r.kind]
            args += [flag, r.name]
            if r.pattern is Pattern.PREFIXED:
                args += ["--resource-pattern-type", "prefixed"]
        lines.append(shlex.join(args))
    return lines


def strimzi_acls(acls: Iterable[Acl]) -> list[dict[str, Any]]:
    """``spec.authorization.acls`` of a Strimzi ``KafkaUser`` (``patternType`` is ``prefix`` there)."""
    out: list[dict[str, Any]] = []
    for acl in acls:
        r = acl.resource
        resource: dict[str, Any] = {"type": r.kind.value}
        if r.kind is not ResourceKind.CLUSTER:
            resource["name"] = r.name
            resource["patternType"] = "prefix" if r.pattern is Pattern.PREFIXED else "literal"
        out.append(
            {
                "resource": resource,
                "operations": [op.value for op in acl.operations],
                "host": "*",
                "type": "allow",
            }
        )
    return out


__all__ = [
    "CLUSTER_NAME",
    "READER_GROUP",
    "Acl",
    "AclApplyError",
    "AppShape",
    "Component",
    "Operation",
    "Pattern",
    "Resource",
    "ResourceKind",
    "apply",
    "as_json",
    "bindings",
    "engine_topic_names",
    "kafka_acls_commands",
    "plan",
    "processor_group",
    "processor_transactional_prefix",
    "strimzi_acls",
    "worker_group",
]
