"""Durations as users write them: ``"1s"``, ``"250ms"``, ``"1h30m"``, a number of seconds or a timedelta."""

from __future__ import annotations

import re
from datetime import timedelta

Duration = str | int | float | timedelta

_UNITS_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 604_800_000}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")


def to_millis(value: Duration) -> int:
    """Milliseconds in ``value``; raises ValueError with the accepted forms when it cannot be read."""
    if isinstance(value, timedelta):
        if value < timedelta(0):
            raise ValueError(f"duration must not be negative: {value!r}")
        return int(value.total_seconds() * 1000)
    if isinstance(value, bool):
        raise ValueError(f"not a duration: {value!r}")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError(f"duration must not be negative: {value!r}")
        return int(value * 1000)
    text = value.strip().replace(" ", "")
    pos = 0
    total = 0.0
    for match in _PART.finditer(text):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _UNITS_MS[match.group(2)]
        pos = match.end()
    if pos != len(text) or not text:
        raise ValueError(
            f"not a duration: {value!r} (use e.g. '250ms', '1s', '5m', '1h30m', '3d', seconds, a timedelta)"
        )
    return int(total)
