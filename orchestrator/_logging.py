"""How the engine's processes log: one setup for the CLI commands, and librdkafka's lines routed into it.

**Formats.** ``text`` (the default) is for people: Rich on a terminal, one plain line per record otherwise.
``json`` is for collectors (Loki, Elasticsearch, CloudWatch): one JSON object per line on stderr with
``time`` (ISO-8601 UTC), ``time_ms`` (epoch ms), ``level``, ``logger``, ``message``, and every ``extra``
field a log call passed (``run_id``, ``step``, ``partition``, ... ) as a field of its own, so a collector
can filter on them without parsing messages. `configure_logging` is what every CLI command calls (the root
callback, ``orchestrator/cli/_root.py``; ``processor`` and ``worker`` again with their own options) and
the UI command; ``Settings.log_level`` / ``Settings.log_format`` (``ORCHESTRATOR_LOG_LEVEL``,
``ORCHESTRATOR_LOG_FORMAT``) set them when the command line does not.

**librdkafka.** Left alone, librdkafka writes its own lines (``%3|1732900000.123|FAIL|rdkafka#producer-1|
...``) straight to file descriptor 2 from its threads: they bypass logging, break a JSON log stream and
cannot be filtered or levelled. Every client the engine builds (``orchestrator._engine.kafka``) is
therefore given a `LibrdkafkaLogger` as confluent-kafka's ``logger`` setting: the lines become records of
the ``orchestrator.kafka.librdkafka`` logger, at the logging level of their syslog level (0-2 CRITICAL,
3 ERROR, 4 WARNING, 5-6 INFO, 7 DEBUG, as confluent-kafka maps them), with any secret of the client's
configuration masked. With a logger set, confluent-kafka has librdkafka queue its lines, and they are
handed over when the client is served (``poll``, ``consume``, ``flush``, ``close``): ADR 0022 lists which
clients that delays and how. A line that repeats (a failed reconnect, many times a second in an outage) is
logged once, then summarised (`REPEATS`, ``orchestrator._log_repeats``).
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Iterable, Mapping
from types import TracebackType
from typing import Any, Literal, TextIO

from pythonjsonlogger.json import JsonFormatter

from orchestrator import _log_repeats
from orchestrator._kafka_config import REDACTED, is_secret

LIBRDKAFKA_LOGGER = "orchestrator.kafka.librdkafka"
"""The logger every librdkafka line of the engine's clients goes to (level it, filter it, route it)."""

REPEATS = _log_repeats.install(logging.getLogger(LIBRDKAFKA_LOGGER))
"""Collapses repeated librdkafka lines (a failed reconnect, many times a second in an outage) into the
first one and a ``(repeated N times in T s, ...)`` summary: `orchestrator._log_repeats`. Installed on import,
so every program whose clients the engine builds gets it, not only the CLI; remove it from the logger
(``removeFilter(REPEATS)``) to see every line."""

LogFormat = Literal["text", "json"]
LOG_FORMATS: tuple[LogFormat, ...] = ("text", "json")

_CONFLUENT_FORMAT = "%s [%s] %s"  # what confluent-kafka's log callback passes: facility, client name, line


class LibrdkafkaLogger(logging.LoggerAdapter[logging.Logger]):
    """The ``logger`` confluent-kafka hands librdkafka's lines to: onto ``orchestrator.kafka.librdkafka``.

    confluent-kafka calls ``log(level, "%s [%s] %s", facility, client_name, line)``. Each line becomes a
    record with the same text (``FAIL [rdkafka#producer-1] ...``) and two extra fields, ``kafka_facility``
    and ``kafka_client``, for filtering. Secrets of the client's configuration are masked in the text:
    librdkafka redacts sensitive properties itself, but a line quoting a value it does not know to be
    secret (a password reused as a user name, an OAuth config) must not reach a log collector either.
    """

    def __init__(self, secrets: Iterable[str] = (), logger: logging.Logger | None = None) -> None:
        super().__init__(logger or logging.getLogger(LIBRDKAFKA_LOGGER), {})
        # Short values would mask ordinary words; the config's own scrub has the same floor.
        self._secrets = tuple(sorted({s for s in secrets if len(s) >= 4}, key=len, reverse=True))

    def log(self, level: int, msg: object, *args: object, **kwargs: Any) -> None:
        if not self.logger.isEnabledFor(level):
            return
        if msg == _CONFLUENT_FORMAT and len(args) == 3:
            facility, client, line = (str(a) for a in args)
            extra = {"kafka_facility": facility, "kafka_client": client}
            self.logger.log(level, _CONFLUENT_FORMAT, facility, client, self._mask(line), extra=extra)
            return
        text = str(msg) % args if args else str(msg)
        self.logger.log(level, self._mask(text), **kwargs)

    def _mask(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, REDACTED)
        return text

    def __repr__(self) -> str:  # never the secrets: a config holding this may be shown
        return f"<LibrdkafkaLogger {self.logger.name}>"


def librdkafka_logger(config: Mapping[str, Any]) -> LibrdkafkaLogger:
    """The ``logger`` for a client built from ``config``: masks the values of its secret settings."""
    return LibrdkafkaLogger(str(v) for k, v in config.items() if is_secret(k) and isinstance(v, str))


class _JsonLines(JsonFormatter):
    """One JSON object per record: fixed fields first, then the record's ``extra`` fields."""

    def add_fields(
        self, log_data: dict[str, Any], record: logging.LogRecord, message_dict: dict[str, Any]
    ) -> None:
        log_data["time"] = _iso_utc(record.created)
        log_data["time_ms"] = int(record.created * 1000)
        log_data["level"] = record.levelname
        log_data["logger"] = record.name
        super().add_fields(log_data, record, message_dict)
        if record.threadName and record.threadName != "MainThread":
            log_data.setdefault("thread", record.threadName)


def _iso_utc(created: float) -> str:
    whole = time.gmtime(created)
    return time.strftime("%Y-%m-%dT%H:%M:%S", whole) + f".{int(created * 1000) % 1000:03d}Z"


def json_formatter() -> logging.Formatter:
    """The ``json`` format's formatter, for programs that set up their own handlers."""
    # ``message`` is the only field taken from the format; the rest are added in order by _JsonLines.
    return _JsonLines(["message"], json_ensure_ascii=False)


def parse_level(level: str | int) -> int:
    """``"debug"``/``"INFO"``/``20`` -> a logging level; ValueError for anything else."""
    if isinstance(level, int):
        return level
    value = logging.getLevelName(level.strip().upper())
    if not isinstance(value, int):
        raise ValueError(f"unknown log level {level!r} (debug, info, warning, error, critical)")
    return value


def configure_logging(
    level: str | int = "INFO", fmt: str = "text", *, stream: TextIO | None = None
) -> logging.Handler:
    """Set up the root logger for one of the engine's processes: ``fmt`` ``text`` or ``json``, on stderr.

    Replaces any handler set up before (it is meant for a process's start, and calling it again, e.g.
    once the app's own settings are known, simply redoes it). With ``json``, warnings and uncaught
    exceptions (main thread and others) are logged too, so that nothing but JSON lines reaches stderr.
    Returns the handler, for tests and for programs that want to add filters.
    """
    if fmt not in LOG_FORMATS:
        raise ValueError(f"log format is one of {', '.join(LOG_FORMATS)}, not {fmt!r}")
    numeric = parse_level(level)
    out = stream if stream is not None else sys.stderr
    handler: logging.Handler
    if fmt == "json":
        handler = logging.StreamHandler(out)
        handler.setFormatter(json_formatter())
    else:
        handler = _text_handler(out)
    logging.basicConfig(level=numeric, handlers=[handler], force=True)
    logging.captureWarnings(fmt == "json")
    if fmt == "json":
        sys.excepthook = _log_uncaught
        threading.excepthook = _log_uncaught_in_thread
    else:  # undo only our own hooks: another library's (a test runner's) stay
        if sys.excepthook is _log_uncaught:
            sys.excepthook = sys.__excepthook__
        if threading.excepthook is _log_uncaught_in_thread:
            threading.excepthook = threading.__excepthook__
    return handler


def _text_handler(out: TextIO) -> logging.Handler:
    from rich.console import Console
    from rich.logging import RichHandler

    console = Console(file=out)
    if console.is_terminal:
        handler: logging.Handler = RichHandler(console=console, show_path=False)
        handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
    else:
        handler = logging.StreamHandler(out)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    return handler


def _log_uncaught(kind: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
    logging.getLogger("orchestrator").critical("uncaught %s", kind.__name__, exc_info=(kind, exc, tb))


def _log_uncaught_in_thread(args: threading.ExceptHookArgs) -> None:
    if args.exc_type is SystemExit or args.exc_value is None:
        return
    name = args.thread.name if args.thread is not None else "?"
    logging.getLogger("orchestrator").critical(
        "uncaught %s in thread %s",
        args.exc_type.__name__,
        name,
        exc_info=(args.exc_type, args.exc_value, args.exc_traceback),
    )
