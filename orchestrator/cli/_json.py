"""The ``--json`` form of the read commands: one JSON document on stdout, in the shapes of docs/cli-json.md.

Why one module: the field names are an interface scripts depend on, so they are made in one place with
one set of rules. Names are snake_case. A point in time is two fields, ``<name>`` (ISO-8601 UTC with
milliseconds and ``Z``) and ``<name>_ms`` (epoch milliseconds). An encoded payload (input, result, a
step's result) is ``{"json": value}`` when it is JSON and ``{"base64": "..."}`` otherwise, as in
``history --json`` and ``export``. Every document that comes from reading topics has ``unreadable``: the
records skipped, in the form ``Unreadable.as_json`` gives them (they are also reported on stderr).
"""

from __future__ import annotations

import base64
import dataclasses
import json
import logging
import sys
from datetime import UTC, datetime
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer

from orchestrator._core.state import AttemptRecord, CommandRecord, RunState, attempts_of, result_of
from orchestrator._engine.unreadable import Unreadable

_requested = False


def remember(value: bool) -> bool:
    """Typer callback of every ``--json`` option: `main` must know it to report a failure as JSON too."""
    global _requested
    _requested = _requested or bool(value)
    return value


def requested() -> bool:
    """Whether this command was given ``--json`` (as far as its options were parsed)."""
    return _requested


def forget() -> None:
    """A new command starts (the root callback; tests invoke several in one process)."""
    global _requested, json_logs
    _requested = json_logs = False


JsonFlag = Annotated[
    bool,
    typer.Option(
        "--json",
        help="One JSON document on stdout (shapes: docs/cli-json.md); diagnostics stay on stderr.",
        callback=remember,
    ),
]


def emit(document: dict[str, Any]) -> None:
    """Write ``document`` as the command's whole stdout (one line, so ``jq`` and line readers both work)."""
    sys.stdout.write(json.dumps(document, ensure_ascii=False, default=_fallback) + "\n")
    sys.stdout.flush()


def fail(message: str, code: int = 2, **fields: Any) -> typer.Exit:
    """A failing command's JSON: ``{"error": message, ...}`` on stdout, the message on stderr too."""
    say_error(message, exit_code=code)
    emit({"error": message, **fields})
    return typer.Exit(code)


json_logs = False
"""Set by the root callback when ``--log-format json`` is in force: stderr then takes JSON records only."""


def say_error(message: str, **extra: Any) -> None:
    """A command's final error on stderr: ``error: ...``, or an ERROR record of ``orchestrator.cli`` (with
    ``extra`` as fields) when the logs are JSON, so that stderr stays one JSON object per line."""
    if json_logs:
        logging.getLogger("orchestrator.cli").error("%s", message, extra=extra)
    else:
        typer.echo(f"error: {message}", err=True)


def iso(ms: int) -> str:
    """Epoch ms as ISO-8601 UTC with milliseconds: ``2026-11-29T21:05:03.120Z``."""
    return datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def times(name: str, ms: int | None) -> dict[str, Any]:
    """``{name: iso, name_ms: ms}``; both None when there is no such time (0 or None in the record)."""
    if not ms:
        return {name: None, f"{name}_ms": None}
    return {name: iso(ms), f"{name}_ms": ms}


def payload(value: bytes | None) -> dict[str, Any] | None:
    """A payload: ``{"json": ...}`` when it parses as JSON, else ``{"base64": ...}``; None if absent."""
    if value is None:
        return None
    try:
        return {"json": json.loads(value) if value else None}
    except (ValueError, UnicodeDecodeError):
        return {"base64": base64.b64encode(value).decode()}


def text(value: bytes | None) -> str | None:
    """Bytes shown as text (keys, dead-letter values): UTF-8 with replacement, None if absent."""
    return None if value is None else value.decode(errors="replace")


def unreadable(records: list[Unreadable]) -> list[dict[str, Any]]:
    return [bad.as_json() for bad in records]


def plain(value: Any) -> Any:
    """Any engine value (records, enums, bytes, lists of them) as JSON-ready data, for replay's diffs."""
    if isinstance(value, bytes):
        return payload(value)
    if isinstance(value, Enum):
        return value.value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [plain(v) for v in value]
    return value


def _fallback(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    return plain(value) if not isinstance(value, str | int | float | bool) else value


def attempt_json(a: AttemptRecord) -> dict[str, Any]:
    return {
        "attempt": a.attempt,
        **times("started", a.started_ms),
        **times("finished", a.finished_ms),
        "duration_ms": a.finished_ms - a.started_ms if a.started_ms and a.finished_ms else None,
        "error_type": a.error_type,
        "error_message": a.message,
        "worker": a.worker,
    }


def command_json(record: CommandRecord) -> dict[str, Any]:
    """One command of a run (step, timer, wait, child, marker, compensation) in ``runs show``'s shape."""
    attempt, attempts = attempts_of(record)
    error_type = getattr(record, "error_type", "")
    return {
        "position": record.position,
        "kind": record.kind.value,
        "name": record.name,
        "status": record.status.value,
        "attempt": attempt,
        **times("scheduled", record.scheduled_ms),
        "error_type": error_type,
        "error_message": getattr(record, "error_message", "") if error_type else "",
        "result": payload(result_of(record)),
        "attempts": [attempt_json(a) for a in attempts],
    }


def run_json(state: RunState) -> dict[str, Any]:
    """One run as its processor last committed it (the shape of ``runs show --json``'s ``run``)."""
    return {
        "run_id": state.run_id,
        "workflow": state.workflow,
        "workflow_version": state.workflow_version,
        "status": state.status.value,
        **times("created", state.created_ms),
        **times("updated", state.updated_ms),
        "error_type": state.error_type,
        "error_message": state.error_message,
        "input": payload(state.input),
        "result": payload(state.result),
        "parent_run_id": state.parent_run_id or None,
        "steps": [command_json(s) for s in state.steps],
    }
