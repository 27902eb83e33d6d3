"""`limits.record_limit`: the smallest limit on a record's way, named, asked of the broker rarely."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from orchestrator._engine import limits
from orchestrator.settings import Settings

SETTINGS = Settings(bootstrap_servers="b:1")


class FakeBroker:
    """A stand-in for the broker's topic configs; counts the questions asked."""

    def __init__(self) -> None:
        self.limits: dict[str, int] = {}
        self.complete = True
        self.asked = 0

    def topic_limits(self, settings: Settings, topics: tuple[str, ...]) -> tuple[dict[str, int], bool]:
        self.asked += 1
        return {t: self.limits.get(t, limits.BROKER_DEFAULT_MAX_BYTES) for t in topics}, self.complete


@pytest.fixture
def broker(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeBroker]:
    fake = FakeBroker()
    monkeypatch.setattr(limits, "_topic_limits", fake.topic_limits)
    monkeypatch.setattr(limits, "_cache", {})
    yield fake


def test_the_producer_bounds_records_when_topics_allow_more(broker: FakeBroker) -> None:
    limit = limits.record_limit(SETTINGS, ("a.inbox", "a.keyed"))
    assert limit == limits.RecordLimit(1_000_000, "message.max.bytes of the processor's producer")


def test_the_smallest_topic_limit_wins_and_is_named(broker: FakeBroker) -> None:
    broker.limits = {"a.keyed": 200_000, "a.inbox": 50_000}
    limit = limits.record_limit(SETTINGS, ("a.inbox", "a.keyed"), {"message.max.bytes": 3_000_000})
    assert limit == limits.RecordLimit(50_000, "max.message.bytes of topic a.inbox")


def test_a_producer_override_counts(broker: FakeBroker) -> None:
    assert limits.record_limit(SETTINGS, ("a.inbox",), {"message.max.bytes": 10_000}).max_bytes == 10_000


def test_answers_are_kept_and_failures_asked_again_later(
    broker: FakeBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = [100.0]
    monkeypatch.setattr(limits.time, "monotonic", lambda: clock[0])
    broker.complete = False
    limits.record_limit(SETTINGS, ("a.inbox",))
    limits.record_limit(SETTINGS, ("a.inbox",))
    assert broker.asked == 1
    clock[0] += limits.RETRY_SECONDS + 1
    broker.complete = True
    limits.record_limit(SETTINGS, ("a.inbox",))
    clock[0] += limits.RETRY_SECONDS + 1
    limits.record_limit(SETTINGS, ("a.inbox",))
    assert broker.asked == 2  # a complete answer is kept for CACHE_SECONDS
    clock[0] += limits.CACHE_SECONDS
    limits.record_limit(SETTINGS, ("a.inbox",))
    assert broker.asked == 3


def test_fits_leaves_room_for_the_framing() -> None:
    limit = limits.RecordLimit(1000 + limits.RECORD_OVERHEAD_BYTES, "x")
    assert limit.fits(10, 990) and not limit.fits(10, 991)


def test_first_oversize_names_the_record_and_the_limit() -> None:
    limit = limits.RecordLimit(100 + limits.RECORD_OVERHEAD_BYTES, "max.message.bytes of topic a.history")
    fits = ("a.history", b"v" * 90, b"k" * 10, 0)
    assert limits.first_oversize([fits], limit) == ""
    over = ("a.changelog", b"v" * 91, b"k" * 10, 0)
    reason = limits.first_oversize([fits, over], limit)
    assert reason.startswith("a a.changelog record of 101 bytes is over the limit of ")
    assert "max.message.bytes of topic a.history" in reason


def test_first_oversize_takes_records_with_headers_as_they_are() -> None:
    # The processor's records carry trace headers as a fifth field: checked in place, with no copy per input.
    limit = limits.RecordLimit(100 + limits.RECORD_OVERHEAD_BYTES, "x")
    traced = ("a.tasks.default", b"v" * 90, b"k" * 10, -1, [("traceparent", b"00-" + b"0" * 52)])
    assert limits.first_oversize([traced, ("a.history", b"v", b"k", 0)], limit) == ""
    over = ("a.tasks.default", b"v" * 91, b"k" * 10, -1, [("traceparent", b"00")])
    assert limits.first_oversize([over], limit).startswith("a a.tasks.default record of 101 bytes")


def test_a_limit_kafka_contradicted_is_lowered_by_an_eighth() -> None:
    lowered = limits.RecordLimit(8_000, "message.max.bytes of the processor's producer").lowered()
    assert lowered.max_bytes == 7_000 and "message.max.bytes of the processor's producer" in lowered.source
