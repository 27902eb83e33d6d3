"""The engine runs with exactly the planned ACLs, one SCRAM user per component, on a broker with ACLs on.

The secured broker shared with the other files of its group (``shared_brokers.secured_broker``: ``kafka start
--secure``: SASL_SSL, SCRAM-SHA-512, StandardAuthorizer with no access for anyone but the super users). The
admin creates the app's topics and one user per component, and gives each exactly what ``orchestrator acls
plan`` lists, nothing more. The processor, the worker, the client and the read-only CLI (the ui's principal)
then run a workflow that touches every engine topic, both task queues and a user's source topic. Should the
engine need an ACL the plan forgot, some component fails here: this test is what keeps the plan honest. A
component missing one of its ACLs must fail with a `KafkaAccessError` naming what is missing, not hang.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
import secrets
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import yaml
from apps.acl_app import make_app
from confluent_kafka import KafkaException, Producer
from confluent_kafka.admin import (  # type: ignore[attr-defined]
    AclBinding,
    AclBindingFilter,
    AclOperation,
    AclPermissionType,
    AdminClient,
    NewTopic,
    ResourcePatternType,
    ResourceType,
    ScramCredentialInfo,
    ScramMechanism,
    UserScramCredentialUpsertion,
)
from engine_support import REPO, ProcessorThread, WorkerThread

from orchestrator import App, Settings, _acls, _topic_admin
from orchestrator._acls import AppShape, Component
from orchestrator._devkafka import BrokerInfo
from orchestrator._devkafka.security import read_client_properties
from orchestrator._engine import kafka
from orchestrator._engine.access import KafkaAccessError
from orchestrator._engine.processor import Processor, ProcessorConfig
from orchestrator._engine.worker import Worker

pytestmark = pytest.mark.timeout(900)  # a JVM start, engine threads and CLI processes on a shared 2-core box
APP_SPEC = "tests.integration.apps.acl_app:app"
QUIET = logging.getLogger("tests.acls.librdkafka")
QUIET.addHandler(logging.NullHandler())
QUIET.propagate = False


@pytest.fixture
def properties(secured_broker: BrokerInfo, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The broker's client.properties (the admin's) as the only Kafka setting in the environment."""
    assert secured_broker.client_properties is not None
    for name in list(os.environ):
        if name.upper().startswith("ORCHESTRATOR_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("ORCHESTRATOR_KAFKA_CONFIG_FILE", str(secured_broker.client_properties))
    return secured_broker.client_properties


@pytest.fixture
def admin(properties: Path) -> AdminClient:
    return AdminClient({**read_client_properties(properties), "logger": QUIET})


class Cluster:
    """The admin's side of the test: the app's topics, users, ACLs, and the source topic's producer."""

    def __init__(self, admin: AdminClient, properties: Path, name: str) -> None:
        self.admin, self.properties, self.name = admin, properties, name
        self.source = f"{name}-approvals"
        self.shape = AppShape.of(make_app(name, self.source))

    def create_topics(self) -> None:
        futures = self.admin.create_topics([NewTopic(self.source, num_partitions=2, replication_factor=1)])
        for future in futures.values():
            future.result()
        kafka.ensure_topics(make_app(self.name, self.source))  # as the admin: `topics apply`

    def user(self, component: Component) -> Settings:
        """A new SCRAM user for ``component``, with no ACL yet; the settings it logs in with."""
        user, password = f"{self.name}-{component.value}", secrets.token_urlsafe(16)
        upsert = UserScramCredentialUpsertion(
            user, ScramCredentialInfo(ScramMechanism.SCRAM_SHA_512, 8192), password.encode()
        )
        for future in self.admin.alter_user_scram_credentials([upsert]).values():
            future.result()
        settings = Settings(kafka={"sasl.username": user, "sasl.password": password})
        _await_login(settings)
        return settings

    def grant(
        self, component: Component, leave_out: Callable[[_acls.Acl], _acls.Acl | None] | None = None
    ) -> set[tuple[str, str, str, str]]:
        """Create ``component``'s planned ACLs (less what ``leave_out`` drops) for its user, and wait until
        the broker enforces them; returns them as the broker lists them."""
        acls = _acls.plan(self.shape, [component])
        if leave_out is not None:
            acls = [kept for acl in acls if (kept := leave_out(acl)) is not None]
        _acls.apply(self.admin, acls, f"User:{self.name}-{component.value}")
        return self.enforced(component, acls)

    def enforced(self, component: Component, acls: list[_acls.Acl]) -> set[tuple[str, str, str, str]]:
        """Wait until the broker lists exactly ``acls`` for ``component``'s user; what it lists then."""
        principal = f"User:{self.name}-{component.value}"
        wanted = _tuples(_acls.bindings(acls, principal))
        # create_acls returns once the controller took them; the broker's authorizer learns them a moment
        # later from the metadata log, and describe_acls answers from the authorizer.
        query = AclBindingFilter(ResourceType.ANY, None, ResourcePatternType.ANY, principal, None,
                                 AclOperation.ANY, AclPermissionType.ANY)  # fmt: skip
        deadline = time.monotonic() + 30
        while (found := _bindings_of(self.admin, query)) != wanted and time.monotonic() < deadline:
            time.sleep(0.2)
        return found

    def approve(self, order: str, bonus: int) -> None:
        producer = Producer({**read_client_properties(self.properties), "logger": QUIET})
        producer.produce(
            self.source, json.dumps({"order_id": order, "bonus": bonus}).encode(), order.encode()
        )
        assert producer.flush(30) == 0

    def cli(self, settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
        """``orchestrator ARGS`` as ``settings``' user, a new process, settings from its environment."""
        login = {f"ORCHESTRATOR_KAFKA__{k.upper().replace('.', '_')}": str(v) for k, v in _login(settings)}
        env = {
            **os.environ,
            "ACL_APP_NAME": self.name,
            "ACL_APP_SOURCE": self.source,
            "COLUMNS": "200",
            **login,
        }
        return subprocess.run(
            [sys.executable, "-m", "orchestrator", *args],
            cwd=REPO, env=env, capture_output=True, text=True, timeout=180, check=False,
        )  # fmt: skip


def _await_login(settings: Settings) -> None:
    """Wait until the new user can log in: the broker learns SCRAM credentials through its metadata log,
    and a login refused meanwhile would be reported as wrong credentials, not as the ACL under test."""
    deadline = time.monotonic() + 30
    while True:
        probe = AdminClient({**kafka.base(settings), "logger": QUIET})
        try:
            probe.list_topics(timeout=5)
            return
        except KafkaException:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def _login(settings: Settings) -> list[tuple[str, str]]:
    values = settings.kafka
    return [(key, values[key] if isinstance(values[key], str) else values[key].get_secret_value())  # type: ignore[union-attr]
            for key in ("sasl.username", "sasl.password")]  # fmt: skip


@pytest.fixture
def cluster(admin: AdminClient, properties: Path, unique_name: str) -> Cluster:
    made = Cluster(admin, properties, unique_name)
    made.create_topics()
    return made


async def test_the_whole_engine_runs_with_exactly_the_planned_acls(cluster: Cluster, tmp_path: Path) -> None:
    settings = {component: cluster.user(component) for component in Component}
    for component in (Component.WORKER, Component.CLIENT, Component.UI):
        cluster.grant(component)
    granted = cluster.cli(
        Settings(kafka={}), "acls", "apply", "--app", APP_SPEC, "--component", "processor",
        "--principal", f"User:{cluster.name}-processor",
    )  # fmt: skip
    assert granted.returncode == 0, granted.stdout + granted.stderr
    assert "ACL binding(s)" in granted.stdout
    planned = _acls.plan(cluster.shape, [Component.PROCESSOR])
    binds = _acls.bindings(planned, f"User:{cluster.name}-processor")
    assert cluster.enforced(Component.PROCESSOR, planned) == _tuples(binds)  # what the CLI created

    apps = {c: make_app(cluster.name, cluster.source, settings[c]) for c in Component}
    # With standby replicas: describing its own group (Read implies Describe) takes no ACL beyond the plan.
    proc = ProcessorThread(apps[Component.PROCESSOR], tmp_path, standby_replicas=1)
    worker = WorkerThread(apps[Component.WORKER])
    try:
        async with apps[Component.CLIENT].client() as client:
            handles = [
                await client.start("compute", x, run_id=f"run-{x}", idempotency_key=f"key-{x}")
                for x in range(3)
            ]
            for x in range(3):
                cluster.approve(f"order-{x}", 100 * x)
            assert [await h.result(timeout=180) for h in handles] == [1, 103, 205]
            described = await client.describe("run-1")
            assert described is not None and described.status == "completed"
        standbys = proc.processor.stores.standbys
        assert standbys is not None and standbys.described > 0 and standbys.faults() == []
        proc.stop()
        # A new instance with empty stores restores both changelogs: reading them takes the plan's ACLs too.
        # It also answers run queries (ADR 0016): publishing where it does takes the plan's ACLs too.
        proc = ProcessorThread(
            apps[Component.PROCESSOR], tmp_path / "restored", instance_id="p1",
            http_port=0, advertised_host="127.0.0.1",
        )  # fmt: skip
        async with apps[Component.CLIENT].client() as client:
            cluster.approve("order-3", 300)
            assert await (await client.start("compute", 3, run_id="run-3")).result(timeout=180) == 307
            assert (await client.describe("run-0")).status == "completed"  # type: ignore[union-attr]
        # The ui's `runs list` asks the live processor (its group and its registry: the ui's ACLs).
        listed = cluster.cli(settings[Component.UI], "runs", "list", "--app", APP_SPEC)
        assert listed.returncode == 0, listed.stdout + listed.stderr
        assert "run-0" in listed.stdout
    finally:
        worker.stop()
        proc.stop()
    assert proc.processor.stats.restored_records > 0

    ui = settings[Component.UI]
    history = cluster.cli(ui, "history", "run-2", "--app", APP_SPEC)
    assert history.returncode == 0, history.stdout + history.stderr
    assert "RunCompleted" in history.stdout and "StepCompleted" in history.stdout
    letters = cluster.cli(ui, "dlq", "list", "--app", APP_SPEC)
    assert letters.returncode == 0, letters.stdout + letters.stderr


def _raises_within(seconds: float, target: Callable[[], Any]) -> BaseException:
    """What ``target`` raised, run in a thread: a hang fails the test instead of stalling it."""
    raised: list[BaseException] = []

    def run() -> None:
        try:
            target()
        except BaseException as exc:
            raised.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"still running after {seconds} s: it should have failed"
    assert raised, "returned instead of failing"
    return raised[0]


def _without(
    kind: _acls.ResourceKind, name_end: str, op: _acls.Operation | None = None
) -> Callable[[_acls.Acl], _acls.Acl | None]:
    """A filter leaving out ``op`` (or every operation) on the resource of ``kind`` whose name ends so."""

    def leave_out(acl: _acls.Acl) -> _acls.Acl | None:
        if acl.resource.kind is not kind or not acl.resource.name.endswith(name_end):
            return acl
        kept = tuple(o for o in acl.operations if op is not None and o is not op)
        return dataclasses.replace(acl, operations=kept) if kept else None

    return leave_out


T, G, X = _acls.ResourceKind.TOPIC, _acls.ResourceKind.GROUP, _acls.ResourceKind.TRANSACTIONAL_ID
MISSING = {
    # case: (component, what is left out of its plan, what the error must name)
    "client-without-any-acl": (Component.CLIENT, lambda acl: None, ".inbox"),
    "client-without-describe-on-history": (Component.CLIENT, _without(T, ".history"), ".history"),
    "worker-without-read-on-a-tasks-topic": (
        Component.WORKER, _without(T, ".tasks.slow", _acls.Operation.READ), ".tasks.slow"
    ),
    "processor-without-describe-configs": (
        Component.PROCESSOR, _without(T, ".history", _acls.Operation.DESCRIBE_CONFIGS), ".history"
    ),
    "client-without-describe-on-the-reader-group": (
        Component.CLIENT, _without(G, _acls.READER_GROUP), f"group id {_acls.READER_GROUP}"
    ),
    "worker-without-its-group": (Component.WORKER, _without(G, ".workers"), ".workers"),
    "processor-without-its-group": (Component.PROCESSOR, _without(G, ".processors"), ".processors"),
    "processor-without-its-transactional-id": (
        Component.PROCESSOR, _without(X, ".processor."), "Transactional Id"
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(MISSING))
async def test_a_component_missing_an_acl_fails_clearly_naming_it(
    cluster: Cluster, tmp_path: Path, case: str
) -> None:
    component, leave_out, named = MISSING[case]
    cluster.grant(component, leave_out)
    app = make_app(cluster.name, cluster.source, cluster.user(component))
    if component is Component.PROCESSOR:
        failed = await asyncio.to_thread(_processor, app, tmp_path)
    elif component is Component.WORKER:
        failed = await asyncio.to_thread(_raises_within, 120, lambda: asyncio.run(Worker(app).run()))
    else:

        async def start() -> None:
            async with app.client() as client:
                handle = await client.start("compute", 1, run_id="r1")
                await handle.result(timeout=60)

        failed = await asyncio.to_thread(_raises_within, 120, lambda: asyncio.run(start()))
    assert isinstance(failed, KafkaAccessError), repr(failed)
    said = str(failed)
    assert f"{cluster.name}-{component.value}" in said  # the principal
    assert named in said  # the resource
    assert f"acls plan --app APP --component {component.value}" in said  # where to find the fix


def _processor(app: App, tmp_path: Path) -> BaseException:
    proc = Processor(app, ProcessorConfig(instance_id="p0", state_dir=tmp_path))
    return _raises_within(120, lambda: proc.run(install_signal_handlers=False))


def test_strimzi_render_equals_the_cluster(cluster: Cluster) -> None:
    """The rendered KafkaTopics are the topics `topics apply` made (partitions, replicas, configs), and
    each rendered KafkaUser's ACLs are the bindings `acls apply` creates for that component."""
    rendered = cluster.cli(Settings(kafka={}), "topics", "render", "--app", APP_SPEC, "--users")
    assert rendered.returncode == 0, rendered.stdout + rendered.stderr
    docs = list(yaml.safe_load_all(rendered.stdout))
    topics = {d["spec"]["topicName"]: d["spec"] for d in docs if d["kind"] == "KafkaTopic"}
    assert sorted(topics) == sorted(_acls.engine_topic_names(cluster.shape))
    observed = _topic_admin.observe(cluster.admin, list(topics))
    assert sorted(observed) == sorted(topics)
    for name, spec in topics.items():
        actual = observed[name]
        assert (spec["partitions"], spec["replicas"]) == (actual.partitions, actual.replication_factor), name
        assert spec["config"].items() <= actual.config.items(), name

    users = {
        d["metadata"]["labels"]["orchestrator.io/component"]: d for d in docs if d["kind"] == "KafkaUser"
    }
    assert sorted(users) == sorted(c.value for c in Component)
    for component in Component:
        on_broker = cluster.grant(component)
        kinds = {
            "topic": "TOPIC",
            "group": "GROUP",
            "transactionalId": "TRANSACTIONAL_ID",
            "cluster": "BROKER",
        }
        patterns = {"literal": "LITERAL", "prefix": "PREFIXED"}
        wanted = {
            (kinds[r["resource"]["type"]], r["resource"]["name"], patterns[r["resource"]["patternType"]],
             op.replace("DescribeConfigs", "Describe_Configs").upper())
            for r in users[component.value]["spec"]["authorization"]["acls"]
            for op in r["operations"]
        }  # fmt: skip
        assert on_broker == wanted, component


def _bindings_of(admin: AdminClient, query: AclBindingFilter) -> set[tuple[str, str, str, str]]:
    return _tuples(admin.describe_acls(query).result())


def _tuples(bindings: Iterable[AclBinding]) -> set[tuple[str, str, str, str]]:
    return {(b.restype.name, b.name, b.resource_pattern_type.name, b.operation.name) for b in bindings}


def _describe_only(name_end: str) -> Callable[[_acls.Acl], _acls.Acl | None]:
    """A filter taking every operation but Describe/DescribeConfigs from the topic whose name ends so."""
    kept = (_acls.Operation.DESCRIBE, _acls.Operation.DESCRIBE_CONFIGS)

    def leave_out(acl: _acls.Acl) -> _acls.Acl | None:
        hit = acl.resource.kind is T and acl.resource.name.endswith(name_end)
        return dataclasses.replace(acl, operations=kept) if hit else acl

    return leave_out


LATER = {
    # case: (what is left out of the processor's plan, what the error must name); each is needed only once
    # there is something to restore or to write, so an admin's engine makes that first.
    "changelog-read-at-restore": (_without(T, ".changelog", _acls.Operation.READ), ".changelog"),
    "reader-group-at-restore": (_without(G, _acls.READER_GROUP), f"group id {_acls.READER_GROUP}"),
    "history-write-in-a-transaction": (_describe_only(".history"), ".history"),
}


@pytest.mark.parametrize("case", sorted(LATER))
async def test_a_processor_denied_later_fails_clearly_too(
    cluster: Cluster, tmp_path: Path, case: str
) -> None:
    leave_out, named = LATER[case]
    admin_app = make_app(cluster.name, cluster.source)  # the admin's login, from the properties file
    worker = WorkerThread(admin_app)
    try:
        if case.endswith("at-restore"):  # runs for the changelogs to hold
            proc = ProcessorThread(admin_app, tmp_path / "admin")
            try:
                async with admin_app.client() as client:
                    cluster.approve("order-1", 10)
                    assert await (await client.start("compute", 1, run_id="r1")).result(timeout=120) == 13
            finally:
                proc.stop()
        cluster.grant(Component.PROCESSOR, leave_out)
        app = make_app(cluster.name, cluster.source, cluster.user(Component.PROCESSOR))
        failing = asyncio.create_task(asyncio.to_thread(_processor, app, tmp_path / "restricted"))
        if case.endswith("in-a-transaction"):  # a run for the processor to write about
            async with admin_app.client() as client:
                await client.start("compute", 2, run_id="r2")
        failed = await failing
    finally:
        worker.stop()
    assert isinstance(failed, KafkaAccessError), repr(failed)
    said = str(failed)
    assert f"{cluster.name}-processor" in said and named in said, said
    assert "acls plan --app APP --component processor" in said


def _bindings_of(admin: AdminClient, query: AclBindingFilter) -> set[tuple[str, str, str, str]]:
    return _tuples(admin.describe_acls(query).result())


def _tuples(bindings: Iterable[AclBinding]) -> set[tuple[str, str, str, str]]:
    return {(b.restype.name, b.name, b.resource_pattern_type.name, b.operation.name) for b in bindings}


async def test_a_worker_denied_writing_results_fails_clearly(cluster: Cluster, tmp_path: Path) -> None:
    """Results are held and produced again through any outage (ADR 0012); a denial is not an outage, so
    the worker stops (after its drain timeout, 30 s) saying which ACL is missing."""
    admin_app = make_app(cluster.name, cluster.source)
    proc = ProcessorThread(admin_app, tmp_path)
    try:
        cluster.grant(Component.WORKER, _describe_only(".inbox"))
        app = make_app(cluster.name, cluster.source, cluster.user(Component.WORKER))
        run = partial(_raises_within, 120, lambda: asyncio.run(Worker(app).run()))
        failing = asyncio.create_task(asyncio.to_thread(run))
        async with admin_app.client() as client:
            await client.start("compute", 2, run_id="r2")  # a step for the worker to finish
        failed = await failing
    finally:
        proc.stop()
    assert isinstance(failed, KafkaAccessError), repr(failed)
    said = str(failed)
    assert f"{cluster.name}-worker" in said and f"{cluster.name}.inbox" in said, said
    assert "acls plan --app APP --component worker" in said


def test_a_standby_denied_one_changelog_keeps_the_other_warm_and_consistent(
    cluster: Cluster, tmp_path: Path
) -> None:
    """A processor without Read on the keyed changelog (ADR 0024, review 1b): the denial arrives for that
    partition alone; the run changelog's standby still applies every record, its offset never ahead of
    its content, and the fault stays open (one episode) while the denial lasts."""
    from types import SimpleNamespace

    from confluent_kafka import ConsumerGroupState, TopicPartition

    from orchestrator._engine.processor.config import ProcessorTopics
    from orchestrator._engine.processor.standby import APPLY_FAULT, KEYED, RUN, Standbys
    from orchestrator._engine.store import META_CHANGELOG_OFFSET, PartitionStore

    admin_app = make_app(cluster.name, cluster.source)
    topics = ProcessorTopics.of(admin_app)
    producer = Producer({**read_client_properties(cluster.properties), "logger": QUIET})
    for i in range(20):
        producer.produce(topics.changelog, b"v", f"r/a{i}".encode(), partition=0)
        producer.produce(topics.keyed_changelog, b"v", f"k/a{i}".encode(), partition=0)
    assert producer.flush(30) == 0
    cluster.grant(Component.PROCESSOR, _describe_only(".keyed-changelog"))
    app = make_app(cluster.name, cluster.source, cluster.user(Component.PROCESSOR))
    owner = SimpleNamespace(
        group_instance_id="processor-other",
        assignment=SimpleNamespace(
            topic_partitions=[TopicPartition(topics.inbox, 0), TopicPartition(topics.keyed, 0)]
        ),
    )
    me = SimpleNamespace(group_instance_id="processor-me", assignment=None)
    group = SimpleNamespace(state=ConsumerGroupState.STABLE, members=[owner, me])
    standbys = Standbys(
        app.settings.model_copy(update={"partitions": 1}),
        topics,
        tmp_path,
        "me",
        1,
        "g",
        describe=lambda: group,
        refresh_s=0.5,
    )
    standbys.start()
    try:
        deadline = time.monotonic() + 60
        while standbys.positions().get((RUN, 0)) != 20 or APPLY_FAULT not in standbys.faults():
            assert time.monotonic() < deadline, (standbys.positions(), standbys.faults())
            time.sleep(0.2)
        time.sleep(3)  # several rounds of the denial (each rewinds every replica)
        assert standbys.faults() == [APPLY_FAULT]
        assert standbys.positions().get((KEYED, 0)) in (None, 0)
    finally:
        standbys.close()
    store = PartitionStore(tmp_path / "p0", 0)
    try:
        assert store.meta_offset(META_CHANGELOG_OFFSET) == 20
        assert sorted(k for k, _ in store.scan(b"r/")) == sorted(f"r/a{i}".encode() for i in range(20))
    finally:
        store.close()
