"""Kafka failures of CLI commands, as real processes: one clear line, a documented exit code, JSON if asked.

The dead bootstrap is a free port on loopback (nothing listens: every connection is refused) or a name that
does not resolve. Before: ``runs show`` waited ~37 s (a 30 s watermark timeout), printed hundreds of
``FAIL ... Connect to ... failed`` lines at once and a traceback, and nothing on stdout under ``--json``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from engine_support import APP_SPEC, REPO, free_ports

from orchestrator import App, Settings
from orchestrator._engine import kafka, reach
from orchestrator._engine.reach import KafkaUnreachableError
from orchestrator.cli._failures import EXIT_KAFKA

OLD_WAIT_S = 30.0
"""The reader's watermark timeout: the old path could not fail sooner than this."""


def _cli(*args: str, bootstrap: str, **env: str) -> tuple[int, str, str, float]:
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "orchestrator", *args],
        env={**os.environ, "ORCHESTRATOR_BOOTSTRAP_SERVERS": bootstrap, **env},
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    return done.returncode, done.stdout, done.stderr, time.monotonic() - started


@pytest.fixture
def dead() -> str:
    """A bootstrap address where nothing listens."""
    return f"127.0.0.1:{free_ports(1)[0]}"


def test_a_read_against_a_dead_bootstrap_fails_at_once_in_one_line(dead: str) -> None:
    code, out, err, seconds = _cli("runs", "show", "r-1", "--app", "examples.orders:app", bootstrap=dead)
    assert code == EXIT_KAFKA
    assert out == ""
    lines = err.splitlines()
    assert len(lines) == 1, err  # no traceback, no librdkafka lines
    assert lines[0].startswith(f"error: Kafka at {dead} cannot be reached: ")
    assert "Connection refused" in lines[0] and "ORCHESTRATOR_BOOTSTRAP_SERVERS" in lines[0]
    assert seconds < OLD_WAIT_S  # the process's start included; the probe alone is timed below


def test_under_json_the_failure_is_an_error_document_on_stdout(dead: str) -> None:
    for args in (
        ("runs", "show", "r-1", "--json"),
        ("schedules", "list", "--json"),
        ("dlq", "list", "--json"),
        ("history", "r-1", "--json"),  # JSON Lines: the error is its one line
    ):
        code, out, err, _ = _cli(*args, "--app", "examples.orders:app", bootstrap=dead)
        assert code == EXIT_KAFKA, args
        doc = json.loads(out)
        assert doc["error_type"] == "kafka_unreachable" and doc["bootstrap"] == dead
        assert doc["error"].startswith(f"Kafka at {dead} cannot be reached")
        assert err.splitlines() == [f"error: {doc['error']}"]


def test_with_json_logs_the_failure_is_a_json_record(dead: str) -> None:
    code, out, err, _ = _cli(
        "--log-format", "json", "runs", "show", "r-1", "--app", "examples.orders:app", bootstrap=dead
    )
    assert code == EXIT_KAFKA and out == ""
    (record,) = [json.loads(line) for line in err.splitlines()]
    assert record["level"] == "ERROR" and record["logger"] == "orchestrator.cli"
    assert record["error_type"] == "kafka_unreachable" and record["exit_code"] == EXIT_KAFKA


def test_a_name_that_does_not_resolve_is_said_so() -> None:
    code, _, err, _ = _cli(
        "runs", "show", "r-1", "--app", "examples.orders:app", bootstrap="nohost.invalid:9092"
    )
    assert code == EXIT_KAFKA
    assert "Failed to resolve 'nohost.invalid:9092'" in err


def test_first_contact_fails_in_about_a_second_and_passes_a_live_cluster(
    dead: str, kafka_bootstrap: str
) -> None:
    down = Settings(bootstrap_servers=dead)
    started = time.monotonic()
    with pytest.raises(KafkaUnreachableError) as raised:
        reach.first_contact(down, kafka.base(down))
    assert time.monotonic() - started < 5.0  # librdkafka reports all brokers down after the first refusal
    assert raised.value.bootstrap == dead and "Connection refused" in raised.value.detail
    live = Settings(bootstrap_servers=kafka_bootstrap)
    started = time.monotonic()
    reach.first_contact(live, kafka.base(live))
    assert time.monotonic() - started < 5.0


def test_root_log_options_reach_a_read_commands_librdkafka_lines(
    kafka_bootstrap: str, unique_name: str
) -> None:
    """``--log-level``/``--log-format`` before any command (here from the environment): a read's librdkafka
    debug lines come as JSON records (before, read commands set up no logging at all)."""
    kafka.ensure_topics(App(unique_name, settings=Settings(bootstrap_servers=kafka_bootstrap)))
    code, out, err, _ = _cli(
        "runs",
        "show",
        "r-1",
        "--json",
        "--app",
        APP_SPEC,
        bootstrap=kafka_bootstrap,
        CRASH_APP_NAME=unique_name,
        ORCHESTRATOR_LOG_LEVEL="debug",
        ORCHESTRATOR_LOG_FORMAT="json",
        ORCHESTRATOR_KAFKA__DEBUG="broker",
    )
    assert code == 2, err  # no such run
    assert json.loads(out) == {"error": f"no run 'r-1' in app {unique_name!r}", "run": None, "unreadable": []}
    records = [json.loads(line) for line in err.splitlines()]  # every stderr line is JSON
    assert records[-1]["message"] == f"no run 'r-1' in app {unique_name!r}"
    assert any(r["logger"] == "orchestrator.kafka.librdkafka" and r["level"] == "DEBUG" for r in records)


def test_the_root_log_format_reaches_a_worker_that_waits_for_its_broker(dead: str, tmp_path: Path) -> None:
    """``orchestrator --log-format json worker``: the worker's own setup keeps the root's format."""
    err_path = tmp_path / "worker.stderr"
    with err_path.open("wb") as err:
        worker = subprocess.Popen(
            [sys.executable, "-m", "orchestrator", "--log-format", "json", "worker", APP_SPEC],
            env={**os.environ, "ORCHESTRATOR_BOOTSTRAP_SERVERS": dead, "CRASH_APP_NAME": tmp_path.name},
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
    try:
        deadline = time.monotonic() + 90  # a guard against a hang: the warning comes after one try
        while "broker unreachable at start-up" not in err_path.read_text():
            assert worker.poll() is None, err_path.read_text()
            assert time.monotonic() < deadline, err_path.read_text()
            time.sleep(0.5)
    finally:
        worker.terminate()
        worker.wait(60)
    records = [json.loads(line) for line in err_path.read_text().splitlines()]  # all JSON
    assert any(r["logger"] == "orchestrator.worker" and r["level"] == "WARNING" for r in records)
