"""``start`` refuses what a formatted data dir cannot become, before it fetches jars or starts Java."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator import _devkafka
from orchestrator._devkafka.cluster import Shape, plan_nodes, write_shape
from orchestrator._devkafka.config import DataDir
from orchestrator._devkafka.errors import DevKafkaError


def _cluster_dir(tmp_path: Path, *, secure: bool = False) -> Path:
    write_shape(tmp_path, Shape(3, secure, "AAAAAAAAAAAAAAAAAAAAAA", 384, plan_nodes(5000, 5001, 3)))
    return tmp_path


def test_a_cluster_dir_is_not_started_as_one_broker(tmp_path: Path) -> None:
    with pytest.raises(DevKafkaError, match="--brokers 3"):
        _devkafka.start(_cluster_dir(tmp_path))


def test_a_secured_dir_is_not_started_plain(tmp_path: Path) -> None:
    with pytest.raises(DevKafkaError, match="formatted with --secure"):
        _devkafka.start(_cluster_dir(tmp_path, secure=True), brokers=3)


def test_a_cluster_keeps_its_ports(tmp_path: Path) -> None:
    with pytest.raises(DevKafkaError, match="controller port"):
        _devkafka.start(_cluster_dir(tmp_path), 6000, 6001, brokers=3)


def test_an_old_single_broker_dir_cannot_become_a_cluster(tmp_path: Path) -> None:
    layout = DataDir(tmp_path)
    layout.kraft_dir.mkdir(parents=True)
    layout.meta_properties.write_text("cluster.id=AAAAAAAAAAAAAAAAAAAAAA\n", encoding="utf-8")

    with pytest.raises(DevKafkaError, match="plain single broker"):
        _devkafka.start(tmp_path, brokers=3)
    with pytest.raises(DevKafkaError, match="plain single broker"):
        _devkafka.start(tmp_path, secure=True)


def test_restarting_an_unknown_node_is_explained(tmp_path: Path) -> None:
    with pytest.raises(DevKafkaError, match="no node 4"):
        _devkafka.restart_node(_cluster_dir(tmp_path), 4)
    assert _devkafka.kill_node(tmp_path, 2) is False
    assert _devkafka.status(tmp_path) is None
    assert _devkafka.stop(tmp_path) is False
