"""``kafka start|stop|jars --json``: what a script needs (bootstrap, pid, dirs) as one JSON document."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

from engine_support import REPO, free_ports

from orchestrator._devkafka import KAFKA_VERSION


def _kafka(*args: str) -> tuple[int, Any]:
    done = subprocess.run(
        [sys.executable, "-m", "orchestrator", "kafka", *args, "--json"],
        env=os.environ,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    return done.returncode, json.loads(done.stdout)


def test_start_reuse_and_stop_as_json(tmp_path: Path) -> None:
    data_dir = tmp_path / "kafka"
    port, controller = free_ports(2)
    where = ("--dir", str(data_dir))
    code, started = _kafka("start", *where, "--port", str(port), "--controller-port", str(controller))
    try:
        assert code == 0
        assert started["started"] is True and started["running"] is True and started["ready"] is True
        assert started["bootstrap"] == f"127.0.0.1:{port}"
        assert started["pid"] > 0 and started["data_dir"] == str(data_dir)
        assert Path(started["log"]).exists() and started["kafka_version"] == KAFKA_VERSION
        assert started["seconds"] > 0
        code, again = _kafka("start", *where)
        assert code == 0 and again["started"] is False and again["pid"] == started["pid"]
    finally:
        code, stopped = _kafka("stop", *where)
    assert code == 0 and stopped == {"stopped": True, "data_dir": str(data_dir)}
    assert _kafka("stop", *where) == (0, {"stopped": False, "data_dir": str(data_dir)})
    assert _kafka("status", *where) == (1, {"running": False, "ready": False, "data_dir": str(data_dir)})


def test_jars_as_json() -> None:
    code, doc = _kafka("jars")
    assert code == 0 and doc["kafka_version"] == KAFKA_VERSION and Path(doc["jars"]).is_dir()


def test_a_start_that_fails_is_an_error_document(tmp_path: Path) -> None:
    (busy,) = free_ports(1)
    with socket.socket() as holder:  # the client port is taken: the broker cannot start
        holder.bind(("127.0.0.1", busy))
        holder.listen()
        code, doc = _kafka("start", "--dir", str(tmp_path / "kafka"), "--port", str(busy))
    assert code == 1
    assert doc["running"] is False and doc["data_dir"] == str(tmp_path / "kafka") and doc["error"]
