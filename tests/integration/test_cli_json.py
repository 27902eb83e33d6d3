"""``--json`` on the read commands, on the real broker: for known runs (completed, failed, parked), a dead
letter and a schedule, each command's stdout is one JSON document with the right values, unreadable
records are in it too, and the exit codes are those of the table output."""

from __future__ import annotations

import asyncio
import json
import sys
import time
import types
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from engine_support import Bad, engine, settings
from typer.testing import CliRunner, Result

from orchestrator import App, TerminalError, WorkflowContext
from orchestrator._engine import audit
from orchestrator._engine.partitioning import partition_for
from orchestrator._engine.reader import read_partitions
from orchestrator._engine.unreadable import JUNK
from orchestrator.cli import app as cli
from orchestrator.cli._unreadable import EXIT_DIFFERENCES, EXIT_OK, EXIT_UNREADABLE, EXIT_USAGE
from orchestrator.errors import RunFailedError
from orchestrator.topology import changelog_topic, dlq_topic, inbox_topic


def _app(name: str, bootstrap: str) -> App:
    app = App(name, settings=settings(bootstrap))

    @app.step
    async def double(i: int) -> int:
        return i * 2

    @app.step
    async def refuse(i: int) -> int:
        raise TerminalError(f"card {i} declined")

    @app.workflow
    async def two_steps(ctx: WorkflowContext, i: int) -> int:
        return await ctx.step(double, await ctx.step(double, i))

    @app.workflow
    async def charge(ctx: WorkflowContext, i: int) -> int:
        return await ctx.step(refuse, i)

    @app.workflow(schedule="0 9 1 1 *")  # registered when the processor starts, never due in the test
    async def yearly(ctx: WorkflowContext) -> None:
        return None

    return app


def _until(predicate: Any, what: str) -> None:
    deadline = time.monotonic() + 60  # only so that a broken engine fails the test instead of hanging it
    while not predicate():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.1)


async def _known_runs(app: App, bad: Bad, state_dir: Path) -> None:
    """done (completed, 3 -> 12), declined (failed), lost (parked: unknown workflow), a dead letter, a
    schedule; the engine is stopped on return."""
    with engine(app, state_dir):
        async with app.client() as client:
            assert await (await client.start("two_steps", 3, run_id="done")).result(timeout=60) == 12
            with pytest.raises(RunFailedError):
                await (await client.start("charge", 7, run_id="declined")).result(timeout=60)
            with pytest.raises(RunFailedError):
                await (await client.start("no_such_workflow", 1, run_id="lost")).result(timeout=60)
            bad.put("inbox-junk", inbox_topic(app.name), b"junk", "nobody", 0)  # dead-lettered
            _until(lambda: any(read_partitions(app.settings, dlq_topic(app.name), [0])), "the dead letter")
            _until(lambda: audit.schedules(app), "the schedule")


def _iso_ms(text: str) -> int:
    assert text.endswith("Z"), text
    return int(datetime.fromisoformat(text).timestamp() * 1000)


def _times_agree(doc: dict[str, Any], *names: str) -> None:
    for name in names:
        assert isinstance(doc[f"{name}_ms"], int), (name, doc)
        assert _iso_ms(doc[name]) == doc[f"{name}_ms"], (name, doc)


def test_read_commands_print_one_json_document_with_the_runs_values(
    kafka_bootstrap: str, unique_name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Not an async test: some commands run their own event loop, as from a shell.
    app = _app(unique_name, kafka_bootstrap)
    bad = Bad(kafka_bootstrap)
    started_ms = int(time.time() * 1000)
    asyncio.run(_known_runs(app, bad, tmp_path))

    module = types.ModuleType(f"cli_json_{unique_name}")
    module.app = app  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, module.__name__, module)
    spec = f"{module.__name__}:app"

    def run(*args: str, code: int = EXIT_OK) -> Any:
        result: Result = CliRunner().invoke(cli, [*args, "--app", spec, "--json"])
        assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
        assert result.exit_code == code, (args, result.stdout, result.stderr)
        assert len(result.stdout.splitlines()) == 1, result.stdout  # one document, nothing else
        return json.loads(result.stdout)

    # runs show: a completed run, with its steps, result and times.
    done = run("runs", "show", "done")
    assert done["unreadable"] == []
    shown = done["run"]
    assert (shown["run_id"], shown["workflow"], shown["status"]) == ("done", "two_steps", "completed")
    assert shown["input"] == {"json": 3} and shown["result"] == {"json": 12}
    assert shown["error_type"] == "" and shown["parent_run_id"] is None
    _times_agree(shown, "created", "updated")
    assert started_ms <= shown["created_ms"] <= shown["updated_ms"]
    assert [(s["position"], s["kind"], s["name"], s["status"]) for s in shown["steps"]] == [
        (0, "step", "double", "completed"),
        (1, "step", "double", "completed"),
    ]
    assert [s["result"] for s in shown["steps"]] == [{"json": 6}, {"json": 12}]
    (attempt,) = shown["steps"][0]["attempts"]
    _times_agree(attempt, "started", "finished")
    assert attempt["attempt"] == 1 and attempt["error_type"] == "" and attempt["worker"]
    assert attempt["duration_ms"] == attempt["finished_ms"] - attempt["started_ms"]

    # A failed run: the step's terminal error on the step, its attempt and the run.
    declined = run("runs", "show", "declined")["run"]
    assert declined["status"] == "failed" and declined["result"] is None
    assert "card 7 declined" in declined["error_message"]
    (step,) = declined["steps"]
    assert step["name"] == "refuse" and step["status"] == "failed"
    assert "card 7 declined" in step["error_message"] and step["attempts"][0]["error_type"]

    # A parked run: why it is parked.
    lost = run("runs", "show", "lost")["run"]
    assert lost["status"] == "parked" and lost["workflow"] == "no_such_workflow"
    assert "no workflow named 'no_such_workflow'" in lost["error_message"], lost

    # No such run: the usage error as JSON, exit code 2.
    missing = run("runs", "show", "nobody-ever", code=EXIT_USAGE)
    assert missing["run"] is None and "nobody-ever" in missing["error"]

    # dlq list / show: the dead-lettered inbox record, where it came from and why.
    letters = run("dlq", "list")
    (letter,) = letters["dead_letters"]
    assert letter["source_topic"] == inbox_topic(app.name) and letter["value"] == "junk"
    assert letter["key"] == "nobody" and letter["error_type"] and letter["reason"]
    assert (
        f"{letter['source_topic']}[{letter['source_partition']}]@{letter['source_offset']}"
        == bad.landed["inbox-junk"]
    )
    _times_agree(letter, "time")
    assert run("dlq", "show", str(letter["offset"]))["dead_letter"] == letter
    assert run("dlq", "show", "999", code=EXIT_USAGE)["dead_letter"] is None

    # schedules list: the registered schedule and its next tick (09:00 UTC on 1 January).
    (schedule,) = run("schedules", "list")["schedules"]
    assert {k: schedule[k] for k in ("workflow", "cron", "timezone", "paused")} == {
        "workflow": "yearly",
        "cron": "0 9 1 1 *",
        "timezone": "UTC",
        "paused": False,
    }
    _times_agree(schedule, "next_tick")
    assert schedule["next_tick"].endswith("-01-01T09:00:00.000Z")

    # export: the summary as JSON, the events in the file.
    out = tmp_path / "all.jsonl"
    exported = run("export", "--out", str(out))
    events = out.read_text().splitlines()
    assert exported == {"out": str(out), "format": "jsonl", "events": len(events), "unreadable": []}
    assert {json.loads(e)["run_id"] for e in events} == {"done", "declined", "lost"}

    # replay: every run matches its history; --at: a run as it stood then.
    replayed = run("replay")
    assert replayed["mode"] == "replay" and replayed["differences"] == [] and replayed["compared"] == 3
    assert replayed["runs"] == 3 and replayed["events"] == len(events) and replayed["not_verifiable"] == []
    # --check with the same code: only the parked run, whose workflow no code has, would diverge (exit 1).
    checked = run("replay", "--check", spec, code=EXIT_DIFFERENCES)
    assert checked["mode"] == "check" and checked["checked"] == 3 and checked["unreadable"] == []
    (diverging,) = checked["divergences"]
    assert diverging["run_id"] == "lost" and "not in the new code" in diverging["message"]
    then = run("replay", "done", "--at", time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime()))
    assert then["mode"] == "at" and then["run"]["status"] == "completed" and then["not_verifiable"] is None

    # An unreadable latest state: in the JSON (and on stderr), exit code 3.
    parts = app.settings.partitions
    bad.put("state-junk", changelog_topic(app.name), b"junk", "r/done", partition_for("done", parts))
    broken = run("runs", "show", "done", code=EXIT_UNREADABLE)
    assert broken["run"] is None
    (skipped,) = broken["unreadable"]
    assert skipped["reason"] == JUNK and skipped["key"] == "r/done"
    assert f"{skipped['topic']}[{skipped['partition']}]@{skipped['offset']}" == bad.landed["state-junk"]
    again = run("replay", code=EXIT_UNREADABLE)
    assert again["not_verifiable"][0]["run_id"] == "done" and again["unreadable"][0]["reason"] == JUNK


def test_topics_plan_and_kafka_status_as_json(kafka_bootstrap: str, unique_name: str, tmp_path: Path) -> None:
    def run(*args: str, code: int = EXIT_OK) -> Any:
        result = CliRunner().invoke(cli, [*args, "--json"])
        assert result.exit_code == code, (args, result.stdout, result.stderr)
        return json.loads(result.stdout)

    plan = run("topics", "plan", "--app", unique_name, "--bootstrap", kafka_bootstrap)
    assert plan["mode"] == "plan" and plan["in_sync"] is False and plan["bootstrap"] == kafka_bootstrap
    assert {c["change"] for c in plan["changes"]} == {"create"} and len(plan["changes"]) == plan["topics"]
    applied = run("topics", "apply", "--app", unique_name, "--bootstrap", kafka_bootstrap)
    assert applied["mode"] == "apply" and [c["topic"] for c in applied["changes"]] == [
        c["topic"] for c in plan["changes"]
    ]
    assert all(c["applied"] for c in applied["changes"])
    again = run("topics", "plan", "--app", unique_name, "--bootstrap", kafka_bootstrap)
    assert again["in_sync"] is True and again["changes"] == []

    nothing = tmp_path / "no-broker-here"
    assert run("kafka", "status", "--dir", str(nothing), code=1) == {
        "running": False,
        "ready": False,
        "data_dir": str(nothing),
    }


def test_kafka_status_as_json_for_a_running_broker(kafka_data_dir: Path, kafka_bootstrap: str) -> None:
    result = CliRunner().invoke(cli, ["kafka", "status", "--dir", str(kafka_data_dir), "--json"])
    assert result.exit_code == 0, result.output
    status = json.loads(result.stdout)
    assert status["running"] and status["ready"] and status["bootstrap"] == kafka_bootstrap
    # `./dev test` names the dir relative to the repo; the status gives it resolved
    assert status["data_dir"] == str(kafka_data_dir.resolve()) and status["kafka_version"]
    assert "client_config" not in status  # it holds the admin password of a secured broker
