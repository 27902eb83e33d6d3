"""What every command shares: logging set up before it runs, and its failures told in one line.

Why logging for every command: only ``processor`` and ``worker`` called `configure_logging`, so a read
command's librdkafka warnings reached stderr through Python's last-resort handler, message only, and a
``--log-format json`` deployment (the UI, a CronJob running ``export``) could not get JSON from them. The
root callback sets logging up for all: ``orchestrator --log-level warning --log-format json COMMAND``, or
``ORCHESTRATOR_LOG_LEVEL``/``ORCHESTRATOR_LOG_FORMAT`` (environment or ``.env``), else info and text.
``processor`` and ``worker`` keep their own ``--log-level``/``--log-format``/``--verbose``, which win.
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from orchestrator.cli import _failures, _json

_given: tuple[str | None, str | None] = (None, None)
"""``(--log-level, --log-format)`` of the root command in this invocation (Typer vendors its own click, so
the click context is not reachable from ``import click``; one invocation per process, reset by `setup`)."""

RootLevel = Annotated[
    str | None,
    typer.Option(
        "--log-level",
        envvar="ORCHESTRATOR_LOG_LEVEL",
        help="debug, info, warning or error, for every command (default: info).",
        show_default=False,
    ),
]
RootFormat = Annotated[
    str | None,
    typer.Option(
        "--log-format",
        envvar="ORCHESTRATOR_LOG_FORMAT",
        help="text, or json: one JSON object per line on stderr, librdkafka's lines included "
        "(default: text).",
        show_default=False,
    ),
]


_standalone = False
"""Set by `run`: the CLI owns this process, so it may set up the root logger. A program (or a test) that
invokes the Typer app itself keeps its own logging; ``processor``/``worker`` set theirs up either way."""


def setup(log_level: RootLevel = None, log_format: RootFormat = None) -> None:
    """Durable workflows on Apache Kafka."""
    from orchestrator._logging import configure_logging

    global _given
    _json.forget()
    _given = (log_level, log_format)
    if not _standalone:
        return
    if log_level is None or log_format is None:
        default_level, default_format = _from_dotenv()
        log_level = log_level or default_level
        log_format = log_format or default_format
    try:
        configure_logging(log_level, log_format)
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    _json.json_logs = log_format == "json"


def _from_dotenv() -> tuple[str, str]:
    """The log settings of `Settings` (an ``.env`` file too), or the defaults if the settings do not load.

    Settings that do not load are reported by the command that needs them, with what to fix; ``kafka
    start`` needs none of them and must not fail on them.
    """
    from orchestrator.settings import Settings

    try:
        settings = Settings()
    except Exception:  # noqa: BLE001 - see the docstring
        return "INFO", "text"
    return settings.log_level, settings.log_format


def explicit() -> tuple[str | None, str | None]:
    """``(--log-level, --log-format)`` as given to the root command (or its env vars), else ``None``s.

    For ``processor``/``worker``, whose own options and settings would otherwise set logging up again
    without them.
    """
    return _given


def run(app: typer.Typer) -> None:
    """Run the CLI; a Kafka failure (or settings that Kafka or pydantic refuse) ends it in one line.

    Exit codes: 2 for settings to fix (refused login, TLS or ACL; invalid settings), 4 for a cluster that
    cannot be reached or a request that failed (docs/cli-json.md). Under ``--json`` a Kafka failure is also
    an error document on stdout.
    """
    from pydantic import ValidationError

    from orchestrator._kafka_config import KafkaConfigError

    global _standalone
    _standalone = True
    try:
        app()
    except (KafkaConfigError, ValidationError) as exc:
        # A traceback would bury the one line that says which setting to fix; none of these holds a secret.
        _json.say_error(str(exc), exit_code=2)
        raise SystemExit(2) from None
    except Exception as exc:
        failure = _failures.explain(exc)
        if failure is None:
            raise
        from orchestrator._logging import REPEATS

        REPEATS.flush()  # librdkafka's collapsed lines before the verdict, not after it
        _json.say_error(
            failure.message, error_type=failure.kind, bootstrap=failure.bootstrap, exit_code=failure.code
        )
        if _json.requested():
            _json.emit({"error": failure.message, "error_type": failure.kind, "bootstrap": failure.bootstrap})
        sys.stderr.flush()
        raise SystemExit(failure.code) from None
