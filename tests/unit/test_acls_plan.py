"""The ACL plan's properties, without a broker (the secured-broker test shows the engine runs on it)."""

from __future__ import annotations

import json
import shlex

from confluent_kafka.admin import AclOperation, ResourcePatternType, ResourceType  # type: ignore[attr-defined]
from typer.testing import CliRunner

from orchestrator import _acls, topology
from orchestrator._acls import Acl, AppShape, Component, Operation, Pattern, ResourceKind
from orchestrator.cli import app as cli
from orchestrator.settings import Settings

SHAPE = AppShape("shop", ("default", "slow"), ("approvals",))


def _ops(component: Component) -> dict[tuple[ResourceKind, str], set[Operation]]:
    out: dict[tuple[ResourceKind, str], set[Operation]] = {}
    for acl in _acls.plan(SHAPE, [component]):
        out.setdefault((acl.resource.kind, acl.resource.name), set()).update(acl.operations)
    return out


def test_every_component_may_check_every_engine_topic_at_start_up() -> None:
    names = [spec.name for spec in topology.engine_topics("shop", Settings(), SHAPE.queues)]
    assert _acls.engine_topic_names(SHAPE) == names
    for component in Component:
        ops = _ops(component)
        for name in names:
            granted = ops[(ResourceKind.TOPIC, name)]
            assert Operation.DESCRIBE_CONFIGS in granted
            assert granted & {Operation.DESCRIBE, Operation.READ, Operation.WRITE}  # each implies Describe


def test_only_the_processor_writes_the_record_of_what_happened() -> None:
    """A worker, client or ui principal cannot forge history, state or outcomes."""
    recorded = [
        topology.history_topic("shop"),
        topology.changelog_topic("shop"),
        topology.outcomes_topic("shop"),
    ]
    recorded += [
        topology.keyed_changelog_topic("shop"),
        *(topology.tasks_topic("shop", q) for q in SHAPE.queues),
    ]
    for component in Component:
        ops = _ops(component)
        for name in recorded:
            writes = Operation.WRITE in ops[(ResourceKind.TOPIC, name)]
            assert writes == (component is Component.PROCESSOR), (component, name)


def test_what_each_component_reads() -> None:
    def reads(component: Component) -> set[str]:
        return {n for (k, n), o in _ops(component).items() if k is ResourceKind.TOPIC and Operation.READ in o}

    assert reads(Component.PROCESSOR) == {
        "shop.inbox",
        "shop.keyed",
        "shop.changelog",
        "shop.keyed-changelog",
        "approvals",
    }
    assert reads(Component.WORKER) == {"shop.tasks.default", "shop.tasks.slow"}
    assert reads(Component.CLIENT) == {"shop.outcomes", "shop.changelog", "shop.keyed-changelog"}
    assert reads(Component.UI) == reads(Component.CLIENT) | {"shop.history", "shop.dlq", "shop.instances"}


def test_groups_and_transactional_ids() -> None:
    proc = _acls.plan(SHAPE, [Component.PROCESSOR])
    txn = [a for a in proc if a.resource.kind is ResourceKind.TRANSACTIONAL_ID]
    assert [(a.resource.name, a.resource.pattern, a.operations) for a in txn] == [
        ("shop.processor.", Pattern.PREFIXED, (Operation.WRITE,))
    ]
    for component, own in [(Component.PROCESSOR, "shop.processors"), (Component.WORKER, "shop.workers")]:
        groups = {
            a.resource.name: a.operations
            for a in _acls.plan(SHAPE, [component])
            if a.resource.kind is ResourceKind.GROUP
        }
        assert groups[own] == (Operation.READ,)
    for component in (Component.PROCESSOR, Component.CLIENT, Component.UI):
        groups = {
            a.resource.name: a.operations
            for a in _acls.plan(SHAPE, [component])
            if a.resource.kind is ResourceKind.GROUP
        }
        assert groups[_acls.READER_GROUP] == (Operation.DESCRIBE,)  # never joined: no Read
    others = [a for c in (Component.WORKER, Component.CLIENT, Component.UI) for a in _acls.plan(SHAPE, [c])]
    assert not [a for a in others if a.resource.kind is ResourceKind.TRANSACTIONAL_ID]
    assert not [a for a in _acls.plan(SHAPE) if a.resource.kind is ResourceKind.CLUSTER]  # KIP-679


def test_a_prefix_never_reaches_another_apps_resources() -> None:
    """App names hold no dot, so ``shop.`` cannot be the start of app ``shop2``'s or ``shop-eu``'s names."""
    flagged = _acls.plan(SHAPE, create_topics=True, idempotent_write=True)
    prefixes = {a.resource.name for a in flagged if a.resource.pattern is Pattern.PREFIXED}
    assert prefixes == {"shop.", "shop.processor."}
    for other in ("shop2", "shop-eu", "shop_x"):
        for name in _acls.engine_topic_names(AppShape(other)):
            assert not any(name.startswith(p) for p in prefixes)
    creates = [a for a in flagged if Operation.CREATE in a.operations]
    assert {a.component for a in creates} == set(Component)
    assert {a.resource.kind for a in flagged if Operation.IDEMPOTENT_WRITE in a.operations} == {
        ResourceKind.CLUSTER
    }


def test_bindings_are_one_allow_per_operation() -> None:
    acls = _acls.plan(SHAPE, [Component.PROCESSOR])
    bindings = _acls.bindings(acls, "User:proc")
    assert len(bindings) == sum(len(a.operations) for a in acls)
    txn = [b for b in bindings if b.restype == ResourceType.TRANSACTIONAL_ID]
    assert [(b.name, b.resource_pattern_type, b.operation, b.principal) for b in txn] == [
        ("shop.processor.", ResourcePatternType.PREFIXED, AclOperation.WRITE, "User:proc")
    ]
    cluster = _acls.bindings([Acl(Component.WORKER, _acls.Resource(ResourceKind.CLUSTER, "kafka-cluster"),
                                  (Operation.IDEMPOTENT_WRITE,), "")], "User:w")  # fmt: skip
    assert cluster[0].restype == ResourceType.BROKER and cluster[0].name == "kafka-cluster"


def test_kafka_acls_lines() -> None:
    acls = _acls.plan(SHAPE, [Component.PROCESSOR], idempotent_write=True)
    lines = _acls.kafka_acls_commands(
        acls, {Component.PROCESSOR: "User:p r"}, bootstrap="b:9092", command_config="a.properties"
    )
    assert len(lines) == len(acls)
    argv = [shlex.split(line) for line in lines]
    assert all(
        a[:7]
        == [
            "kafka-acls.sh",
            "--bootstrap-server",
            "b:9092",
            "--command-config",
            "a.properties",
            "--add",
            "--allow-principal",
        ]
        for a in argv
    )
    assert all(a[7] == "User:p r" for a in argv)  # quoted for the shell
    txn = next(a for a in argv if "--transactional-id" in a)
    assert txn[txn.index("--transactional-id") + 1] == "shop.processor."
    assert txn[-2:] == ["--resource-pattern-type", "prefixed"]
    inbox = next(a for a in argv if a[-2:] == ["--topic", "shop.inbox"])
    assert [inbox[i + 1] for i, x in enumerate(inbox) if x == "--operation"] == [
        "Read",
        "Write",
        "DescribeConfigs",
    ]
    assert any(a[-1] == "--cluster" for a in argv)


def test_cli_plan_formats() -> None:
    runner = CliRunner()
    args = [
        "acls",
        "plan",
        "--app",
        "shop",
        "--queue",
        "default",
        "--queue",
        "slow",
        "--source-topic",
        "approvals",
    ]
    done = runner.invoke(cli, [*args, "--format", "json"])
    assert done.exit_code == 0, done.output
    assert json.loads(done.output) == _acls.as_json(_acls.plan(SHAPE))
    done = runner.invoke(
        cli, [*args, "--format", "kafka-acls", "--component", "worker", "--principal", "worker=User:w"]
    )
    assert done.exit_code == 0, done.output
    lines = done.output.splitlines()
    assert len(lines) == len(_acls.plan(SHAPE, [Component.WORKER]))
    assert all("--allow-principal User:w " in line for line in lines)
    assert runner.invoke(cli, [*args, "--format", "yaml"]).exit_code == 2
    assert runner.invoke(cli, ["acls", "plan", "--app", "bad.name"]).exit_code == 2
