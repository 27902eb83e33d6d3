"""The virtual clock of a test environment: time moves only when the test (or time skipping) moves it.

Everything the engine core decides takes ``now_ms`` as an argument, so a clock object that the environment
owns is all it takes to make a 30-day ``ctx.sleep`` pass in no real time.
"""

from __future__ import annotations

from datetime import UTC, datetime

from orchestrator.durations import Duration, to_millis


class VirtualClock:
    """Milliseconds since the epoch, moved forward explicitly; never backwards."""

    def __init__(self, start: datetime | None = None) -> None:
        if start is not None and start.tzinfo is None:
            raise ValueError("start_time must be timezone-aware (e.g. datetime(2026, 1, 1, tzinfo=UTC))")
        self._now_ms = int((start or datetime.now(tz=UTC)).timestamp() * 1000)

    @property
    def now_ms(self) -> int:
        return self._now_ms

    def now(self) -> datetime:
        return datetime.fromtimestamp(self._now_ms / 1000, tz=UTC)

    def move_to(self, when_ms: int) -> None:
        """Move to ``when_ms``; a time in the past leaves the clock where it is (time never goes back)."""
        self._now_ms = max(self._now_ms, when_ms)

    def after(self, duration: Duration) -> int:
        """The time ``duration`` from now, in milliseconds."""
        return self._now_ms + to_millis(duration)
