"""Retry policy for steps: exponential backoff with jitter, decided by the processor and recorded."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from orchestrator.durations import Duration, to_millis


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How a failing step is retried.

    Attributes:
        max_attempts: total attempts including the first; 1 means no retry.
        initial_interval: wait before the second attempt.
        backoff: factor applied to the wait after each further failure.
        max_interval: ceiling of the wait.
        jitter: fraction of the wait randomised (0.2 = +/-20 %) so that many runs failing on the same outage
            do not retry in lock step.
        non_retryable: exception type names that fail at once, as a `TerminalError` does.
    """

    max_attempts: int = 3
    initial_interval: Duration = "1s"
    backoff: float = 2.0
    max_interval: Duration = "1m"
    jitter: float = 0.2
    non_retryable: tuple[str, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("RetryPolicy.max_attempts must be at least 1")
        if self.backoff < 1:
            raise ValueError("RetryPolicy.backoff must be >= 1")
        if not 0 <= self.jitter <= 1:
            raise ValueError("RetryPolicy.jitter must be within [0, 1]")
        to_millis(self.initial_interval)
        to_millis(self.max_interval)

    def delay_ms(self, failed_attempt: int, rng: random.Random | None = None) -> int:
        """Wait after attempt number ``failed_attempt`` (1-based) failed."""
        cap = to_millis(self.max_interval)
        base = float(to_millis(self.initial_interval))
        for _ in range(failed_attempt - 1):  # multiply until the cap: no float overflow on late attempts
            if base >= cap:
                break
            base *= self.backoff
        base = min(base, cap)
        if self.jitter:
            r = (rng or random).uniform(-self.jitter, self.jitter)
            base *= 1 + r
        return max(0, int(base))

    def allows_retry(self, failed_attempt: int, error_type: str) -> bool:
        return failed_attempt < self.max_attempts and error_type not in self.non_retryable


DEFAULT_RETRY = RetryPolicy()
