"""Durations as users write them, and the retry policy's backoff."""

from __future__ import annotations

import random
from datetime import timedelta

import pytest

from orchestrator.durations import to_millis
from orchestrator.retry import DEFAULT_RETRY, RetryPolicy


@pytest.mark.parametrize(
    ("value", "ms"),
    [
        ("250ms", 250),
        ("1s", 1_000),
        ("1.5s", 1_500),
        ("5m", 300_000),
        ("1h30m", 5_400_000),
        ("1h 30m", 5_400_000),
        (" 2d ", 172_800_000),
        ("1w", 604_800_000),
        ("1m30s500ms", 90_500),
        ("0s", 0),
        (0, 0),
        (2, 2_000),
        (0.25, 250),
        (timedelta(minutes=2, milliseconds=5), 120_005),
        (timedelta(0), 0),
    ],
)
def test_to_millis(value: str | float | timedelta, ms: int) -> None:
    assert to_millis(value) == ms


@pytest.mark.parametrize(
    "bad", ["", "  ", "1", "s", "1x", "1 sec", "-1s", "1s-", "ms1", "1S", True, False, -1, -0.5]
)
def test_to_millis_refuses(bad: object) -> None:
    with pytest.raises(ValueError):
        to_millis(bad)  # type: ignore[arg-type]


def test_to_millis_error_lists_the_accepted_forms() -> None:
    with pytest.raises(ValueError, match=r"'250ms'.*timedelta"):
        to_millis("soon")


def test_negative_timedelta_is_refused() -> None:
    with pytest.raises(ValueError, match="negative"):
        to_millis(timedelta(seconds=-1))


# -- RetryPolicy ---------------------------------------------------------------------------------------------
def test_default_policy() -> None:
    assert RetryPolicy(3, "1s", 2.0, "1m", 0.2, ()) == DEFAULT_RETRY


def test_delay_is_exponential_without_jitter() -> None:
    p = RetryPolicy(max_attempts=10, initial_interval="100ms", backoff=3, max_interval="1h", jitter=0)
    assert [p.delay_ms(n) for n in range(1, 6)] == [100, 300, 900, 2_700, 8_100]


def test_delay_is_capped() -> None:
    p = RetryPolicy(max_attempts=20, initial_interval="1s", backoff=2, max_interval="10s", jitter=0)
    assert [p.delay_ms(n) for n in range(1, 7)] == [1_000, 2_000, 4_000, 8_000, 10_000, 10_000]
    assert p.delay_ms(15) == 10_000


def test_constant_backoff() -> None:
    p = RetryPolicy(initial_interval=timedelta(seconds=3), backoff=1, jitter=0)
    assert {p.delay_ms(n) for n in range(1, 5)} == {3_000}


@pytest.mark.parametrize("attempt", [1, 2, 3, 8])
def test_jitter_stays_within_bounds(attempt: int) -> None:
    p = RetryPolicy(max_attempts=10, initial_interval="1s", backoff=2, max_interval="1m", jitter=0.2)
    base = min(1_000 * 2 ** (attempt - 1), 60_000)
    rng = random.Random(1234)
    samples = [p.delay_ms(attempt, rng) for _ in range(2_000)]
    assert min(samples) >= int(base * 0.8)
    assert max(samples) <= int(base * 1.2)
    assert max(samples) - min(samples) > base * 0.3  # it does spread
    assert len(set(samples)) > 100


def test_jitter_is_reproducible_with_a_seeded_rng() -> None:
    p = RetryPolicy()
    assert [p.delay_ms(2, random.Random(5)) for _ in range(3)] == [p.delay_ms(2, random.Random(5))] * 3


def test_full_jitter_never_goes_negative() -> None:
    p = RetryPolicy(jitter=1.0)
    rng = random.Random(0)
    assert all(p.delay_ms(1, rng) >= 0 for _ in range(500))


def test_delay_of_a_very_late_attempt_is_the_cap() -> None:
    p = RetryPolicy(max_attempts=100_000, initial_interval="1s", backoff=2.0, max_interval="1m", jitter=0)
    assert p.delay_ms(5_000) == 60_000


def test_allows_retry() -> None:
    p = RetryPolicy(max_attempts=3, non_retryable=("ValueError",))
    assert p.allows_retry(1, "IOError")
    assert p.allows_retry(2, "IOError")
    assert not p.allows_retry(3, "IOError")
    assert not p.allows_retry(1, "ValueError")
    assert not RetryPolicy(max_attempts=1).allows_retry(1, "X")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"max_attempts": 0}, "max_attempts"),
        ({"backoff": 0.5}, "backoff"),
        ({"jitter": -0.1}, "jitter"),
        ({"jitter": 1.5}, "jitter"),
        ({"initial_interval": "soon"}, "not a duration"),
        ({"max_interval": "1y"}, "not a duration"),
    ],
)
def test_invalid_policies_are_refused(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        RetryPolicy(**kwargs)  # type: ignore[arg-type]


def test_policy_is_frozen() -> None:
    with pytest.raises(AttributeError):
        DEFAULT_RETRY.max_attempts = 9  # type: ignore[misc]
