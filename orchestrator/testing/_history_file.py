"""Reading history exports (``orchestrator export --format jsonl|avro``) back into engine events.

The Avro export is an object container file with the Event schema embedded: every field comes back
exactly. The JSON Lines export shows payloads as ``{"json": value}`` (or ``{"base64": ...}`` for bytes that
are not JSON); those are turned back into JSON bytes, which decode to the same values the run saw (byte
for byte the same as the converter's own compact JSON for ordinary values; an empty payload reads back
as ``null``, which is what the converter writes for ``None``).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import fastavro

from orchestrator._engine.events import BODY_TYPES, Event

_AVRO_MAGIC = b"Obj\x01"
_NS = "orchestrator.v1."


class HistoryFileError(ValueError):
    """A file that is not a history export, or an event in it that this version cannot read."""


def read_events(path: str | Path) -> list[Event]:
    """Every event of an export file, in file order (per run, that is history order).

    Also reads the output of ``orchestrator history RUN_ID --json`` saved to a file (the same JSON lines).
    """
    path = Path(path)
    with path.open("rb") as fh:
        avro = fh.read(4) == _AVRO_MAGIC
    return list(_avro_events(path) if avro else _jsonl_events(path))


def by_run(events: Iterable[Event]) -> dict[str, list[Event]]:
    """Events grouped by run id, each run's in history (``seq``) order."""
    runs: dict[str, list[Event]] = {}
    for event in events:
        runs.setdefault(event.run_id, []).append(event)
    for run_events in runs.values():
        run_events.sort(key=lambda e: e.seq)
    return runs


def _avro_events(path: Path) -> Iterator[Event]:
    with path.open("rb") as fh:
        for n, rec in enumerate(fastavro.reader(fh, return_record_name=True), 1):
            if not isinstance(rec, dict):
                raise HistoryFileError(f"{path}: record {n} is not an event")
            name, body = rec["body"]
            yield _event(rec, name, body, f"{path}: record {n}")


def _jsonl_events(path: Path) -> Iterator[Event]:
    with path.open("rb") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                body = {k: _payload(v) for k, v in rec["body"].items()}
                yield _event(rec, _NS + rec["type"], body, f"{path}: line {n}")
            except (ValueError, KeyError, TypeError, AttributeError) as exc:
                if isinstance(exc, HistoryFileError):
                    raise
                raise HistoryFileError(
                    f"{path}: line {n} is not an event of an `orchestrator export` ({type(exc).__name__}: "
                    f"{exc}); export with --format jsonl or avro"
                ) from exc


def _payload(value: Any) -> Any:
    """Undo the export's payload notation: ``{"json": v}`` / ``{"base64": s}`` back to bytes."""
    if isinstance(value, dict):
        if "base64" in value:
            return base64.b64decode(value["base64"])
        return json.dumps(value["json"], separators=(",", ":"), ensure_ascii=False).encode()
    return value


def _event(rec: dict[str, Any], body_name: str, body: dict[str, Any], where: str) -> Event:
    cls = BODY_TYPES.get(body_name)
    if cls is None:
        raise HistoryFileError(f"{where}: unknown event type {body_name!r}; upgrade the orchestrator package")
    try:
        parsed = cls(**body)
    except TypeError as exc:
        raise HistoryFileError(f"{where}: {body_name} does not match this version: {exc}") from exc
    return Event(
        event_id=rec["event_id"],
        run_id=rec["run_id"],
        workflow=rec["workflow"],
        timestamp_ms=rec["timestamp_ms"],
        body=parsed,
        seq=rec["seq"],
        workflow_version=rec.get("workflow_version", ""),
    )
