"""How values look on the pages and in the JSON API: times, durations, payloads, records.

Payloads are the app's converter's JSON bytes; anything that is not JSON is shown as base64 rather than
guessed at.
"""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime
from typing import Any

import jinja2

from orchestrator._engine.records import DeadLetter
from orchestrator._engine.state import ChildRecord, RunState, StepRecord, WaitRecord, attempts_of, result_of
from orchestrator.ui.operations import QueueReport, Workers
from orchestrator.ui.timeline import duration_text


def when(ms: int | None) -> str:
    if not ms:
        return ""
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + " UTC"


def ago(ms: int | None, now_ms: int) -> str:
    if not ms:
        return ""
    return duration_text(max(0, now_ms - ms)) + " ago"


def payload_text(data: bytes | None) -> str:
    """Pretty JSON of an encoded payload; ``base64:...`` when it is not JSON; empty for none."""
    if data is None:
        return ""
    try:
        value = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        return "base64:" + base64.b64encode(data).decode()
    compact = json.dumps(value, sort_keys=True, ensure_ascii=False)
    return compact if len(compact) <= 60 else json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False)


def plain(value: Any) -> str:
    """A value of an event body as `audit.event_json` gives it, as short text."""
    if isinstance(value, dict) and "json" in value:
        return json.dumps(value["json"], ensure_ascii=False)
    if isinstance(value, dict) and "base64" in value:
        return "base64:" + str(value["base64"])
    return str(value)


def field(value: Any, name: str) -> str:
    """An event body field as text: epoch-ms fields (``started_ms``, ``due_ms``...) as UTC times."""
    if name.endswith("_ms") and isinstance(value, int) and value > 10**12:
        return when(value)
    return plain(value)


def command_error(record: Any) -> str:
    if isinstance(record, StepRecord | ChildRecord) and record.error_type:
        return f"{record.error_type}: {record.error_message}"
    return ""


def last_traceback(record: Any, tracebacks: dict[tuple[int, int, int], str]) -> str:
    """The traceback of the command's last failed attempt (``tracebacks``: `tracebacks.by_attempt` of the
    run's history), or empty: the one behind the error the steps table shows for it."""
    for a in reversed(attempts_of(record)[1]):
        if a.error_type:
            return tracebacks.get((record.position, a.attempt, a.started_ms), "")
    return ""


def command_io(record: Any) -> tuple[str, str]:
    """(input, output) of a command, as text."""
    if isinstance(record, StepRecord):
        return payload_text(record.args), payload_text(record.result)
    if isinstance(record, ChildRecord):
        return payload_text(record.input), payload_text(record.result)
    if isinstance(record, WaitRecord):
        return "", payload_text(record.result)
    return "", payload_text(result_of(record))


def state_json(state: RunState, tracebacks: dict[tuple[int, int, int], str] | None = None) -> dict[str, Any]:
    """The run for the JSON API; each failed attempt with its ``traceback`` when ``tracebacks`` (from the
    run's history, `tracebacks.by_attempt`) has it, else ``""``."""
    tracebacks = tracebacks or {}
    steps = []
    for s in state.steps:
        attempt, attempts = attempts_of(s)
        steps.append(
            {
                "position": s.position,
                "kind": str(s.kind),
                "name": s.name,
                "status": str(s.status),
                "attempt": attempt,
                "attempts": [
                    {
                        "attempt": a.attempt,
                        "started_ms": a.started_ms,
                        "finished_ms": a.finished_ms,
                        "error_type": a.error_type,
                        "message": a.message,
                        "worker": a.worker,
                        "traceback": tracebacks.get((s.position, a.attempt, a.started_ms), ""),
                    }
                    for a in attempts
                ],
                "error": command_error(s),
                "child_run_id": s.child_run_id if isinstance(s, ChildRecord) else "",
            }
        )
    return {
        "run_id": state.run_id,
        "workflow": state.workflow,
        "status": str(state.status),
        "created_ms": state.created_ms,
        "updated_ms": state.updated_ms,
        "input": payload_text(state.input),
        "result": payload_text(state.result),
        "error_type": state.error_type,
        "error_message": state.error_message,
        "parent_run_id": state.parent_run_id,
        "steps": steps,
    }


def letter_json(offset: int, d: DeadLetter) -> dict[str, Any]:
    return {
        "offset": offset,
        "source": f"{d.source_topic}[{d.source_partition}]@{d.source_offset}",
        "component": d.component,
        "error_type": d.error_type,
        "reason": d.reason,
        "timestamp_ms": d.timestamp_ms,
        "key": d.key.decode(errors="replace") if d.key else None,
        "value": d.value.decode(errors="replace") if d.value else None,
    }


def queue_json(q: QueueReport) -> dict[str, Any]:
    return {
        "queue": q.queue,
        "lag": q.lag,
        "in_flight": q.in_flight,
        "scheduled": q.scheduled,
        "oldest_scheduled_ms": q.oldest_scheduled_ms,
        "oldest_waiting_ms": q.oldest_waiting_ms,
        "partitions": [
            {
                "topic": p.topic,
                "partition": p.partition,
                "end_offset": p.end_offset,
                "committed": p.committed,
                "lag": p.lag,
                "oldest_waiting_ms": p.oldest_waiting_ms,
            }
            for p in q.partitions
        ],
    }


def workers_json(w: Workers) -> dict[str, Any]:
    return {
        "state": w.state,
        "members": [
            {
                "client_id": m.client_id,
                "host": m.host,
                "member_id": m.member_id,
                "partitions": list(m.partitions),
            }
            for m in w.members
        ],
    }


def install(env: jinja2.Environment) -> None:
    """The filters and globals the templates use."""
    env.filters.update(when=when, payload=payload_text, plain=plain, field=field, dur=duration_text)
    env.globals.update(
        ago=ago,
        command_error=command_error,
        command_io=command_io,
        last_traceback=last_traceback,
        attempts_of=attempts_of,
        ChildRecord=ChildRecord,
        StepRecord=StepRecord,
    )
    env.tests["child"] = lambda r: isinstance(r, ChildRecord)
