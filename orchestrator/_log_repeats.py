"""Collapse repeated librdkafka lines into the first one and a "repeated N times in T s" summary.

Why: while a broker is down, librdkafka logs every failed reconnect of every client: a processor's group
consumer wrote ~1,160 ``FAIL ... Connect to ... failed: Connection refused`` records at ERROR in a 60 s
outage (ADR 0022), and a CLI reader against a dead bootstrap printed hundreds at once. The first of them
says everything; the rest bury the engine's own lines. So a record passes when its kind (logger, level and
message *shape*: the text with durations and counts masked, which holds the facility and the client name)
was not seen in the last ``quiet`` seconds; the repeats are counted, and one summary record reports them:
every ``every`` seconds while they go on, and once they stop (``quiet`` seconds without one, which in an
outage is when the client has reconnected), or at exit. Nothing is lost but the identical repeats: the
first occurrence, the count, the span and the last text are all logged.

``quiet`` must outlast librdkafka's longest reconnect backoff (``reconnect.backoff.max.ms``, 10 s by
default), or a long outage would be reported as many short ones. DEBUG records always pass: lines asked
for with ``debug=`` are wanted whole.
"""

from __future__ import annotations

import atexit
import logging
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

QUIET_S = 15.0
"""A kind of line not seen for this long is over: its summary is logged, its next occurrence passes."""
EVERY_S = 60.0
"""While a kind of line keeps repeating, a summary at most this often (an operator sees it goes on)."""

_SUPPRESSED = re.compile(r",? ?\d+ identical error\(s\) suppressed")  # librdkafka's own count
_DURATION = re.compile(r"\b\d+(?:\.\d+)?\s?(?:ms|us|s)\b")
# A free-standing number (a count, a correlation id, a partition in [3]); digits inside names and addresses
# (rdkafka#consumer-4, 127.0.0.1:9092/1, ipv4#) are part of what the line is about and stay.
_NUMBER = re.compile(r"(?<![\w.:/#-])\d+(?![\w.:/])")


def shape(text: str) -> str:
    """``text`` with what changes between repeats of one line masked: durations, counts, ids."""
    return _NUMBER.sub("#", _DURATION.sub("#ms", _SUPPRESSED.sub("", text)))


Key = tuple[str, int, str]
_MAX_KINDS = 1000


@dataclass
class _Repeats:
    since: float  # monotonic time of the last record of this kind that was logged (first or summary)
    last: float  # monotonic time of the latest record of this kind
    count: int  # records suppressed since ``since``
    latest: logging.LogRecord
    owed: bool = False  # a "still repeating" summary went out: its "then stopped" line is still due

    @property
    def pending(self) -> bool:
        """Whether a summary is still to be logged for this kind (repeats counted, or an end owed)."""
        return self.count > 0 or self.owed


class RepeatCollapser(logging.Filter):
    """A logger filter: the first record of a kind passes, its repeats are counted and summarised.

    Only records with a ``kafka_client`` attribute (librdkafka's, from `LibrdkafkaLogger`) at or above
    ``min_level`` are collapsed; others pass untouched. Summaries are records of the same logger, level,
    ``kafka_facility`` and ``kafka_client``, with the latest repeat's text followed by ``(repeated N times
    in T s, ...)`` and the extra fields ``repeated`` (N) and ``repeated_seconds`` (T). A daemon thread logs
    the summary of a kind that went quiet; `flush` logs every pending one (registered with ``atexit``).
    """

    def __init__(
        self,
        quiet: float = QUIET_S,
        every: float = EVERY_S,
        min_level: int = logging.INFO,
        clock: Callable[[], float] = time.monotonic,
        background: bool = True,
    ) -> None:
        super().__init__()
        self.quiet = quiet
        self.every = every
        self.min_level = min_level
        self._clock = clock
        self._background = background
        self._lock = threading.Lock()
        self._kinds: dict[Key, _Repeats] = {}
        self._wake = threading.Condition(self._lock)
        self._flusher: threading.Thread | None = None

    def filter(self, record: logging.LogRecord) -> bool:
        if hasattr(record, "repeated") or record.levelno < self.min_level:
            return True  # our own summaries, and debug lines
        if getattr(record, "kafka_client", None) is None:
            return True
        key = (record.name, record.levelno, shape(record.getMessage()))
        now = self._clock()
        summaries: list[logging.LogRecord] = []
        with self._lock:
            seen = self._kinds.get(key)
            if seen is None or now - seen.last >= self.quiet:
                if seen is not None and seen.pending:
                    summaries.append(_summary(seen, _STOPPED))
                if len(self._kinds) >= _MAX_KINDS:  # kinds seen once long ago: forget them
                    summaries.extend(self._take_due(now, everything=False))
                self._kinds[key] = _Repeats(now, now, 0, record)
                passes = True
            else:
                seen.count += 1
                seen.last = now
                seen.latest = record
                if now - seen.since >= self.every:
                    summaries.append(_summary(seen, "still repeating"))
                    seen.since, seen.count, seen.owed = now, 0, True
                passes = False
                self._start_flusher()
        _log(summaries)
        return passes

    def flush(self, everything: bool = True) -> int:
        """Log the summaries due (``everything``: all pending ones, e.g. at exit); how many were logged."""
        now = self._clock()
        with self._lock:
            due = self._take_due(now, everything)
        _log(due)
        return len(due)

    def _take_due(self, now: float, everything: bool) -> list[logging.LogRecord]:
        due: list[logging.LogRecord] = []
        for key, seen in list(self._kinds.items()):
            quiet = now - seen.last >= self.quiet
            if everything or quiet:
                if seen.count or (quiet and seen.owed):
                    due.append(_summary(seen, _STOPPED if quiet else "until now"))
                del self._kinds[key]
        return due

    def _start_flusher(self) -> None:
        """(Under the lock.) Make sure a thread will log the summary once this kind goes quiet."""
        if not self._background:
            return
        if self._flusher is None or not self._flusher.is_alive():
            # Deadlines only move later as repeats arrive, so a running flusher never needs waking.
            self._flusher = threading.Thread(target=self._flush_when_quiet, daemon=True, name="log-repeats")
            self._flusher.start()

    def _flush_when_quiet(self) -> None:
        while True:
            with self._lock:
                due = self._take_due(self._clock(), everything=False)
                pending = [seen.last for seen in self._kinds.values() if seen.pending]
                if not pending and not due:
                    self._flusher = None
                    return
                if not due:
                    self._wake.wait(max(min(pending) + self.quiet - self._clock(), 0.05))
            _log(due)


_STOPPED = "then stopped"


def _summary(seen: _Repeats, how: str) -> logging.LogRecord:
    latest = seen.latest
    span = seen.last - seen.since
    if seen.count:
        msg = "%s (repeated %s in %.1f s, %s)"
        args: tuple[object, ...] = (
            latest.getMessage(),
            "once" if seen.count == 1 else f"{seen.count} times",
            span,
            how,
        )
    else:  # the repeats ended right after a "still repeating" summary: say that they ended
        msg, args = "%s (no repeat since the last summary, %s)", (latest.getMessage(), how)
    record = logging.getLogger(latest.name).makeRecord(
        latest.name,
        latest.levelno,
        latest.pathname,
        latest.lineno,
        msg,
        args,
        None,
        extra={
            "kafka_facility": getattr(latest, "kafka_facility", ""),
            "kafka_client": getattr(latest, "kafka_client", ""),
            "repeated": seen.count,
            "repeated_seconds": round(span, 1),
        },
    )
    return record


def _log(records: list[logging.LogRecord]) -> None:
    for record in records:
        logging.getLogger(record.name).handle(record)


def install(logger: logging.Logger, collapser: RepeatCollapser | None = None) -> RepeatCollapser:
    """Put a collapser on ``logger`` (idempotent per collapser) and log its pending summaries at exit."""
    collapser = collapser or RepeatCollapser()
    if collapser not in logger.filters:
        logger.addFilter(collapser)
        atexit.register(collapser.flush)
    return collapser
