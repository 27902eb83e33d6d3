"""A failed step attempt's traceback: formatted once where the step ran, bounded, read back from history.

Why bounded: a traceback goes into the attempt's `StepFailed` report, which is copied to the history topic.
Recursion, deep framework stacks, exception groups or a huge exception message could make one record
larger than the topic accepts, and an attempt must never fail to be *reported* because of how it failed.
So the text is capped at `LIMIT_BYTES` of UTF-8. What is cut is the start: the innermost frames (where the
error happened) and the exception line are what a reader needs, and Python prints them last. Each printed
chunk (a frame, a chained exception's header, the exception line) is first capped at `CHUNK_BYTES`, so one
enormous message cannot push every frame out of the kept tail.

Why in history only: the run's state is rewritten on every event of the run (the changelog), a traceback
there would be paid for again and again; the history keeps each attempt's once, and views (the web UI,
``runs show``) read it from there.
"""

from __future__ import annotations

import traceback
from collections.abc import Iterable
from dataclasses import dataclass

from orchestrator._core.events import Event, StepFailed

LIMIT_BYTES = 8192
"""At most this many UTF-8 bytes of traceback per attempt (the cut marker included)."""

CHUNK_BYTES = 2048
"""At most this many bytes of any one printed chunk (a frame with its source line, an exception line)."""

MAX_FRAMES = 100
"""Frames formatted per exception, the innermost ones: 8 KB holds fewer anyway, and formatting reads each
frame's source line, which for a RecursionError's thousand frames took 50-140 ms (measured) for text the
byte cap would then drop."""

_MARKER_RESERVE = 160  # bytes kept free for the marker line, whatever the numbers in it


def format_bounded(exc: BaseException, limit: int = LIMIT_BYTES) -> str:
    """``traceback.format_exception(exc)``, bounded to ``limit`` UTF-8 bytes; empty when ``exc`` was never
    raised (it has no frames to show, and its type and message are recorded beside the traceback)."""
    if exc.__traceback__ is None and exc.__cause__ is None and exc.__context__ is None:
        return ""
    chunks = [_cap(chunk, CHUNK_BYTES) for chunk in traceback.format_exception(exc, limit=-MAX_FRAMES)]
    text = "".join(chunks)
    frames = _depth(exc)
    if frames > MAX_FRAMES:
        text = f"[traceback cut: the outermost {frames - MAX_FRAMES} of {frames} frames]\n" + text
    return bound(text, limit)


def _depth(exc: BaseException) -> int:
    """How many frames ``exc``'s own traceback has (following ``tb_next`` costs no source lookups)."""
    n, tb = 0, exc.__traceback__
    while tb is not None:
        n, tb = n + 1, tb.tb_next
    return n


def bound(text: str, limit: int = LIMIT_BYTES) -> str:
    """``text`` if it fits in ``limit`` UTF-8 bytes, else its end from a line start, after a line saying
    how much was cut. Characters that UTF-8 cannot encode (lone surrogates) are escaped, never raised on:
    the Avro writer encodes the result as UTF-8."""
    data = text.encode("utf-8", "backslashreplace")
    if len(data) <= limit:
        return data.decode()
    budget = max(0, limit - _MARKER_RESERVE)
    tail = data[len(data) - budget :].decode("utf-8", "ignore")  # "ignore": a character split by the cut
    newline = tail.find("\n")
    if 0 <= newline < len(tail) - 1:  # start at a line, not in the middle of one
        tail = tail[newline + 1 :]
    cut = len(data) - len(tail.encode())
    marker = f"[traceback cut: the first {cut} of {len(data)} bytes; the innermost frames are kept]\n"
    return (marker + tail) if len(marker.encode()) + len(tail.encode()) <= limit else tail[-budget:]


def _cap(chunk: str, limit: int) -> str:
    data = chunk.encode("utf-8", "backslashreplace")
    if len(data) <= limit:
        return chunk
    head = data[: max(0, limit - 40)].decode("utf-8", "ignore")
    return f"{head}... [{len(data) - len(head.encode())} bytes cut]\n"


@dataclass(frozen=True)
class Failure:
    """One failed attempt as the history recorded it (`StepFailed`), with where it sits in the history."""

    seq: int
    timestamp_ms: int
    position: int
    attempt: int
    error_type: str
    message: str
    retryable: bool
    started_ms: int
    finished_ms: int
    worker: str
    traceback: str


def failures(events: Iterable[Event]) -> list[Failure]:
    """Every failed attempt in ``events`` (one run's history), in history order."""
    out = []
    for event in events:
        b = event.body
        if isinstance(b, StepFailed):
            out.append(
                Failure(
                    event.seq,
                    event.timestamp_ms,
                    b.position,
                    b.attempt,
                    b.error_type,
                    b.message,
                    b.retryable,
                    b.started_ms,
                    b.finished_ms,
                    b.worker,
                    b.traceback,
                )
            )
    return out


def by_attempt(events: Iterable[Event]) -> dict[tuple[int, int, int], str]:
    """``(position, attempt, started_ms) -> traceback`` of every failed attempt that has one.

    ``started_ms`` is in the key because a re-run from a position issues the steps after it afresh, from
    attempt 1: position and attempt alone could name two different attempts of one history.
    The run state's `AttemptRecord` carries the same three values, so a view finds an attempt's traceback.
    """
    return {(f.position, f.attempt, f.started_ms): f.traceback for f in failures(events) if f.traceback}
