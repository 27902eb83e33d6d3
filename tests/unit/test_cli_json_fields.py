"""The field rules of ``--json`` (times, payloads, engine values) and where usage errors go."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from typer.testing import CliRunner

from orchestrator._core.state import AttemptRecord, RunState, RunStatus, StepRecord, StepStatus
from orchestrator.cli import _json
from orchestrator.cli import app as cli


def test_a_time_is_iso_utc_with_milliseconds_and_epoch_ms() -> None:
    ms = 1_764_450_303_120
    assert _json.times("created", ms) == {"created": "2025-11-29T21:05:03.120Z", "created_ms": ms}
    assert datetime.fromisoformat(_json.iso(ms)) == datetime.fromtimestamp(ms / 1000, tz=UTC)
    assert _json.times("finished", 0) == {"finished": None, "finished_ms": None}


def test_payloads_are_json_when_they_are_and_base64_otherwise() -> None:
    assert _json.payload(b'{"a": [1, 2]}') == {"json": {"a": [1, 2]}}
    assert _json.payload(b"") == {"json": None}
    assert _json.payload(b"\xff\x00") == {"base64": "/wA="}
    assert _json.payload(None) is None


def test_engine_values_become_plain_json() -> None:
    step = StepRecord(0, "charge", "default", StepStatus.FAILED, 2, b"[1]", 5, error_type="E")
    step.attempts.append(AttemptRecord(1, 10, 20, "E", "boom", "w1"))
    plain = _json.plain([step, RunStatus.PARKED, {"k": b"1"}])
    json.dumps(plain)  # serialisable as is
    assert plain[0]["status"] == "failed" and plain[0]["args"] == {"json": [1]}
    assert plain[0]["attempts"][0]["message"] == "boom"
    assert plain[1:] == ["parked", {"k": {"json": 1}}]


def test_a_run_shows_its_steps_with_attempts_and_durations() -> None:
    state = RunState("r1", "wf", RunStatus.FAILED, b"3", 1_000, 2_000, error_type="E", error_message="no")
    step = StepRecord(0, "charge", "default", StepStatus.FAILED, 1, b"[3]", 1_100, error_type="E")
    step.error_message = "card declined"
    step.attempts.append(AttemptRecord(1, 1_200, 1_450, "E", "card declined", "w1"))
    state.steps.append(step)

    run = _json.run_json(state)
    assert (run["status"], run["input"], run["result"], run["parent_run_id"]) == (
        "failed",
        {"json": 3},
        None,
        None,
    )
    (shown,) = run["steps"]
    assert shown["kind"] == "step" and shown["name"] == "charge" and shown["error_message"] == "card declined"
    assert shown["attempts"][0]["duration_ms"] == 250 and shown["attempts"][0]["worker"] == "w1"
    assert shown["scheduled_ms"] == 1_100


def test_a_usage_error_leaves_stdout_empty() -> None:
    result = CliRunner().invoke(cli, ["runs", "show", "x", "--app", "no_such_module_zz:app", "--json"])
    assert result.exit_code == 2
    assert result.stdout == "" and "no_such_module_zz" in result.stderr
