"""The local-broker manager, cheaply: the session broker is found and reused, never started twice."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from orchestrator import _devkafka
from orchestrator._devkafka import DevKafkaError


def test_status_sees_the_session_broker(kafka_data_dir: Path, kafka_bootstrap: str) -> None:
    info = _devkafka.status(kafka_data_dir)

    assert info is not None
    assert info.ready
    assert info.bootstrap == kafka_bootstrap
    assert info.log_path.is_file()


def test_start_reuses_the_running_broker(kafka_data_dir: Path, kafka_bootstrap: str) -> None:
    running = _devkafka.status(kafka_data_dir)
    assert running is not None
    port = int(kafka_bootstrap.rpartition(":")[2])

    again = _devkafka.start(kafka_data_dir, port=port)

    assert not again.started_new
    assert again.pid == running.pid
    assert again.bootstrap == kafka_bootstrap
    assert again.seconds < 10


def test_start_refuses_a_port_held_by_another_program(tmp_path: Path, kafka_bootstrap: str) -> None:
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        with pytest.raises(DevKafkaError, match=f"127.0.0.1:{port} is already in use"):
            _devkafka.start(tmp_path / "kafka", port=port, controller_port=port + 1)


def test_stop_and_status_without_a_broker(tmp_path: Path) -> None:
    assert _devkafka.status(tmp_path) is None
    assert _devkafka.stop(tmp_path) is False
