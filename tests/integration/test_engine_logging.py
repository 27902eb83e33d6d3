"""librdkafka's lines reach Python logging, never stderr raw; ``--log-format json`` makes stderr pure JSON.

The processes run as real ``orchestrator processor|worker`` children with ``debug=broker`` in their Kafka
settings, which makes every librdkafka client of theirs (group consumers, the transactional producer, the
worker's producers, readers, admin clients) log at syslog level 7. Before the engine gave its clients a
``logger``, those lines went to file descriptor 2 as ``%7|<time>|BROKER|rdkafka#...|...``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from pathlib import Path

import pytest
from engine_support import (
    PrivateBroker,
    child_env,
    settings,
    spawn_stderr_to_file,
    stop_process,
)

from orchestrator import App, Settings
from orchestrator._engine import kafka
from orchestrator._engine.reader import read_partitions
from orchestrator._logging import LIBRDKAFKA_LOGGER
from orchestrator.topology import history_topic

RAW_LINE = re.compile(r"^%\d\|")


async def _run_engine(bootstrap: str, name: str, tmp: Path, *log_args: str) -> tuple[str, str]:
    """Processor and worker as real processes, one run of ``five`` through them; their stderr texts."""
    env = {**child_env(name, bootstrap, tmp), "ORCHESTRATOR_KAFKA__DEBUG": "broker"}
    proc, proc_err = spawn_stderr_to_file("processor", env, tmp, "--state-dir", str(tmp / "state"), *log_args)
    work, work_err = spawn_stderr_to_file("worker", env, tmp, *log_args)
    try:
        app = App(name, settings=settings(bootstrap))
        async with app.client() as client:
            assert await (await client.start("five", 1, run_id="log-1")).result(timeout=120) == 11112
    finally:
        stop_process(proc)
        stop_process(work)
    return proc_err.read_text(), work_err.read_text()


async def test_json_logs_are_pure_json_and_carry_librdkafka_lines(
    kafka_bootstrap: str, unique_name: str, tmp_path: Path
) -> None:
    texts = await _run_engine(
        kafka_bootstrap, unique_name, tmp_path, "--log-format", "json", "--log-level", "debug"
    )

    for role, text in zip(("processor", "worker"), texts, strict=True):
        lines = text.splitlines()
        assert lines, f"{role} logged nothing"
        assert not [line for line in lines if RAW_LINE.match(line)], f"raw librdkafka lines from the {role}"
        records = [json.loads(line) for line in lines]  # every stderr line is one JSON object
        for record in records:
            assert {"time", "time_ms", "level", "logger", "message"} <= record.keys(), record
        kafka_lines = [r for r in records if r["logger"] == LIBRDKAFKA_LOGGER]
        assert kafka_lines, f"no librdkafka records from the {role}"
        assert {r["kafka_facility"] for r in kafka_lines} >= {"BROKER"}
        clients = {r["kafka_client"].split("-")[0] for r in kafka_lines}
        assert clients >= {"rdkafka#producer", "rdkafka#consumer"}, clients
        assert all(r["level"] == "DEBUG" for r in kafka_lines if r["kafka_facility"] == "BROKER")
        own = [r for r in records if r["logger"].startswith(f"orchestrator.{role}")]
        assert own, f"the {role}'s own records are missing"


async def test_text_logs_carry_librdkafka_lines_as_records(
    kafka_bootstrap: str, unique_name: str, tmp_path: Path
) -> None:
    texts = await _run_engine(kafka_bootstrap, unique_name, tmp_path, "--log-level", "debug")

    for role, text in zip(("processor", "worker"), texts, strict=True):
        lines = text.splitlines()
        assert not [line for line in lines if RAW_LINE.match(line)], f"raw librdkafka lines from the {role}"
        assert any(f" DEBUG {LIBRDKAFKA_LOGGER}: BROKER [rdkafka#" in line for line in lines), role


async def test_info_level_hides_librdkafka_debug_lines(
    kafka_bootstrap: str, unique_name: str, tmp_path: Path
) -> None:
    """Before, ``debug=`` lines reached stderr whatever the level; now the level decides."""
    texts = await _run_engine(kafka_bootstrap, unique_name, tmp_path, "--log-format", "json")
    for text in texts:
        records = [json.loads(line) for line in text.splitlines()]
        assert records and all(r["level"] != "DEBUG" for r in records)


# -- when queued lines are handed over (in process, on the real broker) -------------------------------------
@pytest.fixture
def lines(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    """The test's librdkafka records: ``lines.records`` (read at call time, not in the fixture)."""
    caplog.set_level(logging.DEBUG, logger=LIBRDKAFKA_LOGGER)
    return caplog


def _clients(caplog: pytest.LogCaptureFixture) -> set[str]:
    """The kinds of client (``rdkafka#producer``/``rdkafka#consumer``) whose lines were handed over."""
    return {r.kafka_client.split("-")[0] for r in caplog.records if r.name == LIBRDKAFKA_LOGGER}  # type: ignore[attr-defined]


def _debug_settings(bootstrap: str) -> Settings:
    return Settings(bootstrap_servers=bootstrap, partitions=4, kafka={"debug": "broker"})


def test_an_admin_clients_lines_wait_for_poll(kafka_bootstrap: str, lines: pytest.LogCaptureFixture) -> None:
    """Why ensure_topics and the record-limit lookup poll their admin client once done."""
    admin = kafka.new_admin(kafka.base(_debug_settings(kafka_bootstrap)))
    admin.list_topics(timeout=10)
    assert _clients(lines) == set()
    admin.poll(0)
    assert _clients(lines) == {"rdkafka#producer"}  # an admin client is a producer handle in librdkafka


def test_ensure_topics_hands_over_its_admin_clients_lines(
    kafka_bootstrap: str, unique_name: str, lines: pytest.LogCaptureFixture
) -> None:
    app = App(unique_name, settings=_debug_settings(kafka_bootstrap))
    kafka.ensure_topics(app)
    assert "rdkafka#producer" in _clients(lines)


def test_a_readers_lines_arrive_by_the_time_it_is_closed(
    kafka_bootstrap: str, unique_name: str, lines: pytest.LogCaptureFixture
) -> None:
    """A reader that never gets a record (an empty topic: no consume call) still hands its lines over."""
    app = App(unique_name, settings=_debug_settings(kafka_bootstrap))
    kafka.ensure_topics(app)
    lines.clear()
    assert list(read_partitions(app.settings, history_topic(unique_name), [0])) == []
    assert _clients(lines) == {"rdkafka#consumer"}


def test_a_producers_lines_arrive_with_flush(
    kafka_bootstrap: str, unique_name: str, create_topics: object, lines: pytest.LogCaptureFixture
) -> None:
    (topic,) = create_topics(f"{unique_name}-p")  # type: ignore[operator]
    producer = kafka.new_producer(kafka.producer_config(_debug_settings(kafka_bootstrap)))
    producer.produce(topic, b"x")
    assert producer.flush(30) == 0
    assert "rdkafka#producer" in _clients(lines)


def _records(err: Path) -> list[dict[str, object]]:
    """The JSON records of a stderr file; a line still being written (no newline yet) is left for later."""
    complete = err.read_text().split("\n")[:-1]
    return [json.loads(line) for line in complete]


def _kafka_errors(err: Path, client: str) -> list[dict[str, object]]:
    """ERROR-or-worse librdkafka records of one kind of client (e.g. ``rdkafka#producer``) so far."""
    return [
        r
        for r in _records(err)
        if r["logger"] == LIBRDKAFKA_LOGGER
        and r["level"] in ("ERROR", "CRITICAL")
        and str(r["kafka_client"]).startswith(client)
    ]


async def test_a_broker_outage_is_logged_as_json_records_while_it_lasts(
    private_broker: PrivateBroker, unique_name: str, tmp_path: Path
) -> None:
    """An idle processor's producer is polled each loop turn, so its connection errors arrive during the
    outage, as records, not after the next transaction (nor as raw lines)."""
    env = child_env(unique_name, private_broker.bootstrap, tmp_path)
    proc, proc_err = spawn_stderr_to_file(
        "processor", env, tmp_path, "--state-dir", str(tmp_path / "state"), "--log-format", "json"
    )
    work, work_err = spawn_stderr_to_file("worker", env, tmp_path, "--log-format", "json")
    app = App(unique_name, settings=settings(private_broker.bootstrap))
    try:
        async with app.client() as client:
            assert await (await client.start("five", 1, run_id="before")).result(timeout=120) == 11112
        before = {err: len(err.read_text().splitlines()) for err in (proc_err, work_err)}
        private_broker.kill()
        deadline = time.monotonic() + 60  # a guard against a hang, not a timing claim
        # Both log the first failed connection of each client (repeats are collapsed: test_broker_outage);
        # the worker also reports the outage once, from error_cb.
        while not (
            _kafka_errors(proc_err, "rdkafka#producer")
            and _kafka_errors(proc_err, "rdkafka#consumer")
            and any("brokers are down" in str(r["message"]) for r in _records(work_err))
        ):
            assert time.monotonic() < deadline, "no connection error logged during the outage"
            await asyncio.sleep(0.5)
        assert proc.poll() is None and work.poll() is None  # both ride the outage out
    finally:
        stop_process(proc)
        stop_process(work)
    for err in (proc_err, work_err):
        lines = err.read_text().splitlines()
        assert len(lines) > before[err]
        assert not [line for line in lines if RAW_LINE.match(line)]
        records = _records(err)  # every line parses
        assert all(r["level"] in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL") for r in records)
