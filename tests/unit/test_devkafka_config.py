"""What the development broker is configured with, checked without starting Java."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from orchestrator._devkafka import jars
from orchestrator._devkafka.cluster import (
    Shape,
    check_same_shape,
    node_dir,
    plan_nodes,
    read_shape,
    write_shape,
)
from orchestrator._devkafka.config import (
    BrokerConfig,
    DataDir,
    Voter,
    jvm_options,
    log4j2_properties,
    new_cluster_id,
    read_properties,
    server_properties,
    write_config_files,
)
from orchestrator._devkafka.errors import DevKafkaError


@pytest.fixture
def layout(tmp_path: Path) -> DataDir:
    return DataDir(tmp_path / "kafka")


def test_single_node_kraft_on_loopback(layout: DataDir) -> None:
    props = server_properties(layout, BrokerConfig(port=29092, controller_port=29093))

    assert props["process.roles"] == "broker,controller"
    assert props["listeners"] == "PLAINTEXT://127.0.0.1:29092,CONTROLLER://127.0.0.1:29093"
    assert props["advertised.listeners"].startswith("PLAINTEXT://127.0.0.1:29092")
    assert props["controller.quorum.bootstrap.servers"] == "127.0.0.1:29093"
    assert "controller.quorum.voters" not in props  # it cannot be mixed with --standalone formatting
    assert props["log.dirs"] == str(layout.kraft_dir)


def test_internal_topics_fit_one_broker(layout: DataDir) -> None:
    props = server_properties(layout, BrokerConfig())

    for prefix in ("offsets.topic", "transaction.state.log", "share.coordinator.state.topic"):
        assert props[f"{prefix}.replication.factor"] == "1"
        assert props[f"{prefix}.num.partitions"] == "1"
    assert props["transaction.state.log.min.isr"] == "1"
    assert props["share.coordinator.state.topic.min.isr"] == "1"
    assert props["group.initial.rebalance.delay.ms"] == "0"
    assert props["log.cleaner.dedupe.buffer.size"] == "16777216"
    assert props["auto.create.topics.enable"] == "false"
    assert props["num.partitions"] == "1"


def test_jvm_options(layout: DataDir) -> None:
    options = jvm_options(layout, BrokerConfig(heap_mb=384))

    assert "-Xmx384m" in options
    assert f"-Djava.io.tmpdir={layout.tmp_dir}" in options
    assert f"-Dlog4j2.configurationFile={layout.log4j2_properties}" in options
    assert layout.tmp_dir.parent == layout.root  # inside the data dir, which must allow exec


def test_written_files_round_trip(layout: DataDir) -> None:
    config = BrokerConfig(port=1234, controller_port=1235)
    write_config_files(layout, config)

    assert read_properties(layout.server_properties) == server_properties(layout, config)
    assert layout.tmp_dir.is_dir()
    assert "rootLogger.level = INFO" in layout.log4j2_properties.read_text(encoding="utf-8")


def test_log4j2_config_is_a_properties_file() -> None:
    text = log4j2_properties()
    assert "appender.stdout.type = Console" in text
    assert "log4j.rootLogger" not in text  # the log4j 1.x syntax is ignored by Kafka 4


def test_cluster_ids_look_like_kafka_uuids() -> None:
    ids = {new_cluster_id() for _ in range(200)}
    assert len(ids) == 200
    for cluster_id in ids:
        assert re.fullmatch(r"[A-Za-z0-9_-]{22}", cluster_id)
        assert not cluster_id.startswith("-")


@pytest.mark.parametrize(
    ("output", "major"),
    [
        ('openjdk version "17.0.15" 2025-04-15', 17),
        ('java version "1.8.0_392"', 8),
        ('openjdk version "21" 2023-09-19', 21),
        ('openjdk version "11.0.2-ea"', 11),
    ],
)
def test_java_version_parsing(output: str, major: int) -> None:
    assert jars.parse_java_major(output) == major


def test_unreadable_java_version_is_a_clear_error() -> None:
    with pytest.raises(DevKafkaError, match="Java version"):
        jars.parse_java_major("command not found")


def test_pom_asks_for_the_broker_and_its_logging_binding() -> None:
    pom = jars.render_pom()
    assert f"<artifactId>kafka_2.13</artifactId><version>{jars.KAFKA_VERSION}</version>" in pom
    assert "<artifactId>log4j-slf4j-impl</artifactId>" in pom
    assert "<artifactId>slf4j-api</artifactId><version>1.7.36</version>" in pom


def test_cache_dir_follows_xdg(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert jars.lib_dir() == tmp_path / "orchestrator" / "kafka" / jars.KAFKA_VERSION / "lib"


def test_maven_errors_keep_the_cause_and_drop_the_boilerplate() -> None:
    output = (
        "\x1b[0m\x1b[0m[ERROR] Plugin x could not be resolved: Connect to 127.0.0.1:9 failed\n"
        "[ERROR] \n[ERROR] To see the full stack trace of the errors, re-run Maven with the -e switch.\n"
        "[ERROR] [Help 1] http://cwiki.apache.org/confluence/display/MAVEN/PluginResolutionException\n"
    )
    cause = "[ERROR] Plugin x could not be resolved: Connect to 127.0.0.1:9 failed"
    assert jars._maven_errors(output) == [cause]


def _three_voters() -> tuple[Voter, ...]:
    return (Voter(1, 29093), Voter(2, 29095), Voter(3, 29097))


def test_cluster_node_has_a_static_quorum_and_replication_three(layout: DataDir) -> None:
    config = BrokerConfig(port=29094, controller_port=29095, node_id=2, voters=_three_voters())
    props = server_properties(layout, config)

    assert props["node.id"] == "2"
    assert props["controller.quorum.voters"] == "1@127.0.0.1:29093,2@127.0.0.1:29095,3@127.0.0.1:29097"
    assert "controller.quorum.bootstrap.servers" not in props  # cannot be mixed with static voters
    assert props["broker.session.timeout.ms"] == "6000"
    assert props["default.replication.factor"] == "3"
    assert props["min.insync.replicas"] == "2"
    for prefix in ("offsets.topic", "transaction.state.log", "share.coordinator.state.topic"):
        assert props[f"{prefix}.replication.factor"] == "3"
    assert props["transaction.state.log.min.isr"] == "2"
    assert props["share.coordinator.state.topic.min.isr"] == "2"


def test_single_node_keeps_replication_one(layout: DataDir) -> None:
    props = server_properties(layout, BrokerConfig())
    assert props["default.replication.factor"] == "1"
    assert props["min.insync.replicas"] == "1"
    assert "broker.session.timeout.ms" not in props


def test_nodes_are_spread_from_the_first_ports() -> None:
    nodes = plan_nodes(19092, 19093, 3)
    assert [(n.node_id, n.port, n.controller_port) for n in nodes] == [
        (1, 19092, 19093),
        (2, 19094, 19095),
        (3, 19096, 19097),
    ]
    explicit = plan_nodes([5001, 5003, 5005], [6001, 6003, 6005], 3)
    assert [n.bootstrap for n in explicit] == ["127.0.0.1:5001", "127.0.0.1:5003", "127.0.0.1:5005"]


@pytest.mark.parametrize(
    ("port", "controller_port", "message"),
    [
        (19092, 19094, "must all differ"),
        ([1, 2], [3, 4, 5], "2 ports given"),
        (65535, 65534, "not a TCP port"),
    ],
)
def test_bad_node_ports_are_explained(
    port: int | list[int], controller_port: int | list[int], message: str
) -> None:
    with pytest.raises(DevKafkaError, match=message):
        plan_nodes(port, controller_port, 3)


def test_shape_round_trips_and_refuses_a_change(tmp_path: Path) -> None:
    shape = Shape(3, True, new_cluster_id(), 384, plan_nodes(19092, 19093, 3))
    write_shape(tmp_path, shape)

    assert read_shape(tmp_path) == shape
    assert shape.bootstrap == "127.0.0.1:19092,127.0.0.1:19094,127.0.0.1:19096"
    assert node_dir(tmp_path, 2, 3).root == tmp_path / "node-2"
    assert node_dir(tmp_path, 1, 1).root == tmp_path
    with pytest.raises(DevKafkaError, match="--brokers 3"):
        check_same_shape(tmp_path, shape, 1, True)
    with pytest.raises(DevKafkaError, match="start it with --secure"):
        check_same_shape(tmp_path, shape, 3, False)
