"""The processes' log setup: text or JSON lines, and librdkafka's lines as records of our own logger."""

from __future__ import annotations

import io
import json
import logging
import sys
import threading
import warnings
from collections.abc import Iterator

import pytest

from orchestrator._engine import kafka
from orchestrator._logging import (
    LIBRDKAFKA_LOGGER,
    LibrdkafkaLogger,
    configure_logging,
    librdkafka_logger,
    parse_level,
)
from orchestrator.settings import Settings

PASSWORD = "pw-Zr81xLq0"


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """configure_logging changes the root logger and the except hooks: put them back after each test."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    hooks = sys.excepthook, threading.excepthook
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    sys.excepthook, threading.excepthook = hooks
    logging.captureWarnings(False)


@pytest.mark.parametrize(
    "build",
    [
        lambda s: kafka.base(s),
        lambda s: kafka.producer_config(s),
        lambda s: kafka.transactional_producer_config(s, "tx"),
        lambda s: kafka.consumer_config(s, "group"),
        lambda s: kafka.reader_config(s),
    ],
    ids=["admin", "producer", "transactional", "consumer", "reader"],
)
def test_every_builder_routes_librdkafka_lines_to_the_engine_logger(build: object) -> None:
    conf = build(Settings(kafka={"sasl.password": PASSWORD}))  # type: ignore[operator]
    assert isinstance(conf["logger"], LibrdkafkaLogger)
    assert conf["logger"].logger.name == LIBRDKAFKA_LOGGER
    assert PASSWORD not in repr(conf)  # the logger holds the secret to mask it, and never shows it


def test_a_caller_may_bring_its_own_logger() -> None:
    quiet = logging.getLogger("tests.quiet")
    assert kafka.base(Settings(), logger=quiet)["logger"] is quiet


def test_a_librdkafka_line_becomes_a_record_with_its_facility_and_client_and_no_secret(
    caplog: pytest.LogCaptureFixture,
) -> None:
    adapter = librdkafka_logger({"sasl.password": PASSWORD, "sasl.username": "ann"})
    with caplog.at_level(logging.DEBUG, logger=LIBRDKAFKA_LOGGER):
        # Exactly the call confluent-kafka's log callback makes.
        adapter.log(logging.ERROR, "%s [%s] %s", "FAIL", "rdkafka#producer-1", f"auth with {PASSWORD} failed")

    (record,) = caplog.records
    assert record.name == LIBRDKAFKA_LOGGER and record.levelno == logging.ERROR
    assert record.getMessage() == "FAIL [rdkafka#producer-1] auth with *** failed"
    assert record.kafka_facility == "FAIL" and record.kafka_client == "rdkafka#producer-1"  # type: ignore[attr-defined]


def test_lines_below_the_logger_level_cost_nothing(caplog: pytest.LogCaptureFixture) -> None:
    adapter = librdkafka_logger({})
    with caplog.at_level(logging.INFO, logger=LIBRDKAFKA_LOGGER):
        adapter.log(logging.DEBUG, "%s [%s] %s", "BROKER", "rdkafka#consumer-2", "noise")
    assert caplog.records == []


def test_json_format_writes_one_object_per_line_with_the_fixed_fields_and_extras() -> None:
    out = io.StringIO()
    configure_logging("info", "json", stream=out)
    log = logging.getLogger("orchestrator.processor")
    log.info("parked run %s", "order-1", extra={"run_id": "order-1", "partition": 3})
    log.debug("not shown at info")
    try:
        raise RuntimeError("boom\nsecond line")
    except RuntimeError:
        log.exception("it failed")

    lines = out.getvalue().splitlines()
    assert len(lines) == 2
    first, second = (json.loads(line) for line in lines)
    assert list(first)[:5] == ["time", "time_ms", "level", "logger", "message"]
    assert first["level"] == "INFO" and first["logger"] == "orchestrator.processor"
    assert first["message"] == "parked run order-1"
    assert first["run_id"] == "order-1" and first["partition"] == 3
    assert first["time"].endswith("Z") and first["time"][:19] == _iso(first["time_ms"])
    assert second["level"] == "ERROR" and "RuntimeError: boom" in second["exc_info"]


def _iso(ms: int) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S")


def test_json_format_logs_warnings_and_uncaught_exceptions_as_json() -> None:
    out = io.StringIO()
    configure_logging("info", "json", stream=out)
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.warn("old api", DeprecationWarning, stacklevel=1)
    try:
        raise ValueError("escaped")
    except ValueError as exc:
        sys.excepthook(ValueError, exc, exc.__traceback__)

    records = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [r["logger"] for r in records] == ["py.warnings", "orchestrator"]
    assert "old api" in records[0]["message"]
    assert records[1]["level"] == "CRITICAL" and "ValueError: escaped" in records[1]["exc_info"]


def test_text_format_is_one_plain_line_per_record_off_a_terminal() -> None:
    out = io.StringIO()
    configure_logging(logging.WARNING, "text", stream=out)
    logging.getLogger("orchestrator.worker").warning("slow")
    logging.getLogger("orchestrator.worker").info("hidden")
    (line,) = out.getvalue().splitlines()
    assert line.endswith(" WARNING orchestrator.worker: slow")


def test_bad_level_or_format_is_refused() -> None:
    with pytest.raises(ValueError, match="log format"):
        configure_logging("info", "xml")
    with pytest.raises(ValueError, match="unknown log level"):
        parse_level("loud")
    assert parse_level("debug") == logging.DEBUG


def test_settings_take_the_log_format_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ORCHESTRATOR_LOG_FORMAT", "json")
    monkeypatch.setenv("ORCHESTRATOR_LOG_LEVEL", "warning")
    settings = Settings()
    assert settings.log_format == "json" and settings.log_level == "warning"


def test_a_failed_step_attempt_is_logged_with_its_run_and_step_as_fields() -> None:
    from orchestrator._core.effects import StepCommand
    from orchestrator._engine import attempts

    out = io.StringIO()
    configure_logging("info", "json", stream=out)
    cmd = StepCommand("order-9", "wf", 2, "charge", 3, b"[1]", "order-9/2/charge", 99)
    attempts.failed(cmd, ConnectionError("card API down"), 0, "w1")

    (record,) = (json.loads(line) for line in out.getvalue().splitlines())
    assert record["logger"] == "orchestrator.attempts"
    assert {k: record[k] for k in ("run_id", "step", "position", "attempt")} == {
        "run_id": "order-9",
        "step": "charge",
        "position": 2,
        "attempt": 3,
    }


def test_text_format_leaves_other_except_hooks_alone() -> None:
    def theirs(args: threading.ExceptHookArgs) -> None:
        return None

    threading.excepthook = theirs
    configure_logging("info", "text", stream=io.StringIO())
    assert threading.excepthook is theirs
    configure_logging("info", "json", stream=io.StringIO())
    assert threading.excepthook is not theirs
    configure_logging("info", "text", stream=io.StringIO())
    assert threading.excepthook is threading.__excepthook__
