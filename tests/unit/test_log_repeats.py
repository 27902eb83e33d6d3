"""The repeat collapser: the first librdkafka line of a kind passes, repeats become one summary."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterator

import pytest

from orchestrator import _logging
from orchestrator._log_repeats import RepeatCollapser, install, shape
from orchestrator._logging import LibrdkafkaLogger

REFUSED = (
    "127.0.0.1:39092/bootstrap: Connect to ipv4#127.0.0.1:39092 failed: Connection refused "
    "(after {}ms in state CONNECT)"
)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    @property
    def messages(self) -> list[str]:
        return [r.getMessage() for r in self.records]


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def setup(clock: Clock) -> Iterator[tuple[LibrdkafkaLogger, RepeatCollapser, Records]]:
    """A LibrdkafkaLogger onto a logger of the test's own, with a collapser on the test's clock."""
    logger = logging.getLogger(f"tests.repeats.{uuid.uuid4().hex}")
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    records = Records()
    logger.addHandler(records)
    collapser = RepeatCollapser(quiet=15, every=60, clock=clock, background=False)
    logger.addFilter(collapser)
    yield LibrdkafkaLogger(logger=logger), collapser, records
    logger.removeFilter(collapser)


def _fail(kafka: LibrdkafkaLogger, line: str, client: str = "rdkafka#consumer-4", level: int = 40) -> None:
    """What confluent-kafka calls for one librdkafka line (level in Python terms)."""
    kafka.log(level, "%s [%s] %s", "FAIL", client, line)


def test_shape_masks_durations_counts_and_ids_but_keeps_names_and_addresses() -> None:
    assert shape(REFUSED.format(0)) == shape(REFUSED.format(1234))
    assert shape(REFUSED.format(0) + ", 3 identical error(s) suppressed") == shape(REFUSED.format(0))
    assert shape("Sent MetadataRequest (v12, 50 bytes @ 0, CorrId 2)") == shape(
        "Sent MetadataRequest (v12, 61 bytes @ 0, CorrId 17)"
    )
    # Which broker, which client: not the same line.
    assert shape("127.0.0.1:9092/1: Disconnected") != shape("127.0.0.1:9092/2: Disconnected")
    assert shape("FAIL [rdkafka#consumer-1] x") != shape("FAIL [rdkafka#consumer-2] x")


def test_the_first_line_passes_and_repeats_become_one_summary_once_they_stop(
    setup: tuple[LibrdkafkaLogger, RepeatCollapser, Records], clock: Clock
) -> None:
    kafka, collapser, out = setup
    for i in range(100):  # 100 failed reconnects in 20 s
        _fail(kafka, REFUSED.format(i % 3))
        clock.now += 0.2
    assert len(out.records) == 1
    assert out.records[0].getMessage().startswith("FAIL [rdkafka#consumer-4] 127.0.0.1:39092/bootstrap")
    assert collapser.flush(everything=False) == 0  # still within `quiet` of the last one
    clock.now += 15
    assert collapser.flush(everything=False) == 1
    summary = out.records[1]
    assert summary.levelno == logging.ERROR
    assert summary.repeated == 99  # type: ignore[attr-defined]
    assert summary.repeated_seconds == pytest.approx(19.8)  # type: ignore[attr-defined]
    assert summary.kafka_facility == "FAIL" and summary.kafka_client == "rdkafka#consumer-4"  # type: ignore[attr-defined]
    assert summary.getMessage().endswith("(repeated 99 times in 19.8 s, then stopped)")
    assert REFUSED.format(99 % 3) in summary.getMessage()  # the latest repeat's text
    _fail(kafka, REFUSED.format(0))  # a new episode: its first line passes again
    assert len(out.records) == 3


def test_a_long_repetition_is_summarised_every_interval(
    setup: tuple[LibrdkafkaLogger, RepeatCollapser, Records], clock: Clock
) -> None:
    kafka, collapser, out = setup
    for _ in range(1500):  # 150 s at 10 a second
        _fail(kafka, REFUSED.format(0))
        clock.now += 0.1
    messages = out.messages
    assert len(messages) == 3  # the first, and one summary per 60 s
    assert all("still repeating" in m for m in messages[1:])
    collapser.flush()
    assert sum(r.repeated for r in out.records[1:]) == 1499  # every repeat counted once  # type: ignore[attr-defined]


def test_repeats_that_stop_right_after_a_summary_still_end_with_then_stopped(
    setup: tuple[LibrdkafkaLogger, RepeatCollapser, Records], clock: Clock
) -> None:
    # The outage ends just after a "still repeating" summary: an operator must still learn that it ended.
    kafka, collapser, out = setup
    for _ in range(61):  # one a second for 60 s: the last one triggers a summary and resets the count
        _fail(kafka, REFUSED.format(0))
        clock.now += 1
    assert len(out.records) == 2 and "still repeating" in out.messages[1]
    clock.now += 15
    assert collapser.flush(everything=False) == 1
    assert out.messages[2].endswith("then stopped)")
    assert out.records[2].repeated == 0  # type: ignore[attr-defined]
    assert collapser.flush() == 0  # owed once, logged once


def test_the_quiet_thread_logs_the_then_stopped_line_owed_after_a_summary() -> None:
    logger = logging.getLogger(f"tests.repeats.{uuid.uuid4().hex}")
    logger.propagate = False
    out = Records()
    logger.addHandler(out)
    collapser = RepeatCollapser(quiet=1.0, every=0.1)  # quiet: ample room for a slow sleep
    logger.addFilter(collapser)
    kafka = LibrdkafkaLogger(logger=logger)
    try:
        _fail(kafka, REFUSED.format(0))
        time.sleep(0.15)
        _fail(kafka, REFUSED.format(0))  # past `every`: a summary, and nothing more to count
        assert len(out.records) == 2
        deadline = time.monotonic() + 5
        while len(out.records) < 3 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert out.messages[2].endswith("then stopped)")
    finally:
        logger.removeFilter(collapser)


def test_different_clients_lines_and_levels_are_kept_apart(
    setup: tuple[LibrdkafkaLogger, RepeatCollapser, Records], clock: Clock
) -> None:
    kafka, collapser, out = setup
    for _ in range(5):
        _fail(kafka, REFUSED.format(0), client="rdkafka#consumer-4")
        _fail(kafka, REFUSED.format(0), client="rdkafka#producer-3")
        _fail(kafka, "127.0.0.1:39092/1: Disconnected (after 5ms in state UP)")
        _fail(kafka, REFUSED.format(0), level=logging.WARNING)
        clock.now += 1
    assert len(out.records) == 4
    assert collapser.flush() == 4  # at exit: every pending summary
    assert all(r.getMessage().endswith("until now)") for r in out.records[4:])


def test_debug_lines_and_other_loggers_records_are_never_collapsed(
    setup: tuple[LibrdkafkaLogger, RepeatCollapser, Records],
) -> None:
    kafka, _, out = setup
    for _ in range(10):
        _fail(kafka, "Sent MetadataRequest (v12, 50 bytes @ 0, CorrId 2)", level=logging.DEBUG)
        kafka.logger.error("the engine's own line")  # no kafka_client: not a librdkafka line
    assert len(out.records) == 20


def test_the_quiet_thread_logs_the_summary_without_another_record() -> None:
    """An outage that ends leaves nothing to trigger the summary: the background thread logs it."""
    logger = logging.getLogger(f"tests.repeats.{uuid.uuid4().hex}")
    logger.propagate = False
    out = Records()
    logger.addHandler(out)
    install(logger, RepeatCollapser(quiet=0.2, every=60))
    kafka = LibrdkafkaLogger(logger=logger)
    for _ in range(5):
        _fail(kafka, REFUSED.format(0))
    deadline = time.monotonic() + 10
    while len(out.records) < 2:
        assert time.monotonic() < deadline, "no summary after the line went quiet"
        time.sleep(0.05)
    assert out.records[1].getMessage().endswith("(repeated 4 times in 0.0 s, then stopped)")


def test_the_engine_installs_it_on_the_librdkafka_logger() -> None:
    assert _logging.REPEATS in logging.getLogger(_logging.LIBRDKAFKA_LOGGER).filters
